"""``advlab verify RUN_DIR``: every saved adversarial example checked with forward passes only.

No attack code runs. (One file past 400 lines: the checks of one saved run, read in the order they run.)
For a run made with ``--save-adversarial`` (:mod:`advlab.evaluate.saved`) and the model and data it names,
:func:`verify_run` checks:

- the model is the run's (sha256 of its weights, :func:`~advlab.evaluate.run.model_digest`), and the data
  has the run's size and, per sample, the label the records hold;
- every record points at a saved example of its own sample index, and the file is readable;
- the example lies in [0, 1] and in the eps-ball of its attack (slack :func:`ball_slack`),
  and the sizes its record states are the example's (``l1``, ``l2``, ``linf`` to :data:`DISTANCE_RTOL`: the sweep
  curves and the cross-check bound a sample by them; ``l0``, a reported statistic, up to the elements within
  ``L0_NEAR`` of ``L0_TOL``);
- the file's two uint8 images are the ones its float examples give, and each record's uint8 flags are what they
  are: the geometric ones exactly, the success ones from verify's own forward pass of the kept uint8 image (the
  same tolerance as below; :mod:`.verify_uint8`);
- every readable sample of each batch has exactly one record per attack (none dropped, none repeated);
- every record's clean prediction (``clean_top5``: clean top-1/top-5 accuracy, whether the sample was correctly
  classified to begin with, so ``success_rate_on_clean_correct``) is the model's on the clean image, forwarded by
  eval's rule (:func:`~advlab.evaluate.verify_predictions.clean_mismatches`, the same tolerance as below): a
  record edited from misclassified to correctly classified, with summary.json rebuilt from the records, would
  otherwise inflate the run's clean accuracy unseen;
- a chained attack's (``only_unbroken``: suite stages chained on other attacks, a chain of chains) records are
  what the engine could have kept: a copied record is its predecessor's, a record is broken where a predecessor's
  or the attack's own saved example is, and a sample without an own example was broken fully before
  (:func:`~advlab.evaluate.verify_chains.chain_mismatches`; its own file is read and forwarded even where no
  record points at it);
- the model's top-1 on it agrees with the record (broken where the record says broken, and the record's
  ``adv_top5[0]``, which claims and reports count from), and so does its top-5 (whether the label is in it, and
  ``success_top5``: robust top-5 accuracy, and what decides a sample "fully broken" for a chained attack).
  Another machine or device (CPU vs CUDA) computes slightly different logits: a disagreement counts only where
  the top two probabilities of verify's OWN forward pass are further apart than ``tol`` (default 1e-3; for the
  top-5, the 5th and 6th log-probabilities more than 10 ``tol``), i.e. where float error cannot explain it
  (never from the record's probabilities, which a tampered record could set; :mod:`.verify_predictions`);
- summary.json describes this run (:func:`~advlab.evaluate.verify_summary.identity_mismatches`: its fingerprint,
  model, data, seed and batch size are run.json's, every attack is listed once with run.json's spec fields and
  label), and the counts recomputed from those forward passes equal its own (per attack: n, eligible samples,
  robust top-1 and success counts and rates), always compared; and everything else summary.json states from
  the records (each attack's statistics and intervals, a suite's stages, the uint8 counts, the clean accuracy,
  the robustness curves, median eps* and AUC, the checks the summary answers) is what
  :func:`~advlab.evaluate.summary.build_summary` gives from the records verify read and checked (timings aside;
  :func:`~advlab.evaluate.verify_summary.rebuilt_mismatches`).

A random model (a randomized defence; found by two forward passes on the first two images under two seeds) is
judged as eval judged it: each batch's clean images, and every saved file by itself (its rows in the batch's clean
images as eval judged them), as the expected prediction over the run's K draws (the largest ``eot_samples`` of
its attacks) with eval's common random numbers (:class:`~advlab.evaluate.engine.Judge`), so an honest run
verifies exactly. Only the device type the run used reproduces those draws (CPU and CUDA generators differ):
another is refused with one line.

Cost: about three clean evaluations. The data is read once, every saved file once; each batch of the run is
forwarded (under ``torch.inference_mode``) once over its clean images (one image per readable sample: the clean
evaluation itself) and twice over every example saved for that batch (its floats, then its kept uint8 image), all
attacks' files together, in pieces of the run's batch size (eval never forwarded more images at once, so what fitted
eval's memory fits verify's): one image per distinct saved example, each twice. A random model costs K calls per
batch and per saved file, twice (its K draws). An example shared by a suite and the attack it was chained on is
forwarded once however many records point at it; a suite stage that attacked a sample left unbroken by the stage
before saved its own example, so a sample robust after k stages has k examples (on a model that falls at the first
stage, about one per sample: the saved examples cost two more clean evaluations' forward passes). The box and ball
checks take the difference in float32 and accumulate in float64 (:func:`~advlab.evaluate.saved.distance`).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError
from torch import nn

from ..models import prepare as prepare_model
from .compare import FinishedRun, load_run
from .engine import Judge, choose_targets, eot_samples_of, judged_logits, load_batch, plan_batches
from .records import RECORD_NORMS, RECORD_SCHEMA_VERSION
from .run import device_of, model_digest
from .rundir import RunDirectory
from .saved import BALL_TOL, Uint8Versions, ball_of, distances, load_examples, saved_path, uint8_versions
from .specs import MINIMAL_ATTACKS, SpecError, attack_norm
from .verify_chains import chain_mismatches, chained_on
from .verify_predictions import PROB_TOL, clean_mismatches, prediction_gaps, target_mismatches, top5_sets
from .verify_summary import count_mismatches, identity_mismatches, rebuilt_mismatches, specs_of
from .verify_uint8 import uint8_file_mismatches, uint8_record_mismatches

# A minimal-norm record's distance against the saved example's: float64 sums of the same float32 difference.
DISTANCE_RTOL = 1e-5
# Relative slack of the L1 and L2 ball checks (ball_slack).
BALL_RTOL = 1e-6


class Geometry(NamedTuple):
    """What one saved file's rows are, against their clean images (:func:`_geometry`)."""

    ball: tuple[str, float] | None
    box: list[bool]
    dist: list[float]
    sizes: list[dict[str, float] | None]


