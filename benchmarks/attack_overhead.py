"""Loop overhead of every iterative attack: time per iteration / one raw forward+backward on the same batch.

The floor is what any gradient attack must pay per step: one forward pass and one backward pass for the
gradient w.r.t. the input, with the parameters frozen (torch.autograd.grad of the summed cross-entropy).
Target: ratio <= 1.05 for every attack on the model as given (the attacks call the model they are given; run
``--prepared`` to time them on ``advlab.models.prepare``'s copy instead, the floor staying on the model as given).
CW-L2 runs without its final line search, whose extra forward passes are the algorithm's, not the loop's.
Both sides are timed the same way: in each round an attack of n iterations is one timed block and n raw
forward+backward passes are the other (FGSM: ``--repeat`` calls against as many passes), adjacent, in alternating
order, so that background load and cache state weigh on both alike; the table reports per attack the median
over rounds of the per-round ratio, in process CPU seconds (what the attack costs on its thread; with one
intra-op thread it equals wall time on an idle machine) and in wall seconds.

Two columns separate the loop from what an attack pays once per call (input checks, the random start, the forward
pass that scores the last iterate, which makes the returned point the best one met): ``--marginal`` times each
attack again at 2n iterations and reports (T(2n) - T(n)) / n per raw pass, the cost of one more iteration; and
``--breakdown`` profiles one call per attack and splits its CPU time into the model's forward passes, the backward
passes and the attack's own work (everything else), a split that background load does not move the way it moves
a timed ratio on this noisy machine.

    .venv/bin/python benchmarks/attack_overhead.py --batch 8 --steps 10 --rounds 5 --threads 1 --marginal --breakdown
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

from advlab import __version__, attacks


def _images(model: torch.nn.Module, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Real images from the shared 30x5 set when present (content does not change timing), else noise."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-30x5"
    try:
        from advlab.data import LabelsFileDataset

        ds = LabelsFileDataset(root / "labels.csv", root=root, transform=model.preprocess)
        items = [ds[i] for i in range(batch)]
        return torch.stack([it[0] for it in items]), torch.tensor([int(it[1]) for it in items])
    except Exception as exc:  # timing does not depend on the pixels
        print(f"# using random images ({exc})")
        c, h, w = model.input_size
        return torch.rand(batch, c, h, w), torch.randint(0, 1000, (batch,))


def _time(fn: Callable[[], object], calls: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of ``calls`` calls of ``fn`` in one block."""
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(calls):
        fn()
    return time.process_time() - c0, time.perf_counter() - w0


