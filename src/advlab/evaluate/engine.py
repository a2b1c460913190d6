"""The evaluation engine: attacks over a dataset in batches, per-sample records streamed to a run directory.

The dataset is cut into fixed batches of global sample indices (``[0, B)``, ``[B, 2B)``, ...). For each
batch the clean logits are computed once and every attack of the run is applied; each (attack, batch) gives
one JSON Lines file of records, written atomically. A run directory holds ``run.json`` (the run's
configuration and its fingerprint), ``records/<attack>/<batch>.jsonl`` and, at the end, ``summary.json``.
Started again with the same configuration, a run skips the batches already on disk; with a different one
it refuses to start. Everything random is a function of (seed, sample index): a per-sample seed tensor for
random starts and a per-sample target draw, so a sample's record does not depend on which batch, shard or
process it was computed in.

:func:`attack_batch` is the unit of work and takes any subset of indices (a shard of a distributed run);
:func:`evaluate` drives it over a dataset and writes the summary.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import __version__
from .records import (
    atomic_write_text,
    fully_broken,
    make_records,
    perturbation_norms,
    read_jsonl,
    strength,
    summarize,
    topk,
    write_jsonl,
)
from .specs import AttackSpec, SpecError, run_attack, suite_stage_names, validate_specs

SUMMARY_SCHEMA = "advlab.summary/1"
RUN_SCHEMA = "advlab.run/1"


# --------------------------------------------------------------------------------------------- hashing


def stable_hash(*parts: Any, bits: int = 48) -> int:
    """A platform-independent integer hash of JSON-able parts (Python's hash() is salted per process)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return int(hashlib.sha256(text.encode()).hexdigest(), 16) >> (256 - bits)


def model_digest(model: nn.Module) -> str:
    """sha256 of the model's state dict (names, shapes, dtypes and values): which weights were attacked."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{tuple(tensor.shape)}:{t.dtype};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# The packages whose code decides what a run's records hold: the attacks, the models (and their prepared
# copies), the data pipeline and the engine. The report, the CLI and training do not change a record.
RECORD_SOURCES = ("attacks", "models", "data", "evaluate")


def source_digest(package_root: str | Path, parts: Sequence[str] = RECORD_SOURCES) -> str:
    """sha256 of the ``*.py`` files under ``package_root/<part>`` (relative paths and contents, in order)."""
    root = Path(package_root)
    h = hashlib.sha256()
    for part in parts:
        for path in sorted((root / part).rglob("*.py")):
            h.update(path.relative_to(root).as_posix().encode() + b"\0")
            h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


@cache
def code_digest() -> str:
    """:func:`source_digest` of the running advlab: part of a run's configuration, so that a run directory
    is never resumed by other code (the version alone does not change between commits of a checkout)."""
    return source_digest(Path(__file__).resolve().parent.parent)


# --------------------------------------------------------------------------------------------- batches


def plan_batches(n: int, batch_size: int) -> list[range]:
    """The run's fixed batches of global sample indices; shards of a run are subsets of this list."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SpecError(f"batch size must be an integer >= 1, got {batch_size!r}")
    return [range(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def load_batch(dataset: Any, indices: Sequence[int], device: torch.device) -> tuple[Tensor, Tensor, list[int]]:
    """Images (N, C, H, W) in [0, 1], int64 labels, and the indices they belong to, for the items at ``indices``.

    An item is ``(image, label, ...)`` with the image a float tensor (C, H, W) in [0, 1] (the model's
    transform already applied) and the label an int or a 0-d tensor. An item that is ``None`` (an unreadable
    image, which advlab's datasets skip with a warning) is left out: it gets no records, and the summary
    counts it under ``n_unreadable``.
    """
    images, labels, kept = [], [], []
    for i in indices:
        item = dataset[i]
        if item is None:
            continue
        image, label = item[0], item[1]
        if not isinstance(image, Tensor):
            raise TypeError(
                f"dataset item {i} holds a {type(image).__name__}, expected a float tensor (C, H, W) in [0, 1]; "
                "give the dataset the model's transform (advlab.data.transform_for(model))"
            )
        images.append(image)
        labels.append(int(label))
        kept.append(int(i))
    if not images:
        return torch.empty(0, device=device), torch.empty(0, dtype=torch.long, device=device), []
    x = torch.stack(images).to(device)
    return x, torch.tensor(labels, dtype=torch.long, device=device), kept


# --------------------------------------------------------------------------------------------- targets


def random_targets(labels: Tensor, indices: Sequence[int], num_classes: int, seed: int) -> Tensor:
    """A target per sample, uniform among the classes other than its label, drawn from (seed, sample index).

    The draw for sample i is the same in every batch, shard and process, and for every attack of the run
    (so targeted attacks of one run are compared on the same targets).
    """
    base = stable_hash("targets", seed)
    out = []
    for label, index in zip(labels.tolist(), indices, strict=True):
        g = torch.Generator().manual_seed(base + int(index))
        t = int(torch.randint(num_classes - 1, (1,), generator=g))
        out.append(t + (t >= label))  # skip the true class: uniform over the other K - 1
    return torch.tensor(out, dtype=torch.long, device=labels.device)


def choose_targets(mode: str | int, labels: Tensor, clean_logits: Tensor, indices: Sequence[int], seed: int) -> Tensor:
    num_classes = clean_logits.shape[1]
    if mode == "random":
        return random_targets(labels, indices, num_classes, seed)
    if mode == "least-likely":
        return clean_logits.argmin(dim=1)
    assert isinstance(mode, int)
    if mode >= num_classes:
        raise SpecError(
            f"target class {mode} does not exist: the model has {num_classes} classes (0..{num_classes - 1})"
        )
    return torch.full_like(labels, mode)


def sample_seeds(spec: AttackSpec, seed: int, indices: Sequence[int]) -> Tensor:
    """Per-sample int64 seeds for an attack's random start: a hash of (run seed, attack) plus the index."""
    base = stable_hash("attack", seed, spec.name, dict(spec.params), spec.target)
    return torch.tensor([base + int(i) for i in indices], dtype=torch.long)


# ------------------------------------------------------------------------------------------ one batch


def check_fits(model: nn.Module, x: Tensor) -> None:
    """Refuse data the model was not made for, as a :class:`SpecError` before any attack: a model that states
    its ``input_size`` (C, H, W), as advlab's :class:`~advlab.models.ImageClassifier` does, gets images with C
    channels in a batch (N, C, H, W). Grey images given to a colour model are a mistake in the command, not a
    bug, so they are named here rather than by the model's forward."""
    size = getattr(model, "input_size", None)
    if not (isinstance(size, tuple) and len(size) == 3) or (x.dim() == 4 and x.shape[1] == size[0]):
        return
    c, h, w = size
    raise SpecError(
        f"{getattr(model, 'name', '') or 'this model'} takes images shaped (N, {c}, H, W) (it was trained on "
        f"{c} x {h} x {w}), got shape {tuple(x.shape)}; is the data meant for another model?"
    )


@torch.no_grad()
def _logits(model: nn.Module, x: Tensor) -> Tensor:
    return model(x).float()


def attack_batch(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    indices: Sequence[int],
    specs: Sequence[AttackSpec],
    *,
    seed: int = 0,
    done: Mapping[str, list[dict[str, Any]]] | None = None,
    on_attack: Callable[[AttackSpec, list[dict[str, Any]]], None] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Records of every attack in ``specs`` on one batch (any subset of the dataset's indices).

    The clean logits are computed once and shared by all attacks. Attacks whose records are in ``done``
    (read back from a run directory) are not run again, but their records still feed later attacks that
    name them in ``only_unbroken``. ``on_attack`` is called with each newly computed attack's records
    (the engine writes them to disk there, so work is saved attack by attack).
    """
    if x.shape[0] != len(indices) or y.shape[0] != len(indices):
        raise ValueError(f"x, y and indices must have the same length, got {x.shape[0]}, {y.shape[0]}, {len(indices)}")
    results: dict[str, list[dict[str, Any]]] = {k: list(v) for k, v in (done or {}).items()}
    if all(spec.id in results for spec in specs):
        return results
    check_fits(model, x)
    was_training = model.training
    model.eval()
    try:
        clean_logits = _logits(model, x)
        clean = topk(clean_logits)
        target_cache: dict[str | int, Tensor] = {}
        for spec in specs:
            if spec.id in results:
                continue
            targets = None
            if spec.targeted:
                assert spec.target is not None
                if spec.target not in target_cache:
                    target_cache[spec.target] = choose_targets(spec.target, y, clean_logits, indices, seed)
                targets = target_cache[spec.target]
            deps = [results[d] for d in spec.only_unbroken]
            run = [i for i in range(len(indices)) if not any(fully_broken(dep[i]) for dep in deps)]
            own: dict[int, dict[str, Any]] = {}
            if run:
                sel = torch.tensor(run, dtype=torch.long, device=x.device)
                xs = x[sel]
                goal = (targets if targets is not None else y)[sel]
                sub_indices = [indices[i] for i in run]
                start = time.perf_counter()
                x_adv = run_attack(spec, model, xs, goal, sample_seeds(spec, seed, sub_indices))
                seconds = time.perf_counter() - start
                extras = _extras(x_adv, len(run))
                x_adv = getattr(x_adv, "x_adv", x_adv)
                model.eval()  # an attack must restore the mode; be robust to one that does not
                records = make_records(
                    indices=sub_indices,
                    labels=y[sel].tolist(),
                    targets=None if targets is None else targets[sel].tolist(),
                    clean=([clean[0][i] for i in run], [clean[1][i] for i in run]),
                    adv=topk(_logits(model, x_adv)),
                    norms=perturbation_norms(xs, x_adv),
                    seconds=seconds,
                )
                for k, rec in enumerate(records):
                    if extras:
                        rec["extras"] = {key: values[k] for key, values in extras.items()}
                own = dict(zip(run, records, strict=True))
            merged = []
            for i in range(len(indices)):
                best = own.get(i)
                for dep_id, dep in zip(spec.only_unbroken, deps, strict=True):
                    if best is None or strength(dep[i]) > strength(best):
                        best = {**dep[i], "time_s": 0.0, "from": dep[i].get("from") or dep_id}
                assert best is not None
                merged.append(best)
            results[spec.id] = merged
            if on_attack is not None:
                on_attack(spec, merged)
    finally:
        model.train(was_training)
    return results


def _extras(result: Any, n: int) -> dict[str, list[Any]]:
    """Per-sample numbers an attack returned besides x_adv (``AttackResult.extras``), as JSON-able lists."""
    out: dict[str, list[Any]] = {}
    for key, value in (getattr(result, "extras", None) or {}).items():
        if isinstance(value, Tensor) and value.shape == (n,):
            out[key] = value.tolist()
    return out


# ---------------------------------------------------------------------------------------- run directory


def _slug(attack_id: str) -> str:
    """A file-system-safe, collision-free folder name for an attack id."""
    readable = re.sub(r"[^A-Za-z0-9.=_-]+", "_", attack_id).strip("_")[:60]
    return f"{readable}-{hashlib.sha256(attack_id.encode()).hexdigest()[:8]}"


def _batch_name(batch: range) -> str:
    return f"{batch.start:09d}-{batch.stop:09d}.jsonl"


class RunDirectory:
    """A run's folder: its configuration and fingerprint, the per-batch record files and the summary."""

    def __init__(self, path: str | Path, config: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.config = json.loads(json.dumps(config, sort_keys=True, default=str))
        self.fingerprint = hashlib.sha256(json.dumps(self.config, sort_keys=True).encode()).hexdigest()

    def open(self, replace: bool = False) -> bool:
        """Create the run, or check that the folder holds this very run. Returns True when resuming.

        A folder holding another advlab run (other settings, weights, data or advlab code) is refused, or
        with ``replace`` cleared of that run's ``run.json``, ``records/`` and ``summary.json`` and started
        afresh (files a report wrote there stay until the new run overwrites them). A non-empty folder
        without ``run.json`` is always refused.
        """
        run_file = self.path / "run.json"
        if self.path.exists() and not self.path.is_dir():
            raise SpecError(f"run directory {self.path} is a file; give a folder path for --out")
        if run_file.exists():
            try:
                old = json.loads(run_file.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as e:
                raise SpecError(f"{run_file} is unreadable ({e}); remove the folder or use another --out") from None
            if old.get("fingerprint") == self.fingerprint:
                return True
            if not replace:
                old_cfg = old.get("config", {})
                keys = sorted(k for k in set(old_cfg) | set(self.config) if old_cfg.get(k) != self.config.get(k))
                why = ", ".join(keys) or "schema"
                if set(keys) <= {"advlab_version", "code_sha256"}:
                    why += ": it was computed by other advlab code, whose records may differ from this code's"
                raise SpecError(
                    f"{self.path} holds a different run (differs in: {why}); use another --out, "
                    "or --replace (replace=True) to start that folder over"
                )
            shutil.rmtree(self.path / "records", ignore_errors=True)
            (self.path / "summary.json").unlink(missing_ok=True)
            run_file.unlink()  # last: a replacement killed half-way is still recognised as an advlab run
        elif self.path.exists() and any(p.name != ".DS_Store" for p in self.path.iterdir()):
            raise SpecError(
                f"{self.path} is not empty and holds no advlab run (no run.json); use an empty or new --out"
            )
        atomic_write_text(
            run_file,
            json.dumps(
                {"schema": RUN_SCHEMA, "fingerprint": self.fingerprint, "config": self.config}, indent=2, sort_keys=True
            ),
        )
        return False

    def batch_file(self, attack_id: str, batch: range) -> Path:
        return self.path / "records" / _slug(attack_id) / _batch_name(batch)

    def done(self, attack_id: str, batch: range) -> bool:
        return self.batch_file(attack_id, batch).exists()

    def read_batch(self, attack_id: str, batch: range) -> list[dict[str, Any]]:
        return read_jsonl(self.batch_file(attack_id, batch))

    def write_batch(self, attack_id: str, batch: range, records: list[dict[str, Any]]) -> None:
        write_jsonl(self.batch_file(attack_id, batch), records)

    def read_records(self, attack_ids: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
        """All records on disk, per attack (the files of every batch and every shard written here)."""
        out: dict[str, list[dict[str, Any]]] = {}
        for aid in attack_ids:
            folder = self.path / "records" / _slug(aid)
            out[aid] = [r for f in sorted(folder.glob("*.jsonl")) for r in read_jsonl(f)] if folder.is_dir() else []
        return out


# -------------------------------------------------------------------------------------------- evaluate


@dataclass(frozen=True)
class RunResult:
    """What :func:`evaluate` returns: the summary (as written to summary.json) and the records."""

    summary: dict[str, Any]
    records: dict[str, list[dict[str, Any]]]
    run_dir: Path | None


def _device_of(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def run_config(
    model: nn.Module,
    specs: Sequence[AttackSpec],
    *,
    n_samples: int,
    batch_size: int,
    seed: int,
    model_meta: Mapping[str, Any] | None = None,
    data_meta: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The configuration that defines a run (and its fingerprint): same configuration, same records."""
    return {
        "advlab_version": __version__,
        "code_sha256": code_digest(),
        "model": {**dict(model_meta or {}), "state_dict_sha256": model_digest(model)},
        "data": {**dict(data_meta or {}), "n_samples": n_samples},
        "attacks": [s.to_dict() for s in specs],
        "seed": seed,
        "batch_size": batch_size,
        "device_type": _device_of(model).type,
    }


def suite_progress(spec: AttackSpec, stats: Mapping[str, Any], names: Sequence[str]) -> list[dict[str, Any]]:
    """Per stage of a suite, in order: its budget, the samples it broke, and the top-1 accuracy left after it
    (AutoAttack's running robust accuracy); the last ``robust_after`` is the suite's ``adv_top1``."""
    from .suite import DEFAULT_SQUARE_QUERIES, suite_stages

    queries = int(spec.params.get("square_queries", DEFAULT_SQUARE_QUERIES))
    described = {"clean": "misclassified without attack"} | {
        st.name: st.description for st in suite_stages(spec.name[len("suite_") :], square_queries=queries)
    }
    counts = {int(k): int(v) for k, v in stats["broken_by_counts"].items()}
    n = int(stats["n"])
    standing = n - int(stats.get("n_from_other_attacks") or 0)  # broken by the attacks it was chained on
    out = []
    for k, name in enumerate(names):
        standing -= counts.get(k, 0)
        out.append(
            {
                "name": name,
                "description": described.get(name, ""),
                "broken": counts.get(k, 0),
                "robust_after": standing / n,
            }
        )
    return out


def build_summary(
    records: Mapping[str, list[dict[str, Any]]],
    specs: Sequence[AttackSpec],
    config: Mapping[str, Any],
    *,
    fingerprint: str | None = None,
    complete: Mapping[str, bool] | None = None,
    wall_s: float | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """summary.json: the configuration, then :func:`~advlab.evaluate.records.summarize` of the records.

    ``complete`` tells per attack id whether every batch of the run is in ``records`` (default: as many
    records as samples).
    """
    core = summarize({s.id: records.get(s.id, []) for s in specs})
    n = config["data"]["n_samples"]
    attacks = []
    for spec in specs:
        stats = core["attacks"][spec.id]
        names = suite_stage_names(spec.name)
        if names is not None and "broken_by_counts" in stats:
            stats["broken_by"] = {
                ("robust" if int(k) < 0 else names[int(k)]): v for k, v in stats["broken_by_counts"].items()
            }
            stats["stages"] = suite_progress(spec, stats, names)
        attacks.append(
            {
                **spec.to_dict(),
                "label": spec.describe(),
                **stats,
                "targeted": spec.targeted,  # the spec says it even before any record exists (a partial run)
                "complete": (complete or {}).get(spec.id, stats["n"] == n),
            }
        )
    summary = {
        "schema": SUMMARY_SCHEMA,
        "advlab_version": __version__,
        "fingerprint": fingerprint,
        "complete": all(a["complete"] for a in attacks),
        "n_samples": n,
        "model": config["model"],
        "data": config["data"],
        "seed": config["seed"],
        "batch_size": config["batch_size"],
        "n_unreadable": n - core["clean"]["n"] if all(a["complete"] for a in attacks) else None,
        "clean": core["clean"],
        "attacks": attacks,
        "time_s": math.fsum(a["time_s"] for a in attacks),
        "wall_s": wall_s,
        "sanity": None,
        **dict(extra or {}),
    }
    summary["sanity"] = sanity_of(summary, records)
    return summary


def sanity_of(
    summary: Mapping[str, Any], records: Mapping[str, Sequence[Mapping[str, Any]]] | None = None
) -> dict[str, Any] | None:
    """The gradient-masking checks a summary and its records answer (:func:`advlab.evaluate.sanity.check_summary`:
    iterative vs single-step, Square vs white-box and a suite vs the other attacks per sample, monotone in eps);
    None where none applies."""
    try:
        from .sanity import check_summary
    except ImportError:  # the checks are optional
        return None
    return check_summary(summary, records)


def summary_line(attack: Mapping[str, Any]) -> str:
    """One line per attack for the end of a run."""

    def pct(v: float | None) -> str:
        return "  n/a" if v is None else f"{100 * v:5.1f}%"

    name = attack["id"] if attack["id"] == attack["label"] else f"{attack['id']} = {attack['label']}"
    line = f"{name}: top-1 {pct(attack['adv_top1'])} top-5 {pct(attack['adv_top5'])}"
    line += f" (clean {pct(attack['clean_top1'])}), success {pct(attack['success_rate'])}"
    # Mean L2 over the successful examples: comparable across attacks (a suite returns the clean image, L2 0,
    # where it failed; a PGD its last try); the max Linf over all samples shows the budget held.
    linf, l2 = attack["norms"]["linf"]["max"], (attack.get("norms_successful") or {}).get("l2", {}).get("mean")
    if linf is not None:
        line += f", max Linf {linf:.4g}, mean L2 of successes {'n/a' if l2 is None else f'{l2:.4g}'}"
    return line + f", {attack['time_s']:.1f} s over {attack['n']} samples"


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
) -> RunResult:
    """Run ``attacks`` over ``dataset`` and summarise; with ``out``, stream records to a run directory.

    Args:
        model: maps images in [0, 1] to logits; its device is where the attacks run.
        dataset: indexable, ``len()``-able, items ``(image (C, H, W) in [0, 1], label, ...)``.
        attacks: :class:`AttackSpec` objects (see :func:`advlab.evaluate.make_spec`).
        out: run directory; a run there with the same configuration (which includes a digest of advlab's
            code, :func:`code_digest`) is resumed, a different one refused (see ``replace``).
        batch_size: samples per batch (part of the run's configuration: it fixes the batch files).
        seed: seeds targets and random starts per sample index.
        batches: positions in the batch plan to process (a shard); default all.
        model_meta, data_meta: descriptions of the model and data (name, path, ...) kept in the run's
            configuration and summary.
        extra: more keys for summary.json (e.g. the command line).
        quiet: no progress bar.
        write_summary: write ``summary.json`` into ``out`` (a shard of a distributed run leaves that to rank 0,
            see :func:`advlab.distributed.evaluate_sharded`).
        replace: start ``out`` over when it holds a different run, instead of refusing
            (:meth:`RunDirectory.open`).
    """
    specs = validate_specs(attacks)
    n = len(dataset)
    if n == 0:
        raise SpecError("the dataset is empty; nothing to evaluate")
    plan = plan_batches(n, batch_size)
    chosen = sorted(set(range(len(plan)) if batches is None else batches))
    if chosen and (chosen[0] < 0 or chosen[-1] >= len(plan)):
        raise ValueError(f"batch numbers must be in 0..{len(plan) - 1}, got {chosen[0]}..{chosen[-1]}")
    config = run_config(
        model, specs, n_samples=n, batch_size=batch_size, seed=seed, model_meta=model_meta, data_meta=data_meta
    )
    run_dir = RunDirectory(out, config) if out is not None else None
    if run_dir is not None:
        run_dir.open(replace=replace)
    device = _device_of(model)
    memory: dict[str, list[dict[str, Any]]] = {s.id: [] for s in specs}

    def pending(b: range) -> list[AttackSpec]:
        return [s for s in specs if run_dir is None or not run_dir.done(s.id, b)]

    todo = [(k, plan[k]) for k in chosen]
    units = sum(len(pending(b)) for _, b in todo)
    from tqdm.auto import tqdm

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

                if kept:
                    done = attack_batch(model, x, y, kept, todo_specs, seed=seed, done=done, on_attack=saved)
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
    return RunResult(summary, records, run_dir.path if run_dir else None)