@dataclass
class Verification:
    """What :func:`verify_run` found: examples checked, mismatches (one line each), forward passes, time."""

    checked: int = 0
    mismatches: list[str] = field(default_factory=list)
    forward_passes: int = 0  # model calls (a random model's K draws count K), clean and saved images together
    images_forwarded: int = 0  # saved examples forwarded (each distinct one once)
    clean_forwarded: int = 0  # clean images forwarded (each readable sample once)
    seconds: float = 0.0
    random: bool = False  # a random model: eval's seeded draws replayed (module docstring)

    @property
    def ok(self) -> bool:
        return not self.mismatches


def check_run_is_verifiable(run: FinishedRun) -> None:
    """Refuse (one line) a run without saved examples, one that did not finish, or one whose records are of
    another schema (verify recomputes the summary from the records as this advlab writes them)."""
    schema = run.config.get("record_schema")
    if schema != RECORD_SCHEMA_VERSION:
        raise SpecError(
            f"{run.path} holds records of schema {schema}, this advlab reads schema {RECORD_SCHEMA_VERSION}; verify "
            "it with the advlab that wrote it (run.json's provenance names its version) or rerun its advlab eval "
            "command"
        )
    if not run.config.get("save_adversarial"):
        raise SpecError(
            f"{run.path} holds no saved adversarial examples; rerun its advlab eval command with --save-adversarial"
        )
    if not run.summary.get("complete"):
        raise SpecError(f"{run.path} is half-written (not every batch finished); rerun its advlab eval command first")


def _forward(model: nn.Module, x: torch.Tensor, chunk: int, device: torch.device) -> torch.Tensor:
    """The model's logits on ``x``, ``chunk`` rows per call (under ``torch.inference_mode``)."""
    with torch.inference_mode():
        return torch.cat([model(part.to(device)) for part in x.split(chunk)])


