"""Evaluation over the ranks of a torchrun run, with the single-process run's records and summary.

:func:`evaluate_sharded` runs :func:`advlab.evaluate.evaluate` on the rank's share of the engine's fixed
batches (:func:`advlab.runtime.shard_batches`), gathers the per-sample records on rank 0, merges them by
sample index (:func:`merge_records`) and writes the summary. The batches are the single-process run's batches
and every random choice is a function of (seed, sample index), so the summary equals the single-process one
(all fields but the timings).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from ..runtime import RankInfo, broadcast, check_same, current, gather, shard_batches, wait_for_all
from ..runtime.lock import lock_folder
from .engine import plan_batches
from .records import atomic_write_text
from .run import RunResult, evaluate, prepare_for_run, run_config
from .rundir import RunDirectory, provenance
from .saved import SAVED_VERSION
from .specs import SpecError, validate_specs
from .summary import build_summary


def _without_time(record: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "time_s"}


def merge_records(parts: Iterable[Mapping[str, Iterable[Mapping[str, Any]]]]) -> dict[str, list[dict[str, Any]]]:
    """Merge per-rank ``{attack id: records}`` into one, each attack's records sorted by sample index.

    A sample present in several parts (a batch two ranks both read from a shared run directory) must have the
    same record in each, up to its ``time_s``; one copy is kept. Different records for one sample mean two
    different runs were mixed: ValueError naming the attack and the sample.
    """
    merged: dict[str, dict[int, dict[str, Any]]] = {}
    for part in parts:
        for attack_id, records in part.items():
            by_index = merged.setdefault(attack_id, {})
            for record in records:
                index = int(record["index"])
                old = by_index.get(index)
                if old is None:
                    by_index[index] = dict(record)
                elif _without_time(old) != _without_time(record):
                    raise ValueError(
                        f"attack {attack_id!r}: sample {index} has different records on different ranks; "
                        "the ranks did not run the same evaluation"
                    )
    return {aid: [by_index[i] for i in sorted(by_index)] for aid, by_index in merged.items()}


def evaluate_sharded(
    model: nn.Module,
    dataset: Any,
    attacks: Iterable[Any],
    *,
    out: str | Path | None = None,
    batch_size: int = 16,
    seed: int = 0,
    model_meta: Mapping[str, Any] | None = None,
    data_meta: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    quiet: bool = False,
    progress_desc: str = "evaluate",
    info: RankInfo | None = None,
    replace: bool = False,
    prepare: bool = True,
    save_adversarial: bool = False,
    lock: bool = True,
) -> RunResult:
    """:func:`advlab.evaluate.evaluate` over the ranks of a distributed run; the same call in one process.

    ``lock``: rank 0 (the one process) holds ``out``'s lock for the whole run; False where the caller holds it
    already, around the run and what follows it (``advlab eval``: the adaptive rows, the claim, the report).

    With ``save_adversarial`` each rank saves the examples of its own batches (:mod:`advlab.evaluate.saved`:
    one file per attack and batch, so no two ranks write the same file) into ``out``; ``advlab verify`` then
    reads them all, which needs ``out`` on a filesystem every rank writes to (on separate disks each machine
    holds its own ranks' files).

    Each rank attacks its share (:func:`shard_batches`) of the run's batches, writing records into ``out``
    as it goes (a resumed run skips batches on disk, whichever rank wrote them, so it may even resume with
    another number of processes). Rank 0 gathers the records, merges them by sample index, writes
    ``summary.json`` and shares the summary with all ranks. Returns the :class:`~advlab.evaluate.RunResult`
    (``records`` holds every sample on rank 0, the rank's own share elsewhere).

    Without a shared filesystem each machine's ``out`` holds the batches its ranks computed; the summary
    (on the first machine) is still complete because records travel through the process group.
    """
    info = info or current()
    common = {
        "model_meta": model_meta,
        "data_meta": data_meta,
        "extra": extra,
        "progress_desc": progress_desc,
        "batch_size": batch_size,
        "seed": seed,
        "save_adversarial": save_adversarial,
    }
    if not info.distributed:
        return evaluate(
            model, dataset, attacks, out=out, quiet=quiet, replace=replace, prepare=prepare, lock=lock, **common
        )
    # One writer per run directory: rank 0 holds its lock for the whole run (the ranks' evaluate() do not).
    with lock_folder(out, enabled=info.is_main and lock):
        return _evaluate_ranks(model, dataset, attacks, out, quiet, replace, prepare, common, info)


def _evaluate_ranks(
    model: nn.Module,
    dataset: Any,
    attacks: Iterable[Any],
    out: str | Path | None,
    quiet: bool,
    replace: bool,
    prepare: bool,
    common: dict[str, Any],
    info: RankInfo,
) -> RunResult:
    """:func:`evaluate_sharded`'s distributed part (rank 0 holding the run directory's lock)."""
    batch_size, seed, extra = common["batch_size"], common["seed"], common["extra"]
    model_meta, data_meta = common["model_meta"], common["data_meta"]
    start = time.perf_counter()
    specs = validate_specs(attacks)
    n = len(dataset)
    if n == 0:
        raise SpecError("the dataset is empty; nothing to evaluate")
    plan = plan_batches(n, batch_size)
    # Every rank prepares on the same first batch, so the preparation record (in the config) agrees.
    attacked, preparation = prepare_for_run(model, dataset, plan, prepare)
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
    if common["save_adversarial"]:  # as evaluate() records it, so every rank's run directory has the same fingerprint
        config["save_adversarial"] = SAVED_VERSION
    # Same weights, data size, attacks and seed everywhere, or the merged records would mix two runs.
    origin = provenance()
    what = "the run configuration (model weights, data, attacks, seed, advlab code)"
    check_same({**config, "provenance": origin}, what, info, show=_config_keys)
    if out is not None:
        # Open the run directory in turn: rank 0 first, then one rank per machine (whose disk may be its
        # own), then the rest: nobody sees a half-created folder, and a wrong folder fails on rank 0 first.
        # With ``replace`` the first opener of each disk clears a different run; the rest then find this one.
        for turn in (info.is_main, info.local_rank == 0 and not info.is_main, info.local_rank != 0):
            if turn:
                RunDirectory(out, config, origin).open(replace=replace and info.local_rank == 0)
            wait_for_all("opening the run directory", info)
    mine = shard_batches(len(plan), info.rank, info.world_size)
    result = evaluate(
        model,
        dataset,
        specs,
        out=out,
        quiet=quiet or not info.is_main,
        batches=mine,
        write_summary=False,
        prepared=(attacked, preparation),
        lock=False,
        **common,
    )
    own = {i for k in mine for i in plan[k]}
    records = {aid: [r for r in rs if int(r["index"]) in own] for aid, rs in result.records.items()}
    wait_for_all("the end of the evaluation", info)
    parts = gather(records, info, "gathering the per-sample records on rank 0")
    summary = None
    if parts is not None:
        merged = merge_records(parts)
        merged = {s.id: merged.get(s.id, []) for s in specs}
        fingerprint = RunDirectory(out, config).fingerprint if out is not None else None
        summary = build_summary(
            merged,
            specs,
            config,
            fingerprint=fingerprint,
            complete={s.id: True for s in specs},  # every rank finished its share of the plan
            wall_s=time.perf_counter() - start,
            extra=extra,
        )
        if out is not None:
            atomic_write_text(Path(out) / "summary.json", json.dumps(summary, indent=2, sort_keys=False) + "\n")
        records = merged
    summary = broadcast(summary, info, "sharing the summary")
    return RunResult(summary, records, Path(out) if out is not None else None, result.model)


def _config_keys(config: Mapping[str, Any]) -> str:
    model = config.get("model", {})
    return (
        f"model sha256 {str(model.get('state_dict_sha256', '?'))[:12]}, {config.get('data', {}).get('n_samples')} "
        f"samples, {len(config.get('attacks', []))} attacks, seed {config.get('seed')}, "
        f"advlab code {str(config.get('provenance', {}).get('code_sha256', '?'))[:12]}"
    )
