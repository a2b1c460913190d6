"""Minimal-norm attacks where the [0, 1] box binds: advlab against adv_lib, Foolbox, torchattacks and
AutoAttack, scored against the exact distance.

The problems are tests/boxed_linear.py's: two-class linear models in float64, one image each, whose smallest
adversarial perturbation saturates some pixels (exact from an LP in L1 and Linf, the KKT conditions in L2, a
greedy count in L0). ``--seeds`` seeds of 6 problems each. Every entry gets the same number of steps; each
returned point is re-checked on a fresh forward pass in float64 (not adversarial: a failure) and its distance
re-measured. Per norm and entry: how many problems it broke, how many within 1% of the optimum (L0: within one
coordinate), the median and the largest distance over the optimum among those broken (L0: the median and
largest excess in coordinates), and the process CPU seconds of all its calls. A peer that raises a dtype error in
float64 (adv_lib's FAB in L1 indexes a float tensor with a double; AutoAttack's FAB casts the images to
float32) runs on a float32 copy of the model and image; its row says so.

    .venv/bin/python benchmarks/minimal_boxed.py --seeds 5 --steps 100 [--entries "advlab fmn"]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from advlab import attacks
from benchmarks._peers.entries import entry_rank, entry_words
from benchmarks._peers.libraries import stub_visdom
from benchmarks.minimal_norm import autoattack_fab_t
from tests.boxed_linear import P, boxed_problems

Run = Callable[[nn.Module, Tensor, Tensor, int], Tensor]
NORMS = ("l0", "l1", "l2", "linf")


def entries(norm: str) -> list[tuple[str, Run]]:
    """The entries of ``norm``: advlab's attacks and the peers' implementations of the same algorithms."""
    stub_visdom()
    import foolbox as fb
    import torchattacks
    from adv_lib.attacks import ddn as al_ddn
    from adv_lib.attacks import fab as al_fab
    from adv_lib.attacks import fmn as al_fmn
    from adv_lib.attacks import sigma_zero as al_sigma_zero
    from pyautoattack.fab_pt import FABAttack_PT

    p = P[norm]
    fb_fmn = {"l0": fb.attacks.L0FMNAttack, "l1": fb.attacks.L1FMNAttack, "l2": fb.attacks.L2FMNAttack,
              "linf": fb.attacks.LInfFMNAttack}[norm]  # fmt: skip

    def foolbox(attack: Callable[[int], object]) -> Run:
        return lambda m, x, y, s: attack(s)(fb.PyTorchModel(m, bounds=(0, 1)), x, y, epsilons=None)[1]  # type: ignore[operator]

    out: list[tuple[str, Run]] = [
        ("advlab fmn", lambda m, x, y, s: attacks.fmn(m, x, y, norm=norm, steps=s)),
        ("adv_lib fmn", lambda m, x, y, s: al_fmn(m, x, y, norm=p, steps=s)),
        ("foolbox fmn", foolbox(lambda s: fb_fmn(steps=s))),
    ]
    if norm == "l0":
        out += [
            ("advlab sigma_zero", lambda m, x, y, s: attacks.sigma_zero(m, x, y, steps=s)),
            ("adv_lib sigma_zero", lambda m, x, y, s: al_sigma_zero(m, x, y, num_steps=s)),
        ]
    if norm == "l2":
        out += [
            ("advlab ddn", lambda m, x, y, s: attacks.ddn(m, x, y, steps=s)),
            ("adv_lib ddn", lambda m, x, y, s: al_ddn(m, x, y, steps=s)),
            ("foolbox ddn", foolbox(lambda s: fb.attacks.DDNAttack(steps=s))),
        ]
    if norm != "l0":
        out += [
            ("advlab fab", lambda m, x, y, s: attacks.fab(m, x, y, norm=norm, steps=s)),
            ("adv_lib fab", lambda m, x, y, s: al_fab(m, x, y, norm=p, n_iter=s)),
        ]
        if norm != "l1":  # torchattacks 3.5.1's FAB fails in perturb() on "L1"
            ta_norm, big = {"l2": ("L2", 1e3), "linf": ("Linf", 1.0)}[norm]
            out.append(("torchattacks fab", lambda m, x, y, s: torchattacks.FAB(
                m, norm=ta_norm, eps=big, steps=s, n_restarts=1, n_classes=2)(x, y)))  # fmt: skip
        out.append(("advlab fab_t", lambda m, x, y, s: attacks.fab_t(m, x, y, norm=norm, steps=s)))
        out.append(("autoattack fab_t", lambda m, x, y, s: autoattack_fab_t(FABAttack_PT, m, norm, s, x, y)))
    out.append(("advlab minimal", lambda m, x, y, s: attacks.minimal(m, x, y, norm=norm, steps=s)))
    return out


def attack_once(name: str, run: Run, model: nn.Module, x: Tensor, y: Tensor, steps: int) -> tuple[Tensor, bool, float]:
    """The returned point in float64, whether the run needed float32, and its CPU seconds. A peer that fails
    on float64 inputs with a dtype error runs again on a float32 copy (that run's seconds only); any other
    error, and any error of advlab's, is raised."""
    start = time.process_time()
    try:
        return run(model, x, y, steps).detach().double(), False, time.process_time() - start
    except RuntimeError as error:
        if name.startswith("advlab") or not any(word in str(error) for word in ("dtype", "Double", "Float")):
            raise
    start = time.process_time()
    x_adv = run(copy.deepcopy(model).float(), x.float(), y, steps).detach().double()
    return x_adv, True, time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds of 6 problems each")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--norms", default=",".join(NORMS))
    parser.add_argument("--entries", default="",
                        help="comma-separated words: keep the entries containing one (or, with a leading =, so named)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    problems = [p for seed in range(args.seeds) for p in boxed_problems(seed)]
    for model, *_ in problems:
        model.eval()
    print(f"{len(problems)} boxed linear problems, {args.steps} steps, float64 (float32 where marked)")
    print("| norm | entry | broken | within 1% (L0: +1) | median over optimum | largest | cpu s |")
    print("|---|---|---|---|---|---|---|")
    for norm in args.norms.split(","):
        words = entry_words(args.entries)
        for name, run in entries(norm):
            if words and entry_rank(name, words) is None:
                continue
            ratios, close, float32, cpu = [], 0, False, 0.0
            for model, x, y, exact in problems:
                x_adv, fallback, seconds = attack_once(name, run, model, x, y, args.steps)
                cpu += seconds
                float32 |= fallback
                with torch.no_grad():
                    adversarial = bool(model(x_adv).argmax(1)[0] != y[0])
                if not adversarial or not 0 <= float(x_adv.min()) <= float(x_adv.max()) <= 1:
                    continue
                size = float((x_adv - x).flatten().norm(p=P[norm]))
                value = size - exact[norm] if norm == "l0" else size / exact[norm]
                ratios.append(value)
                close += value <= (1 if norm == "l0" else 1.01)
            digits = 0 if norm == "l0" else 4
            med = f"{statistics.median(ratios):.{digits}f}" if ratios else "-"
            top = f"{max(ratios):.{digits}f}" if ratios else "-"
            label = name + (" (float32)" if float32 else "")
            print(
                f"| {norm} | {label} | {len(ratios)}/{len(problems)} | {close} | {med} | {top} | {cpu:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
