"""The paper's protocol: its numbers, the attack settings of the reproduction, and the experiment plan.

"Robust Deep Learning" (Madan & Anand) attacks VGG11 (ImageNet) on 30 visually distinct classes x 5 correctly
classified images. :data:`PAPER` holds its Tables 1-3; :class:`Protocol` the settings this reproduction uses
(the paper gives the steps, not the step sizes nor the scale of eps: both eps readings are run);
:func:`build_experiment` turns them into the run's attack specs and says where each lands in the tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..evaluate import AttackSpec, make_spec, registry
from ..numbers import format_number

# The paper's numbers (percent), Tables 1-3 of Madan & Anand, "Robust Deep Learning".
PAPER: dict[str, Any] = {
    "model": "VGG11 (ImageNet), 30 classes x 5 correctly classified images",
    "table1": {"eps": 0.1, "natural": [100.0, 100.0], "fgsm": [2.6, 19.3], "bim": [2.6, 26.0], "pgd": [30.0, 72.6]},
    "table2": {"eps": 0.6, "natural": [100.0, 100.0], "fgsm": [2.0, 7.9], "bim": [0.6, 10.6], "pgd": [12.6, 33.9]},
    "table3": {"target_top1": 100.0, "target_top5": 100.0, "misclassified_top1": 100.0, "misclassified_top5": 51.73},
}
SCALES = ("pixel", "normalised")


@dataclass(frozen=True)
class Protocol:
    """The attack settings of the reproduction (the paper gives the steps; the step sizes are ours).

    Attributes:
        table_eps: eps of Tables 1 and 2, as written in the paper.
        bim_steps: BIM iterations per table (1 in Table 1, 2 in Table 2); BIM's step is eps / steps, so the
            iterates can reach every corner of the eps-ball.
        pgd_steps, pgd_alpha: PGD iterations and step (``pgd_alpha`` x eps / steps, Madry et al.'s 2.5).
        strong: the strong column: ``"suite"`` (advlab's worst-case suite: APGD-CE, APGD-T, Square) or
            ``"pgd"`` (PGD with ``strong_steps`` steps of ``strong_alpha`` x eps / steps and ``strong_restarts``
            random restarts); either runs only on the samples that FGSM, BIM and PGD left in the top-5, and the
            column is the per-sample worst case of all of them.
        curve_eps: eps grid (pixels) of Figure 6; curve_bim_steps and curve_bim_alpha (x eps / steps) for BIM.
        cw_c, cw_steps, cw_search, cw_lr: targeted CW-L2: initial c, Adam steps per binary-search round,
            rounds, learning rate.
    """

    table_eps: tuple[float, float] = (0.1, 0.6)
    strong: str = "suite"
    bim_steps: tuple[int, int] = (1, 2)
    pgd_steps: int = 6
    pgd_alpha: float = 2.5
    strong_steps: int = 20
    strong_restarts: int = 3
    strong_alpha: float = 2.5
    curve_eps: tuple[float, ...] = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
    curve_bim_steps: int = 5
    curve_bim_alpha: float = 2.0
    cw_c: float = 1.0
    cw_steps: int = 20
    cw_search: int = 2
    cw_lr: float = 0.01

    def strong_description(self) -> str:
        if strong_is_suite(self):
            inner = (
                "advlab's strong suite (APGD-CE 100 steps, APGD-T towards the top-9 classes, Square 1000 queries "
                "+ 4000 on the closest fifth)"
            )
        else:
            inner = (
                f"PGD with {self.strong_steps} steps of {self.strong_alpha:g} x eps/{self.strong_steps} and "
                f"{self.strong_restarts} random restarts"
            )
        return (
            f"per-sample worst case of FGSM, BIM, PGD-{self.pgd_steps} and {inner}, the latter run on the samples "
            "the others left in the top-5"
        )

    def describe(self, std: float) -> list[tuple[str, str]]:
        e = format_number
        return [
            (
                "eps readings",
                f"pixel: eps on [0, 1] images; normalised: eps on (x - mean)/std, i.e. eps x {std:.4g} in pixels",
            ),
            ("FGSM", "one step of size eps (Goodfellow et al. 2014)"),
            (
                "BIM",
                f"{self.bim_steps[0]} step (Table 1) / {self.bim_steps[1]} steps (Table 2) of size eps/steps, "
                "no random start, best iterate kept",
            ),
            (
                "PGD",
                f"{self.pgd_steps} steps of size {self.pgd_alpha:g} x eps/{self.pgd_steps}, uniform random "
                "start, cross-entropy",
            ),
            ("Strong", self.strong_description()),
            (
                "Figure 6",
                f"targeted FGSM and BIM ({self.curve_bim_steps} steps of {self.curve_bim_alpha:g} x "
                f"eps/{self.curve_bim_steps}) at eps = {', '.join(e(v) for v in self.curve_eps)} (pixels), "
                "random targets",
            ),
            (
                "Table 3",
                f"targeted CW-L2, c from {self.cw_c:g} (x10 until found, then bisected), {self.cw_search} "
                f"rounds of {self.cw_steps} Adam steps, lr {self.cw_lr:g}, kappa 0, random targets",
            ),
            (
                "targets",
                "uniform among the other classes (999 on ImageNet), drawn per sample from the seed (as in the paper)",
            ),
        ]


@dataclass(frozen=True)
class Experiment:
    """The specs of the reproduction and where each lands in the tables."""

    specs: list[AttackSpec]
    table: dict[tuple[int, str, str], str]  # (table 1|2, scale, row) -> spec id
    eps_pixel: dict[tuple[int, str], float]  # (table, scale) -> eps in pixels
    curve: dict[tuple[str, float], str]  # ("fgsm"|"bim", eps) -> spec id
    cw: str


def std_scale(model: nn.Module) -> float:
    """The pixel size of one unit of normalised input: the model's std (their mean when channels differ)."""
    std = getattr(model, "std", None)
    if std is None:
        return 1.0
    return float(torch.as_tensor(std).float().mean())


def strong_is_suite(protocol: Protocol) -> bool:
    """Whether the strong column runs advlab's worst-case suite (when installed) or the PGD fallback."""
    return protocol.strong == "suite" and "suite_strong" in registry()


def build_experiment(protocol: Protocol, std: float) -> Experiment:
    specs: list[AttackSpec] = []
    table: dict[tuple[int, str, str], str] = {}
    eps_pixel: dict[tuple[int, str], float] = {}
    p = protocol
    for t, (eps, bim_steps) in enumerate(zip(p.table_eps, p.bim_steps, strict=True), start=1):
        for scale in SCALES:
            e = eps if scale == "pixel" else eps * std
            eps_pixel[(t, scale)] = e
            prefix = f"t{t}-{scale}-eps{format_number(e)}"
            rows = {
                "fgsm": make_spec("fgsm", {"eps": e}, id=f"{prefix}-fgsm"),
                "bim": make_spec("bim", {"eps": e, "alpha": e / bim_steps, "steps": bim_steps}, id=f"{prefix}-bim"),
                "pgd": make_spec(
                    "pgd", {"eps": e, "alpha": p.pgd_alpha * e / p.pgd_steps, "steps": p.pgd_steps}, id=f"{prefix}-pgd"
                ),
            }
            deps = [s.id for s in rows.values()]
            if strong_is_suite(p):
                rows["strong"] = make_spec("suite_strong", {"eps": e}, id=f"{prefix}-strong", only_unbroken=deps)
            else:
                params = {
                    "eps": e,
                    "alpha": p.strong_alpha * e / p.strong_steps,
                    "steps": p.strong_steps,
                    "restarts": p.strong_restarts,
                }
                rows["strong"] = make_spec("pgd", params, id=f"{prefix}-strong", only_unbroken=deps)
            for row, spec in rows.items():
                specs.append(spec)
                table[(t, scale, row)] = spec.id
    curve: dict[tuple[str, float], str] = {}
    for e in p.curve_eps:
        s1 = make_spec("fgsm", {"eps": e, "targeted": True}, id=f"fig6-fgsm-eps{format_number(e)}")
        s2 = make_spec(
            "bim",
            {
                "eps": e,
                "alpha": p.curve_bim_alpha * e / p.curve_bim_steps,
                "steps": p.curve_bim_steps,
                "targeted": True,
            },
            id=f"fig6-bim-eps{format_number(e)}",
        )
        specs += [s1, s2]
        curve[("fgsm", e)], curve[("bim", e)] = s1.id, s2.id
    cw = make_spec(
        "cw_l2",
        {"c": p.cw_c, "steps": p.cw_steps, "binary_search_steps": p.cw_search, "lr": p.cw_lr, "targeted": True},
        id="t3-cw_l2",
    )
    specs.append(cw)
    return Experiment(specs, table, eps_pixel, curve, cw.id)
