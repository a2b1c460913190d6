"""Minimal-norm attacks, advlab against adv_lib's implementations of the same algorithms (FMN, FAB, DDN).

On a shipped Fashion-MNIST model and the correctly classified of the first ``--images`` test images, each attack
runs with the same number of steps (FMN and DDN: one forward and one backward each; FAB: a Jacobian, one backward
per class, and one more forward; both FABs without restarts). Every returned point is re-checked on a
fresh forward pass of the model and its distance re-measured in the norm (a point that is not adversarial counts
as a failure, distance inf). Scored as AttackBench does (Cina et al. 2025): per sample, the distance relative to
the smallest distance any entry of the same norm found (optimality: the mean of best / distance over samples,
1 = always the best, 0 for a failure), the median distance, the success rate and the process CPU time (seconds).

    .venv/bin/python benchmarks/minimal_norm.py --model fmnist_cnn_standard --images 200 --steps 100
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from advlab import attacks
from benchmarks._peers.libraries import stub_visdom
from benchmarks._peers.workload import fmnist_workload

P = {"l0": 0.0, "l1": 1.0, "l2": 2.0, "linf": math.inf}


def measured(model: torch.nn.Module, x: Tensor, y: Tensor, x_adv: Tensor, norm: str) -> Tensor:
    """Distance in ``norm`` of each returned point that a fresh forward pass finds adversarial, else inf."""
    with torch.no_grad():
        adversarial = model(x_adv).argmax(1) != y
    delta = (x_adv - x).flatten(1)
    size = (delta != 0).sum(1).float() if norm == "l0" else delta.norm(p=P[norm], dim=1)
    return torch.where(adversarial, size, torch.full_like(size, math.inf))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fmnist_cnn_standard")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--norms", default="l0,l1,l2,linf")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    stub_visdom()
    from adv_lib.attacks import ddn as adv_lib_ddn
    from adv_lib.attacks import fab as adv_lib_fab
    from adv_lib.attacks import fmn as adv_lib_fmn

    torch.set_num_threads(args.threads)
    wl = fmnist_workload(args.model, args.images)
    model, x, y = wl.model, wl.x, wl.y
    steps = args.steps

    entries: dict[str, list[tuple[str, Callable[[], Tensor]]]] = {}
    for norm in args.norms.split(","):
        entries[norm] = [
            ("advlab fmn", lambda norm=norm: attacks.fmn(model, x, y, norm=norm, steps=steps)),
            ("adv_lib fmn", lambda norm=norm: adv_lib_fmn(model, x, y, norm=P[norm], steps=steps)),
        ]
        if norm != "l0":
            entries[norm] += [
                ("advlab fab", lambda norm=norm: attacks.fab(model, x, y, norm=norm, steps=steps)),
                ("adv_lib fab", lambda norm=norm: adv_lib_fab(model, x, y, norm=P[norm], n_iter=steps)),
            ]
        if norm == "l2":
            entries[norm] += [
                ("advlab ddn", lambda: attacks.ddn(model, x, y, steps=steps)),
                ("adv_lib ddn", lambda: adv_lib_ddn(model, x, y, steps=steps, levels=None)),
            ]

    print(f"{wl.name}: {len(x)} correctly classified images, {steps} steps, {args.threads} thread(s)")
    print(f"{'norm':5} {'attack':12} {'success':>8} {'median':>9} {'optimality':>10} {'cpu s':>7}")
    for norm, runs in entries.items():
        distances, times = {}, {}
        for name, run in runs:
            start = time.process_time()
            x_adv = run()
            times[name] = time.process_time() - start
            distances[name] = measured(model, x, y, x_adv.detach(), norm)
        best = torch.stack(list(distances.values())).amin(0)
        for name, d in distances.items():
            ok = torch.isfinite(d)
            ratio = torch.where(ok, best / d.clamp_min(1e-30), torch.zeros_like(d))
            ratio = torch.where(ok & (d == 0), torch.ones_like(d), ratio)
            median = float(d.median())
            print(
                f"{norm:5} {name:12} {float(ok.float().mean()):8.3f} {median:9.4g} {float(ratio.mean()):10.4f} "
                f"{times[name]:7.2f}"
            )


if __name__ == "__main__":
    main()
