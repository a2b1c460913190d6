"""L2 attacks with the exact projection onto ball ∩ box against the scale-then-clip shortcut, paired by seed.

advlab's ``L2.project_`` finds the Euclidean projection onto the L2 ball intersected with [0, 1]^d by
``L2_PROJECTION_ITERATIONS`` fixed-point iterations; with 0 iterations it is the shortcut most libraries use
(scale the perturbation to the ball, then clip). This script runs PGD-L2 and APGD-CE-L2 both ways with the
same per-sample seeds on the correctly classified of the first ``--images`` Fashion-MNIST test images and
prints the mean robust accuracy over the seeds each way and the paired difference (with its standard error).

    .venv/bin/python benchmarks/l2_projection.py --steps 20 --seeds 5   # both shipped models, eps 1.0 and 1.5
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import advlab.attacks.norms as core
from advlab import attacks
from benchmarks._peers.workload import fmnist_workload


def robust_accuracy(
    attack: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, seed: int
) -> float:
    if attack == "pgd":
        x_adv = attacks.pgd(model, x, y, eps, 2.5 * eps / steps, steps, norm="l2", seed=seed)
    else:
        x_adv = attacks.apgd(model, x, y, eps, norm="l2", steps=steps, seed=seed)
    with torch.no_grad():
        return float((model(x_adv).argmax(1) == y).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["fmnist_cnn_pgd", "fmnist_cnn_standard"])
    parser.add_argument("--attacks", nargs="+", default=["pgd", "apgd"], choices=["pgd", "apgd"])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--eps", nargs="+", type=float, default=[1.0, 1.5])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    iterations = core.L2_PROJECTION_ITERATIONS
    print("| model | attack | eps | scale then clip: mean | projection: mean | paired difference (SE) |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        wl = fmnist_workload(name, args.images)
        for attack in args.attacks:
            for eps in args.eps:
                runs = {}
                for label, k in (("shortcut", 0), ("projection", iterations)):
                    core.L2_PROJECTION_ITERATIONS = k
                    runs[label] = [
                        robust_accuracy(attack, wl.model, wl.x, wl.y, eps, args.steps, s) for s in range(args.seeds)
                    ]
                core.L2_PROJECTION_ITERATIONS = iterations
                diff = [b - a for a, b in zip(runs["shortcut"], runs["projection"], strict=True)]
                se = statistics.stdev(diff) / len(diff) ** 0.5 if len(diff) > 1 else float("nan")
                print(
                    f"| {name} ({len(wl.y)}) | {attack}-L2, {args.steps} steps | {eps:g} "
                    f"| {statistics.mean(runs['shortcut']):.4f} | {statistics.mean(runs['projection']):.4f} "
                    f"| {statistics.mean(diff):+.4f} ({se:.4f}) |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
