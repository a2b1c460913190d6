"""summary.json against the run it describes, for :func:`advlab.evaluate.verify.verify_run` (review 2, F3, F12).

The report, the claim and the CLI lines are read from summary.json; verify checks the examples against run.json's
configuration and the records. So summary.json must describe that very run and those very records:

- :func:`identity_mismatches`: its ``fingerprint`` is the sha256 of run.json's configuration, its ``model``,
  ``data``, ``seed``, ``batch_size`` and ``n_samples`` are run.json's, and every attack appears exactly once with
  the spec fields run.json gives it (name, params incl. eps and norm, targeted, target, only_unbroken) and the
  label those make (:meth:`~advlab.evaluate.specs.AttackSpec.describe`, what reports and the CLI print);
- :func:`count_mismatches`: each attack's n, eligible count, robust top-1 and success counts and rates equal the
  counts verify's own forward passes give;
- :func:`rebuilt_mismatches`: everything else summary.json states from the records (per attack every statistic
  and interval, a suite's ``stages`` and ``broken_by``, the uint8 counts, the minimal-norm ``curve``; the clean
  accuracy; the ``robustness`` section's curves, median eps*, AUC and cross-check; the checks a summary answers)
  equals what :func:`~advlab.evaluate.summary.build_summary`, the code that wrote it, gives from the records
  verify read and checked (review 2, F9). Timings (``time_s``, ``wall_s``) are not compared; floats agree to a
  relative 1e-9 (the same code on another machine); the spec fields are :func:`identity_mismatches`' business.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from .compare import FinishedRun
from .rundir import fingerprint_of
from .specs import AttackSpec, make_spec
from .summary import build_summary

TIMINGS = frozenset({"time_s", "wall_s"})
FLOAT_RTOL = 1e-9
MAX_PER_PART = 5  # differences listed per attack (and for the run's own sections); all make verify fail


def specs_of(config: Mapping[str, Any]) -> list[AttackSpec]:
    """The attack specs of a run, rebuilt from run.json's configuration."""
    return [
        make_spec(
            str(a["name"]),
            a.get("params") or {},
            id=str(a["id"]),
            target=a.get("target"),
            only_unbroken=a.get("only_unbroken") or (),
        )
        for a in config.get("attacks", [])
    ]


def _plain(value: Any) -> Any:
    """``value`` as JSON gives it back (tuples as lists, sorted keys irrelevant): what summary.json holds."""
    return json.loads(json.dumps(value, default=str))


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def identity_mismatches(run: FinishedRun, specs: Sequence[AttackSpec]) -> list[str]:
    """summary.json's description of the run (fingerprint, model, data, seed, batch size, each attack's spec and
    label) against run.json's configuration (review 2, F12): a summary.json that says eps 8/255 for examples
    checked at 1/255 would make the report and the claim say "robust at 8/255"."""
    s, cfg = run.summary, run.config
    out = []
    want = fingerprint_of(cfg)
    if s.get("fingerprint") != want:
        out.append(
            f"summary.json: fingerprint {str(s.get('fingerprint'))[:12]} is not the run's {want[:12]} (the sha256 "
            "of run.json's configuration): the summary describes another run"
        )
    expected = {
        "model": cfg.get("model"),
        "data": cfg.get("data"),
        "seed": cfg.get("seed"),
        "batch_size": cfg.get("batch_size"),
        "n_samples": (cfg.get("data") or {}).get("n_samples"),
    }
    for key, value in expected.items():
        if _plain(s.get(key)) != _plain(value):
            out.append(f"summary.json: its {key} {_short(s.get(key))} is not run.json's {_short(value)}")
    by_id: dict[str, list[Mapping[str, Any]]] = {}
    for a in s.get("attacks", []):
        by_id.setdefault(str(a.get("id")), []).append(a)
    for spec in specs:  # every attack of the run once: one dropped from the summary would vanish from its report
        entries = by_id.get(spec.id, [])
        if len(entries) != 1:
            out.append(f"summary.json: lists attack {spec.id} {len(entries)} times, the run ran it once")
            continue
        fields = _plain({**spec.to_dict(), "label": spec.describe()})
        for key, value in fields.items():
            if _plain(entries[0].get(key)) != value:
                out.append(
                    f"summary.json: attack {spec.id}'s {key} is {_short(entries[0].get(key))}, run.json's gives "
                    f"{_short(value)}"
                )
    for aid in sorted(set(by_id) - {spec.id for spec in specs}):
        out.append(f"summary.json: attack {aid} is not in the run's configuration")
    return out


