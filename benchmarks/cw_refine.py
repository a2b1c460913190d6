"""CW-L2 with and without its final line search (``refine_steps``) and early abort, on the same images.

advlab's ``cw_l2`` ends with a bisection along each successful perturbation for the smallest still-adversarial
multiple of it (``refine_steps`` forward passes; 0 is the paper's algorithm). This script runs CW on the
EfficientNet-Lite0 images of the 30 x 5 set that the model classifies correctly, untargeted and targeted,
with each ``--refine`` value and each abort setting, and prints success, median and mean L2 of the successes,
CPU time and the images forwarded. The points are scored as in ``compare_peers.py`` (``strength``: medians
are the lower middle of an even count), with the model as given, not the attack's prepared copy.

    .venv/bin/python benchmarks/cw_refine.py --images 128 --refine 0 8   # 5 rounds x 20 steps, c0 0.01, lr 0.01
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from advlab import attacks
from benchmarks._peers.libraries import Spec
from benchmarks._peers.measure import strength
from benchmarks._peers.workload import imagenet_workload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128, help="first N correctly classified images")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--refine", nargs="+", type=int, default=[0, 8], help="refine_steps values")
    parser.add_argument("--abort", nargs="+", choices=["on", "off"], default=["on"])
    parser.add_argument("--modes", nargs="+", choices=["untargeted", "targeted"], default=["untargeted", "targeted"])
    parser.add_argument("--c", type=float, default=0.01, help="initial c (advlab reproduce's Table 3 uses 1)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    wl = imagenet_workload()
    model = wl.model
    n = min(args.images, len(wl.x))
    print(f"{wl.name}: {n} images, CW {args.rounds} x {args.steps} steps, c0 {args.c:g}, lr 0.01, batch {args.batch}")
    print("| mode | abort | refine_steps | success | L2 median | L2 mean | CPU s | images forwarded |")
    print("|---|---|---|---|---|---|---|---|")
    for mode in args.modes:
        labels = wl.targets if mode == "targeted" else wl.y
        for abort in args.abort:
            for refine in args.refine:
                outputs: list[torch.Tensor] = []
                cpu = 0.0
                images0 = model.images
                for i in range(0, n, args.batch):
                    x, t = wl.x[i : min(i + args.batch, n)], labels[i : min(i + args.batch, n)]
                    start = time.process_time()
                    outputs.append(
                        attacks.cw_l2(
                            model,
                            x,
                            t,
                            c=args.c,
                            steps=args.steps,
                            lr=0.01,
                            binary_search_steps=args.rounds,
                            targeted=mode == "targeted",
                            abort_early=abort == "on",
                            refine_steps=refine,
                        )
                    )
                    cpu += time.process_time() - start
                images = model.images - images0
                # compare_peers' scoring, with the model as given (not the counted one, nor the prepared copy).
                spec = Spec("cw_l2", targeted=mode == "targeted")
                valid = torch.ones(n, dtype=torch.bool)
                s = strength(model.model, torch.cat(outputs), wl.x[:n], wl.y[:n], wl.targets[:n], spec, valid)
                print(
                    f"| {mode} | {abort} | {refine} | {s['success']:.3f} | {s['l2_median']:.4f} | {s['l2_mean']:.4f} "
                    f"| {cpu:.1f} | {images} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
