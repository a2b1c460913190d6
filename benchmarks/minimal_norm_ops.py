"""Aten ops per step of advlab's FMN (L0, L1, L2, Linf) and DDN against adv_lib's, their time outside the
model, and their CPU time side by side.

On a GPU, 100 steps of these attacks on a small CNN are launch-bound: the number of kernels per step decides
the wall time. This script counts, with torch.profiler on the CPU, the aten ops each step runs that would
launch a kernel (leaf ops, less views and allocations; ``item``/``_local_scalar_dense``, a host sync, counted
apart), as the difference between a run of 2s and one of s steps divided by s (the set-up and the last
scoring cancel), the model's forward and input-gradient backward included. Then, with ``--outside``, it
profiles one run of ``--time-steps`` steps of each attack and splits its time into the model's (the elapsed
time of its forward, and of every node the autograd engine runs for the input gradient, the loss's few
included) and the attack's own (the rest of the run's elapsed time: the loss's forward, the step, the
projection, the bookkeeping and the Python between them), per step in milliseconds: on a large model the
attack's own time is a few percent of the whole, below the noise of end-to-end timings on a shared machine,
and this column measures it apart. Elapsed time on one thread, not process CPU time; the profiler adds a few
microseconds to every op, on each side. Then it times each attack (median process time of ``--repeats`` runs,
attacks alternating) on the same images. ``--entries`` keeps the entries whose name contains one of the given
words (or is one given with a leading ``=``).

    PYTHONPATH=src .venv/bin/python benchmarks/minimal_norm_ops.py --model fmnist_cnn_standard --n 100
    PYTHONPATH=src .venv/bin/python benchmarks/minimal_norm_ops.py --model efficientnet_lite0 --n 16 \
        --entries "fmn l0,fmn l2" --outside --repeats 0
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
from torch import Tensor, nn
from torch.autograd.profiler_util import FunctionEvent
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._peers.entries import entry_rank, entry_words
from benchmarks._peers.libraries import stub_visdom
from benchmarks._peers.workload import IMAGENET_30X5, attack_workload

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
MODEL_SCOPE = "model forward"  # the profiler's name for the model's forward (:class:`Scoped`)
BACKWARD_SCOPE = "autograd::engine::evaluate_function"  # how the profiler names each backward node the engine runs


class Scoped(nn.Module):
    """The model, its forward marked for the profiler, so that its time can be told from the attack's (in the
    model's train/eval mode)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.training = model.training  # the wrapper's own flag; the model's submodules keep theirs

    def forward(self, x: Tensor) -> Tensor:
        with record_function(MODEL_SCOPE):
            return self.model(x)


