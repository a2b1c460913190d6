"""The attack-batch engine: a run's fixed batches, their targets and seeds, and the records of one batch.

The dataset is cut into fixed batches of global sample indices (``[0, B)``, ``[B, 2B)``, ...). For each
batch the clean logits are computed once and every attack of the run is applied; each (attack, batch) gives
one list of records (a JSON Lines file in the run directory, :mod:`advlab.evaluate.rundir`). Everything
random is a function of (seed, sample index): a per-sample seed tensor for random starts and a per-sample
target draw, so a sample's record does not depend on which batch, shard or process it was computed in.

A randomized model (a defence of :mod:`advlab.defenses` that draws noise, say) draws from torch's global
generator, which advlab never reads for its own numbers. So that its records do not depend on what ran before
(earlier batches, other attacks, a resumption that skips them), every (batch, attack) runs inside
``torch.random.fork_rng`` seeded by a hash of (run seed, the batch's sample indices, attack id): the user's
global stream is left as it was. The predictions in the records are judged apart from the attack (:class:`Judge`):
the expected prediction (mean softmax over the run's largest ``eot_samples``, K) with common random numbers, the
same K draws for a sample's clean and adversarial points: per-sample streams for advlab's random defences
(:func:`advlab.defenses.sample_streams`, keyed by (run seed, dataset index): the judgement of sample i is the
same in any batch), and one seed per batch for torch's global generator (the same draws for a model whose draws
depend on the batch's shape only). What stays batch-dependent is the attack's own path through a random model:
its draws during the attack come from the per-(batch, attack) generator, row by row as the model draws them.

:func:`attack_batch` is the unit of work and takes any subset of indices (a shard of a distributed run);
:func:`advlab.evaluate.evaluate` (:mod:`advlab.evaluate.run`) drives it over a dataset.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..attacks.eot import expected_logits
from ..defenses import sample_streams
from .records import fully_broken, make_records, perturbation_norms, strength, topk
from .robustness import add_distances, is_minimal
from .specs import AttackSpec, SpecError, run_attack

# --------------------------------------------------------------------------------------------- hashing


def stable_hash(*parts: Any, bits: int = 48) -> int:
    """A platform-independent integer hash of JSON-able parts (Python's hash() is salted per process)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return int(hashlib.sha256(text.encode()).hexdigest(), 16) >> (256 - bits)


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
def _logits(model: nn.Module, x: Tensor, samples: int = 1) -> Tensor:
    """The logits at x; with ``samples`` K > 1, the expected prediction over K draws (log of the mean softmax)."""
    return expected_logits([model(x).float() for _ in range(samples)])


def eot_samples_of(spec: AttackSpec) -> int:
    """The K draws a spec's attack averages over (its ``eot_samples`` parameter; 1 when it has none)."""
    k = spec.params.get("eot_samples", 1)
    return k if isinstance(k, int) and not isinstance(k, bool) and k > 1 else 1


def model_rng_seed(seed: int, indices: Sequence[int], *part: Any) -> int:
    """The seed of the model's own (global-generator) randomness for one batch and step of a run: a function of
    the run seed and the batch's sample indices only, so the same in every shard, process and resumption."""
    return stable_hash("model-rng", seed, [int(i) for i in indices], *part, bits=63)


def judged_logits(model: nn.Module, x: Tensor, samples: int, seed: int) -> Tensor:
    """The expected logits at ``x`` over ``samples`` draws of the model, its own randomness seeded with ``seed``
    inside a forked generator: the same (model, x, samples, seed) gives the same draws anywhere (``advlab verify``
    uses it to tell a random model from a deterministic one; the records' rule is :class:`Judge`)."""
    with _Forked(seed, x.device):
        return _logits(model, x, samples)


class _Forked:
    """``torch.random.fork_rng`` on x's device, seeded with ``seed``: the model's draws inside are a function of
    the seed alone, and the caller's global generators are restored on exit."""

    def __init__(self, seed: int, device: torch.device) -> None:
        self.fork = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
        self.seed = seed

    def __enter__(self) -> None:
        self.fork.__enter__()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc: Any) -> None:
        self.fork.__exit__(*exc)


def stream_keys(seed: int, indices: Sequence[int]) -> Tensor:
    """The per-sample keys of a run's judgements (:func:`advlab.defenses.sample_streams`): a hash of the run seed
    plus the dataset index, so sample i's draws are the same in every batch, shard and resumption."""
    base = stable_hash("model-streams", seed)
    return torch.tensor([base + int(i) for i in indices], dtype=torch.long)


