"""evaluate(): a dataset attacked batch by batch into a run directory, resumed where it stopped, summarised.

The configuration (:func:`run_config`) is what decides the records, so it is the run's fingerprint
(:mod:`advlab.evaluate.rundir`); the batches come from :func:`~advlab.evaluate.engine.plan_batches` and each
is the unit of work :func:`~advlab.evaluate.engine.attack_batch`.

Before attacking, the model is prepared once per run (:func:`advlab.models.prepare`, e.g. batch norm folded
into the convolutions: the same function up to float rounding, faster to attack) with the run's first batch
as the example; what was done is part of the configuration, so a run is resumed only on the same preparation.
``prepare=False`` attacks the model exactly as given.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn
from tqdm.auto import tqdm

from ..models import preparation_record
from ..models import prepare as prepare_model
from ..runtime.lock import lock_folder
from .engine import Judge, attack_batch, check_fits, eot_samples_of, load_batch, plan_batches
from .records import RECORD_SCHEMA_VERSION, atomic_write_text
from .rundir import RunDirectory
from .saved import SAVED_VERSION, save_examples, saved_path
from .specs import AttackSpec, SpecError, algorithm_versions, validate_specs
from .summary import build_summary


def _module_tree(model: nn.Module) -> str:
    """The module tree as text that another machine's torch renders the same: each module's path and class, and
    the settings of modules whose ``extra_repr`` is not torch's own (advlab's defences: ``bits=3``, ``sigma=0.1``;
    timm's and a user's modules). Torch's layers are identified by their class and their weights: the text torch's
    ``repr`` gives them changes between torch versions (a run made with torch 2.14 did not verify under 2.11)."""
    lines = []
    for path, module in model.named_modules():
        line = f"{path}:{type(module).__qualname__}"
        if not getattr(type(module).extra_repr, "__module__", "torch").startswith("torch."):
            line += f"({module.extra_repr()})"
        lines.append(line)
    return "\n".join(lines)


def model_digest(model: nn.Module) -> str:
    """sha256 of the model's module tree with its settings (:func:`_module_tree`: a defence's ``bits=3`` or
    ``sigma=0.1`` lives there, not in the state dict), of its state dict (names, shapes, dtypes and values) and of
    its buffers outside the state dict (``persistent=False``, e.g. :class:`~advlab.models.ImageClassifier`'s mean
    and std, which change the function as much as a weight does): which model, with which weights, was attacked,
    the same on every machine and torch version."""
    h = hashlib.sha256(_module_tree(model).encode())
    state = model.state_dict()
    extra = {f"buffer:{n}": b for n, b in model.named_buffers() if n not in state}
    for name, tensor in {**state, **extra}.items():
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{tuple(tensor.shape)}:{t.dtype};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass(frozen=True)
class RunResult:
    """What :func:`evaluate` returns: the summary (as written to summary.json) and the records."""

    summary: dict[str, Any]
    records: dict[str, list[dict[str, Any]]]
    run_dir: Path | None
    model: nn.Module | None = None  # the model the attacks ran on (the prepared one, see prepare_for_run)


def device_of(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def unreadable_reasons(dataset: Any, limit: int = 3) -> str:
    """The first ``limit`` images a dataset could not read and why (``dataset.skipped``), for messages."""
    skipped = list(getattr(dataset, "skipped", None) or getattr(getattr(dataset, "dataset", None), "skipped", []))
    shown = "; ".join(f"{path}: {why}" for path, why in skipped[:limit])
    return (shown + (f"; ... ({len(skipped)} in all)" if len(skipped) > limit else "")) or "no reason recorded"


def prepare_for_run(
    model: nn.Module, dataset: Any, plan: Sequence[range], enabled: bool = True
) -> tuple[nn.Module, dict[str, Any]]:
    """The model to attack and the record of its preparation for the run's configuration.

    With ``enabled``, :func:`advlab.models.prepare` once, with the first readable batch of the plan as the
    example (the same on every rank and every resumption), and :func:`advlab.models.preparation_record` of
    the result; else the model as given and ``{"enabled": False}``.

    Raises:
        SpecError: no image of the dataset can be read (naming the data and the first reasons): a run over
            zero samples would end "complete" with no number in it.
    """
    device = device_of(model)
    for batch in plan:
        x, _, kept = load_batch(dataset, list(batch), device)
        if kept:
            if not enabled:
                return model, {"enabled": False}
            check_fits(model, x)  # name data the model was not made for before preparing on it
            prepared = prepare_model(model, x)
            return prepared, dict(preparation_record(prepared))
    where = getattr(dataset, "provenance", "") or type(dataset).__name__
    raise SpecError(f"no image of the data could be read ({where}): {unreadable_reasons(dataset)}")


F = TypeVar("F")


def _holding_lock(fn: F) -> F:
    """Hold the run directory's lock (:class:`advlab.runtime.lock.RunLock`) for the whole of ``fn``: one
    writer per run directory; ``lock=False`` is for callers that hold it already (a distributed run's rank 0)
    or leave it to another rank."""

    @functools.wraps(fn)  # type: ignore[arg-type]
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        out = kwargs.get("out")
        if out is not None and Path(out).exists() and not Path(out).is_dir():
            raise SpecError(f"run directory {out} is a file; give a folder path for --out")
        with lock_folder(out, enabled=kwargs.get("lock", True)):
            return fn(*args, **kwargs)  # type: ignore[operator]

    return wrapper  # type: ignore[return-value]


def run_config(
    model: nn.Module,
    specs: Sequence[AttackSpec],
    *,
    n_samples: int,
    batch_size: int,
    seed: int,
    model_meta: Mapping[str, Any] | None = None,
    data_meta: Mapping[str, Any] | None = None,
    preparation: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The configuration that defines a run (and its fingerprint): same configuration, same records.

    Besides the settings it holds the record schema version, the algorithm version of each attack used
    (bumped by the change that alters their records) and the model's preparation (:func:`prepare_for_run`;
    default: none), but not which advlab code ran: that is provenance. ``model`` is the model as given (its
    weights identify the run).
    """
    return {
        "record_schema": RECORD_SCHEMA_VERSION,
        "algorithms": algorithm_versions(s.name for s in specs),
        "model": {**dict(model_meta or {}), "state_dict_sha256": model_digest(model)},
        "data": {**dict(data_meta or {}), "n_samples": n_samples},
        "attacks": [s.to_dict() for s in specs],
        "seed": seed,
        "batch_size": batch_size,
        "device_type": device_of(model).type,
        "prepare": dict(preparation) if preparation is not None else {"enabled": False},
    }


@_holding_lock
def evaluate(
    model: nn.Module,
    dataset: Any,
    attacks: Iterable[AttackSpec],
    *,
    out: str | Path | None = None,
    batch_size: int = 16,
    seed: int = 0,
    batches: Iterable[int] | None = None,
    model_meta: Mapping[str, Any] | None = None,
    data_meta: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    quiet: bool = False,
    progress_desc: str = "evaluate",
    write_summary: bool = True,
    replace: bool = False,
    prepare: bool = True,
    prepared: tuple[nn.Module, Mapping[str, Any]] | None = None,
    lock: bool = True,
    save_adversarial: bool = False,
) -> RunResult:
    """Run ``attacks`` over ``dataset`` and summarise; with ``out``, stream records to a run directory.

    Args:
        model: maps images in [0, 1] to logits; its device is where the attacks run.
        dataset: indexable, ``len()``-able, items ``(image (C, H, W) in [0, 1], label, ...)``.
        attacks: :class:`AttackSpec` objects (see :func:`advlab.evaluate.make_spec`).
        out: run directory; a run there with the same configuration (:func:`run_config`) is resumed, a
            different one refused (see ``replace``); resumed by other advlab code with the same record
            versions, it warns (:class:`~advlab.evaluate.rundir.ProvenanceWarning`).
        batch_size: samples per batch (part of the run's configuration: it fixes the batch files).
        seed: seeds targets and random starts per sample index.
        batches: positions in the batch plan to process (a shard); default all.
        model_meta, data_meta: descriptions of the model and data (name, path, ...) kept in the run's
            configuration and summary.
        extra: more keys for summary.json (e.g. the command line).
        quiet: no progress bar.
        write_summary: write ``summary.json`` into ``out`` (a shard of a distributed run leaves that to rank 0,
            see :func:`advlab.evaluate.sharded.evaluate_sharded`).
        replace: start ``out`` over when it holds a different run, instead of refusing
            (:meth:`RunDirectory.open`).
        prepare: prepare the model once for the attacks (:func:`prepare_for_run`, recorded in ``run.json``);
            False attacks it exactly as given.
        prepared: what :func:`prepare_for_run` already returned for this model, dataset and batch size (a
            shard of a distributed run prepares once per rank); replaces ``prepare``.
        lock: hold ``out``'s lock for the whole run, refusing a second writer
            (:class:`~advlab.runtime.lock.RunLockedError`); False when the caller holds it (or another rank).
        save_adversarial: also save every adversarial example (exact floats and uint8) under
            ``out/adversarial`` with its uint8 re-check in the records (:mod:`advlab.evaluate.saved`); part of
            the run's configuration.
    """
    specs = validate_specs(attacks)
    n = len(dataset)
    if n == 0:
        raise SpecError("the dataset is empty; nothing to evaluate")
    plan = plan_batches(n, batch_size)
    chosen = sorted(set(range(len(plan)) if batches is None else batches))
    if chosen and (chosen[0] < 0 or chosen[-1] >= len(plan)):
        raise ValueError(f"batch numbers must be in 0..{len(plan) - 1}, got {chosen[0]}..{chosen[-1]}")
    attacked, preparation = prepared if prepared is not None else prepare_for_run(model, dataset, plan, prepare)
    config = run_config(
        model,
        specs,
        n_samples=n,
        batch_size=batch_size,
        seed=seed,
        model_meta=model_meta,
        data_meta=data_meta,
        preparation=preparation,
    )
    if save_adversarial:
        if out is None:
            raise SpecError("save_adversarial needs a run directory (out=...) to save the examples in")
        config["save_adversarial"] = SAVED_VERSION  # only when set: runs without it keep their fingerprint
    run_dir = RunDirectory(out, config) if out is not None else None
    if run_dir is not None:
        run_dir.open(replace=replace)
    device = device_of(model)
    memory: dict[str, list[dict[str, Any]]] = {s.id: [] for s in specs}
    judge_k = max(eot_samples_of(s) for s in specs)  # the whole run's prediction rule, resumed batches included

    def pending(b: range) -> list[AttackSpec]:
        return [s for s in specs if run_dir is None or not run_dir.done(s.id, b)]

    todo = [(k, plan[k]) for k in chosen]
    units = sum(len(pending(b)) for _, b in todo)
    bar = tqdm(total=units, desc=progress_desc, unit="attack-batch", disable=quiet or units == 0, file=sys.stderr)
    start = time.perf_counter()
    try:
        for _k, batch in todo:
            todo_specs = pending(batch)
            done: dict[str, list[dict[str, Any]]] = {}
            if run_dir is not None:
                needed = {d for s in todo_specs for d in s.only_unbroken}
                done = {aid: run_dir.read_batch(aid, batch) for aid in needed if run_dir.done(aid, batch)}
            if todo_specs:
                x, y, kept = load_batch(dataset, list(batch), device)

                def saved(spec: AttackSpec, records: list[dict[str, Any]], batch: range = batch) -> None:
                    if run_dir is not None:
                        run_dir.write_batch(spec.id, batch, records)
                    bar.set_postfix_str(spec.id[:40], refresh=False)
                    bar.update(1)

                judge = Judge(attacked, x, seed, kept, judge_k)

                def examples(
                    spec: AttackSpec,
                    recs: list[dict[str, Any]],
                    xs: Any,
                    x_adv: Any,
                    b: range = batch,
                    at: Any = kept,
                    rule: Judge = judge,
                ) -> None:
                    assert run_dir is not None
                    path = saved_path(run_dir.batch_file(spec.id, b))
                    # The uint8 re-check judged by the records' own rule and draws (Judge: the run's K, common random
                    # numbers), never by one draw of whatever the process's generator holds (review 2, F4 addendum).
                    where = {int(i): k for k, i in enumerate(at)}
                    rows = torch.tensor([where[int(r["index"])] for r in recs], device=xs.device)

                    def judged(points: torch.Tensor, which: list[int]) -> torch.Tensor:
                        return rule.logits(points, rows[which])

                    save_examples(judged, spec, recs, xs, x_adv, path, run_dir.path)

                if kept:
                    done = attack_batch(
                        attacked,
                        x,
                        y,
                        kept,
                        todo_specs,
                        seed=seed,
                        done=done,
                        on_attack=saved,
                        on_adversarial=examples if save_adversarial else None,
                        judge_samples=judge_k,
                    )
                else:  # every image of the batch was unreadable: mark the batch done, with no records
                    for spec in todo_specs:
                        saved(spec, [])
                        done[spec.id] = []
            if run_dir is None:
                for s in specs:
                    memory[s.id].extend(done[s.id])
    finally:
        bar.close()
    wall = time.perf_counter() - start
    records = run_dir.read_records(s.id for s in specs) if run_dir is not None else memory
    if run_dir is not None:
        complete = {s.id: all(run_dir.done(s.id, b) for b in plan) for s in specs}
    else:
        complete = {s.id: len(chosen) == len(plan) for s in specs}
    summary = build_summary(
        records,
        specs,
        config,
        fingerprint=run_dir.fingerprint if run_dir else None,
        complete=complete,
        wall_s=wall,
        extra=extra,
    )
    if run_dir is not None and write_summary:
        atomic_write_text(run_dir.path / "summary.json", json.dumps(summary, indent=2, sort_keys=False) + "\n")
    return RunResult(summary, records, run_dir.path if run_dir else None, attacked)
