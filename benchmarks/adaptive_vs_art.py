"""advlab's adaptive PGD (BPDA, EOT) against ART's at the same budget, on the input defences both libraries have.

For each defence wrapped around a shipped Fashion-MNIST model, both libraries run PGD Linf eps ``--eps``,
``--steps`` steps of ``--alpha``, one random start, on the same images:

- bit depth (ART ``FeatureSqueezing``), median smoothing (ART ``SpatialSmoothing``), JPEG (ART ``JpegCompression``):
  BPDA with the identity backward (Athalye, Carlini & Wagner 2018, sec. 4.1); advlab ``defended(model,
  bpda(transform))``, ART the preprocessors' own ``estimate_gradient`` (the identity);
- Gaussian input noise: EOT over K = ``--eot`` draws per step; advlab ``eot_samples=K`` on
  ``defended(model, GaussianNoise(sigma))``, ART ``EoTGaussianNoisePyTorch(nb_samples=K, std=sigma)``.

Both adversarial batches are judged the same way, by advlab's defended model: one forward for a deterministic
defence, the expected prediction (mean softmax over ``--judge-draws`` draws) for the random one. Times are wall
seconds of each library's attack call on the whole batch (ART ``batch_size`` = all images), one thread.

Both points of a random defence are judged on the same draws (common random numbers), so each run is a paired
comparison. With ``--seeds S`` each row is run S times with other random starts (and noise draws): seed s gives
advlab the per-sample seeds ``idx + s * 10**6`` (idx the test-set index; seed 0 is the single run's) and ART
``np.random.seed(s)`` / ``torch.manual_seed(s)``; a summary per row gives both accuracies' mean and standard
deviation over the seeds, the paired difference's, on how many seeds advlab was stronger or tied, and the median
seconds.

    .venv/bin/python benchmarks/adaptive_vs_art.py --images 200 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from torch import nn

from advlab import attacks
from advlab.data.fashion_mnist import load_fashion_mnist, to_float_images
from advlab.defenses import JPEG, BitDepth, GaussianNoise, MedianSmoothing, bpda, defended
from advlab.models import load_model

SEED_STRIDE = 10**6  # run s gives sample i the seed idx[i] + s * SEED_STRIDE
JUDGE_SEED = 1  # torch's generator before each judgement of a random defence


def art_preprocessor(name: str, sigma: float, eot: int) -> object:
    from art.defences.preprocessor import FeatureSqueezing, JpegCompression, SpatialSmoothing
    from art.preprocessing.expectation_over_transformation import EoTGaussianNoisePyTorch

    return {
        "bit_depth(bits=3)": lambda: FeatureSqueezing(clip_values=(0.0, 1.0), bit_depth=3),
        "median(size=3)": lambda: SpatialSmoothing(window_size=3, channels_first=True, clip_values=(0.0, 1.0)),
        "jpeg(quality=75)": lambda: JpegCompression(clip_values=(0.0, 1.0), quality=75, channels_first=True),
        "gaussian_noise": lambda: EoTGaussianNoisePyTorch(nb_samples=eot, clip_values=(0.0, 1.0), std=sigma),
    }[name]()


def advlab_transform(name: str, sigma: float) -> nn.Module:
    return {
        "bit_depth(bits=3)": lambda: BitDepth(3),
        "median(size=3)": lambda: MedianSmoothing(3),
        "jpeg(quality=75)": lambda: JPEG(75),
        "gaussian_noise": lambda: GaussianNoise(sigma),
    }[name]()


class Float32(nn.Module):
    """The model on float32 input: ART's numpy preprocessors hand float64 batches to the classifier."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.float())


@torch.no_grad()
def judged_correct(net: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int) -> torch.Tensor:
    """Per sample: the expected prediction (mean softmax over ``draws`` forwards) is the label. The draws of a
    random defence come from torch's generator reseeded here, so every batch of one shape is judged on the same
    draws (common random numbers: two libraries' points are compared paired)."""
    torch.manual_seed(JUDGE_SEED)
    probs = torch.stack([torch.softmax(net(x), 1) for _ in range(draws)]).mean(0)
    return probs.argmax(1) == y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="*", default=["fmnist_cnn_standard", "fmnist_cnn_pgd"])
    parser.add_argument(
        "--defences", nargs="*", default=["bit_depth(bits=3)", "median(size=3)", "jpeg(quality=75)", "gaussian_noise"]
    )
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--sigma", type=float, default=0.1)
    parser.add_argument("--eot", type=int, default=10)
    parser.add_argument("--judge-draws", type=int, default=32)
    parser.add_argument("--images", type=int, default=200, help="evenly spaced test images")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=1, help="runs per row with other random starts (seed 0 first)")
    args = parser.parse_args()
    if args.seeds < 1:
        parser.error(f"--seeds: expected a positive number of runs, got {args.seeds}")
    torch.set_num_threads(args.threads)
    images, labels = load_fashion_mnist("test")
    idx = torch.linspace(0, len(labels) - 1, args.images).long()
    assert int(idx.max()) < SEED_STRIDE, "per-sample seeds of two runs would collide"
    x, y = to_float_images(images)[idx], labels[idx]
    print(f"{'model':20} {'defence':18} {'seed':>4} {'advlab acc':>10} {'ART acc':>8} {'advlab s':>9} {'ART s':>7}")
    for name in args.models:
        model = load_model(name).eval()
        for spec in args.defences:
            runs = [run_once(args, name, model, spec, x, y, idx, seed) for seed in range(args.seeds)]
            if args.seeds > 1:
                summarize(name, spec, runs)


