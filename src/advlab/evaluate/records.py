"""Per-sample records, their files, and the summary computed from them.

A record is one sample under one attack, a flat JSON object (see docs/evaluate.md for every field). Records
are written as JSON Lines, one file per (attack, batch), each file created atomically (temp file, fsync,
rename), so a run directory only ever holds whole batches: a process killed at any moment (SIGKILL included)
leaves either the complete file or none.

:func:`summarize` is a pure function of the records: it sorts them by sample index and uses exactly rounded
sums (``math.fsum``), so it gives the identical summary whatever the order or the grouping of the records
(one process or several ranks, a run in one go or resumed).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import RunError
from ..runtime.files import atomic_write_bytes

# An element counts towards L0 when it moved by more than float round-off (CW's tanh change of variables
# moves every pixel by ~1e-7 without meaning to).
L0_TOL = 1e-5
TOPK = 5
# The sizes of its point every record states (perturbation_norms).
RECORD_NORMS = ("l0", "l1", "l2", "linf")
# The version of the record format and of what its fields mean, part of every run's fingerprint: BUMP it in
# the change that adds, removes or redefines a field (or L0_TOL, TOPK), so older run directories are refused
# instead of mixed with new records.
RECORD_SCHEMA_VERSION = 5  # 2: batch files end with an end-of-batch line; strict JSON
# (never NaN); minimal-norm attacks' records carry ``distance`` (evaluate/robustness.py); 3: every adversarial
# prediction is the expected one over the run's largest eot_samples, as the clean one (evaluate/engine.py);
# 4: a random model's clean and adversarial predictions are judged on common draws (per-sample streams for
# advlab's random defences, one seed per batch for torch's global generator; engine.py's _Judge); 5: records carry
# ``l1``, and L1 sweep curves and the L1 cross-check bound a sample by its point's measured L1 size


class NonFiniteError(RunError):
    """A model gave non-finite logits (NaN or infinity) for a sample: no record of it could be true."""


# --------------------------------------------------------------------------------------------- building


def topk(logits: Tensor, k: int = TOPK) -> tuple[list[list[int]], list[list[float]]]:
    """Top-k classes and their softmax probabilities per row (k capped at the number of classes)."""
    k = min(k, logits.shape[1])
    probs = torch.softmax(logits.detach().double(), dim=1)
    values, classes = probs.topk(k, dim=1)
    return classes.tolist(), [[float(v) for v in row] for row in values.tolist()]


def perturbation_norms(x: Tensor, x_adv: Tensor) -> dict[str, list[float]]:
    """Per sample, the norms of x_adv - x in pixel units (float64): ``l0`` (elements moved by more than
    :data:`L0_TOL`, a whole number), ``l1``, ``l2`` and ``linf``."""
    delta = (x_adv.detach().double() - x.detach().double()).flatten(1)
    a = delta.abs()
    return {
        "l0": [float(v) for v in (a > L0_TOL).sum(dim=1).tolist()],
        "l1": a.sum(dim=1).tolist(),
        "l2": delta.norm(p=2, dim=1).tolist(),
        "linf": a.amax(dim=1).tolist() if delta.shape[1] else [0.0] * delta.shape[0],
    }


def make_records(
    *,
    indices: Sequence[int],
    labels: Sequence[int],
    targets: Sequence[int] | None,
    clean: tuple[list[list[int]], list[list[float]]],
    adv: tuple[list[list[int]], list[list[float]]],
    norms: Mapping[str, Sequence[float]],
    seconds: float,
    attack: str = "the attack",
) -> list[dict[str, Any]]:
    """Records for one batch under one attack. ``seconds`` (the attack's wall time) is shared out equally.

    Raises:
        NonFiniteError: the model's logits for a sample (clean, or on its adversarial image under ``attack``)
            are NaN or infinite, or the adversarial image is: such a record would claim a result (a wrong
            top-1 counted as a success) that was never computed, so the sample is named instead.
    """
    n = len(indices)
    records = []
    for i in range(n):
        check_finite(int(indices[i]), attack, clean[1][i], adv[1][i], [norms[k][i] for k in ("l1", "l2", "linf")])
        label = int(labels[i])
        target = None if targets is None else int(targets[i])
        adv_top = adv[0][i]
        if target is None:
            success, success5 = adv_top[0] != label, label not in adv_top
        else:
            success, success5 = adv_top[0] == target, target in adv_top
        records.append(
            {
                "index": int(indices[i]),
                "label": label,
                "target": target,
                "clean_top5": clean[0][i],
                "clean_probs": clean[1][i],
                "adv_top5": adv_top,
                "adv_probs": adv[1][i],
                "success": bool(success),
                "success_top5": bool(success5),
                "l0": int(norms["l0"][i]),
                "l1": norms["l1"][i],
                "l2": norms["l2"][i],
                "linf": norms["linf"][i],
                "time_s": seconds / n,
                "from": None,
            }
        )
    return records


def check_finite(
    index: int, attack: str, clean_probs: Sequence[float], adv_probs: Sequence[float], norms: Sequence[float]
) -> None:
    """Raise :class:`NonFiniteError` naming the sample and the attack when a number of its record is not
    finite (softmax of a NaN or +inf logit is NaN)."""
    for what, values in (
        ("the model's clean logits are", clean_probs),
        ("the model's logits on its adversarial image are", adv_probs),
        ("its adversarial image is", norms),
    ):
        if not all(math.isfinite(v) for v in values):
            raise NonFiniteError(
                f"sample {index}, attack {attack}: {what} not finite (NaN or infinity); "
                "check the model and weights (e.g. with advlab.evaluate.sanity), nothing was recorded for it"
            )


def strength(record: Mapping[str, Any]) -> tuple[bool, bool]:
    """Order of records of one sample under several attacks: the larger is the worse case for the model.

    Untargeted, ``label not in top-5`` implies ``top-1 != label``; targeted, ``target is top-1`` implies
    ``target in top-5``; so this one order is the per-sample worst case for both top-1 and top-5 numbers.
    """
    if record["target"] is None:
        return record["success_top5"], record["success"]
    return record["success"], record["success_top5"]


def fully_broken(record: Mapping[str, Any]) -> bool:
    """No stronger outcome exists for this sample: no later attack can make its numbers worse."""
    return bool(record["success"] and record["success_top5"])


# ------------------------------------------------------------------------------------------------- files


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers (and a restarted run) see the old file or the new one, whole;
    a full disk is a :class:`~advlab.runtime.files.DiskFullError` naming ``path``."""
    atomic_write_bytes(path, text.encode("utf-8"))


def dumps_strict(obj: Any, **kwargs: Any) -> str:
    """JSON with every number finite: a NaN or infinity (not JSON) is a :class:`NonFiniteError` naming it."""
    try:
        return json.dumps(obj, allow_nan=False, **kwargs)
    except ValueError as e:
        raise NonFiniteError(f"refusing to write a non-finite number as JSON ({e})") from None


def batch_trailer(batch: range, n_records: int) -> dict[str, Any]:
    """The last line of a batch's records file: which batch it holds and how many records, so that a file cut
    at a line boundary is recognised as incomplete instead of read as a batch with fewer samples."""
    return {"end_of_batch": {"start": batch.start, "stop": batch.stop, "n_records": n_records}}


def write_jsonl(path: Path, records: Iterable[Mapping[str, Any]], batch: range | None = None) -> None:
    """Records as JSON Lines (strict JSON), atomically; with ``batch``, closed by :func:`batch_trailer`."""
    records = list(records)
    lines = [dumps_strict(r, sort_keys=True) for r in records]
    if batch is not None:
        lines.append(dumps_strict(batch_trailer(batch, len(records)), sort_keys=True))
    atomic_write_text(path, "".join(line + "\n" for line in lines))


class RecordsFileError(RunError):
    """A records file that is not whole: cut mid-line or at a line boundary, or not the batch it names."""


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON Lines file; a line that is not JSON is a :class:`RecordsFileError` naming
    the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise RecordsFileError(f"{path} is not UTF-8 text ({e}): the file is damaged") from None
    out = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise RecordsFileError(f"{path}:{lineno} is not a JSON line ({e}): the file is cut or damaged") from None
    return out


def read_batch_file(path: Path, batch: range) -> list[dict[str, Any]]:
    """The records of one batch file, checked to be whole: its last line is the :func:`batch_trailer` of
    ``batch`` with the number of records before it, and every record's index lies in ``batch``.

    Raises:
        RecordsFileError: naming ``path`` and what is wrong.
    """
    rows = read_jsonl(path)
    expected = batch_trailer(batch, len(rows) - 1)
    if not rows or rows[-1] != expected:
        got = rows[-1].get("end_of_batch") if rows and isinstance(rows[-1], dict) else None
        why = "its end-of-batch line is missing (cut short)" if got is None else f"its end-of-batch line says {got}"
        raise RecordsFileError(
            f"{path} does not hold the whole batch {batch.start}..{batch.stop - 1}: {why}, "
            f"{max(len(rows) - (got is not None), 0)} record line(s)"
        )
    records = rows[:-1]
    outside = [r.get("index") for r in records if not (isinstance(r, dict) and r.get("index") in batch)]
    if outside:
        raise RecordsFileError(f"{path} holds samples {outside[:5]} outside its batch {batch.start}..{batch.stop - 1}")
    return records


# ---------------------------------------------------------------------------------------------- summary


def _rate(count: int, n: int) -> float | None:
    return count / n if n else None


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "median": None, "max": None}
    values = sorted(values)
    return {"mean": math.fsum(values) / len(values), "median": statistics.median(values), "max": values[-1]}


