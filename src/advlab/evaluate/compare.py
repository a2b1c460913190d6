"""Two attacks compared per sample: the paired table and the exact McNemar test (``advlab compare``).

Two attacks of one run, or of two runs on the same samples, are paired observations: each sample is broken
by both, by A only, by B only or by neither. Whether A is stronger than B is decided by the discordant
samples only (:func:`advlab.evaluate.intervals.mcnemar_exact`); comparing the two robust accuracies as if
they were independent would waste the pairing and, on small runs, claim differences that are noise.

:func:`load_run` opens a finished run directory (run.json, summary.json, the records) without the model;
:func:`compare_attacks` pairs two attacks' records and refuses pairs that are not on the same samples.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import MissingInputError
from .intervals import Paired, fmt_interval, proportion
from .rundir import RunDirectory
from .specs import SpecError


@dataclass(frozen=True)
class FinishedRun:
    """A run directory as written by :func:`advlab.evaluate.evaluate`: its configuration, summary and records."""

    path: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    records: dict[str, list[dict[str, Any]]]

    @property
    def attack_ids(self) -> list[str]:
        return [str(a["id"]) for a in self.config.get("attacks", [])]

    def attack(self, attack_id: str | None) -> str:
        """The attack id to use: ``attack_id`` if the run has it, else the run's only attack."""
        ids = self.attack_ids
        if attack_id is None:
            if len(ids) == 1:
                return ids[0]
            raise SpecError(f"{self.path} holds {len(ids)} attacks; name one of: {', '.join(ids)}")
        if attack_id not in ids:
            raise SpecError(f"{self.path} has no attack {attack_id!r}; its attacks: {', '.join(ids)}")
        return attack_id