def summarize(name: str, spec: str, runs: list[dict]) -> None:
    """Mean and sd over seeds of both accuracies and of their paired difference (ART's minus advlab's: positive
    when advlab is stronger), on how many seeds advlab was stronger or tied, and the median seconds."""
    n = runs[0]["images"]
    pairs = [(r["advlab_correct"], r["art_correct"]) for r in runs]
    ours, art = [o / n for o, _ in pairs], [a / n for _, a in pairs]
    diff = [(a - o) / n for o, a in pairs]
    summary = {
        "model": name, "defence": runs[0]["defence"], "seeds": len(runs), "images": n,
        "advlab_acc_mean": round(statistics.fmean(ours), 4), "advlab_acc_sd": round(statistics.stdev(ours), 4),
        "art_acc_mean": round(statistics.fmean(art), 4), "art_acc_sd": round(statistics.stdev(art), 4),
        "art_minus_advlab_mean": round(statistics.fmean(diff), 4),
        "art_minus_advlab_sd": round(statistics.stdev(diff), 4),
        "advlab_stronger": sum(o < a for o, a in pairs), "ties": sum(o == a for o, a in pairs),
        "advlab_s_median": round(statistics.median(r["advlab_s"] for r in runs), 2),
        "art_s_median": round(statistics.median(r["art_s"] for r in runs), 2),
    }  # fmt: skip
    print(json.dumps(summary), flush=True)
    print(
        f"{name:20} {spec:18} {'all':>4} {summary['advlab_acc_mean']:10.3f} {summary['art_acc_mean']:8.3f} "
        f"{summary['advlab_s_median']:9.1f} {summary['art_s_median']:7.1f}  (means; median s; advlab stronger "
        f"{summary['advlab_stronger']}, ties {summary['ties']} of {len(runs)})",
        flush=True,
    )


def run_once(
    args: argparse.Namespace, name: str, model: nn.Module, spec: str, x: torch.Tensor, y: torch.Tensor,
    idx: torch.Tensor, seed: int,
) -> dict:  # fmt: skip
    """One advlab and one ART attack on the batch with the random starts of ``seed``; prints and returns the row.

    Both libraries' points are judged on the same draws of a random defence (:func:`judged_correct`), so the
    comparison is paired."""
    from art.attacks.evasion import ProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    random = spec == "gaussian_noise"
    transform = advlab_transform(spec, args.sigma)
    net = defended(model, transform)
    draws = args.judge_draws if random else 1
    seeds = idx + seed * SEED_STRIDE
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    if random:
        x_ours = attacks.pgd(net, x, y, args.eps, alpha=args.alpha, steps=args.steps, seed=seeds,
                             eot_samples=args.eot)  # fmt: skip
    else:
        x_ours = attacks.pgd(defended(model, bpda(transform)), x, y, args.eps, alpha=args.alpha,
                             steps=args.steps, seed=seeds)  # fmt: skip
    t_ours = time.perf_counter() - t0
    clf = PyTorchClassifier(
        model=Float32(model), loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]), nb_classes=10,
        clip_values=(0.0, 1.0), preprocessing_defences=[art_preprocessor(spec, args.sigma, args.eot)],
        device_type="cpu",
    )  # fmt: skip
    attack = ProjectedGradientDescent(
        clf, norm=np.inf, eps=args.eps, eps_step=args.alpha, max_iter=args.steps, num_random_init=1,
        batch_size=len(y), verbose=False,
    )  # fmt: skip
    torch.manual_seed(seed)
    np.random.seed(seed)
    t0 = time.perf_counter()
    x_art = torch.from_numpy(attack.generate(x.numpy(), y=y.numpy())).to(x.dtype)
    t_art = time.perf_counter() - t0
    right_ours = int(judged_correct(net, x_ours, y, draws).sum())
    right_art = int(judged_correct(net, x_art, y, draws).sum())
    linf = max(float((x_ours - x).abs().max()), float((x_art - x).abs().max()))
    row = {
        "model": name, "defence": spec if not random else f"gaussian_noise(sigma={args.sigma})", "seed": seed,
        "images": len(y), "advlab_correct": right_ours, "art_correct": right_art,
        "advlab_acc": round(right_ours / len(y), 4), "art_acc": round(right_art / len(y), 4),
        "advlab_s": round(t_ours, 3), "art_s": round(t_art, 3),
        "max_linf": round(linf, 6),
        "fix": f"EOT K={args.eot}, judged on {draws} draws" if random else "BPDA (identity)",
        "attack": f"PGD Linf eps={args.eps} steps={args.steps} alpha={args.alpha} 1 random start",
        "threads": torch.get_num_threads(),
    }  # fmt: skip
    print(json.dumps(row), flush=True)
    print(
        f"{name:20} {spec:18} {seed:4d} {row['advlab_acc']:10.3f} {row['art_acc']:8.3f} {t_ours:9.1f} {t_art:7.1f}",
        flush=True,
    )
    return row


if __name__ == "__main__":
    main()
