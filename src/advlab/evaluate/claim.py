"""A shareable claim (``advlab eval --claim claim.json``), checked by ``advlab verify RUN_DIR --claim``.

In the spirit of a leaderboard entry (RobustBench's model cards), but with the evidence named: the model and
its weights hash, the data and the sample ids, per threat model (norm, eps) the clean and robust accuracy
with 95% Wilson intervals and sample counts, the attacks and their budgets, the advlab version, the run's
fingerprint and date. The robust accuracy of a threat model is the per-sample worst case over all the run's
evidence for it: every untargeted attack of that norm at that eps or a smaller one (a sample counts as robust
only if none of them changed its top-1) and every untargeted minimal-norm attack of that norm (a sample it
found an adversarial point for within eps is not robust), which is at most the lowest single attack's accuracy.

:func:`make_claim` is a function of the run's configuration, summary and records, so :func:`check_claim`
recomputes it from a run directory and names every field that differs (the date excepted).
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from .compare import FinishedRun, load_run
from .intervals import proportion
from .records import atomic_write_text
from .robustness import record_distance
from .saved import ball_of
from .specs import MINIMAL_ATTACKS, SpecError, attack_norm

CLAIM_SCHEMA = "advlab.claim/2"  # 2: a threat model takes smaller eps and minimal-norm evidence


class ThreatModel(NamedTuple):
    """One (norm, eps) of a run: the attacks whose records it takes and, per sample index, whether it is robust."""

    norm: str
    eps: float
    attacks: list[Mapping[str, Any]]
    robust: dict[int, bool]


def robust_per_threat_model(
    attacks: Sequence[Mapping[str, Any]], records: Mapping[str, Sequence[Mapping[str, Any]]]
) -> list[ThreatModel]:
    """Per (norm, eps) of the untargeted fixed-eps attacks (run.json's ``attacks``), sorted: the per-sample worst
    case over all the run's evidence for it. A sample is robust only if no untargeted attack of that norm at that
    eps or a smaller one (a point in a smaller ball lies in this one) changed its top-1, and no untargeted
    minimal-norm attack of that norm found an adversarial point within eps (or it was misclassified)."""
    balls: dict[str, tuple[str, float]] = {}
    minimal: dict[str, str] = {}
    for a in attacks:
        if a.get("targeted"):
            continue
        name, params = str(a["name"]), a.get("params") or {}
        ball = ball_of(name, params)
        if ball is not None:
            balls[str(a["id"])] = ball
        elif name in MINIMAL_ATTACKS and (norm := attack_norm(name, params)) is not None:
            minimal[str(a["id"])] = norm
    by_id = {str(a["id"]): a for a in attacks}
    out = []
    for norm, eps in sorted(set(balls.values())):
        within = [aid for aid, (n, e) in balls.items() if n == norm and e <= eps]
        measured = [aid for aid, n in minimal.items() if n == norm]
        robust: dict[int, bool] = {}
        for aid in within:
            for r in records.get(aid, []):
                i = int(r["index"])
                robust[i] = robust.get(i, True) and r["adv_top5"][0] == r["label"]
        for aid in measured:
            for r in records.get(aid, []):
                i = int(r["index"])
                broken = r["clean_top5"][0] != r["label"] or record_distance(r) <= eps
                robust[i] = robust.get(i, True) and not broken
        out.append(ThreatModel(norm, eps, [by_id[aid] for aid in [*within, *measured]], robust))
    return out


def threat_models(run: FinishedRun) -> list[dict[str, Any]]:
    """Per (norm, eps): the per-sample worst-case robust accuracy and the attacks it took
    (:func:`robust_per_threat_model`)."""
    return [
        {
            "norm": tm.norm,
            "eps": tm.eps,
            "robust_top1": proportion(sum(tm.robust.values()), len(tm.robust)),
            "attacks": [{"id": a["id"], "name": a["name"], "params": a.get("params") or {}} for a in tm.attacks],
        }
        for tm in robust_per_threat_model(run.config.get("attacks", []), run.records)
    ]


def make_claim(run: FinishedRun, *, date: str | None = None) -> dict[str, Any]:
    """The claim of a finished run (see the module docstring); ``date`` defaults to now (UTC)."""
    s, cfg = run.summary, run.config
    m, d = cfg["model"], cfg["data"]
    clean = (s.get("clean") or {}).get("ci95", {}).get("top1")
    return {
        "schema": CLAIM_SCHEMA,
        "model": {"name": m.get("name"), "weights": m.get("weights"), "state_dict_sha256": m.get("state_dict_sha256")},
        "data": {
            key: d[key]
            for key in ("source", "provenance", "n_samples", "subset", "sample", "limit", "sample_indices")
            if key in d
        },
        "seed": cfg.get("seed"),
        "clean_top1": clean,
        "threat_models": threat_models(run),
        "complete": bool(s.get("complete")),
        "advlab_version": s.get("advlab_version"),
        "run_fingerprint": s.get("fingerprint"),
        "date": date or _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _diff(a: Any, b: Any, where: str, out: list[str]) -> None:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in sorted(set(a) | set(b)):
            _diff(a.get(key), b.get(key), f"{where}.{key}" if where else str(key), out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            _diff(x, y, f"{where}[{k}]", out)
    elif isinstance(a, float) and isinstance(b, float):
        if abs(a - b) > 1e-12:
            out.append(f"{where}: the claim says {a!r}, the run gives {b!r}")
    elif a != b:
        out.append(f"{where}: the claim says {a!r}, the run gives {b!r}")


def check_claim(claim: Mapping[str, Any], run: FinishedRun) -> Sequence[str]:
    """Every field of ``claim`` that the run does not reproduce (one line each; empty when it holds)."""
    out: list[str] = []
    if claim.get("schema") != CLAIM_SCHEMA:
        return [f"schema: the claim says {claim.get('schema')!r}, expected {CLAIM_SCHEMA!r}"]
    mine = make_claim(run, date=str(claim.get("date")))
    _diff(dict(claim), mine, "", out)
    return out


def write_claim(run_dir: str | Path, path: str | Path) -> dict[str, Any]:
    """Write the claim of a finished run directory to ``path`` (JSON); returns it."""
    claim = make_claim(load_run(run_dir))
    atomic_write_text(Path(path), json.dumps(claim, indent=2) + "\n")
    return claim


def read_claim(path: str | Path) -> dict[str, Any]:
    """A claim file, refused in one line when missing or not a claim."""
    p = Path(path)
    try:
        claim = json.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise SpecError(f"claim file {p} cannot be read ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise SpecError(f"claim file {p} is not JSON ({e})") from None
    if isinstance(claim, dict) and claim.get("schema") == "advlab.claim/1":
        raise SpecError(
            f"{p} is a claim of an older advlab (schema advlab.claim/1: a threat model took the attacks at that exact "
            f"eps only); write the run's claim again with advlab report RUN_DIR --claim {p.name} (schema "
            f"{CLAIM_SCHEMA}: smaller eps and minimal-norm evidence count too)"
        )
    if not isinstance(claim, dict) or claim.get("schema") != CLAIM_SCHEMA:
        raise SpecError(
            f"{p} is not an advlab claim (schema {CLAIM_SCHEMA}); write one with advlab eval --claim or advlab report "
            "RUN_DIR --claim"
        )
    return claim
