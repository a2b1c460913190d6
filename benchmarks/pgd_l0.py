"""PGD_0, ``advlab.attacks.pgd(norm="l0")``, against the authors' reference (Croce & Hein 2019) at the same
budget, and against the L0 minimal-norm ensemble's curve, on the shipped Fashion-MNIST models.

Every entry attacks the correctly classified of the first ``--images`` test images at each budget k (changed
coordinates; Fashion-MNIST has one channel, so pixels and coordinates agree and the reference's pixel count is
advlab's count). A returned point counts as broken only when it changes at most k coordinates and a fresh
forward pass misclassifies it. Entries:

- ``advlab pgd_l0 rR``: ``pgd(norm="l0", steps=S, restarts=R)`` with the default step and start (``l0_start``
  "box", the paper's); ``xA`` rows scale the step, ``box_with_clean``/``ball`` rows take that start
  (``--l0-starts``).
- ``reference rR``: ``perturb_L0_box`` of the authors' ``pgd_attacks_pt.py`` (github.com/fra31/
  sparse-imperceivable-attacks; ``--reference`` names a checkout), restarted R times on every image as their
  ``PGDattack.perturb`` does, with ``num_steps = S + 1`` (its first iteration only draws the start, so both
  take S gradients per restart; advlab also scores its last iterate, one forward more) and advlab's default
  step (theirs, 120000/255 on CIFAR-10's 3,072 coordinates, scaled to the input's size);
  ``--reference-starts none`` runs it from the clean image (their ``rs = False``). Their module imports
  ``utils_pt``, which moves every batch to CUDA; this script puts a CPU module of that name in front of it
  (same predictions, gradient of the batch-mean cross-entropy, as theirs: the whole set is one batch).
- ``advlab minimal sM``: robust accuracy at k read from the ``minimal(norm="l0", steps=M)`` distances (M is
  ``--minimal-steps``, by default S), and the cross-check: the samples some PGD_0 entry broke at k whose
  minimal distance is above k.

    .venv/bin/python benchmarks/pgd_l0.py --model fmnist_cnn_standard --images 1000 --k 4,8,16 --steps 100 \\
        --restarts 1,5 --reference /tmp/sparse-imperceivable-attacks
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from advlab import attacks
from advlab.attacks.pgd import L0_ALPHA_PER_COORDINATE, L0_STARTS
from benchmarks._peers.measure import timed
from benchmarks._peers.workload import fmnist_workload

# The reference's step size (run_attack_pt.py: 120000/255 on CIFAR-10), the same per coordinate as advlab's.
REFERENCE_STEP_PER_COORDINATE = L0_ALPHA_PER_COORDINATE


def cpu_utils_pt(model: nn.Module) -> types.ModuleType:
    """A stand-in for the reference's ``utils_pt`` that runs ``model`` on the CPU (NHWC numpy in)."""
    module = types.ModuleType("utils_pt")

    def predictions(_model: object, x_nat: np.ndarray, y_nat: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = model(torch.from_numpy(x_nat).permute(0, 3, 1, 2).float())
        return (out.argmax(1) == torch.from_numpy(y_nat)).numpy()

    def predictions_and_gradients(_model: object, x_nat: np.ndarray, y_nat: np.ndarray):
        x = torch.from_numpy(x_nat).permute(0, 3, 1, 2).float().requires_grad_()
        y = torch.from_numpy(y_nat)
        with torch.enable_grad():
            out = model(x)
            loss = nn.functional.cross_entropy(out, y)
        grad = torch.autograd.grad(loss, x)[0].permute(0, 2, 3, 1).numpy()
        return (out.detach().argmax(1) == y).numpy(), grad

    module.get_predictions = predictions  # type: ignore[attr-defined]
    module.get_predictions_and_gradients = predictions_and_gradients  # type: ignore[attr-defined]
    return module


def reference_pgd0(ref: types.ModuleType, model: nn.Module, x: Tensor, y: Tensor, k: int, steps: int,
                   restarts: int, seed: int, random_start: bool = True) -> Tensor:  # fmt: skip
    """The reference's PGD_0, restarted on every image; per image a point found by some restart (which one does
    not change the robust accuracy)."""
    np.random.seed(seed)
    attack = types.SimpleNamespace(
        model=model, rs=random_start, num_steps=steps + 1, k=k,
        step_size=REFERENCE_STEP_PER_COORDINATE * x[0].numel(),
    )  # fmt: skip
    x_nat = x.permute(0, 2, 3, 1).double().numpy()
    y_nat = y.numpy()
    best = x_nat.copy()
    found = np.zeros(len(y_nat), dtype=bool)
    for _ in range(restarts):
        adv, not_found = ref.perturb_L0_box(attack, x_nat, y_nat, -x_nat, 1.0 - x_nat)
        new = (not_found == 0) & ~found
        best[new] = adv[new]
        found |= not_found == 0
    return torch.from_numpy(best).permute(0, 3, 1, 2).float().contiguous()


def broken(model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor, k: int) -> Tensor:
    """Misclassified on a fresh forward pass and at most k coordinates changed."""
    with torch.no_grad():
        wrong = model(x_adv).argmax(1) != y
    return wrong & ((x_adv != x).flatten(1).sum(1) <= k)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fmnist_cnn_standard")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--k", default="4,8,16", help="budgets, changed coordinates")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--minimal-steps", type=int, help="steps of the minimal-norm ensemble (default: --steps)")
    parser.add_argument("--restarts", default="1,5")
    parser.add_argument("--alpha-scales", default="1", help="advlab rows at these multiples of the default step")
    parser.add_argument("--reference", type=Path, help="a checkout of fra31/sparse-imperceivable-attacks")
    parser.add_argument("--l0-starts", default="box", help="advlab rows per l0_start (L0_STARTS)")
    parser.add_argument("--reference-starts", default="random", help="random, none or both (random,none)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", type=Path, help="write the rows as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    wl = fmnist_workload(args.model, args.images)
    model, x, y = wl.model, wl.x, wl.y
    device = torch.device("cpu")
    ks = [int(v) for v in args.k.split(",")]
    restarts = [int(v) for v in args.restarts.split(",")]
    scales = [float(v) for v in args.alpha_scales.split(",")]
    l0_starts = args.l0_starts.split(",")
    ref_starts = args.reference_starts.split(",")
    for value, allowed in ((l0_starts, L0_STARTS), (ref_starts, ("random", "none"))):
        if not set(value) <= set(allowed):
            parser.error(f"expected values among {', '.join(allowed)}, got {','.join(value)}")
    ref = None
    if args.reference is not None:
        sys.modules["utils_pt"] = cpu_utils_pt(model)
        sys.path.insert(0, str(args.reference))
        import pgd_attacks_pt as ref  # type: ignore[import-not-found]

    minimal_steps = args.steps if args.minimal_steps is None else args.minimal_steps
    t_min, res = timed(lambda: attacks.minimal(model, x, y, norm="l0", steps=minimal_steps, return_info=True), device)
    distance = res.extras["distance"]
    n = len(y)
    rows = []
    print(f"{wl.name}: {n} correctly classified, {args.steps} steps per restart; robust accuracy (lower: stronger)")
    for k in ks:
        broke_any = torch.zeros(n, dtype=torch.bool)
        entries = []
        for r in restarts:
            for start in l0_starts:
                for scale in scales:
                    alpha = None if scale == 1 else L0_ALPHA_PER_COORDINATE * x[0].numel() * scale
                    run = partial(attacks.pgd, model, x, y, k, alpha, args.steps, norm="l0", restarts=r,
                                  seed=args.seed, l0_start=start)  # fmt: skip
                    t, x_adv = timed(run, device)
                    name = f"advlab pgd_l0 r{r}" + ("" if scale == 1 else f" x{scale:g}")
                    name += "" if start == "box" else f" {start}"
                    entries.append((name, t.cpu, broken(model, x, y, x_adv, k)))
            for start in ref_starts if ref is not None else ():
                run = partial(reference_pgd0, ref, model, x, y, k, args.steps, r, args.seed, start == "random")
                t, x_adv = timed(run, device)
                name = f"reference r{r}" + ("" if start == "random" else " (no random start)")
                entries.append((name, t.cpu, broken(model, x, y, x_adv, k)))
        for name, cpu, ok in entries:
            broke_any |= ok
            rows.append({"k": k, "entry": name, "robust": 1 - float(ok.float().mean()), "cpu_s": cpu})
        missed = int((broke_any & (distance > k)).sum())
        rows.append({"k": k, "entry": f"advlab minimal s{minimal_steps}",
                     "robust": float((distance > k).float().mean()), "cpu_s": t_min.cpu,
                     "cross_check_misses": missed})  # fmt: skip
    print("| k | entry | robust accuracy | cpu s |")
    print("|---|---|---|---|")
    for row in rows:
        extra = f" (misses {row['cross_check_misses']})" if "cross_check_misses" in row else ""
        print(f"| {row['k']} | {row['entry']} | {row['robust']:.4f}{extra} | {row['cpu_s']:.1f} |")
    if args.save:
        meta = {"model": wl.name, "n": n, "steps": args.steps, "minimal_steps": minimal_steps, "seed": args.seed}
        args.save.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
