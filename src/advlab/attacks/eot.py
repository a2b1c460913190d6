"""Expectation over Transformation (Athalye, Engstrom, Ilyas & Kwok 2018, "Synthesizing Robust Adversarial
Examples", sec. 2; used against randomized defences in Athalye, Carlini & Wagner 2018, sec. 4.2): attack a
randomized model through its expectation, written once for every gradient attack.

An attack with ``eot_samples=K`` sees the model through :class:`Expected`:

- its step direction is the Monte-Carlo estimate of the gradient of the expected objective,
  grad_x E_t[f(t(x))] ~ (1/K) sum_k grad_x f(logits_k(x)), one forward and one backward per draw k;
- its success test and its choice of best point read the *expected prediction*, the mean of the softmax over
  the same K draws, presented as logits log((1/K) sum_k softmax(logits_k)) (log-probabilities, whose softmax is
  that mean and whose argmax is its argmax). A sample counted as broken is then broken on average over the
  model's randomness, not by one lucky draw.
- APGD's success test (:meth:`Expected.success`) asks more of K > 1 draws: the mean prediction must be wrong by
  a margin the K draws resolve, d-bar > z s / sqrt(K), with d_k = p_k(rival) - p_k(y) per draw (the rival: the
  strongest other class of the mean; for a targeted attack d_k = p_k(target) - p_k(rival)), s their standard
  deviation and z = ``CONFIDENCE_Z``. Why: APGD tests success at every iterate and keeps (and, with
  ``stop_on_success``, stops at) the first point the test passes, so a plain test on a K-draw estimate picks the
  iterate whose draws happened to fall wrong: the optimizer's curse (Smith & Winkler 2006, "The Optimizer's Curse:
  Skepticism and Postdecision Surprise in Decision Analysis"), a break that an independent judgement does not
  confirm, and the attack's remaining steps lost. With the margin it keeps ascending until the break is resolved,
  as the expectation in Athalye et al.'s EOT is meant: a break of the expected prediction, which Tramer et al.
  2020 ("On Adaptive Attacks to Adversarial Example Defenses") ask an adaptive attack to target, not of K samples
  of it. What the margin does not do: s is estimated from the K draws, so one test is a one-sided t-test with
  K - 1 degrees of freedom (a false break where there is none: about 7 % of tests at K = 4, 4 % at K = 10, not
  the normal tail's 2 %), and APGD tests every iterate, so over a long run the chance of one false claim grows
  with the steps. So APGD also confirms a claim before it acts on it (:meth:`Expected.confirm`): at each
  checkpoint, where it stops broken samples, and at the end of a run, it tests each newly claimed best point
  again on fresh draws, which took no part in choosing it (K to choose the rival class, K to test), and a claim
  they do not resolve is withdrawn (the sample's best point is then its best unbroken iterate, and the attack
  goes on; a confirmed break is final). A false stop then needs a false claim and an independent false
  confirmation of the same point; it is rarer, not impossible, and every checkpoint, restart and APGD-T target is
  another chance (docs/evaluate.md).

With K = 1 nothing is averaged: the logits, objective and gradient are exactly those of the single forward pass,
so ``eot_samples=1`` is today's attack, bit for bit.

Where the randomness comes from: the model's own. advlab draws nothing for the model and never reseeds it; the K
draws are K successive calls of the model on the same batch, so a model that draws from torch's global generator
(``torch.randn``, the random transforms of :mod:`advlab.defenses`) gets K fresh draws, and
``torch.manual_seed(s)`` before the attack makes the whole run repeatable. An attack's own ``seed`` (random
starts) uses private per-sample generators and does not touch the model's stream. Per-sample independence
holds as far as the model's randomness is itself per sample: a model that draws one value for the whole batch
couples the samples of that batch, whatever the attack does. Judging is another matter: advlab's evaluation
(``advlab.evaluate``) judges a sample's clean and adversarial points on common draws, from per-sample streams
where advlab's random defences draw (``advlab.defenses.sample_streams``) and from one seed per batch for torch's
global generator (docs/evaluate.md). The attacks run the model in eval mode
(:func:`~advlab.attacks.checks.frozen`), so dropout and other train-mode randomness are off: EOT averages the
randomness that the model keeps in eval mode, as a deployed randomized defence does.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .checks import first_logits
from .gradient import input_gradient
from .objectives import is_success

Score = Callable[[Tensor], Tensor]  # logits -> per-sample values
CONFIDENCE_Z = 2.0  # the success test's threshold on K > 1 draws, in standard errors (module docstring)


def strongest_other(probs: Tensor, y: Tensor) -> Tensor:
    """Per sample, the class other than ``y`` of highest mean probability over the draws (``probs`` (K, N, C))."""
    rows = torch.arange(probs.shape[1], device=probs.device)
    return probs.mean(0).index_put((rows, y), torch.tensor(-1.0, dtype=probs.dtype, device=probs.device)).argmax(1)


def decisive(
    log_probs: Tensor, y: Tensor, targeted: bool = False, z: float = CONFIDENCE_Z, rival: Tensor | None = None
) -> Tensor:
    """Per sample, whether K draws (``log_probs`` (K, N, C), log-softmax per draw) resolve a break of the mean
    prediction: d-bar > z s / sqrt(K) for d_k = p_k(rival) - p_k(y) (``targeted``: p_k(y) - p_k(rival), y the
    target), s the draws' standard deviation of d_k. The rival is the strongest other class of these draws' mean
    softmax unless given (:meth:`Expected.confirm` chooses it on other draws: a rival chosen by the draws that
    test it is the largest of C - 1 noisy means, and the test is then not at its level). d-bar > 0 with the
    rival of the same draws is the plain test on the mean prediction; the margin is that estimate's noise
    (module docstring)."""
    probs = log_probs.exp()
    k, n = probs.shape[0], probs.shape[1]
    rows = torch.arange(n, device=probs.device)
    if rival is None:
        rival = strongest_other(probs, y)
    d = probs[:, rows, rival] - probs[:, rows, y]
    if targeted:
        d = -d
    return d.mean(0) > z * d.std(0) / math.sqrt(k)


def expected_logits(draws: list[Tensor]) -> Tensor:
    """log of the mean softmax over the draws (K logits tensors (N, C)); the single draw itself when K = 1."""
    if len(draws) == 1:
        return draws[0]
    return mean_of_log_probs(torch.stack([d.log_softmax(dim=1) for d in draws]))


def mean_of_log_probs(log_probs: Tensor) -> Tensor:
    """log of the mean softmax from the draws' log-softmax stacked (K, N, C)."""
    return torch.logsumexp(log_probs, dim=0) - math.log(log_probs.shape[0])