class Judge:
    """The expected prediction of a batch's points, with common random numbers (CRN) for the clean and every
    adversarial judgement of a sample.

    Every judgement runs inside :func:`advlab.defenses.sample_streams` over the samples' :func:`stream_keys`, so
    advlab's random defences give sample i the same K draws at its clean and at each adversarial point, whatever
    the batch; and inside ``fork_rng`` seeded by (run seed, the batch's indices, "judge"), the same seed for all,
    so a model that draws from torch's global generator gets the same K draws too where its draws depend on the
    batch's shape only (``torch.randn_like(x)``): the adversarial points of a subset of the rows are judged in
    the whole batch (the other rows at their clean points) for that reason, and for every model for another: a
    batch of another size rounds the model's arithmetic differently (about 1e-6 in the logits), which flips the
    verdict on points that close to the boundary, and the suite's "broken at this stage" (a subset) must be the
    records' verdict (the whole batch) bit for bit. Judging the subset alone would cost its rows only; the
    whole batch is the price of one verdict per point.
    """

    def __init__(self, model: nn.Module, x: Tensor, seed: int, indices: Sequence[int], k: int) -> None:
        self.model, self.x, self.k = model, x, k
        self.seed = model_rng_seed(seed, indices, "judge")
        self.keys = stream_keys(seed, indices)

    def logits(self, points: Tensor, rows: Tensor | None = None) -> Tensor:
        """Expected logits at ``points``: the whole batch in its order, or the rows ``rows`` of it (distinct rows,
        in any order: each point is judged in its own row, on its own sample's draws)."""
        n = self.x.shape[0]
        if rows is not None and not torch.equal(rows.cpu(), torch.arange(n)):
            if rows.numel() != points.shape[0] or rows.unique().numel() != rows.numel():
                raise ValueError(f"{points.shape[0]} points for rows {rows.tolist()[:10]}: one point per distinct row")
            full = self.x.clone()
            full[rows] = points.to(full.dtype)
            return self.logits(full)[rows]
        with _Forked(self.seed, self.x.device), sample_streams(self.keys):
            return _logits(self.model, points, self.k)


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
    on_adversarial: Callable[[AttackSpec, list[dict[str, Any]], Tensor, Tensor], None] | None = None,
    judge_samples: int | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Records of every attack in ``specs`` on one batch (any subset of the dataset's indices).

    ``judge_samples``: the K of the run's prediction rule (the largest ``eot_samples`` of all the run's attacks,
    not only of those still to run on this batch, so a resumed batch is judged as the uninterrupted run judged
    it); default: the largest of ``specs``.

    The clean logits are computed once and shared by all attacks. Attacks whose records are in ``done``
    (read back from a run directory) are not run again, but their records still feed later attacks that
    name them in ``only_unbroken``. ``on_attack`` is called with each newly computed attack's records
    (the engine writes them to disk there, so work is saved attack by attack). ``on_adversarial`` (before
    ``on_attack``) gets the records the attack computed itself, their clean images and adversarial examples
    (``--save-adversarial``: it may add fields to those records before they are written).
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
        # One prediction rule for the whole run: the clean and every adversarial prediction are the expected
        # prediction over the run's largest K, so a naive (K = 1) spec beside an EOT one is not scored on one
        # lucky draw of a random model, nor are the samples it passes on through only_unbroken.
        judge_k = judge_samples if judge_samples is not None else max(eot_samples_of(s) for s in specs)
        judge = Judge(model, x, seed, indices, judge_k)
        clean_logits = judge.logits(x)
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
                with _Forked(model_rng_seed(seed, indices, spec.id), x.device):
                    start = time.perf_counter()

                    # A suite judges what it stops attacking by the records' own rule (review 3, F3).
                    def judged(points: Tensor, rows: Tensor | None = None, sel: Tensor = sel) -> Tensor:
                        return judge.logits(points, sel if rows is None else sel[rows])

                    x_adv = run_attack(spec, model, xs, goal, sample_seeds(spec, seed, sub_indices), judged)
                    seconds = time.perf_counter() - start
                extras = _extras(x_adv, len(run))
                x_adv = getattr(x_adv, "x_adv", x_adv)
                model.eval()  # an attack must restore the mode; be robust to one that does not
                adv_logits = judge.logits(x_adv, sel)
                records = make_records(
                    indices=sub_indices,
                    labels=y[sel].tolist(),
                    targets=None if targets is None else targets[sel].tolist(),
                    clean=([clean[0][i] for i in run], [clean[1][i] for i in run]),
                    adv=topk(adv_logits),
                    norms=perturbation_norms(xs, x_adv),
                    seconds=seconds,
                    attack=spec.id,
                )
                if is_minimal(spec):
                    add_distances(spec, records, xs, x_adv)
                for k, rec in enumerate(records):
                    if extras:
                        rec["extras"] = {key: values[k] for key, values in extras.items()}
                if on_adversarial is not None:
                    on_adversarial(spec, records, xs, x_adv)
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