class _Labelled(nn.Module):
    """The model, its forward passes labelled for the profiler (the breakdown only; timing uses the bare model)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with record_function(_FORWARD):
            return self.inner(x)


_FORWARD = "bench::model_forward"


def _breakdown(fn: Callable[[], object]) -> dict[str, float]:
    """CPU milliseconds of one profiled call, split into the model's forward passes, the backward passes
    (autograd's engine) and everything else: the attack's own work (input checks, objective, step, projection,
    bookkeeping, random start). Only the top-level events of the calling thread are summed, so nothing counts
    twice; unlike a timed ratio, this split does not move with background load."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    split = {"forward_ms": 0.0, "backward_ms": 0.0, "attack_ms": 0.0, "forwards": 0.0}
    for e in prof.events():
        if e.cpu_parent is not None:
            continue
        if e.name == _FORWARD:
            split["forward_ms"] += e.cpu_time_total / 1e3
            split["forwards"] += 1
        elif e.name.startswith("autograd::engine"):
            split["backward_ms"] += e.cpu_time_total / 1e3
        else:
            split["attack_ms"] += e.cpu_time_total / 1e3
    return split


def _cases(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int
) -> dict[str, tuple[int, Callable[[int], object]]]:
    """name -> (iterations, the attack of n iterations on ``model``); FGSM has one step whatever n is."""
    return {
        "fgsm": (1, lambda n: attacks.fgsm(model, x, y, eps)),
        "bim": (steps, lambda n: attacks.bim(model, x, y, eps, eps / n, n)),
        "pgd_linf": (steps, lambda n: attacks.pgd(model, x, y, eps, 2.5 * eps / n, n, seed=0)),
        "pgd_l2": (steps, lambda n: attacks.pgd(model, x, y, 0.5, 0.1, n, norm="l2", seed=0)),
        "pgd_linf_margin": (steps, lambda n: attacks.pgd(model, x, y, eps, eps / 4, n, loss="margin", seed=0)),
        # The loop alone: without CW's final line search (refine_steps forward passes more, by design).
        "cw_l2": (
            steps,
            lambda n: attacks.cw_l2(model, x, y, steps=n, binary_search_steps=1, abort_early=False, refine_steps=0),
        ),
        "mifgsm": (steps, lambda n: attacks.mifgsm(model, x, y, eps, steps=n)),
        "apgd_ce": (steps, lambda n: attacks.apgd(model, x, y, eps, steps=n, seed=0)),
        "apgd_dlr": (steps, lambda n: attacks.apgd(model, x, y, eps, steps=n, loss="dlr", seed=0)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3, help="calls per timed block of the one-step FGSM")
    ap.add_argument("--attacks", nargs="*", default=None, help="a subset of the rows (default: all)")
    ap.add_argument("--json", default="")
    ap.add_argument("--prepared", action="store_true", help="attack advlab.models.prepare(model, x)")
    ap.add_argument(
        "--marginal",
        action="store_true",
        help="also time each iterative attack at 2 x steps: (T(2n) - T(n)) / n is the cost of one more iteration, "
        "free of the per-call costs (input checks, random start, the final scoring forward)",
    )
    ap.add_argument(
        "--breakdown",
        action="store_true",
        help="also profile one call per attack: CPU time in the model's forwards, in backwards, and in the attack's "
        "own work, which background load does not move the way it moves a timed ratio",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from advlab.models import load_model

    model = load_model(args.model)
    x, y = _images(model, args.batch)
    eps, steps = 4 / 255, args.steps
    for p in model.parameters():
        p.requires_grad_(False)

    floor_model = model
    if args.prepared:
        from advlab.models import prepare

        model = prepare(model, x)

    def floor() -> None:
        xi = x.clone().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(floor_model(xi), y, reduction="sum"), xi)

    cases = _cases(model, x, y, eps, steps)
    if args.attacks:
        unknown = set(args.attacks) - set(cases)
        if unknown:
            ap.error(f"unknown attacks {sorted(unknown)}; expected some of {sorted(cases)}")
        cases = {k: v for k, v in cases.items() if k in args.attacks}
    floor()  # warm-up
    for _, fn in cases.values():
        fn(steps)
    ratios: dict[str, dict[str, list[float]]] = {k: {"cpu": [], "wall": [], "marginal": []} for k in cases}
    per_iter: dict[str, list[float]] = {k: [] for k in cases}
    floors: list[float] = []
    for r in range(args.rounds):
        for name, (n_iter, fn) in cases.items():
            calls = args.repeat if n_iter == 1 else 1
            blocks: list[tuple[str, Callable[[], object], int]] = [
                ("attack", functools.partial(fn, n_iter), calls),
                ("floor", floor, calls * n_iter),
            ]
            if args.marginal and n_iter > 1:  # the same attack with twice the iterations
                blocks.append(("double", functools.partial(fn, 2 * n_iter), 1))
            if r % 2:
                blocks.reverse()
            timed = {label: _time(f, c) for label, f, c in blocks}
            (a_cpu, a_wall), (f_cpu, f_wall) = timed["attack"], timed["floor"]
            ratios[name]["cpu"].append(a_cpu / f_cpu)
            ratios[name]["wall"].append(a_wall / f_wall)
            if "double" in timed:  # (T(2n) - T(n)) / n per floor pass: the cost of one more iteration
                ratios[name]["marginal"].append((timed["double"][0] - a_cpu) / f_cpu)
            per_iter[name].append(a_cpu / (calls * n_iter))
            floors.append(f_cpu / (calls * n_iter))

    rows = {
        k: {
            "per_iter_cpu_s": statistics.median(per_iter[k]),
            "ratio": statistics.median(ratios[k]["cpu"]),
            "ratio_min": min(ratios[k]["cpu"]),
            "ratio_max": max(ratios[k]["cpu"]),
            "ratio_wall": statistics.median(ratios[k]["wall"]),
            "marginal": statistics.median(ratios[k]["marginal"]) if ratios[k]["marginal"] else None,
        }
        for k in cases
    }
    if args.breakdown:
        for name, (n_iter, fn) in _cases(_Labelled(model).eval(), x, y, eps, steps).items():
            if name not in rows:
                continue
            split = _breakdown(functools.partial(fn, n_iter))
            rows[name].update(split)
            # Shares within the one call, so the load on the machine weighs on both parts alike.
            total_ms = split["forward_ms"] + split["backward_ms"] + split["attack_ms"]
            rows[name]["own_share"] = split["attack_ms"] / total_ms
    meta = {
        "model": args.model,
        "batch": args.batch,
        "steps": steps,
        "rounds": args.rounds,
        "threads": args.threads,
        "prepared": args.prepared,
        "repeat": args.repeat,
        "floor_fwd_bwd_cpu_s": statistics.median(floors),
        "torch": torch.__version__,
        "advlab": __version__,
        "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads".strip(),
    }
    print(f"# {json.dumps(meta)}")
    print(
        "| attack | CPU s / iteration | / raw fwd+bwd, CPU (median) | min | max | / raw fwd+bwd, wall (median) "
        "| one more iteration / raw fwd+bwd, CPU (median) |"
    )
    print("|---|---|---|---|---|---|---|")
    for k, r in rows.items():
        marginal = "" if r["marginal"] is None else f"{r['marginal']:.3f}"
        print(
            f"| {k} | {r['per_iter_cpu_s']:.3f} | {r['ratio']:.3f} | {r['ratio_min']:.3f} | {r['ratio_max']:.3f} "
            f"| {r['ratio_wall']:.3f} | {marginal} |"
        )
    if args.breakdown:
        print()
        print(
            "| attack | forward passes | forward CPU ms | backward CPU ms | attack's own CPU ms | attack's own share "
            "of the call |"
        )
        print("|---|---|---|---|---|---|")
        for k, r in rows.items():
            print(
                f"| {k} | {r['forwards']:.0f} | {r['forward_ms']:.0f} | {r['backward_ms']:.0f} | {r['attack_ms']:.0f} "
                f"| {100 * r['own_share']:.1f} % |"
            )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