class Expected:
    """The model seen through ``samples`` draws of its randomness (one instance per attack run).

    The first forward of the instance is checked (:func:`~advlab.attacks.checks.first_logits` against ``y_max``),
    the others are plain calls, as in the attack loops.
    """

    def __init__(self, model: nn.Module, samples: int, y_max: int) -> None:
        self.model = model
        self.samples = samples
        self.y_max = y_max
        self._checked = False
        self._draws: Tensor | None = None  # the last evaluation's K draws (log-softmax, (K, N, C)), when K > 1

    def _forward(self, x: Tensor) -> Tensor:
        if self._checked:
            return self.model(x)
        self._checked = True
        return first_logits(self.model, x, self.y_max)

    def logits(self, x: Tensor) -> Tensor:
        """The expected logits at ``x`` (no gradient): what success and best points are judged on."""
        with torch.no_grad():
            return self._mean([self._forward(x) for _ in range(self.samples)])

    def _mean(self, draws: list[Tensor]) -> Tensor:
        """:func:`expected_logits` of the draws, keeping their log-softmax (K > 1) for :meth:`success`."""
        if len(draws) == 1:
            return draws[0]
        self._draws = torch.stack([d.detach().log_softmax(dim=1) for d in draws])
        return mean_of_log_probs(self._draws)

    def success(self, logits: Tensor, y: Tensor, targeted: bool = False) -> Tensor:
        """Whether the point of the last evaluation (``logits``: its expected logits) is a break: the argmax
        test with K = 1 (left y, or reached the target y); with K > 1 :func:`decisive` on that evaluation's
        draws (module docstring)."""
        if self.samples == 1 or self._draws is None:
            return is_success(logits, y, targeted)
        return decisive(self._draws, y, targeted)

    def confirm(self, x: Tensor, claimed: Tensor, y: Tensor, targeted: bool = False) -> Tensor:
        """``claimed`` (bool (N,), breaks claimed at the points ``x``) with each claim tested again on fresh
        draws at its point: the claims those draws do not resolve are withdrawn. The claims were chosen by the
        draws that made them (the module docstring's optimizer's curse); fresh draws test the point chosen
        independently. K draws choose the rival class (the strongest other class of their mean) and K more
        test it (:func:`decisive` with that rival), so that neither the point nor the rival is chosen by the
        draws that judge it. Runs the model on the claimed rows only, 2K times, without a gradient; one host
        sync. With K = 1 there is nothing to average and ``claimed`` is returned as it is.
        """
        if self.samples == 1:
            return claimed
        index = claimed.nonzero().view(-1)
        if index.numel() == 0:
            return claimed
        labels = y[index]
        with torch.no_grad():
            sub = x[index]
            pick = torch.stack([self._forward(sub).softmax(dim=1) for _ in range(self.samples)])
            test = torch.stack([self._forward(sub).log_softmax(dim=1) for _ in range(self.samples)])
        out = claimed.clone()
        out[index] = decisive(test, labels, targeted, rival=strongest_other(pick, labels))
        return out

    def value_and_grad(self, x: Tensor, objective: Score) -> tuple[Tensor, Tensor, Tensor]:
        """(expected logits, objective at them, EOT gradient) at ``x``, all detached.

        The gradient is the mean over the K draws of grad_x objective(logits_k).sum(); the objective is summed
        over the batch, never averaged, so each sample's gradient is its own. With K = 1 the three values are
        those of the one forward and backward pass. The gradient is dense: the caller may update it in place.
        """
        x_in = x.detach().requires_grad_(True)
        if self.samples == 1:
            logits = self._forward(x_in)
            obj = objective(logits)
            grad = input_gradient(obj.sum(), x_in)
            # Autograd may return a broadcast view (stride 0, e.g. for a model that sums its input), which the
            # in-place step rules cannot write to; a dense copy changes no value.
            return logits.detach(), obj.detach(), grad.contiguous()
        draws: list[Tensor] = []
        grad = torch.zeros_like(x_in)
        for _ in range(self.samples):
            logits = self._forward(x_in)
            grad.add_(input_gradient(objective(logits).sum(), x_in))
            draws.append(logits.detach())
        grad.div_(self.samples)
        mean = self._mean(draws)
        with torch.no_grad():
            return mean, objective(mean), grad

    def value(self, x: Tensor, objective: Score) -> tuple[Tensor, Tensor]:
        """(expected logits, objective at them) at ``x``, without a gradient."""
        with torch.no_grad():
            logits = self.logits(x)
            return logits, objective(logits)
