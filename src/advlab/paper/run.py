"""The reproduction of the seed paper's experiments: Tables 1-3 and Figures 2, 4 and 6 of "Robust Deep Learning".

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
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..data import LimitedDataset, load_dataset, select_subset, transform_for
from ..evaluate import AttackSpec, RunResult, SpecError, evaluate, load_batch, summary_line
from ..evaluate.engine import choose_targets, sample_seeds
from ..evaluate.records import atomic_write_text
from ..evaluate.specs import run_attack
from ..models import DEFAULT_MODEL, load_model
from ..runtime.lock import lock_folder
from .protocol import PAPER, Protocol, build_experiment, std_scale
from .report import build_report, write_report

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
    prepare: bool = True
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


def prepare_inputs(opts: ReproduceOptions) -> tuple[nn.Module, Any, dict[str, Any], dict[str, Any], list[str]]:
    """Model, selected dataset, their descriptions, and the notes the report starts with."""
    notes: list[str] = []
    name = opts.model or DEFAULT_MODEL
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
        data = LimitedDataset(subset, opts.limit)
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
    """Run the whole reproduction into ``opts.out``; returns the final summary (also in summary.json).

    ``opts.out``'s lock (:class:`advlab.runtime.lock.RunLock`) is held throughout, the report and the final
    summary included: one writer per run directory."""
    with lock_folder(opts.out):
        return _run_reproduce(opts, prepared=prepared)


def _run_reproduce(
    opts: ReproduceOptions,
    *,
    prepared: tuple[nn.Module, Any, dict[str, Any], dict[str, Any], list[str]] | None = None,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    model, data, model_meta, data_meta, notes = prepared or prepare_inputs(opts)
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
        prepare=opts.prepare,
        lock=False,  # held by run_reproduce
    )
    attacked = result.model or model  # the panels re-run attacks on the model the run attacked
    summary = result.summary
    attacks = _by_id(summary)
    examples = {}
    specs = {s.id: s for s in exp.specs}
    fgsm_id = exp.table[(1, "pixel", "fgsm")]
    for key, sid in (("fgsm", fgsm_id), ("cw", exp.cw)):
        examples[key] = _example(attacked, data, specs[sid], result.records[sid], opts.seed)
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
    report = build_report(exp, summary, attacks, examples, opts.protocol, model, info, sanity, opts.out)
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
