"""Reproduce the seed paper's experiments: Tables 1-3 and Figures 2, 4 and 6 of "Robust Deep Learning".

The paper attacks VGG11 (ImageNet) on 30 visually distinct classes x 5 correctly classified images:

- Tables 1 and 2: untargeted top-1/top-5 accuracy for Natural, FGSM, BIM (1 step at eps 0.1, 2 steps at
  eps 0.6) and PGD (6 steps);
- Figure 6: top-5 accuracy against eps under targeted FGSM and targeted BIM;
- Table 3: targeted Carlini-Wagner L2: how often the target becomes top-1 / top-5, and how often the true class
  leaves the top-1 / top-5;
- Figures 2 and 4: an FGSM and a targeted CW-L2 example, each with original, perturbation and adversarial
  image and their top-5 classes.

The paper states neither the scale of eps nor the step sizes. Both eps readings are run: eps on [0, 1]
pixels, and eps on mean/std-normalised inputs, which is eps * std in pixels (the mean of the model's three
stds when they differ). The step sizes used are stated in :class:`Protocol` and in the report. A column of
strong settings (the per-sample worst case of the row's attacks and of the "strong" suite, APGD-CE, APGD-T and
Square, run on the samples they left standing) shows what a proper evaluation gives.

Everything runs through :func:`advlab.evaluate.evaluate`, so a killed reproduction resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..errors import as_usage_error
from .engine import choose_targets, load_batch, sample_seeds
from .records import atomic_write_text
from .run import RunResult, evaluate
from .specs import AttackSpec, SpecError, format_number, make_spec, run_attack
from .summary import summary_line

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
    from .specs import registry

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


# ------------------------------------------------------------------------------------------------ data


@dataclass
class ReproduceOptions:
    """What ``advlab reproduce`` takes (see docs/cli.md)."""

    out: Path = Path("runs/reproduce")
    model: str | None = None
    data: str | None = None
    classes: int = 30
    per_class: int = 5
    select_seed: int = 0
    seed: int = 0
    batch_size: int | None = None
    limit: int | None = None
    device: str | None = None
    quiet: bool = False
    replace: bool = False
    protocol: Protocol = field(default_factory=Protocol)
    command: str = ""


def _say(opts: ReproduceOptions, msg: str) -> None:
    if not opts.quiet:
        print(msg, file=sys.stderr, flush=True)


def _balanced_batch_size(n: int, cap: int = 24) -> int:
    """Equal batches of at most ``cap`` (no tiny last batch: a batch of 2 costs nearly what one of 20 does)."""
    batches = max(1, math.ceil(n / cap))
    return max(1, math.ceil(n / batches))


@torch.no_grad()
def _predict(model: nn.Module, dataset: Any, batch_size: int, device: torch.device) -> torch.Tensor:
    """Top-1 class per dataset index (-1 for unreadable images): the pass select_subset needs."""
    preds = torch.full((len(dataset),), -1, dtype=torch.long)
    for start in range(0, len(dataset), batch_size):
        x, _, kept = load_batch(dataset, range(start, min(start + batch_size, len(dataset))), device)
        if kept:
            preds[kept] = model(x).argmax(dim=1).cpu()
    return preds


class _Limited:
    """The first ``n`` items of a dataset (``--limit``, for quick looks and tests)."""

    def __init__(self, dataset: Any, n: int) -> None:
        self.dataset, self.n = dataset, min(n, len(dataset))
        self.class_names = getattr(dataset, "class_names", [])
        self.provenance = f"{getattr(dataset, 'provenance', '')}; first {self.n} only (--limit)"

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.dataset[i]


def prepare(opts: ReproduceOptions) -> tuple[nn.Module, Any, dict[str, Any], dict[str, Any], list[str]]:
    """Model, selected dataset, their descriptions, and the notes the report starts with."""
    from ..data import load_dataset, select_subset, transform_for
    from ..models import DEFAULT_MODEL, load_model

    notes: list[str] = []
    name = opts.model or DEFAULT_MODEL
    with as_usage_error(ValueError, FileNotFoundError, ModuleNotFoundError):  # the check of --model and --device
        model = load_model(name, device=opts.device)
    if opts.model is None:
        notes.append(f"No --model given: using the embedded default model {name} (the paper used VGG11).")
    dataset = load_dataset(opts.data, transform=transform_for(model))
    if opts.data is None:
        notes.append(
            f"No --data given: using the default sample of {len(dataset)} ImageNet photos, not the paper's "
            "30 x 5 = 150 images; pass --data ../shared/data/imagenet-30x5 (or your ImageNet val folder) "
            "for the full protocol."
        )
    labels = dataset.labels
    classes_out = len(getattr(model, "class_names", [])) or None
    if classes_out is not None and int(labels.max()) >= classes_out:
        raise SpecError(
            f"{name} has {classes_out} classes, but the labels of {opts.data or 'the default sample'} go up to "
            f"{int(labels.max())} (ImageNet-1k): the protocol needs an ImageNet classifier"
        )
    device = next(model.parameters()).device
    preds = _predict(model, dataset, 32, device)
    correct_classes = len({int(c) for c, p in zip(labels.tolist(), preds.tolist(), strict=True) if c == p})
    classes = min(opts.classes, correct_classes)
    if classes < opts.classes:
        notes.append(
            f"Only {correct_classes} classes have a correctly classified image here, so {classes} classes are "
            f"used instead of {opts.classes}."
        )
    if classes == 0:
        raise SpecError(
            f"{name} classifies no image of {opts.data or 'the default sample'} correctly; nothing to attack"
        )
    subset = select_subset(
        model, dataset, classes=classes, per_class=opts.per_class, seed=opts.select_seed, predictions=preds
    )
    data: Any = subset
    if opts.limit is not None:
        data = _Limited(subset, opts.limit)
    n_read = int((preds >= 0).sum())
    data_meta = {
        "source": str(opts.data) if opts.data else "default sample",
        "provenance": getattr(data, "provenance", ""),
        "images_in_source": len(dataset),
        "unreadable_in_source": len(dataset) - n_read,
        "clean_top1_on_source": float((preds == labels).sum()) / max(n_read, 1),
        "selection": {"classes": classes, "per_class": opts.per_class, "seed": opts.select_seed, "limit": opts.limit},
        "files": [str(dataset.samples[i][0].name) for i in subset.indices][: opts.limit or None],
    }
    model_meta = {**getattr(model, "config", {"name": name}), "name": name}
    return model, data, model_meta, data_meta, notes


# --------------------------------------------------------------------------------------------- running


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def _by_id(summary: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {a["id"]: a for a in summary["attacks"]}


def _example(
    model: nn.Module,
    data: Any,
    spec: AttackSpec,
    records: list[dict[str, Any]],
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]] | None:
    """Re-run ``spec`` on the first sample it fooled (the lowest index) to get the images for a panel."""
    hits = sorted((r for r in records if r["success"]), key=lambda r: r["index"])
    if not hits:
        return None
    rec = hits[0]
    device = next(model.parameters()).device
    x, y, kept = load_batch(data, [rec["index"]], device)
    if not kept:
        return None
    goal = y
    if spec.targeted:
        assert spec.target is not None
        with torch.no_grad():
            goal = choose_targets(spec.target, y, model(x), kept, seed)
    x_adv = run_attack(spec, model, x, goal, sample_seeds(spec, seed, kept))
    return x[0], x_adv[0], rec


def run_reproduce(
    opts: ReproduceOptions,
    *,
    prepared: tuple[nn.Module, Any, dict[str, Any], dict[str, Any], list[str]] | None = None,
) -> dict[str, Any]:
    """Run the whole reproduction into ``opts.out``; returns the final summary (also in summary.json)."""
    from ..report.reproduce_report import build_report, write_report

    t0 = time.perf_counter()
    model, data, model_meta, data_meta, notes = prepared or prepare(opts)
    for note in notes:
        _say(opts, note)
    std = std_scale(model)
    exp = build_experiment(opts.protocol, std)
    batch_size = opts.batch_size or _balanced_batch_size(len(data))
    _say(opts, f"reproduce: {len(exp.specs)} attacks on {len(data)} images of {model_meta['name']} -> {opts.out}")
    result: RunResult = evaluate(
        model,
        data,
        exp.specs,
        out=opts.out,
        batch_size=batch_size,
        seed=opts.seed,
        model_meta=model_meta,
        data_meta={**data_meta, "protocol": asdict(opts.protocol)},
        quiet=opts.quiet,
        progress_desc="reproduce",
        replace=opts.replace,
    )
    summary = result.summary
    attacks = _by_id(summary)
    examples = {}
    specs = {s.id: s for s in exp.specs}
    fgsm_id = exp.table[(1, "pixel", "fgsm")]
    for key, sid in (("fgsm", fgsm_id), ("cw", exp.cw)):
        examples[key] = _example(model, data, specs[sid], result.records[sid], opts.seed)
    sanity = summary.get("sanity")
    wall = time.perf_counter() - t0
    info = {
        "advlab_version": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, device {next(model.parameters()).device}",
        "wall_s": wall,
        "command": opts.command,
        "notes": notes,
        "std_scale": std,
    }
    report = build_report(exp, summary, attacks, examples, opts.protocol, model, info, sanity)
    reproduce = report.pop("data")
    summary = {**summary, "sanity": sanity, "reproduce": {**reproduce, "paper": PAPER, "run": info}}
    write_report(Path(opts.out), report["report"])
    atomic_write_text(Path(opts.out) / "summary.json", json.dumps(summary, indent=2) + "\n")
    if not opts.quiet:
        for a in summary["attacks"]:
            if a["id"] in exp.table.values() or a["id"] == exp.cw:
                print(summary_line(a))
    print(f"report: {Path(opts.out) / 'report.html'} ({wall:.0f} s)")
    return summary


__all__: Sequence[str] = [
    "PAPER",
    "Experiment",
    "Protocol",
    "ReproduceOptions",
    "build_experiment",
    "prepare",
    "run_reproduce",
    "std_scale",
]