@dataclass
class _Forwarding:
    """How one batch's saved images are forwarded: by eval's rule, in pieces of the run's batch size."""

    model: nn.Module
    judge: Judge | None  # a random model's replayed draws (None: a deterministic model)
    judge_k: int
    readable: list[str]  # the batch's readable files, in order
    files: Mapping[str, Mapping[str, torch.Tensor] | None]
    pos: Mapping[int, int]  # sample index -> row of the batch's clean images
    batch_size: int
    device: torch.device
    out: Verification  # counts the forward passes

    def logits(self, images: list[torch.Tensor]) -> torch.Tensor:
        """The logits of each readable file's images (one tensor per file, in ``readable``'s order), concatenated.
        In pieces of the run's batch size: eval never forwarded more at once (review 2, F10: all the files of a
        batch, every suite stage's and sweep eps', in one call could run out of GPU memory)."""
        if self.judge is not None:  # eval's own judgement replayed, file by file (each holds the rows eval judged)
            parts = []
            for name, xa in zip(self.readable, images, strict=True):
                # A row the data lacks is reported with its record; its place here is any row of the batch.
                index = self.files[name]["index"].tolist()  # type: ignore[index]
                rows = torch.tensor([self.pos.get(int(i), 0) for i in index], device=self.device)
                with torch.inference_mode():
                    parts.append(self.judge.logits(xa.to(self.device), rows))
            self.out.forward_passes += self.judge_k * len(self.readable)
            return torch.cat(parts)
        logits = _forward(self.model, torch.cat(images), self.batch_size, self.device)
        self.out.forward_passes += -(-logits.shape[0] // self.batch_size)
        return logits


def _is_random(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether two forward passes on the same images, under two seeds, differ beyond float noise (a random defence
    draws afresh on every call; a deterministic model gives the same logits)."""
    with torch.inference_mode():
        a, b = judged_logits(model, x, 1, 1), judged_logits(model, x, 1, 2)
    return bool(((a - b).abs() > 1e-5 * a.abs().amax().clamp(min=1.0)).any())


def _broken(top1: int, record: Mapping[str, Any]) -> bool:
    """Whether a verified top-1 breaks the record's sample (untargeted: not the label; targeted: the target)."""
    return top1 != record["label"] if record["target"] is None else top1 == record["target"]


def _geometry(
    x: torch.Tensor,
    xa: torch.Tensor,
    pos: Mapping[int, int],
    index: torch.Tensor,
    ball: tuple[str, float] | None,
    norm: str | None = None,
) -> Geometry:
    """Per row of one saved file: inside [0, 1]; the distance to its clean image in the ball's norm, else in
    ``norm`` (a minimal-norm attack's; 0 without either or without a clean image); and the four sizes a record
    states (``l0``, ``l1``, ``l2``, ``linf``; None without a clean image). A row whose sample the data lacks is
    reported by the caller and never read here."""
    at = [pos.get(int(j)) for j in index.tolist()]
    rows = [k for k, p in enumerate(at) if p is not None]
    lo, hi = torch.aminmax(xa.flatten(1), dim=1)
    box = ((lo >= -BALL_TOL) & (hi <= 1 + BALL_TOL)).tolist()
    dist = [0.0] * len(at)
    sizes: list[dict[str, float] | None] = [None] * len(at)
    exact_l0 = ball is None and norm == "l0"  # a minimal-norm L0 distance counts every changed coordinate
    norm = ball[0] if ball is not None else norm
    if rows:
        clean = x[[at[k] for k in rows]]
        measured = distances(clean, xa[rows])
        if norm is not None:
            d = ((xa[rows] - clean).flatten(1) != 0).sum(dim=1) if exact_l0 else measured[norm]
            for k, v in zip(rows, d.double().tolist(), strict=True):
                dist[k] = v
        listed = {n: v.tolist() for n, v in measured.items()}
        for j, k in enumerate(rows):
            sizes[k] = {n: listed[n][j] for n in listed}
    return Geometry(ball, box, dist, sizes)


def ball_slack(norm: str, eps: float) -> float:
    """How far past eps a saved example may measure and still count as inside its ball: half a coordinate in L0;
    BALL_TOL in Linf (a clamp per element); in L1 and L2 also BALL_RTOL of eps, since an honest projection's float32
    sum over many changed elements lands a few 1e-8 of eps past it in float64."""
    if norm == "l0":
        return 0.5
    return BALL_TOL + (BALL_RTOL * eps if norm in ("l1", "l2") else 0.0)


def _size_mismatches(where: str, record: Mapping[str, Any], sizes: Mapping[str, float]) -> list[str]:
    """The record's ``l0``, ``l1``, ``l2`` and ``linf`` against those of its saved example (the sweep curves and
    the cross-check bound a sample by its l1, l2 or linf, evaluate/robustness.py; l0 is a reported statistic)."""
    out = []
    for n in RECORD_NORMS:
        want, got = float(record[n]), sizes[n]
        # an l0 may differ by the elements whose float32 difference is within L0_NEAR of L0_TOL
        slack = sizes["l0_near"] if n == "l0" else DISTANCE_RTOL * abs(got) + 1e-7
        if not abs(want - got) <= slack:
            out.append(f"{where}: the record's {n} {want:.9g} is not the example's {got:.9g}")
    return out


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
    specs = specs_of(cfg)  # run.json's attacks, checked as make_spec checks them
    spec_of = {s.id: s for s in specs}
    batch_size, seed = int(cfg["batch_size"]), int(cfg["seed"])
    judge_k = max((eot_samples_of(s) for s in specs), default=1)  # the run's prediction rule (engine.attack_batch)
    plan = plan_batches(n, batch_size)
    enabled = bool((cfg.get("prepare") or {}).get("enabled"))
    attacked: nn.Module | None = None  # prepared as the run did, on the first readable batch (loaded once)
    device = device_of(model)
    rundir = RunDirectory(run.path, cfg, origin={})
    params = {str(a["id"]): a.get("params") or {} for a in cfg["attacks"]}
    names = {str(a["id"]): str(a["name"]) for a in cfg["attacks"]}
    deps = {str(a["id"]): [str(d) for d in a.get("only_unbroken") or ()] for a in cfg["attacks"]}
    chained = {aid: chained_on(aid, deps) for aid in deps}
    out = Verification()
    robust = {aid: 0 for aid in params}
    checked = {aid: 0 for aid in params}
    incomplete: set[str] = set()  # attacks with a record that failed before its check (already a mismatch)
    read_n = {aid: 0 for aid in params}
    verified: dict[str, list[dict[str, Any]]] = {aid: [] for aid in params}  # the records read batch by batch
    eligible = {aid: 0 for aid in params}  # success rates count samples whose target is not their label
    success = {aid: 0 for aid in params}
    for batch in plan:
        x, y, kept = load_batch(dataset, list(batch), device)
        if attacked is None and kept:
            attacked = prepare_model(model, x) if enabled else model
            attacked.eval()
            out.random = _is_random(attacked, x[:2])
            if out.random and device.type != cfg.get("device_type", device.type):
                raise SpecError(
                    f"the run's model is random (two forward passes on the same images differ); verify replays the "
                    f"run's seeded draws, which only the device type the run used reproduces: verify with --device "
                    f"{cfg.get('device_type')}, not {device.type}"
                )
        pos = {i: k for k, i in enumerate(kept)}
        labels = y.tolist()
        clean_logits, judge = None, None
        targets: dict[str | int, torch.Tensor] = {}  # a targeted attack's targets, as eval chose them per batch
        if kept:  # the clean prediction, by eval's rule (engine.attack_batch): a random model's K draws, eval's CRN
            assert attacked is not None
            if out.random:
                judge = Judge(attacked, x, seed, kept, judge_k)
                with torch.inference_mode():
                    clean_logits = judge.logits(x)
                out.forward_passes += judge_k
            else:
                clean_logits = _forward(attacked, x, batch_size, device)
                out.forward_passes += -(-len(kept) // batch_size)
            out.clean_forwarded += len(kept)
        # First every record of the batch (all attacks), then every file it names read once, then one forward
        # pass over all those files' rows together (in pieces of the batch size), then the checks: a suite's later
        # stages hold few rows each, and one forward per file would pay the model's per-call cost once per stage.
        todo: list[tuple[str, dict[str, Any], str]] = []
        owners: dict[str, str] = {}
        recs_by: dict[str, dict[int, dict[str, Any]]] = {}
        own_file: dict[str, str | None] = {}  # a chained attack's own file of this batch, where it has one
        for aid in params:
            recs = rundir.read_batch(aid, batch)
            verified[aid] += recs
            recs_by[aid] = {int(r["index"]): r for r in recs}
            seen = [int(r["index"]) for r in recs]
            if sorted(seen) != sorted(kept):  # every readable sample of the batch exactly once, nothing else
                lost, twice = sorted(set(kept) - set(seen)), sorted({i for i in seen if seen.count(i) > 1})
                out.mismatches.append(
                    f"{aid}, batch {batch.start}-{batch.stop - 1}: records for samples {sorted(seen)[:10]}, the data "
                    f"has readable samples {sorted(kept)[:10]} (missing {lost[:10]}, repeated {twice[:10]})"
                )
                incomplete.add(aid)
            read_n[aid] += len(recs)
            if clean_logits is not None:  # records of unreadable samples or wrong labels are reported below
                ours = [r for r in recs if int(r["index"]) in pos and int(r["label"]) == labels[pos[int(r["index"])]]]
                out.mismatches += clean_mismatches(aid, ours, pos, clean_logits, tol)
                mode = spec_of[aid].target if spec_of[aid].targeted else None
                if mode is not None and mode not in targets:
                    targets[mode] = choose_targets(mode, y, clean_logits, kept, seed)
                want = targets[mode] if mode is not None else None
                out.mismatches += target_mismatches(aid, mode, ours, pos, want, clean_logits, tol)
            eligible[aid] += sum(r["target"] is None or r["target"] != r["label"] for r in recs)
            if deps[aid]:  # read (and forwarded) even where no record points at it: review 2, F7
                mine = saved_path(rundir.batch_file(aid, batch)).relative_to(run.path).as_posix()
                own_file[aid] = mine if (run.path / mine).exists() else None
                if own_file[aid] is not None:
                    owners.setdefault(mine, aid)
            for r in recs:
                i, where = int(r["index"]), f"{aid}, sample {r['index']}"
                if i not in pos:
                    out.mismatches.append(f"{where}: the data has no readable image at this index")
                elif int(r["label"]) != labels[pos[i]]:
                    out.mismatches.append(f"{where}: the record's label {r['label']} is not the data {labels[pos[i]]}")
                elif not r.get("adversarial"):
                    out.mismatches.append(f"{where}: no saved example")
                else:
                    # A file holds the examples of the attack that made them: this one, or one it was chained on
                    # (only_unbroken, directly or through another); the record's file must be that attack's file
                    # of this batch, inside the run.
                    owner = str(r.get("from") or aid)
                    owner = owner if owner in params else aid
                    file = str(r["adversarial"]["file"])
                    if owner not in chained[aid]:
                        out.mismatches.append(
                            f"{where}: says its example comes from {owner!r}, which {aid!r} was not chained on"
                        )
                        continue
                    expected = saved_path(rundir.batch_file(owner, batch)).relative_to(run.path).as_posix()
                    if file != expected:
                        out.mismatches.append(f"{where}: points at {file!r}, not its attack's file {expected!r}")
                        continue
                    todo.append((aid, r, where))
                    owners.setdefault(file, owner)
        files: dict[str, dict[str, torch.Tensor] | None] = {}
        for name in owners:
            try:
                files[name] = load_examples(run.path / name)
            except (OSError, SafetensorError) as e:
                files[name] = None
                out.mismatches.append(f"{name}: unreadable ({e}); the file is missing, truncated or damaged")
                continue
            # eval writes one row per sample it attacked, in the batch's order: a file with a sample twice (its
            # second example never checked against any record), a sample outside the batch, or as many indices as
            # images is not one eval wrote (review 3, F1).
            index, xa = files[name]["index"].tolist(), files[name]["x_adv"]  # type: ignore[index]
            at = [pos.get(int(i)) for i in index]
            if len(index) != xa.shape[0] or None in at or any(a >= b for a, b in itertools.pairwise(at)):
                files[name] = None
                out.mismatches.append(
                    f"{name}: holds {xa.shape[0]} examples for samples {index[:10]}, not one example per sample of "
                    f"this batch in the batch's order; the file is not one eval wrote"
                )
        readable = [name for name in owners if files[name] is not None]
        top1: dict[str, list[int]] = {}
        gaps: dict[str, list[float]] = {}
        top5: dict[str, list[tuple[set[int], bool]]] = {}
        geometry: dict[str, Geometry] = {}
        uint8: dict[str, Uint8Versions] = {}  # per file: its uint8 images and flags, recomputed
        kept_top1: dict[str, list[int]] = {}  # per file: the top-1 and top-2 gap on the kept uint8 images
        kept_gaps: dict[str, list[float]] = {}
        if readable:
            assert attacked is not None  # a record's sample was readable, so this batch prepared the model
            xa_all = [files[name]["x_adv"] for name in readable]  # type: ignore[index]
            ctx = _Forwarding(attacked, judge, judge_k, readable, files, pos, batch_size, device, out)
            logits = ctx.logits(xa_all)
            t_all, g_all, f_all = logits.argmax(dim=1).tolist(), prediction_gaps(logits), top5_sets(logits, tol)
            out.images_forwarded += len(t_all)
            for name, xa in zip(readable, xa_all, strict=True):
                top1[name], t_all = t_all[: xa.shape[0]], t_all[xa.shape[0] :]
                gaps[name], g_all = g_all[: xa.shape[0]], g_all[xa.shape[0] :]
                top5[name], f_all = f_all[: xa.shape[0]], f_all[xa.shape[0] :]
                owner = owners[name]
                ball = ball_of(names[owner], params[owner])
                norm = attack_norm(names[owner], params[owner]) if names[owner] in MINIMAL_ATTACKS else None
                index = files[name]["index"]  # type: ignore[index]
                geometry[name] = _geometry(x, xa.to(device), pos, index, ball, norm)
                # The uint8 images eval wrote and the flags its records state, recomputed (verify_uint8).
                # On the CPU, beside the file's floats: _forward moves the kept images to the device a piece at a
                # time (all of a batch's files at once could fill a GPU; review 2, F10).
                clean = x[[pos[int(j)] for j in index.tolist()]].cpu()
                uint8[name] = uint8_versions(clean, xa.to(clean.dtype), ball)
                out.mismatches += uint8_file_mismatches(name, files[name], uint8[name])  # type: ignore[arg-type]
            kept_logits = ctx.logits([uint8[name].u8_ball.to(x.dtype) / 255 for name in readable])
            k_all, kg_all = kept_logits.argmax(dim=1).tolist(), prediction_gaps(kept_logits)
            for name, xa in zip(readable, xa_all, strict=True):
                kept_top1[name], k_all = k_all[: xa.shape[0]], k_all[xa.shape[0] :]
                kept_gaps[name], kg_all = kg_all[: xa.shape[0]], kg_all[xa.shape[0] :]
        verdict: dict[tuple[str, int], tuple[bool, bool]] = {}  # (attack, sample): (broken, borderline)
        for aid, r, where in todo:
            i, saved = int(r["index"]), r["adversarial"]
            name = str(saved["file"])
            tensors = files[name]
            if tensors is None:
                continue
            row = int(saved["row"])
            if row >= len(tensors["index"]) or int(tensors["index"][row]) != i:
                out.mismatches.append(f"{where}: row {row} of {name} holds another sample")
                continue
            out.checked += 1
            checked[aid] += 1
            ball, box_ok, dist, sizes = geometry[name]
            out.mismatches += uint8_record_mismatches(
                where, r, uint8[name], row, _broken(kept_top1[name][row], r), kept_gaps[name][row] <= tol
            )
            if sizes[row] is not None:
                out.mismatches += _size_mismatches(where, r, sizes[row])
            if not box_ok[row]:
                out.mismatches.append(f"{where}: the example leaves [0, 1]")
            elif ball is not None and not dist[row] <= ball[1] + ball_slack(*ball):
                out.mismatches.append(
                    f"{where}: the example leaves the {ball[0]} ball: {dist[row]:.9g} > eps {ball[1]:.9g}"
                )
            elif owners[name] != aid and (own := ball_of(names[aid], params[aid])) is not None:
                # A chained attack's row counts its dependencies' breaks as its own: they must lie in its ball too,
                # measured in its norm (runs made before validate_specs refused larger eps, other norms and
                # minimal-norm dependencies can hold such rows; an example inside is fine whoever made it).
                size = (sizes[row] or {}).get(own[0], math.inf)
                if not size <= own[1] + ball_slack(*own):
                    out.mismatches.append(
                        f"{where}: the example (from {owners[name]!r}) leaves this attack's {own[0]} ball: "
                        f"{size:.9g} > eps {own[1]:.9g}"
                    )
            if names[aid] in MINIMAL_ATTACKS and owners[name] == aid:  # the curves are computed from distance
                if (r.get("distance") is None) == bool(r["success"]):
                    out.mismatches.append(
                        f"{where}: the record's distance {r.get('distance')} does not fit its success {r['success']}"
                    )
                elif r.get("distance") is not None:
                    want = float(r["distance"])
                    if abs(dist[row] - want) > DISTANCE_RTOL * want + 1e-7:
                        out.mismatches.append(
                            f"{where}: the record's distance {want:.6g} is not the example's {dist[row]:.6g}"
                        )
            t = top1[name][row]
            broken = _broken(t, r)
            borderline = gaps[name][row] <= tol  # float error (another device) can flip this example's top-1
            verdict[(aid, i)] = (broken, borderline)
            if broken != bool(r["success"]) and not borderline:
                said = "broken" if r["success"] else "not broken"
                out.mismatches.append(f"{where}: the record says {said}, the model's top-1 on the example is {t}")
            elif (r.get("adv_top5") or [t])[0] != t and not borderline:  # what claims and reports count from
                out.mismatches.append(f"{where}: the record's top-1 {r['adv_top5'][0]} is not the model's {t}")
            five, near = top5[name][row]  # the top-5 numbers (robust top-5, success_top5, "fully broken")
            want5 = r["label"] not in five if r["target"] is None else r["target"] in five
            if not near and (bool(r["success_top5"]) != want5 or (r["label"] in r["adv_top5"]) != (r["label"] in five)):
                out.mismatches.append(
                    f"{where}: the record's top-5 {r['adv_top5']} (success_top5 {r['success_top5']}) is not the "
                    f"model's {sorted(five)}"
                )
            robust[aid] += t == r["label"]
            success[aid] += bool(broken) and (r["target"] is None or r["target"] != r["label"])
        own: dict[str, dict[int, tuple[bool, bool]]] = {}  # a chained attack's own rows: sample -> verdict
        for aid, name in own_file.items():
            if name is None or files.get(name) is None:
                continue
            own[aid] = {}
            for row, j in enumerate(files[name]["index"].tolist()):  # type: ignore[index]
                r = recs_by[aid].get(int(j))
                if r is not None:
                    own[aid][int(j)] = (_broken(top1[name][row], r), gaps[name][row] <= tol)
        out.mismatches += chain_mismatches(deps, recs_by, verdict, own, own_file)
    # An attack with a record that could not be checked (a mismatch above already) is not compared: what decides
    # this is verify's own count, not summary.json's.
    incomplete |= {aid for aid in params if read_n[aid] != checked[aid]}
    out.mismatches += identity_mismatches(run, specs)
    out.mismatches += count_mismatches(run.summary, checked, robust, success, eligible, incomplete)
    out.mismatches += rebuilt_mismatches(run, specs, verified)
    out.seconds = time.perf_counter() - start
    return out


def verification_lines(v: Verification, limit: int = 50) -> Sequence[str]:
    """What ``advlab verify`` prints: the mismatches (at most ``limit``) and one line of totals."""
    lines = [f"mismatch: {m}" for m in v.mismatches[:limit]]
    if len(v.mismatches) > limit:
        lines.append(f"... and {len(v.mismatches) - limit} more mismatches")
    verdict = "OK" if v.ok else f"{len(v.mismatches)} mismatches"
    lines.append(
        f"verify: {verdict}; {v.checked} records checked against {v.images_forwarded} saved examples and "
        f"{v.clean_forwarded} clean images in {v.forward_passes} forward passes, {v.seconds:.1f} s"
        + (" (a random model: judged by the run's own seeded draws)" if v.random else "")
    )
    return lines