def load_run(path: str | Path) -> FinishedRun:
    """Open a run directory (run.json and summary.json must exist: an ``advlab eval`` run that has finished,
    or been summarised after a stop); the records are read from its batch files."""
    p = Path(path)
    run_file, summary_file = p / "run.json", p / "summary.json"
    if not p.is_dir():
        raise MissingInputError(f"run directory {p} does not exist")
    for f in (run_file, summary_file):
        if not f.is_file():
            raise SpecError(f"{p} is not a finished advlab run ({f.name} is missing); give a folder advlab eval wrote")
    try:
        run = json.loads(run_file.read_text(encoding="utf-8"))
        summary = json.loads(summary_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise SpecError(f"{p} is half-written or damaged ({e}); rerun the advlab eval command to finish it") from None
    config = run.get("config") or {}
    ids = [str(a["id"]) for a in config.get("attacks", [])]
    records = RunDirectory(p, config, origin=run.get("provenance") or {}).read_records(ids)
    return FinishedRun(p, config, summary, records)


def _samples(run: FinishedRun, attack_id: str) -> dict[int, int]:
    """Sample index -> label of one attack's records; refuses an attack whose batches are not all written."""
    recs = run.records.get(attack_id, [])
    entry = next((a for a in run.summary.get("attacks", []) if a.get("id") == attack_id), {})
    if not entry.get("complete", False):
        raise SpecError(f"{run.path}: attack {attack_id!r} did not finish; rerun its advlab eval command first")
    return {int(r["index"]): int(r["label"]) for r in recs}


def same_samples(a: FinishedRun, b: FinishedRun) -> None:
    """Refuse two runs that did not attack the same samples (other data, selection, or a model-dependent
    subset chosen by another model)."""
    da, db = a.config.get("data", {}), b.config.get("data", {})
    differs = sorted(k for k in set(da) | set(db) if da.get(k) != db.get(k))
    if differs:
        raise SpecError(
            f"{a.path} and {b.path} attacked different samples (data differs in: {', '.join(differs)}); "
            "compare runs on the same data and selection"
        )
    if da.get("subset") and a.config["model"].get("state_dict_sha256") != b.config["model"].get("state_dict_sha256"):
        raise SpecError(
            f"{a.path} and {b.path} used --subset (correctly classified images of each run's own model) with "
            "different models, so their samples differ; compare with --limit or --sample instead"
        )


def compare_attacks(a: FinishedRun, attack_a: str, b: FinishedRun, attack_b: str) -> Paired:
    """The paired table of two attacks (``success`` per sample), after checking they ran on the same samples."""
    if a.path.resolve() != b.path.resolve():
        same_samples(a, b)
    sa, sb = _samples(a, attack_a), _samples(b, attack_b)
    if sa != sb:
        only = len(set(sa) ^ set(sb)) or sum(sa[i] != sb[i] for i in sa)
        raise SpecError(
            f"{a.path}:{attack_a} and {b.path}:{attack_b} do not hold the same samples ({only} differ in index or "
            "label); compare attacks on the same samples"
        )
    broken_a = {int(r["index"]) for r in a.records[attack_a] if r["success"]}
    broken_b = {int(r["index"]) for r in b.records[attack_b] if r["success"]}
    n = len(sa)
    both = len(broken_a & broken_b)
    a_only, b_only = len(broken_a - broken_b), len(broken_b - broken_a)
    return Paired(both=both, a_only=a_only, b_only=b_only, neither=n - both - a_only - b_only)


def comparison_lines(paired: Paired, name_a: str, name_b: str, alpha: float = 0.05) -> list[str]:
    """The paired table, each attack's success rate with its 95% interval, and the exact McNemar verdict."""
    n = paired.n
    width = max(len("A not broken"), 12)
    rate_a = proportion(paired.both + paired.a_only, n) if n else None
    rate_b = proportion(paired.both + paired.b_only, n) if n else None
    p = paired.p_value
    if paired.a_only == paired.b_only:
        verdict = "no difference between the attacks on these samples"
    else:
        stronger = "A" if paired.a_only > paired.b_only else "B"
        verdict = (
            f"{stronger} is stronger (p < {alpha})"
            if p < alpha
            else f"no significant difference at the {alpha} level ({stronger} broke more, which chance explains)"
        )
    return [
        f"A = {name_a}: success {fmt_interval(rate_a)}",
        f"B = {name_b}: success {fmt_interval(rate_b)}",
        f"{'':{width}}  {'B broken':>10}  {'B not broken':>12}",
        f"{'A broken':{width}}  {paired.both:>10}  {paired.a_only:>12}",
        f"{'A not broken':{width}}  {paired.b_only:>10}  {paired.neither:>12}",
        f"n = {n} samples: broken by both {paired.both}, by A only {paired.a_only}, by B only {paired.b_only}, "
        f"by neither {paired.neither}",
        f"exact McNemar test (two-sided, {paired.a_only + paired.b_only} discordant samples): p = {p:.4g}; {verdict}",
    ]


def compare_runs(
    run_a: str | Path, run_b: str | Path | None = None, attack_a: str | None = None, attack_b: str | None = None
) -> tuple[Paired, list[str]]:
    """``advlab compare``: two attacks of one run (``run_b`` None) or of two runs; returns the table and lines.
    Within one run both attacks must be named (or the run must hold exactly two)."""
    a = load_run(run_a)
    b = a if run_b is None else load_run(run_b)
    if run_b is None and (attack_a is None or attack_b is None):
        ids = a.attack_ids
        if len(ids) != 2 or attack_a is not None or attack_b is not None:
            raise SpecError(
                f"comparing within one run needs the two attacks named (--attack-a, --attack-b); "
                f"{a.path} holds: {', '.join(ids)}"
            )
        attack_a, attack_b = ids
    ia, ib = a.attack(attack_a), b.attack(attack_b)
    paired = compare_attacks(a, ia, b, ib)
    return paired, comparison_lines(paired, f"{a.path}:{ia}", f"{b.path}:{ib}")
