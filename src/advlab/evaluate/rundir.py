"""A run directory: the run's configuration and fingerprint, its provenance, and the per-batch record files.

``run.json`` holds three things:

- ``config``: what decides the records (the model's weights and description, the data, the attacks and their
  parameters, the seed, the batch size, the device type, the model preparation), plus the record schema
  version (:data:`~advlab.evaluate.records.RECORD_SCHEMA_VERSION`) and each attack's algorithm version
  (:data:`~advlab.evaluate.specs.ALGORITHM_VERSIONS`);
- ``fingerprint``: sha256 of ``config``. A run directory is resumed only by a run with the same fingerprint,
  and refused (or with ``replace`` started over) otherwise;
- ``provenance``: which advlab wrote it (version, and :func:`code_digest`, a hash of the source that makes
  records). It is not part of the fingerprint: upgrading advlab, or editing a comment, leaves runs resumable.
  Resuming with other code gives a :class:`ProvenanceWarning`; a change that alters records bumps a version
  in ``config`` instead, and that refuses the resume.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import warnings
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from .. import __version__
from ..runtime.lock import LOCK_NAME
from .records import RecordsFileError, atomic_write_text, read_batch_file, write_jsonl
from .specs import SpecError

RUN_SCHEMA = "advlab.run/2"

# The packages whose code computes a run's records (the attacks, the models, the data pipeline, the engine):
# their digest is the run's provenance. The report, the CLI and training do not change a record.
RECORD_SOURCES = ("attacks", "defenses", "models", "data", "evaluate")
# Keys of a run's configuration that only a new advlab changes: named in the message when they differ.
VERSION_KEYS = ("record_schema", "algorithms")


class ProvenanceWarning(UserWarning):
    """A run directory resumed by other advlab code than the one that started it (same record versions)."""


class RecordsFileWarning(UserWarning):
    """A records file that does not hold its whole batch (cut by a crash or damaged): it is recomputed."""


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
    """:func:`source_digest` of the running advlab: the provenance of the records it writes."""
    return source_digest(Path(__file__).resolve().parent.parent)


def provenance(package_root: str | Path | None = None) -> dict[str, Any]:
    """``run.json``'s provenance: the advlab version and the digest of the code under ``package_root``
    (default: the running advlab)."""
    digest = code_digest() if package_root is None else source_digest(package_root)
    return {"advlab_version": __version__, "code_sha256": digest}


def fingerprint_of(config: Mapping[str, Any]) -> str:
    """sha256 of a run's configuration as canonical JSON."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def _slug(attack_id: str) -> str:
    """A file-system-safe, collision-free folder name for an attack id."""
    readable = re.sub(r"[^A-Za-z0-9.=_-]+", "_", attack_id).strip("_")[:60]
    return f"{readable}-{hashlib.sha256(attack_id.encode()).hexdigest()[:8]}"


def _batch_name(batch: range) -> str:
    return f"{batch.start:09d}-{batch.stop:09d}.jsonl"


def _versions_changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two configurations' record versions, e.g. ``pgd algorithm 1 -> 2``."""
    out = []
    if old.get("record_schema") != new.get("record_schema"):
        out.append(f"record schema {old.get('record_schema')} -> {new.get('record_schema')}")
    before, after = old.get("algorithms") or {}, new.get("algorithms") or {}
    for name in sorted(set(before) & set(after)):
        if before[name] != after[name]:
            out.append(f"{name} algorithm {before[name]} -> {after[name]}")
    return out


