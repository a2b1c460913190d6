"""Is the Gaussian-noise gap genuine? Sweeps of the adaptive attack on ``gaussian_noise`` around the shipped
standard Fashion-MNIST model (issue 18).

Behind ``GaussianNoise(0.1)`` the standard ``fmnist_cnn_standard`` keeps ~12-14% robust accuracy at Linf eps 0.1
under the adaptive suite, where the undefended model keeps ~1%. This script checks whether the attack is weak or
the randomized classifier is robust: APGD with EOT (Athalye, Engstrom, Ilyas & Kwok 2018) over K draws, K, steps,
restarts and loss swept; the point transferred from the undefended model; the eps at which the survivors fall;
and the same attack on the noise without the [0, 1] clip (Cohen, Rosenfeld & Kolter 2019 add it unclipped) and at
other sigmas. Every accuracy is the smoothed classifier's: the argmax of the mean softmax over ``--judge`` draws
(the defended model's prediction by definition, up to Monte-Carlo error), and a sample counts only if that
prediction is right on the clean image too.

    .venv/bin/python benchmarks/adaptive_noise.py --subset 200 --threads 1
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from advlab import attacks
from advlab.data.fashion_mnist import load_fashion_mnist, to_float_images
from advlab.defenses import GaussianNoise, defended
from advlab.models import load_model


@torch.no_grad()
def smoothed_right(net: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int) -> torch.Tensor:
    probs = sum(net(x).softmax(1) for _ in range(draws)) / draws
    return probs.argmax(1) == y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subset", type=int, default=200, help="every N-th test image (200: 50 images)")
    parser.add_argument("--judge", type=int, default=256, help="draws whose mean softmax is the prediction")
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="only the K = 8 row and the clip rows")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)  # the noise draws from torch's global generator
    images, labels = load_fashion_mnist("test")
    idx = torch.arange(0, len(labels), args.subset)
    x, y = to_float_images(images)[idx], labels[idx]
    model = load_model("fmnist_cnn_standard")
    net = defended(model, GaussianNoise(0.1))
    clean = smoothed_right(net, x, y, args.judge)
    with torch.no_grad():
        plain = model(x).argmax(1) == y
    print(f"{len(y)} images; clean: undefended {plain.double().mean():.3f}, smoothed {clean.double().mean():.3f}")

    def row(what: str, net: nn.Module, clean: torch.Tensor, **kw: object) -> torch.Tensor:
        t0 = time.perf_counter()
        eps = kw.pop("eps", args.eps)
        r = attacks.apgd(net, x, y, eps, seed=idx, return_info=True, **kw)
        robust = clean & smoothed_right(net, r.x_adv, y, args.judge)
        print(f"{what:58} robust {robust.double().mean():.3f} ({int(robust.sum())})  {time.perf_counter() - t0:.0f} s")
        return robust

    sweep = [(8, 100, 1, "ce")] if args.quick else [
        (8, 100, 1, "ce"), (32, 100, 1, "ce"), (32, 400, 1, "ce"), (32, 100, 1, "dlr"), (16, 100, 5, "ce"),
    ]  # fmt: skip
    for k, steps, restarts, loss in sweep:
        what = f"sigma 0.1 clip: APGD-{loss.upper()} K={k} steps={steps} restarts={restarts}"
        row(what, net, clean, eot_samples=k, steps=steps, restarts=restarts, loss=loss)
    if not args.quick:
        x_t = attacks.apgd(model, x, y, args.eps, steps=100, seed=idx)  # transfer: the undefended model's point
        kept = clean & smoothed_right(net, x_t, y, args.judge)
        print(f"{'sigma 0.1 clip: APGD-CE point of the undefended model':58} robust {kept.double().mean():.3f}")
        for e in (0.125, 0.15):
            row(f"sigma 0.1 clip: APGD-CE K=16 at eps {e}", net, clean, eps=e, eot_samples=16)
        for e in (0.03, 0.05, 0.07):
            row(f"undefended: APGD-CE at eps {e}", model, plain, eps=e)
    for sigma, clip in ((0.1, False), (0.05, True), (0.2, True)):
        noisy = defended(model, GaussianNoise(sigma, clip=clip))
        right = smoothed_right(noisy, x, y, args.judge)
        what = f"sigma {sigma} {'clip' if clip else 'no clip'} (clean {right.double().mean():.2f}): APGD-CE K=16"
        row(what, noisy, right, eot_samples=16)


if __name__ == "__main__":
    main()