def time_outside_model(run: Callable[[], object]) -> tuple[float, float]:
    """Seconds of one call (under torch.profiler) in the model, the elapsed time of its forwards
    (:class:`Scoped`) and of the autograd engine's backward nodes (the model's and the loss's), and outside it,
    the rest of the call's elapsed time."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        run()
        elapsed = time.perf_counter() - start
    inside = 0.0

    def visit(ev: FunctionEvent) -> None:
        nonlocal inside
        if ev.name == MODEL_SCOPE or ev.name.startswith(BACKWARD_SCOPE):
            inside += ev.cpu_time_total / 1e6
            return
        for child in ev.cpu_children:
            visit(child)

    for ev in prof.events():
        if ev.cpu_parent is None:
            visit(ev)
    return inside, elapsed - inside


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
    parser.add_argument("--n", type=int, default=100,
                        help="test images before keeping the correct (efficientnet_lite0: its first n correct)")
    parser.add_argument("--steps", type=int, default=10, help="s: ops per step are (ops(2s) - ops(s)) / s")
    parser.add_argument("--time-steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--detail", action="store_true", help="print each entry's ops per step by name")
    parser.add_argument("--entries", default="",
                        help="comma-separated words: keep the entries containing one (or, with a leading =, so named)")
    parser.add_argument("--outside", action="store_true",
                        help="profile one run of --time-steps steps: the attack's CPU ms a step outside the model")
    parser.add_argument("--imagenet", default=str(IMAGENET_30X5), help="the ImageNet folder of efficientnet_lite0")
    args = parser.parse_args()
    stub_visdom()
    from adv_lib.attacks import ddn as adv_lib_ddn
    from adv_lib.attacks import fmn as adv_lib_fmn

    from advlab import attacks

    torch.set_num_threads(1)
    wl = attack_workload(args.model, args.n, Path(args.imagenet))
    model, x, y = Scoped(wl.model), wl.x, wl.y
    entries: dict[str, Callable[[int], Tensor]] = {}
    for norm, p in (("l0", 0.0), ("l1", 1.0), ("l2", 2.0), ("linf", float("inf"))):
        entries[f"advlab fmn {norm}"] = lambda s, norm=norm: attacks.fmn(model, x, y, norm=norm, steps=s)
        entries[f"adv_lib fmn {norm}"] = lambda s, p=p: adv_lib_fmn(model, x, y, norm=p, steps=s)
    # advlab's FMN-L0 at the paper's step and eps factor (adv_lib's defaults; advlab's own are larger, fmn.py)
    entries["advlab fmn l0 a1"] = lambda s: attacks.fmn(model, x, y, norm="l0", steps=s, alpha_init=1.0,
                                                        gamma_init=0.05)
    entries["advlab ddn"] = lambda s: attacks.ddn(model, x, y, steps=s)
    entries["adv_lib ddn"] = lambda s: adv_lib_ddn(model, x, y, steps=s)
    words = entry_words(args.entries)
    if words:
        entries = {k: v for k, v in entries.items() if entry_rank(k, words) is not None}
    s = args.steps
    print(f"{args.model}, {len(y)} images, 1 thread; ops per step from {s} and {2 * s} steps"
          + (f"; model and attack ms per step from one profiled run of {args.time_steps} steps" if args.outside else "")
          + (f"; cpu s: median of {args.repeats} runs of {args.time_steps} steps" if args.repeats else ""))
    counts = {}
    for name, run in entries.items():
        run(2)  # warm-up
        one, sync_one = kernel_ops(lambda run=run: run(s))
        two, sync_two = kernel_ops(lambda run=run: run(2 * s))
        per_step = {k: (two[k] - one[k]) / s for k in two | one if two[k] != one[k]}
        counts[name] = (sum(per_step.values()), (sync_two - sync_one) / s, per_step)
    outside: dict[str, tuple[float, float]] = {}
    if args.outside:
        for name, run in entries.items():
            outside[name] = time_outside_model(lambda run=run: run(args.time_steps))
    times: dict[str, list[float]] = {name: [] for name in entries}
    for r in range(args.repeats):  # alternate the attacks, reversing the order every other round
        for name in (list(entries) if r % 2 == 0 else list(entries)[::-1]):
            t = time.process_time()
            entries[name](args.time_steps)
            times[name].append(time.process_time() - t)
    print("| entry | ops per step | syncs per step | model ms per step | attack's own | cpu s |")
    print("|---|---|---|---|---|---|")
    for name, (total, syncs, _) in counts.items():
        split = outside.get(name)
        model_ms, outside_ms = (f"{1000 * t / args.time_steps:.2f}" for t in split) if split else ("-", "-")
        cpu = f"{statistics.median(times[name]):.2f}" if times[name] else "-"
        print(f"| {name} | {total:.0f} | {syncs:.1f} | {model_ms} | {outside_ms} | {cpu} |")
    if args.detail:
        for name, (_, _, per_step) in counts.items():
            print(name, dict(sorted(((k[6:], v) for k, v in per_step.items()), key=lambda kv: -kv[1])))


if __name__ == "__main__":
    main()