class RunDirectory:
    """A run's folder: its configuration and fingerprint, the per-batch record files and the summary."""

    def __init__(self, path: str | Path, config: Mapping[str, Any], origin: Mapping[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.config = json.loads(json.dumps(config, sort_keys=True, default=str))
        self.fingerprint = fingerprint_of(self.config)
        self.provenance = dict(origin) if origin is not None else provenance()
        self._reported: set[Path] = set()  # damaged records files already warned about

    def open(self, replace: bool = False) -> bool:
        """Create the run, or check that the folder holds this very run. Returns True when resuming.

        A folder holding another advlab run (other settings, weights, data, record schema or attack versions)
        is refused, or with ``replace`` cleared of that run's ``run.json``, ``records/`` and ``summary.json``
        and started afresh (files a report wrote there stay until the new run overwrites them). A run written
        by other advlab code with the same configuration is resumed with a :class:`ProvenanceWarning`. A
        non-empty folder without ``run.json`` is always refused.
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
                self._check_provenance(old.get("provenance") or {})
                return True
            if not replace:
                raise SpecError(self._refusal(old.get("config") or {}))
            shutil.rmtree(self.path / "records", ignore_errors=True)
            shutil.rmtree(self.path / "adversarial", ignore_errors=True)  # --save-adversarial's examples
            (self.path / "summary.json").unlink(missing_ok=True)
            run_file.unlink()  # last: a replacement killed half-way is still recognised as an advlab run
        elif self.path.exists() and any(not _ignorable(p.name) for p in self.path.iterdir()):
            raise SpecError(
                f"{self.path} is not empty and holds no advlab run (no run.json); use an empty or new --out"
            )
        document = {
            "schema": RUN_SCHEMA,
            "fingerprint": self.fingerprint,
            "config": self.config,
            "provenance": self.provenance,
        }
        atomic_write_text(run_file, json.dumps(document, indent=2, sort_keys=True))
        return False

    def _check_provenance(self, old: Mapping[str, Any]) -> None:
        if old.get("code_sha256") == self.provenance.get("code_sha256"):
            return
        warnings.warn(
            f"{self.path} was started by other advlab code (advlab {old.get('advlab_version', '?')}, code "
            f"{str(old.get('code_sha256', '?'))[:12]}; this is advlab {self.provenance.get('advlab_version')}, "
            f"code {str(self.provenance.get('code_sha256'))[:12]}) with the same record schema and attack "
            "versions: resuming it",
            ProvenanceWarning,
            stacklevel=3,
        )

    def _refusal(self, old: Mapping[str, Any]) -> str:
        keys = sorted(k for k in set(old) | set(self.config) if old.get(k) != self.config.get(k))
        why = ", ".join(keys) or "schema"
        changed = _versions_changed(old, self.config)
        if changed:
            why += f" ({'; '.join(changed)}): its records were computed by another version of advlab's attacks"
        elif "code_sha256" in old:
            why += ": it was written by an advlab from before record versions (run.json schema 1)"
        return (
            f"{self.path} holds a different run (differs in: {why}); use another --out, "
            "or --replace (replace=True) to start that folder over"
        )

    def batch_file(self, attack_id: str, batch: range) -> Path:
        return self.path / "records" / _slug(attack_id) / _batch_name(batch)

    def done(self, attack_id: str, batch: range) -> bool:
        """Whether the batch's records file is on disk and whole. A file that is not (cut mid-line or at a line
        boundary, or naming another batch) is reported once by a :class:`RecordsFileWarning` naming its path,
        and counts as not done, so the run recomputes it (and replaces the file atomically)."""
        path = self.batch_file(attack_id, batch)
        if not path.exists():
            return False
        try:
            read_batch_file(path, batch)
        except RecordsFileError as e:
            if path not in self._reported:
                self._reported.add(path)
                warnings.warn(f"{e}; recomputing it", RecordsFileWarning, stacklevel=2)
            return False
        return True

    def read_batch(self, attack_id: str, batch: range) -> list[dict[str, Any]]:
        return read_batch_file(self.batch_file(attack_id, batch), batch)

    def write_batch(self, attack_id: str, batch: range, records: list[dict[str, Any]]) -> None:
        write_jsonl(self.batch_file(attack_id, batch), records, batch=batch)

    def read_records(self, attack_ids: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
        """All records on disk, per attack (the files of every batch and every shard written here), each file
        checked to be whole (:func:`~advlab.evaluate.records.read_batch_file`: a damaged one is a
        :class:`~advlab.evaluate.records.RecordsFileError` naming it, never fewer samples)."""
        out: dict[str, list[dict[str, Any]]] = {}
        for aid in attack_ids:
            folder = self.path / "records" / _slug(aid)
            files = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
            out[aid] = [r for f in files for r in read_batch_file(f, _batch_of(f))]
        return out


def _ignorable(name: str) -> bool:
    """Files that do not make a folder "not empty": the lock, a killed writer's temporary file, macOS's index."""
    return name in (".DS_Store", LOCK_NAME) or re.fullmatch(r"\..+\.tmp-\d+", name) is not None


def _batch_of(path: Path) -> range:
    """The batch a records file names (``000000016-000000032.jsonl``)."""
    match = re.fullmatch(r"(\d{9})-(\d{9})\.jsonl", path.name)
    if match is None:
        raise RecordsFileError(f"{path} is not a records file advlab wrote (expected START-STOP.jsonl); remove it")
    return range(int(match.group(1)), int(match.group(2)))
