"""APGD-CE robust accuracy, advlab against adv_lib, over several random-start seeds (is a gap the start?).

Found by compare_peers.py: on the shipped Fashion-MNIST models at 10 steps adv_lib's APGD breaks more samples
than advlab's and AutoAttack's. This script repeats both with different seeds on the correctly classified of
the first ``--images`` test images, so that a gap larger than the seed-to-seed spread is not the random start.

    .venv/bin/python benchmarks/apgd_vs_adv_lib.py --model fmnist_cnn_standard --eps 0.1 --steps 10 --seeds 4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from advlab.attacks import apgd
from benchmarks._peers.libraries import stub_visdom
from benchmarks._peers.workload import fmnist_workload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fmnist_cnn_standard")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    stub_visdom()
    from adv_lib.attacks import apgd as adv_lib_apgd

    torch.set_num_threads(args.threads)
    wl = fmnist_workload(args.model, args.images)
    model, x, y = wl.model, wl.x, wl.y

    def robust(x_adv: torch.Tensor) -> float:
        with torch.no_grad():
            return float((model(x_adv).argmax(1) == y).float().mean())

    ours, theirs = [], []
    for seed in range(args.seeds):
        ours.append(robust(apgd(model, x, y, args.eps, steps=args.steps, loss="ce", seed=seed)))
        torch.manual_seed(seed)
        theirs.append(
            robust(adv_lib_apgd(model, x, y, args.eps, norm=float("inf"), n_iter=args.steps, loss_function="ce"))
        )
    print(f"{wl.name}, {len(x)} images, Linf eps {args.eps:g}, {args.steps} steps; robust accuracy per seed")
    print(f"advlab:  {' '.join(f'{a:.4f}' for a in ours)}")
    print(f"adv_lib: {' '.join(f'{a:.4f}' for a in theirs)}")


if __name__ == "__main__":
    main()
