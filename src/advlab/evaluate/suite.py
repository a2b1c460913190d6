"""The worst-case ensemble: attacks from cheap to strong, each only on the samples still standing.

A sample counts as robust only if it is classified correctly on the clean image and after every attack of
the suite; the suite reports, per sample, which attack broke it, and per attack, how long it took. This is
the protocol of AutoAttack (Croce & Hein 2020, sec. 4): a robustness number is the per-sample worst case
over a diverse set of parameter-free attacks, one of them gradient-free. (One file past 400 lines: the suites, the
stage loop that attacks only the samples still standing, and the per-stage records are read together.)

Suites (``SUITES``):

- ``"strong"``: APGD-CE (100 steps), APGD-T (targeted DLR towards each of the top-9 other classes, 100 steps
  each), Square (score-based, ``square_queries`` queries). AutoAttack's "standard" version runs APGD-CE,
  APGD-T, FAB-T and Square with 5,000 queries; FAB-T rarely breaks a sample the two APGD attacks left
  (Croce & Hein 2020, table 2) and Square with 5,000 queries dominates AutoAttack's time on robust models, so
  "strong" drops FAB-T, gives Square ``square_queries`` on every sample and 4,000 more only on the fifth of the
  samples left that its first run brought closest to the boundary, and lets samples leave APGD at its
  checkpoints as soon as they break. docs/benchmarks.md compares both on the same models, data and eps.
- ``"fast"``: APGD-CE (50 steps), then APGD-T towards the top-3 other classes (50 steps each): a quick check.

Randomness: ``seed`` is an int (sample i of the batch gets seed + i) or an int64 tensor (N,) of per-sample
seeds, e.g. dataset indices, so that a sample's random draws do not depend on how the data was batched. Each
stage derives its own per-sample seeds from it. One exception to batch independence: the "strong" suite's
second Square run goes to the closest fifth of each batch's survivors, so a sample near that cut can get it in
one batching and not in another.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from advlab.attacks import AttackResult, apgd, apgd_t, square
from advlab.attacks.checks import (
    check_choice,
    check_eps,
    check_images,
    check_labels,
    check_logits,
    check_model,
    check_steps,
    frozen,
)
from advlab.attacks.eot import expected_logits
from advlab.attacks.norms import NORM_NAMES as NORMS
from advlab.attacks.norms import flat_norm
from advlab.defenses import sample_streams

StageFn = Callable[[nn.Module, Tensor, Tensor, Tensor, str, Tensor], AttackResult]


@dataclass(frozen=True)
class Stage:
    """One attack of a suite: ``run(model, x, y, eps, norm, seeds) -> AttackResult`` on the samples left."""

    name: str
    run: StageFn
    description: str


def apgd_ce_stage(steps: int, eot_samples: int = 1) -> StageFn:
    """A stage running APGD with the cross-entropy loss for ``steps`` steps (Croce & Hein 2020), with EOT over
    ``eot_samples`` draws of a randomized model (:mod:`advlab.attacks.eot`)."""

    def run(model: nn.Module, x: Tensor, y: Tensor, eps: Tensor, norm: str, seeds: Tensor) -> AttackResult:
        out = apgd(
            model, x, y, eps, norm=norm, steps=steps, loss="ce", seed=seeds, eot_samples=eot_samples,
            return_info=True,
        )  # fmt: skip
        assert isinstance(out, AttackResult)
        return out

    return run


def apgd_t_stage(steps: int, targets: int, eot_samples: int = 1) -> StageFn:
    """A stage running targeted APGD (DLR loss, cross-entropy below 4 classes) towards the top-``targets``
    other classes, ``steps`` steps each (Croce & Hein 2020), with EOT over ``eot_samples`` draws."""

    def run(model: nn.Module, x: Tensor, y: Tensor, eps: Tensor, norm: str, seeds: Tensor) -> AttackResult:
        with torch.no_grad(), frozen(model):
            classes = model(x[:1]).shape[1]
        n_targets = min(targets, classes - 1)
        # The targeted DLR needs 4 classes; below that, the targeted cross-entropy does the same job.
        loss = "dlr" if classes >= 4 else "ce"
        out = apgd_t(
            model, x, y, eps, norm=norm, steps=steps, n_target_classes=n_targets, loss=loss, seed=seeds,
            eot_samples=eot_samples, return_info=True,
        )  # fmt: skip
        assert isinstance(out, AttackResult)
        return out

    return run


def square_stage(queries: int, focus_queries: int = 0, focus_share: float = 0.0) -> StageFn:
    """Square with ``queries`` on every sample left; then, when ``focus_queries`` > 0, a second, independent
    Square run of ``focus_queries`` on the ``focus_share`` of the samples still standing whose first run came
    closest to the decision boundary (highest margin objective).

    Why: on a robust model Square's last breaks come late in a long budget, and they come from the samples the
    first queries already brought near the boundary; AutoAttack pays 5,000 queries for every sample, most of
    which sit far from any boundary. Spending the long budget only where the search is close is what lets the
    suite match AutoAttack's Square at a fraction of its cost (docs/benchmarks.md measures both).
    """

    def run(model: nn.Module, x: Tensor, y: Tensor, eps: Tensor, norm: str, seeds: Tensor) -> AttackResult:
        out = square(model, x, y, eps, norm=norm, queries=queries, p_init=0.8, seed=seeds, return_info=True)
        assert isinstance(out, AttackResult) and out.loss is not None
        left = (~out.success).nonzero().view(-1)
        k = math.ceil(focus_share * left.numel()) if focus_queries > 0 else 0
        if k == 0:
            return out
        # The cut is a share of this batch's survivors, so whether a sample gets the second run depends on the
        # others in its batch (its own first and second runs do not); the second run's seeds differ from the
        # first's.
        closest = left[torch.argsort(out.loss[left], descending=True, stable=True)[:k]]
        again = square(
            model, x[closest], y[closest], eps[closest], norm=norm, queries=focus_queries, p_init=0.8,
            seed=seeds[closest] + 2**31, return_info=True,
        )  # fmt: skip
        assert isinstance(again, AttackResult)
        hit = closest[again.success]
        x_adv, success = out.x_adv.clone(), out.success.clone()
        x_adv[hit], success[hit] = again.x_adv[again.success], True
        return AttackResult(x_adv, success, out.loss, out.extras)

    return run


DEFAULT_SQUARE_QUERIES = 1000
FOCUS_QUERIES = 4000
FOCUS_SHARE = 0.2


def suite_stages(
    suite: str = "strong", *, square_queries: int = DEFAULT_SQUARE_QUERIES, eot_samples: int = 1
) -> list[Stage]:
    """The stages of a named suite, in the order they run; the gradient stages with EOT over ``eot_samples``
    draws (Square, gradient-free, queries one draw per query)."""
    check_choice(suite, "suite", tuple(SUITES))
    k = eot_samples
    eot = f", EOT over {k} draws" if k > 1 else ""
    if suite == "strong":
        return [
            Stage("apgd-ce", apgd_ce_stage(100, k), f"APGD, cross-entropy, 100 steps{eot}"),
            Stage(
                "apgd-t",
                apgd_t_stage(100, 9, k),
                f"APGD, targeted DLR towards the top-9 other classes, 100 steps each{eot}",
            ),
            Stage(
                "square",
                square_stage(square_queries, FOCUS_QUERIES, FOCUS_SHARE),
                f"Square, {square_queries} queries, p_init 0.8; then {FOCUS_QUERIES} more on the "
                f"{FOCUS_SHARE:.0%} of the samples left that came closest to the boundary",
            ),
        ]
    return [
        Stage("apgd-ce", apgd_ce_stage(50, k), f"APGD, cross-entropy, 50 steps{eot}"),
        Stage(
            "apgd-t", apgd_t_stage(50, 3, k), f"APGD, targeted DLR towards the top-3 other classes, 50 steps each{eot}"
        ),
    ]


SUITES: dict[str, str] = {
    "strong": "APGD-CE, APGD-T (top-9 targets), Square: AutoAttack standard's robust accuracy or one sample lower "
    "on the benchmarked models, in 0.22-0.47 of its time (docs/benchmarks.md); not a superset of it per sample",
    "fast": "APGD-CE (50 steps), APGD-T (top-3 targets, 50 steps): a quick lower bound on the attack's reach",
}


@dataclass(frozen=True)
class StageRecord:
    """What one stage did: on how many samples it ran, how many it broke, and its wall time in seconds."""

    name: str
    description: str
    attacked: int
    broken: int
    seconds: float


@dataclass(frozen=True)
class SuiteResult:
    """Per-sample worst case over a suite.

    Attributes:
        x_adv: (N, ...) the example that broke each sample (the clean image where none did, or where the clean
            image is already misclassified).
        clean_correct: bool (N,): the clean image is classified correctly.
        robust: bool (N,): correctly classified on the clean image and after every attack.
        broken_by: int64 (N,): index into ``attack_names`` of what broke the sample; 0 = "clean" (misclassified
            without attack), -1 = robust.
        attack_names: ("clean", stage names...).
        stages: one :class:`StageRecord` per stage, in order (stages that had no sample left to attack included,
            with ``attacked == 0``).
        eps: (N,) the budget of each sample; norm, suite: as requested.
    """

    x_adv: Tensor
    clean_correct: Tensor
    robust: Tensor
    broken_by: Tensor
    attack_names: tuple[str, ...]
    stages: tuple[StageRecord, ...]
    eps: Tensor
    norm: str
    suite: str

    @property
    def n(self) -> int:
        return int(self.robust.shape[0])

    @property
    def clean_accuracy(self) -> float:
        return float(self.clean_correct.float().mean())

    @property
    def robust_accuracy(self) -> float:
        return float(self.robust.float().mean())

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages)

    def broken_by_names(self) -> list[str | None]:
        """Per sample, the name of what broke it ("clean" or a stage), None where robust."""
        return [None if i < 0 else self.attack_names[i] for i in self.broken_by.tolist()]

    def accuracy_after(self) -> dict[str, float]:
        """Robust accuracy after each stage (cumulative), starting with the clean accuracy."""
        out: dict[str, float] = {}
        broken = torch.zeros_like(self.robust)
        for i, name in enumerate(self.attack_names):
            broken |= self.broken_by == i
            out[name] = 1.0 - float(broken.float().mean())
        return out

    def to_dict(self) -> dict[str, object]:
        """Plain-JSON summary (no tensors): accuracies, per-stage counts and times."""
        return {
            "suite": self.suite,
            "norm": self.norm,
            "n": self.n,
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "accuracy_after": self.accuracy_after(),
            "stages": [vars(s) for s in self.stages],
            "seconds": self.seconds,
        }

    @staticmethod
    def concat(results: Sequence[SuiteResult]) -> SuiteResult:
        """Join the results of consecutive batches of one evaluation (same suite, norm and stages)."""
        if not results:
            raise ValueError("concat needs at least one SuiteResult")
        first = results[0]
        for r in results[1:]:
            if (r.suite, r.norm, r.attack_names) != (first.suite, first.norm, first.attack_names):
                raise ValueError("can only concat results of the same suite, norm and stages")
        stages = tuple(
            StageRecord(
                s.name,
                s.description,
                sum(r.stages[i].attacked for r in results),
                sum(r.stages[i].broken for r in results),
                sum(r.stages[i].seconds for r in results),
            )
            for i, s in enumerate(first.stages)
        )
        return SuiteResult(
            torch.cat([r.x_adv for r in results]),
            torch.cat([r.clean_correct for r in results]),
            torch.cat([r.robust for r in results]),
            torch.cat([r.broken_by for r in results]),
            first.attack_names,
            stages,
            torch.cat([r.eps for r in results]),
            first.norm,
            first.suite,
        )


def _per_sample_seeds(seed: int | Tensor, n: int, device: torch.device) -> Tensor:
    if isinstance(seed, bool) or not isinstance(seed, int | Tensor):
        raise TypeError(f"seed must be an int or an int64 tensor of shape ({n},), got {type(seed).__name__}")
    if isinstance(seed, int):
        return seed + torch.arange(n, dtype=torch.long, device=device)
    if seed.is_floating_point() or seed.shape != (n,):
        raise ValueError(f"a seed tensor must hold {n} integers (one per sample), got {seed.dtype} {tuple(seed.shape)}")
    return seed.to(device=device, dtype=torch.long)


def _sync(x: Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize(x.device)


def run_suite(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float | Tensor,
    norm: str = "linf",
    *,
    seed: int | Tensor = 0,
    suite: str = "strong",
    square_queries: int = DEFAULT_SQUARE_QUERIES,
    stages: Sequence[Stage] | None = None,
    eot_samples: int = 1,
    judge: Callable[[Tensor, Tensor | None], Tensor] | None = None,
) -> SuiteResult:
    """Run a suite of attacks on one batch and return the per-sample worst case.

    Each stage runs only on the samples still correctly classified, so the cost falls as samples break. A
    sample counts as broken by a stage when the model misclassifies the stage's returned example on a fresh
    forward pass (as AutoAttack does), and that example is checked to lie in the box and the eps-ball.

    Args:
        model: maps images in [0, 1] to logits; left as it was.
        x, y: a batch of clean images in [0, 1] and their true labels.
        eps: budget in pixel units, a number or a per-sample tensor (N,).
        norm: "linf" or "l2".
        seed: an int (sample i gets seed + i) or per-sample int64 seeds (N,), e.g. dataset indices, which make
            each sample's outcome independent of the batching.
        suite: a name in ``SUITES``; ``stages`` overrides it with custom stages.
        square_queries: the Square attack's query budget in the "strong" suite.
        eot_samples: K >= 1 draws of a randomized model: the gradient stages run with EOT over K draws, and the
            clean prediction and each stage's break are judged on the expected prediction (the mean softmax
            over K draws, :mod:`advlab.attacks.eot`), so a sample counts as broken on average, not by one
            lucky draw. 1 (default): one forward, as before. The judgements use common random numbers where
            advlab's random defences draw: sample i's K draws come from the stream of its seed
            (:func:`advlab.defenses.sample_streams`), the same at its clean point and at each stage's point.
            A model's other randomness (torch's global generator) is drawn afresh at each judgement.
        judge: the caller's prediction rule, ``judge(points, rows)`` the logits of ``points`` standing for the
            batch's rows ``rows`` (all of them when None), used for the clean prediction and each stage's break in
            place of the suite's own: an evaluation passes its records' rule (:class:`~advlab.evaluate.engine.Judge`:
            the run's K and draws), so that what the suite stops attacking is what the records count as broken.
    """
    check_model(model)
    x = check_images(x)
    n = x.shape[0]
    y, y_max = check_labels(y, n, x.device)
    eps_t = check_eps(eps, n, x, norm)
    norm = check_choice(norm, "norm", NORMS)
    seeds = _per_sample_seeds(seed, n, x.device)
    eot_samples = check_steps(eot_samples, "eot_samples")
    stage_list = (
        list(stages)
        if stages is not None
        else suite_stages(suite, square_queries=square_queries, eot_samples=eot_samples)
    )

    def own_rule(points: Tensor, rows: Tensor | None = None) -> Tensor:
        # Common random numbers: advlab's random defences draw sample i's K draws from its own stream (keyed by
        # its seed), the same at the clean point and at every stage's point, whatever rows are still running.
        keys = seeds if rows is None else seeds[rows]
        with torch.no_grad(), frozen(model), sample_streams(keys):
            return expected_logits([model(points) for _ in range(eot_samples)])

    def predict(points: Tensor, rows: Tensor | None = None) -> Tensor:
        if judge is None:
            return own_rule(points, rows)
        with torch.no_grad(), frozen(model):
            return judge(points, rows)

    logits = predict(x)
    check_logits(logits, n, y_max)
    clean_correct = logits.argmax(dim=1) == y
    robust = clean_correct.clone()
    broken_by = torch.where(clean_correct, -1, 0)
    x_adv = x.detach().clone()
    records = []
    for k, stage in enumerate(stage_list, start=1):
        index = robust.nonzero().view(-1)
        if index.numel() == 0:
            records.append(StageRecord(stage.name, stage.description, 0, 0, 0.0))
            continue
        xs, ys, es = x[index], y[index], eps_t[index]
        _sync(x)
        start = time.perf_counter()
        result = stage.run(model, xs, ys, es, norm, seeds[index] * 8 + k)
        broke = predict(result.x_adv, index).argmax(dim=1) != ys
        _sync(x)
        seconds = time.perf_counter() - start
        _check_budget(result.x_adv, xs, es, norm, stage.name)
        hit = index[broke]
        robust[hit] = False
        broken_by[hit] = k
        x_adv[hit] = result.x_adv[broke]
        records.append(StageRecord(stage.name, stage.description, int(index.numel()), int(hit.numel()), seconds))
    return SuiteResult(
        x_adv, clean_correct, robust, broken_by, ("clean", *(s.name for s in stage_list)), tuple(records), eps_t,
        norm, suite if stages is None else "custom",
    )  # fmt: skip


def _check_budget(x_adv: Tensor, x: Tensor, eps: Tensor, norm: str, name: str) -> None:
    """A stage's output must be an image in the eps-ball: anything else is a bug, not a robustness number."""
    size = flat_norm(x_adv - x, float("inf") if norm == "linf" else 2.0)
    tol = 1e-5 * torch.clamp(eps, min=1.0)
    over = size > eps + tol
    outside = (x_adv < 0).flatten(1).any(1) | (x_adv > 1).flatten(1).any(1)
    if bool((over | outside).any()):
        worst = float((size - eps).max())
        raise RuntimeError(
            f"stage {name} returned points outside the {norm} eps-ball or the [0, 1] box (by {worst:.3g})"
        )
