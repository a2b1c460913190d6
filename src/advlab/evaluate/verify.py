"""``advlab verify RUN_DIR``: every saved adversarial example checked with forward passes only.

No attack code runs. For a run made with ``--save-adversarial`` (:mod:`advlab.evaluate.saved`) and the
model and data it names, :func:`verify_run` checks:

- the model is the run's (sha256 of its weights, :func:`~advlab.evaluate.run.model_digest`), and the data
  has the run's size and, per sample, the label the records hold;
- every record points at a saved example of its own sample index, and the file is readable;
- the example lies in [0, 1] and in the eps-ball of its attack (slack :data:`~advlab.evaluate.saved.BALL_TOL`);
- the model's top-1 on it agrees with the record (broken where the record says broken). Another machine or
  device (CPU vs CUDA) computes slightly different logits: a disagreement counts only where the record's top
  two probabilities are further apart than ``tol`` (default 1e-3), i.e. where float error cannot explain it;
- the summary recomputed from those forward passes equals summary.json (robust top-1 and success counts).

Each distinct saved example costs one forward pass (an example shared by a suite and the attack it was
chained on is checked once per record that points at it, but the forward pass is shared per batch file).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn

from ..models import prepare as prepare_model
from .compare import FinishedRun, load_run
from .engine import load_batch, plan_batches
from .run import device_of, model_digest
from .rundir import RunDirectory
from .saved import ball_of, distance, in_ball, load_examples
from .specs import SpecError

PROB_TOL = 1e-3


@dataclass
class Verification:
    """What :func:`verify_run` found: examples checked, mismatches (one line each), forward passes, time."""

    checked: int = 0
    mismatches: list[str] = field(default_factory=list)
    forward_passes: int = 0
    images_forwarded: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.mismatches


def check_run_is_verifiable(run: FinishedRun) -> None:
    """Refuse (one line) a run without saved examples or one that did not finish."""
    if not run.config.get("save_adversarial"):
        raise SpecError(
            f"{run.path} holds no saved adversarial examples; rerun its advlab eval command with --save-adversarial"
        )
    if not run.summary.get("complete"):
        raise SpecError(f"{run.path} is half-written (not every batch finished); rerun its advlab eval command first")


def _borderline(record: Mapping[str, Any], tol: float) -> bool:
    probs = record.get("adv_probs") or []
    return len(probs) > 1 and probs[0] - probs[1] <= tol


def verify_run(
    run_dir: str | Path, model: nn.Module, dataset: Any, *, tol: float = PROB_TOL, run: FinishedRun | None = None
) -> Verification:
    """Check a finished ``--save-adversarial`` run against ``model`` and ``dataset`` (module docstring)."""
    start = time.perf_counter()
    run = run or load_run(run_dir)
    check_run_is_verifiable(run)
    cfg = run.config
    want = cfg["model"].get("state_dict_sha256")
    got = model_digest(model)
    if got != want:
        raise SpecError(
            f"the model's weights (sha256 {got[:12]}) are not the run's ({str(want)[:12]}); "
            "verify with the model the run attacked"
        )
    n = int(cfg["data"]["n_samples"])
    if len(dataset) != n:
        raise SpecError(f"the data has {len(dataset)} samples, the run attacked {n}; verify with the run's data")
    plan = plan_batches(n, int(cfg["batch_size"]))
    enabled = bool((cfg.get("prepare") or {}).get("enabled"))
    attacked: nn.Module | None = None  # prepared as the run did, on the first readable batch (loaded once)
    device = device_of(model)
    rundir = RunDirectory(run.path, cfg, origin={})
    params = {str(a["id"]): a.get("params") or {} for a in cfg["attacks"]}
    names = {str(a["id"]): str(a["name"]) for a in cfg["attacks"]}
    out = Verification()
    robust = {aid: 0 for aid in params}
    success = {aid: 0 for aid in params}
    for batch in plan:
        x, y, kept = load_batch(dataset, list(batch), device)
        if attacked is None and kept:
            attacked = prepare_model(model, x) if enabled else model
            attacked.eval()
        pos = {i: k for k, i in enumerate(kept)}
        files: dict[str, dict[str, torch.Tensor] | None] = {}
        geometry: dict[str, Any] = {}
        top1: dict[str, list[int]] = {}
        for aid in params:
            for r in rundir.read_batch(aid, batch):
                i, where = int(r["index"]), f"{aid}, sample {r['index']}"
                if i not in pos:
                    out.mismatches.append(f"{where}: the data has no readable image at this index")
                    continue
                if int(r["label"]) != int(y[pos[i]]):
                    out.mismatches.append(
                        f"{where}: the record's label {r['label']} is not the data's {int(y[pos[i]])}"
                    )
                    continue
                saved = r.get("adversarial")
                if not saved:
                    out.mismatches.append(f"{where}: no saved example")
                    continue
                name = str(saved["file"])
                if name not in files:
                    try:
                        files[name] = load_examples(run.path / name)
                    except (OSError, SafetensorError) as e:
                        files[name] = None
                        out.mismatches.append(f"{name}: unreadable ({e}); the file is missing, truncated or damaged")
                    else:
                        xa = files[name]["x_adv"].to(device)  # type: ignore[index]
                        assert attacked is not None  # r's sample was readable, so this batch prepared it
                        with torch.no_grad():
                            top1[name] = attacked(xa).argmax(dim=1).tolist()
                        out.forward_passes += 1
                        out.images_forwarded += xa.shape[0]
                        # Box and ball of every row at once; the file holds one attack's examples.
                        owner = str(r.get("from") or aid)
                        owner = owner if owner in params else aid
                        ball = ball_of(names[owner], params[owner])
                        at = [pos.get(int(j)) for j in files[name]["index"].tolist()]  # type: ignore[index]
                        rows = [k for k, p in enumerate(at) if p is not None]
                        box_ok: list[bool | None] = [None] * len(at)
                        ball_ok: list[bool | None] = [None] * len(at)
                        dist: list[float | None] = [None] * len(at)
                        if rows:
                            x0, x1 = x[[at[k] for k in rows]], xa[rows]
                            for k, b, o, d in zip(
                                rows,
                                in_ball(x0, x1, None).tolist(),
                                in_ball(x0, x1, ball).tolist(),
                                (distance(x0, x1, ball[0]) if ball else torch.zeros(len(rows))).tolist(),
                                strict=True,
                            ):
                                box_ok[k], ball_ok[k], dist[k] = b, o, d
                        geometry[name] = (ball, box_ok, ball_ok, dist)
                tensors = files[name]
                if tensors is None:
                    continue
                row = int(saved["row"])
                if row >= len(tensors["index"]) or int(tensors["index"][row]) != i:
                    out.mismatches.append(f"{where}: row {row} of {name} holds another sample")
                    continue
                out.checked += 1
                ball, box_ok, ball_ok, dist = geometry[name]
                if not box_ok[row]:
                    out.mismatches.append(f"{where}: the example leaves [0, 1]")
                elif not ball_ok[row]:
                    assert ball is not None
                    out.mismatches.append(
                        f"{where}: the example leaves the {ball[0]} ball: {dist[row]:.6g} > eps {ball[1]:.6g}"
                    )
                t = top1[name][row]
                broken = t != r["label"] if r["target"] is None else t == r["target"]
                if broken != bool(r["success"]) and not _borderline(r, tol):
                    said = "broken" if r["success"] else "not broken"
                    out.mismatches.append(f"{where}: the record says {said}, the model's top-1 on the example is {t}")
                robust[aid] += t == r["label"]
                success[aid] += bool(broken) and (r["target"] is None or r["target"] != r["label"])
    records_total = sum(int(a.get("n") or 0) for a in run.summary.get("attacks", []))
    # The summary is recomputed only from a complete check: a record that could not be checked is already a
    # mismatch, and the counts would then differ for that reason alone.
    for a in run.summary.get("attacks", []) if out.checked == records_total else []:
        aid = a["id"]
        ci = a.get("ci95") or {}
        for key, got_k in (("adv_top1", robust[aid]), ("success_rate", success[aid])):
            want_k = (ci.get(key) or {}).get("k")
            if want_k is None and a.get(key) is not None:
                want_k = round(a[key] * (a["n"] if key == "adv_top1" else a["n_eligible"]))
            if want_k is not None and want_k != got_k:
                out.mismatches.append(f"summary.json: {aid} {key} counts {want_k} samples, recomputed {got_k}")
    out.seconds = time.perf_counter() - start
    return out


def verification_lines(v: Verification, limit: int = 50) -> Sequence[str]:
    """What ``advlab verify`` prints: the mismatches (at most ``limit``) and one line of totals."""
    lines = [f"mismatch: {m}" for m in v.mismatches[:limit]]
    if len(v.mismatches) > limit:
        lines.append(f"... and {len(v.mismatches) - limit} more mismatches")
    verdict = "OK" if v.ok else f"{len(v.mismatches)} mismatches"
    lines.append(
        f"verify: {verdict}; {v.checked} records checked against {v.images_forwarded} saved examples in "
        f"{v.forward_passes} forward passes, {v.seconds:.1f} s"
    )
    return lines
