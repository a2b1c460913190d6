"""FAB's hyperplane ∩ box projection from a row's first breakpoints against the full sort, on FAB-T's own steps.

``attacks.hyperplane.hyperplane_box_step`` solves each row from the ``HYPERPLANE_TOPK`` first breakpoints of its
order (a top-k), deeper only for the rows whose crossing lies further, and sorts all n last; ``first = n`` is the
plain sort. This script records the projections a FAB-T run makes on EfficientNet-Lite0 (the first ``--n`` of
its correctly classified images, ``--steps`` steps, ``--targets`` target classes, in each norm of ``--norms``;
the recording wraps the function for that run only), then times both ways on those same inputs, in
``--rounds`` alternating rounds (median CPU seconds), checks that they give the same steps (the largest
difference; ties among pixels at their bounds may order differently, a rounding difference), and prints where
the crossings lay (how many breakpoints in, percentiles) and the FAB-T run's time (the recording's copies
included). On ``--device cuda`` the times are wall seconds between synchronisations, else process CPU seconds;
there FAB itself sorts (the search's default depth off the CPU is all n), and the "search" column says whether
the search from ``HYPERPLANE_TOPK`` would pay.
The "sort" column sorts every call's order afresh; FAB's code before the search shared one sort of |w| between
a step's two L1 projections, so in L1 it spent about half that column (FAB-T's whole run before and after is
the end-to-end comparison: docs/benchmarks.md).

    .venv/bin/python benchmarks/fab_projection.py --n 16 --steps 10 --targets 1 --norms linf,l2,l1 --threads 1
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from advlab import attacks
from advlab.attacks.hyperplane import HYPERPLANE_TOPK, hyperplane_box_step
from benchmarks._peers.measure import timed
from benchmarks._peers.workload import IMAGENET_30X5, imagenet_workload

Call = tuple[Tensor, Tensor, Tensor, str]


def record_calls(run: Callable[[], object], device: torch.device) -> tuple[list[Call], float]:
    """The (x, w, c, p) of every projection FAB makes while ``run()`` runs, and its seconds."""
    fab_module = importlib.import_module("advlab.attacks.fab")
    calls: list[Call] = []

    def recording(x: Tensor, w: Tensor, c: Tensor, p: str) -> Tensor:
        calls.append((x.clone(), w.clone(), c.clone(), p))
        return hyperplane_box_step(x, w, c, p)

    fab_module.hyperplane_box_step = recording
    try:
        timing, _ = timed(run, device)
    finally:
        fab_module.hyperplane_box_step = hyperplane_box_step
    return calls, timing.wall if device.type == "cuda" else timing.cpu


def project_all(calls: list[Call], full_sort: bool) -> None:
    for x, w, c, p in calls:
        hyperplane_box_step(x, w, c, p, first=x.shape[1] if full_sort else HYPERPLANE_TOPK)


def crossing_depth(x: Tensor, w: Tensor, c: Tensor, p: str) -> Tensor:
    """Per row, how many breakpoints of its order the step passes (a search from fewer goes deeper): the
    coordinates brought to their bound in Linf and L2 (saturated before the crossing; those with no room are
    not in the order), the coordinates moved in L1; 0 for a row already on its hyperplane (c = 0)."""
    d = hyperplane_box_step(x, w, c, p, first=x.shape[1])
    room = torch.where(w * c.sign()[:, None] > 0, 1 - x, x)
    passed = d != 0 if p == "l1" else (d.abs() >= room) & (w != 0) & (room > 0)
    return torch.where(c != 0, passed.sum(dim=1), 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16, help="correctly classified images attacked")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--targets", type=int, default=1, help="FAB-T's n_target_classes")
    parser.add_argument("--norms", default="linf,l2,l1")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--imagenet", default=str(IMAGENET_30X5))
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    wl = imagenet_workload(Path(args.imagenet))
    device = torch.device(args.device)
    model, x, y = wl.model.to(device), wl.x[: args.n].to(device), wl.y[: args.n].to(device)
    run = f"FAB-T {args.targets} target(s) x {args.steps} steps, {args.threads} thread(s), {device}"
    print(f"{wl.name}: {len(x)} images, {run}")
    print("| norm | calls | sort s | search s | ratio | largest difference | FAB-T run s | depth p50 / p90 / max |")
    print("|---|---|---|---|---|---|---|---|")
    for norm in args.norms.split(","):
        calls, run_seconds = record_calls(
            lambda norm=norm: attacks.fab_t(model, x, y, norm=norm, steps=args.steps, n_target_classes=args.targets),
            device,
        )
        if not calls:
            raise SystemExit(f"{norm}: no projections recorded (does FAB still call hyperplane_box_step by name?)")
        times: dict[str, list[float]] = {"sort": [], "search": []}
        largest = 0.0
        for r in range(args.rounds):
            for way in ("sort", "search") if r % 2 == 0 else ("search", "sort"):
                timing, _ = timed(lambda way=way, calls=calls: project_all(calls, way == "sort"), device)
                times[way].append(timing.wall if device.type == "cuda" else timing.cpu)
        for cx, cw, cc, p in calls:
            full = hyperplane_box_step(cx, cw, cc, p, first=cx.shape[1])
            searched = hyperplane_box_step(cx, cw, cc, p, first=HYPERPLANE_TOPK)
            largest = max(largest, float((searched - full).abs().max()))
        d = torch.cat([crossing_depth(*call) for call in calls]).double().cpu()
        depths = " / ".join(f"{float(d.quantile(q)):.0f}" for q in (0.5, 0.9)) + f" / {int(d.max())}"
        sort_s, search_s = statistics.median(times["sort"]), statistics.median(times["search"])
        print(
            f"| {norm} | {len(calls)} | {sort_s:.2f} | {search_s:.2f} | {search_s / sort_s:.3f} | {largest:.1e} | "
            f"{run_seconds:.1f} | {depths} |"
        )


if __name__ == "__main__":
    main()
