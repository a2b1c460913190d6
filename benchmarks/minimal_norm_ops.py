"""Aten ops per step of advlab's FMN (L2, Linf) and DDN against adv_lib's, and their CPU time side by side.

On a GPU, 100 steps of these attacks on a small CNN are launch-bound: the number of kernels per step decides
the wall time. This script counts, with torch.profiler on the CPU, the aten ops each step runs that would
launch a kernel (leaf ops, less views and allocations; ``item``/``_local_scalar_dense``, a host sync, counted
apart), as the difference between a run of 2s and one of s steps divided by s (the set-up and the last
scoring cancel), the model's forward and input-gradient backward included. Then it times each attack (median
process time of ``--repeats`` runs, attacks alternating) on the same images.

    PYTHONPATH=src .venv/bin/python benchmarks/minimal_norm_ops.py --model fmnist_cnn_standard --n 100
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor
from torch.autograd.profiler_util import FunctionEvent
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._peers.libraries import stub_visdom
from benchmarks._peers.workload import fmnist_workload

# Ops that launch no kernel: views, metadata and allocations.
NO_KERNEL = {
    "aten::view", "aten::reshape", "aten::_reshape_alias", "aten::as_strided", "aten::empty", "aten::empty_like",
    "aten::empty_strided", "aten::expand", "aten::t", "aten::transpose", "aten::unsqueeze", "aten::squeeze",
    "aten::detach", "aten::detach_", "aten::alias", "aten::resize_", "aten::flatten", "aten::select",
    "aten::slice", "aten::permute", "aten::lift_fresh", "aten::result_type", "aten::unflatten", "aten::_unsafe_view",
    "aten::numpy_T", "aten::expand_as", "aten::view_as", "aten::contiguous", "aten::requires_grad_",
    "aten::set_", "aten::is_nonzero", "aten::resolve_conj", "aten::resolve_neg", "aten::squeeze_", "aten::unsqueeze_",
    "aten::_has_compatible_shallow_copy_type", "aten::lift", "aten::is_same_size", "aten::to",
}
SYNC = {"aten::item", "aten::_local_scalar_dense"}
# Ops on CPU 0-dim tensors wrapping a Python number (torch.where(mask, 1.0, inf)): no kernel on any device.
HOST_SCALAR = {"aten::scalar_tensor"}


def kernel_ops(run: Callable[[], object]) -> tuple[Counter[str], int]:
    """The aten ops of one call that launch a kernel, by name, and its host syncs (``item``): an op counts
    where none of the ops it calls counts and it is not a view or allocation (``to`` with nothing to do)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    ops: Counter[str] = Counter()
    syncs = 0

    def visit(ev: FunctionEvent) -> int:
        nonlocal syncs
        if ev.name == "aten::item":
            syncs += 1
        if ev.name in SYNC:
            return 1
        if ev.name in HOST_SCALAR:
            return 0
        below = sum(visit(c) for c in ev.cpu_children)
        if below or not ev.name.startswith("aten::") or ev.name in NO_KERNEL:
            return below
        ops[ev.name] += 1
        return 1

    for ev in prof.events():
        if ev.cpu_parent is None:
            visit(ev)
    return ops, syncs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fmnist_cnn_standard")
    parser.add_argument("--n", type=int, default=100, help="test images (before keeping the correct)")
    parser.add_argument("--steps", type=int, default=10, help="s: ops per step are (ops(2s) - ops(s)) / s")
    parser.add_argument("--time-steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--detail", action="store_true", help="print each entry's ops per step by name")
    args = parser.parse_args()
    stub_visdom()
    from adv_lib.attacks import ddn as adv_lib_ddn
    from adv_lib.attacks import fmn as adv_lib_fmn

    from advlab import attacks

    torch.set_num_threads(1)
    wl = fmnist_workload(args.model, args.n)
    model, x, y = wl.model, wl.x, wl.y
    entries: dict[str, Callable[[int], Tensor]] = {
        "advlab fmn l2": lambda s: attacks.fmn(model, x, y, norm="l2", steps=s),
        "adv_lib fmn l2": lambda s: adv_lib_fmn(model, x, y, norm=2, steps=s),
        "advlab fmn linf": lambda s: attacks.fmn(model, x, y, norm="linf", steps=s),
        "adv_lib fmn linf": lambda s: adv_lib_fmn(model, x, y, norm=float("inf"), steps=s),
        "advlab ddn": lambda s: attacks.ddn(model, x, y, steps=s),
        "adv_lib ddn": lambda s: adv_lib_ddn(model, x, y, steps=s),
    }
    s = args.steps
    print(f"{args.model}, {len(y)} images; ops per step from {s} and {2 * s} steps; cpu s: median of "
          f"{args.repeats} runs of {args.time_steps} steps, 1 thread")
    counts = {}
    for name, run in entries.items():
        run(2)  # warm-up
        one, sync_one = kernel_ops(lambda run=run: run(s))
        two, sync_two = kernel_ops(lambda run=run: run(2 * s))
        per_step = {k: (two[k] - one[k]) / s for k in two | one if two[k] != one[k]}
        counts[name] = (sum(per_step.values()), (sync_two - sync_one) / s, per_step)
    times: dict[str, list[float]] = {name: [] for name in entries}
    for r in range(args.repeats):  # alternate the attacks, reversing the order every other round
        for name in (list(entries) if r % 2 == 0 else list(entries)[::-1]):
            t = time.process_time()
            entries[name](args.time_steps)
            times[name].append(time.process_time() - t)
    print("| entry | ops per step | syncs per step | cpu s |")
    print("|---|---|---|---|")
    for name, (total, syncs, _) in counts.items():
        print(f"| {name} | {total:.0f} | {syncs:.1f} | {statistics.median(times[name]):.2f} |")
    if args.detail:
        for name, (_, _, per_step) in counts.items():
            print(name, dict(sorted(((k[6:], v) for k, v in per_step.items()), key=lambda kv: -kv[1])))


if __name__ == "__main__":
    main()