def _norm_stats(records: list[Mapping[str, Any]]) -> dict[str, dict[str, float | None]]:
    return {key: _stats([float(r[key]) for r in records]) for key in RECORD_NORMS}


def _dedupe(records: Iterable[Mapping[str, Any]], what: str) -> list[Mapping[str, Any]]:
    """Records sorted by index; a sample present twice must have identical records (e.g. merged shards)."""
    by_index: dict[int, Mapping[str, Any]] = {}
    for r in records:
        i = int(r["index"])
        old = by_index.get(i)
        if old is not None and {k: v for k, v in old.items() if k != "time_s"} != {
            k: v for k, v in r.items() if k != "time_s"
        }:
            raise ValueError(f"{what}: sample {i} has two different records; were two different runs mixed?")
        by_index.setdefault(i, r)
    return [by_index[i] for i in sorted(by_index)]


def summarize_attack(records: Iterable[Mapping[str, Any]], what: str = "attack") -> dict[str, Any]:
    """The numbers of one attack from its per-sample records (order-independent, deterministic).

    Accuracies are of the true label; for targeted attacks ``success_rate`` counts only samples whose target
    differs from their label (a given target class can equal a sample's own label).
    """
    rs = _dedupe(records, what)
    n = len(rs)
    clean1 = sum(r["clean_top5"][0] == r["label"] for r in rs)
    clean5 = sum(r["label"] in r["clean_top5"] for r in rs)
    adv1 = sum(r["adv_top5"][0] == r["label"] for r in rs)
    adv5 = sum(r["label"] in r["adv_top5"] for r in rs)
    targeted = any(r["target"] is not None for r in rs)
    eligible = [r for r in rs if r["target"] is None or r["target"] != r["label"]]
    succ = [r for r in eligible if r["success"]]
    succ5 = sum(r["success_top5"] for r in eligible)
    correct = [r for r in eligible if r["clean_top5"][0] == r["label"]]
    summary: dict[str, Any] = {
        "n": n,
        "targeted": targeted,
        "clean_top1": _rate(clean1, n),
        "clean_top5": _rate(clean5, n),
        "adv_top1": _rate(adv1, n),
        "adv_top5": _rate(adv5, n),
        "n_eligible": len(eligible),
        "success_rate": _rate(len(succ), len(eligible)),
        "success_rate_top5": _rate(succ5, len(eligible)),
        "success_rate_on_clean_correct": _rate(sum(r["success"] for r in correct), len(correct)),
        "misclassified_top1": _rate(n - adv1, n),
        "misclassified_top5": _rate(n - adv5, n),
        "norms": _norm_stats(list(rs)),
        "norms_successful": _norm_stats(succ),
        "n_from_other_attacks": sum(r.get("from") is not None for r in rs),
        "time_s": math.fsum(float(r["time_s"]) for r in rs),
    }
    # A suite's own stages only: a record copied from an attack it was chained on (``from``) is counted under
    # n_from_other_attacks, and its broken_by (if that attack is a suite too) numbers that suite's stages.
    broken_by = [r["extras"]["broken_by"] for r in rs if "broken_by" in (r.get("extras") or {}) and not r.get("from")]
    if broken_by:
        summary["broken_by_counts"] = {str(k): broken_by.count(k) for k in sorted(set(broken_by))}
    return summary


def summarize(records: Mapping[str, Iterable[Mapping[str, Any]]]) -> dict[str, Any]:
    """Summary of a run from its records, ``{attack id: records}`` (any order, any grouping into shards).

    Every number except the ``time_s`` fields is a deterministic function of the set of records.
    """
    lists = {aid: list(rs) for aid, rs in records.items()}
    attacks = {aid: summarize_attack(rs, aid) for aid, rs in lists.items()}
    clean_by_index: dict[int, Mapping[str, Any]] = {}
    for rs in lists.values():
        for r in rs:
            clean_by_index.setdefault(int(r["index"]), r)
    n = len(clean_by_index)
    top1 = sum(r["clean_top5"][0] == r["label"] for r in clean_by_index.values())
    top5 = sum(r["label"] in r["clean_top5"] for r in clean_by_index.values())
    return {
        "clean": {"n": n, "top1": _rate(top1, n), "top5": _rate(top5, n)},
        "attacks": attacks,
    }
