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

    .venv/bin/python benchmarks/attack_overhead.py --batch 16 --steps 10 --rounds 5 --threads 1
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

    # name -> (iterations, attack of n iterations); FGSM has one step whatever n is.
    cases: dict[str, tuple[int, Callable[[int], object]]] = {
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
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