def count_mismatches(
    summary: Mapping[str, Any],
    checked: Mapping[str, int],
    robust: Mapping[str, int],
    success: Mapping[str, int],
    eligible: Mapping[str, int],
    incomplete: set[str],
) -> list[str]:
    """Each attack's n, eligible count, robust top-1 and success counts and rates in summary.json against the counts
    verify's forward passes give (never gated on a number summary.json supplies). An attack with a record that
    could not be checked (reported already) is skipped: its counts would differ for that reason alone."""
    out = []
    for a in summary.get("attacks", []):
        aid = a["id"]
        if aid not in checked or aid in incomplete:
            continue
        if int(a.get("n") or 0) != checked[aid]:
            out.append(f"summary.json: {aid} counts n={a.get('n')} samples, {checked[aid]} were checked")
        if a.get("n_eligible") is not None and int(a["n_eligible"]) != eligible[aid]:
            out.append(f"summary.json: {aid} counts {a['n_eligible']} eligible samples, the records {eligible[aid]}")
        ci = a.get("ci95") or {}
        for key, got_k in (("adv_top1", robust[aid]), ("success_rate", success[aid])):
            want_k = (ci.get(key) or {}).get("k")
            if want_k is None and a.get(key) is not None:
                want_k = round(a[key] * (a["n"] if key == "adv_top1" else a["n_eligible"]))
            if want_k is not None and want_k != got_k:
                out.append(f"summary.json: {aid} {key} counts {want_k} samples, recomputed {got_k}")
            value = a.get(key)
            den = a.get("n") if key == "adv_top1" else a.get("n_eligible")
            if value is not None and den and abs(float(value) - got_k / float(den)) > 1e-9:
                out.append(f"summary.json: {aid} {key} is {value}, recomputed {got_k}/{den}")
    return out


def _differences(path: str, want: Any, got: Any, out: list[str]) -> None:
    """Where ``got`` (summary.json) differs from ``want`` (rebuilt), as ``path: summary.json ..., records ...``."""
    if isinstance(want, dict):
        if not isinstance(got, dict):
            out.append(f"{path} is {_short(got)}, the records give {_short(want)}")
            return
        for key, value in want.items():
            if key in TIMINGS:
                continue
            if key not in got:
                out.append(f"{path}.{key} is missing, the records give {_short(value)}")
            else:
                _differences(f"{path}.{key}", value, got[key], out)
    elif isinstance(want, list) and isinstance(got, list) and len(want) == len(got):
        for k, (w, g) in enumerate(zip(want, got, strict=True)):
            _differences(f"{path}[{k}]", w, g, out)
    elif (
        isinstance(want, float | int)
        and isinstance(got, float | int)
        and not isinstance(want, bool)
        and not isinstance(got, bool)
    ):
        if abs(float(want) - float(got)) > FLOAT_RTOL * max(abs(float(want)), 1e-300):
            out.append(f"{path} is {got!r}, the records give {want!r}")
    elif want != got:
        out.append(f"{path} is {_short(got)}, the records give {_short(want)}")


def _capped(found: list[str]) -> list[str]:
    return found[:MAX_PER_PART] + ([f"... and {len(found) - MAX_PER_PART} more"] if len(found) > MAX_PER_PART else [])


def rebuilt_mismatches(
    run: FinishedRun, specs: Sequence[AttackSpec], records: Mapping[str, Sequence[Mapping[str, Any]]]
) -> list[str]:
    """summary.json's statistics against :func:`~advlab.evaluate.summary.build_summary` of ``records`` (the ones
    verify read batch by batch and checked), module docstring."""
    try:
        rebuilt = build_summary(
            {aid: list(rs) for aid, rs in records.items()},
            specs,
            run.config,
            fingerprint=fingerprint_of(run.config),
            complete={s.id: True for s in specs},
        )
    except (ValueError, KeyError, TypeError) as e:  # records no advlab run writes (reported per record above)
        return [f"summary.json: cannot be recomputed from the records ({type(e).__name__}: {e})"]
    want, got = _plain(rebuilt), run.summary
    out: list[str] = []
    spec_keys = {*_plain(specs[0].to_dict()), "label"} if specs else set()
    entries = {str(a.get("id")): a for a in got.get("attacks", [])}
    for a in want["attacks"]:
        if a["id"] not in entries:  # reported by identity_mismatches
            continue
        found: list[str] = []
        _differences(f"attack {a['id']}", {k: v for k, v in a.items() if k not in spec_keys}, entries[a["id"]], found)
        out += found[:MAX_PER_PART] + (
            [f"... and {len(found) - MAX_PER_PART} more"] if len(found) > MAX_PER_PART else []
        )
    found = []
    for key in ("complete", "n_unreadable", "clean", "robustness"):
        if key in want or key in got:
            _differences(key, want.get(key), got.get(key), found)
    checks = (want.get("sanity") or {}).get("checks") or []
    stated = (got.get("sanity") or {}).get("checks") or []
    if checks:  # the checks the summary answers follow those run on the model (advlab eval --sanity)
        _differences("sanity.checks", checks, stated[len(stated) - len(checks) :] if len(stated) >= len(checks)
                     else stated, found)  # fmt: skip
    out += _capped(found)
    return [f"summary.json: {m}" for m in out]
