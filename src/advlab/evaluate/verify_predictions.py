"""The model's predictions against a record's, within float tolerance, for :func:`advlab.evaluate.verify.verify_run`.

Another machine or device (CPU vs CUDA, TF32 convolutions) computes slightly different logits, so a prediction
of the record counts as wrong only where float error cannot explain the difference, judged from verify's OWN
forward pass (never from the record's probabilities, which a tampered record could set):

- the top-1 (:func:`prediction_gaps`): where the top two softmax probabilities are more than ``tol`` apart;
- the top-5 (:func:`top5_sets`): where the 5th and 6th log-probabilities are more than ``TOP5_SLACK * tol``
  apart (then the five classes are fixed, whatever their order).

The same rule judges the adversarial predictions (``adv_top5``, ``success``, ``success_top5``) and the clean ones
(:func:`clean_mismatches`: ``clean_top5``, which decides clean top-1/top-5 accuracy, whether a sample was
correctly classified to begin with, and so ``success_rate_on_clean_correct``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

PROB_TOL = 1e-3
TOP5_SLACK = 10.0  # the top-5 boundary's gap, in log-probability, is compared with TOP5_SLACK * tol (top5_sets)


def prediction_gaps(logits: torch.Tensor) -> list[float]:
    """Per row: the gap between the top two softmax probabilities of the verifier's own forward pass (where it is
    at most ``tol``, float error can flip the top-1 and the row decides nothing about it)."""
    if logits.shape[1] < 2:
        return [1.0] * logits.shape[0]
    top2 = torch.softmax(logits.double(), dim=1).topk(2, dim=1).values
    return (top2[:, 0] - top2[:, 1]).tolist()


def top5_sets(logits: torch.Tensor, tol: float) -> list[tuple[set[int], bool]]:
    """Per row: the classes of the verifier's own top-5, and whether the 5th and 6th log-probabilities are within
    ``TOP5_SLACK * tol`` (then float error can change who is in the top 5, and the row decides nothing about it).
    Log, i.e. a relative gap: the 5th and 6th probabilities of a confident model are both tiny, always within
    ``tol``; the slack is wider than the top-1's (logit gap ~4 tol near p = 1/2) since another device's logits
    (TF32 convolutions on CUDA) differ by up to ~1e-3 relative, and a false alarm on an honest run costs more
    than a forged top-5 the model nearly agrees with."""
    logp = torch.log_softmax(logits.double(), dim=1)
    values, classes = logp.topk(min(6, logp.shape[1]), dim=1)
    slack = TOP5_SLACK * tol
    near = (values[:, 4] - values[:, 5] <= slack).tolist() if values.shape[1] == 6 else [False] * len(values)
    return [(set(c[:5]), n) for c, n in zip(classes.tolist(), near, strict=True)]


def clean_mismatches(
    aid: str, records: Sequence[Mapping[str, Any]], pos: Mapping[int, int], logits: torch.Tensor, tol: float
) -> list[str]:
    """One attack's records of one batch against the model's clean prediction (``logits``: row ``pos[index]``
    per readable sample, computed by eval's rule): the record's clean top-1 (``clean_top5[0]``) is the model's
    unless the top two probabilities are within ``tol``, and its clean top-5 classes are the model's unless the
    5th and 6th are within ``TOP5_SLACK * tol``. A record whose sample the data lacks, or whose label is not the
    data's, is reported by the caller. ``clean_probs`` are not compared: no statistic is computed from them."""
    top1, gaps, fives = logits.argmax(dim=1).tolist(), prediction_gaps(logits), top5_sets(logits, tol)
    out = []
    for r in records:
        row = pos.get(int(r["index"]))
        if row is None:
            continue
        where, said = f"{aid}, sample {r['index']}", r.get("clean_top5")
        if not isinstance(said, list) or not said:
            out.append(f"{where}: the record has no clean top-5 (got {said!r}), the model's top-1 is {top1[row]}")
            continue
        t, (five, near) = top1[row], fives[row]
        if said[0] != t and gaps[row] > tol:
            right = "correctly" if said[0] == r["label"] else "incorrectly"
            out.append(
                f"{where}: the record's clean top-1 {said[0]} ({right} classified) is not the model's {t} on the "
                f"clean image (label {r['label']})"
            )
        elif not near and (len(said) != len(five) or set(said) != five):
            out.append(f"{where}: the record's clean top-5 {said} is not the model's {sorted(five)} on the clean image")
    return out


def target_mismatches(
    aid: str,
    mode: str | int | None,
    records: Sequence[Mapping[str, Any]],
    pos: Mapping[int, int],
    want: torch.Tensor | None,
    logits: torch.Tensor,
    tol: float,
) -> list[str]:
    """One attack's own records of one batch against the targets eval chose (``want``: row ``pos[index]``, from
    :func:`~advlab.evaluate.engine.choose_targets` on the model's clean logits; None for an untargeted attack). A
    record copied from an earlier attack (``from``) carries that attack's target and is checked against its record
    (verify_chains). A least-likely target is not compared where the log-probabilities of the two least likely
    classes are within ``TOP5_SLACK * tol`` (as the top-5 boundary): another device's rounding can swap them. A
    forged target (set to what the attack reached) would count an unbroken sample as a targeted success."""
    out = []
    if want is not None and mode == "least-likely" and logits.shape[1] > 1:
        low2 = torch.log_softmax(logits.double(), dim=1).topk(2, dim=1, largest=False).values
        near = ((low2[:, 1] - low2[:, 0]) <= TOP5_SLACK * tol).tolist()
    else:
        near = [False] * logits.shape[0]
    for r in records:
        row = pos.get(int(r["index"]))
        if row is None or r.get("from"):
            continue
        said = r.get("target")
        if want is None:
            if said is not None:
                out.append(f"{aid}, sample {r['index']}: the record has target {said!r}, the attack is untargeted")
        elif said != int(want[row]) and not near[row]:
            out.append(
                f"{aid}, sample {r['index']}: the record's target {said!r} is not the one eval chose "
                f"({int(want[row])}, target {mode!r})"
            )
    return out
