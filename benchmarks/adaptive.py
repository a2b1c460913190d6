"""Naive against adaptive attacks on the input-transformation defences of advlab.defenses (issue 18).

For each defence wrapped around each shipped Fashion-MNIST model: clean accuracy, robust accuracy under naive PGD
(the defended model attacked as it is), under adaptive PGD (BPDA around a non-differentiable transform, EOT over a
random one; Athalye, Carlini & Wagner 2018), and of the undefended model under the same PGD. These defences add no
robustness against an adaptive attacker, so the adaptive number should come near the undefended one, while naive
PGD overstates robustness where the defence masks gradients.

    .venv/bin/python benchmarks/adaptive.py --subset 20 --threads 2        # 500 test images

PGD: Linf eps 0.1, ``--steps`` steps of ``--alpha``, one random start seeded by the test-set index. A sample counts
as robust under the adaptive attack only if neither the naive nor the adaptive attack broke it (the defender faces
both). Accuracy at a point is one forward of the defended model (one fresh draw for a random defence), as the
deployed model would answer. Prints one JSON line per (model, defence) and a table.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

from advlab import attacks
from advlab.data.fashion_mnist import load_fashion_mnist, to_float_images
from advlab.defenses import bpda, defended, parse_defense
from advlab.models import load_model

# defence -> how the adaptive attack handles it: "bpda" (identity backward around it) or "eot" (expectation)
DEFENCES: dict[str, str] = {
    "bit_depth(bits=3)": "bpda",
    "median(size=3)": "bpda",
    "jpeg(quality=75)": "bpda",
    "random_resize_pad(min_ratio=0.9)": "eot",
    "gaussian_noise(sigma=0.1)": "eot",
}


@torch.no_grad()
def correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> torch.Tensor:
    return torch.cat([model(x[i : i + batch]).argmax(1) == y[i : i + batch] for i in range(0, len(y), batch)])


def robust(model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, args, eot: int = 1) -> torch.Tensor:
    """Per sample: still correct at PGD's point (evaluated by one forward of ``model``)."""
    x_adv = attacks.pgd(model, x, y, args.eps, alpha=args.alpha, steps=args.steps, seed=idx, eot_samples=eot)
    return correct(model, x_adv, y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="*", default=["fmnist_cnn_standard", "fmnist_cnn_pgd"])
    parser.add_argument("--defences", nargs="*", default=list(DEFENCES))
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--eot", type=int, default=10, help="EOT draws per step for the random defences")
    parser.add_argument("--subset", type=int, default=20, help="take every N-th test image (20: 500 images)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)  # the random defences draw from torch's global generator

    images, labels = load_fashion_mnist("test")
    idx = torch.arange(0, len(labels), args.subset)
    x, y = to_float_images(images)[idx], labels[idx]
    rows = []
    for name in args.models:
        model = load_model(name)
        t0 = time.perf_counter()
        base_clean = correct(model, x, y)
        base_robust = robust(model, x, y, idx, args) & base_clean
        base_s = time.perf_counter() - t0
        for spec in args.defences:
            how = DEFENCES.get(spec, "bpda")
            transform = parse_defense(spec)
            net = defended(model, transform)
            t0 = time.perf_counter()
            clean = correct(net, x, y)
            naive = robust(net, x, y, idx, args) & clean
            t_naive = time.perf_counter() - t0
            t0 = time.perf_counter()
            if how == "eot":
                adaptive = robust(net, x, y, idx, args, eot=args.eot)
            else:  # attack through bpda(transform); judge the point on the real defended model
                x_adv = attacks.pgd(
                    defended(model, bpda(transform)), x, y, args.eps, alpha=args.alpha, steps=args.steps, seed=idx
                )
                adaptive = correct(net, x_adv, y)
            adaptive = adaptive & naive
            row = {
                "model": name,
                "defence": spec,
                "images": len(y),
                "clean_acc": round(clean.double().mean().item(), 4),
                "naive_pgd_acc": round(naive.double().mean().item(), 4),
                "adaptive_pgd_acc": round(adaptive.double().mean().item(), 4),
                "adaptive": "BPDA (identity)" if how == "bpda" else f"EOT K={args.eot}",
                "undefended_clean_acc": round(base_clean.double().mean().item(), 4),
                "undefended_pgd_acc": round(base_robust.double().mean().item(), 4),
                "attack": f"PGD Linf eps={args.eps} steps={args.steps} alpha={args.alpha} restarts=1",
                "seconds": {
                    "naive": round(t_naive, 1),
                    "adaptive": round(time.perf_counter() - t0, 1),
                    "undefended": round(base_s, 1),
                },
                "threads": torch.get_num_threads(),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{'model':22} {'defence':34} {'clean':>6} {'naive':>6} {'adapt':>6} {'undef':>6}  adaptive attack")
    for r in rows:
        print(
            f"{r['model']:22} {r['defence']:34} {r['clean_acc']:6.3f} {r['naive_pgd_acc']:6.3f} "
            f"{r['adaptive_pgd_acc']:6.3f} {r['undefended_pgd_acc']:6.3f}  {r['adaptive']}"
        )


if __name__ == "__main__":
    main()
