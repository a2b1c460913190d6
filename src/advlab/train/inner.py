"""The inner maximisation of each training method and the outer loss it feeds.

Madry et al. 2018 (eq. 2.1) write adversarial training as the saddle-point problem
    min_theta E_(x,y) [ max_{delta in S} L(theta, x + delta, y) ],
with S the Linf ball of radius eps (intersected here with the [0, 1] pixel box). Each method below is one way of
approximately solving the inner max for a batch; the outer min is one optimiser step on the returned loss.

The inner maximisations run the model in eval mode with frozen parameters (so batch-norm statistics are not
touched by attack passes and no weight gradient is computed) and always sum, never average, the per-sample
objective, so each sample's perturbation depends on that sample alone. Eval mode is a choice, shared with the
TRADES reference code and Madry-lab's ``robustness`` library; Madry et al.'s and Wong et al.'s own code attack
in train mode (batch statistics). It makes no difference to BN-free models such as the shipped CNNs.

Long inner attacks (``steps >= PREPARE_MIN_STEPS``) attack :func:`advlab.models.prepare`'s copy of the model, made
afresh from the current weights at every step when ``prepare`` is on (``TrainConfig.prepare``); short ones
(FGSM-RS) attack the model as given, where a copy per step would not repay itself. Either way the choice
depends on the settings alone, never on what ran earlier in the process, so a resumed run equals an
uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advlab import attacks
from advlab.attacks.ascent import ascend
from advlab.attacks.checks import frozen
from advlab.attacks.noise import Noise
from advlab.attacks.norms import Ball, Linf
from advlab.models import prepare as prepare_model

PREPARE_MIN_STEPS = 4  # inner attacks of at least this many steps attack a prepared copy (when prepare is on)


def _attacked(model: nn.Module, x: Tensor, steps: int, prepare: bool) -> nn.Module:
    """The module the inner attack runs: a prepared copy of the current weights for long attacks, else the model."""
    return prepare_model(model, x) if prepare and steps >= PREPARE_MIN_STEPS else model


def fgsm_rs(model: nn.Module, x: Tensor, y: Tensor, eps: float, alpha: float) -> Tensor:
    """FGSM from a uniform random start (Wong, Rice & Kolter 2020, "Fast is better than free", Algorithm 3).

    delta ~ U(-eps, eps); delta <- Pi_[-eps, eps](delta + alpha * sign(grad_delta L(x + delta, y))), with the
    paper's alpha = 1.25 eps, and x + delta kept in [0, 1]. The step itself is :func:`advlab.attacks.fgsm`
    taken at the random start (which clips to [0, 1]); the projection back onto the eps-ball around x follows.
    Clipping to [0, 1] and then to [x - eps, x + eps] is the projection onto their intersection (one interval
    per pixel), so the result is in both.
    """
    start = (x + (2 * torch.rand_like(x) - 1) * eps).clamp_(0, 1)
    stepped = attacks.fgsm(model, start, y, alpha)
    return torch.clamp(stepped, x - eps, x + eps)


def _sign_ascent(
    target: nn.Module,
    x: Tensor,
    eps: float,
    alpha: float,
    steps: int,
    start: Callable[[Ball], Tensor],
    objective: Callable[[Tensor], Tensor],
) -> Tensor:
    """``steps`` projected sign-gradient steps over the Linf eps-ball ∩ [0, 1] from ``start(ball)``; last iterate."""
    n = x.shape[0]
    ball = Linf().ball(x, torch.full((n,), eps, dtype=x.dtype, device=x.device))
    alphas = torch.full((n,), alpha, dtype=x.dtype, device=x.device)
    with frozen(target):
        return ascend(target, ball, start(ball), alphas, steps, objective, y_max=0).detach()


def pgd_inner(
    model: nn.Module, x: Tensor, y: Tensor, eps: float, alpha: float, steps: int, *, prepare: bool = True
) -> Tensor:
    """Madry et al. 2018's inner maximisation: a uniform random start in the eps-ball, then ``steps`` projected
    sign-gradient steps of size ``alpha`` on the summed cross-entropy, clipped to the ball and [0, 1]; the last
    iterate is returned, as in their code (an evaluation attack keeps the best point instead)."""
    return _sign_ascent(
        _attacked(model, x, steps, prepare),
        x,
        eps,
        alpha,
        steps,
        lambda ball: ball.random_start(Noise(None, x.shape[0])),
        lambda logits: F.cross_entropy(logits, y, reduction="none"),
    )


def trades_inner(
    model: nn.Module, x: Tensor, eps: float, alpha: float, steps: int, *, prepare: bool = True
) -> Tensor:
    """TRADES' inner maximisation (Zhang et al. 2019, "Theoretically Principled Trade-off between Robustness and
    Accuracy", Algorithm 1): projected sign-gradient ascent on KL(f(x) || f(x')) over the eps-ball, from
    x + 0.001 * N(0, I) (their start).

    The KL is summed over the batch (the reference code's ``size_average=False``), so each sample's ascent
    direction is its own KL's and does not shrink with the batch size.
    """
    target = _attacked(model, x, steps, prepare)
    with frozen(target), torch.no_grad():
        p_clean = F.softmax(target(x), dim=1)
    return _sign_ascent(
        target,
        x,
        eps,
        alpha,
        steps,
        lambda ball: ball.project_(x + 0.001 * torch.randn_like(x)),
        lambda logits: F.kl_div(F.log_softmax(logits, dim=1), p_clean, reduction="none").sum(dim=1),
    )


def attack_module(model: nn.Module) -> nn.Module:
    """The module to attack: the wrapped module of a DistributedDataParallel/DataParallel model, so that the
    inner maximisation's backward passes never trigger DDP's gradient all-reduce."""
    if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
        return model.module
    return model


def method_loss(
    method: str,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    alpha: float,
    steps: int,
    beta: float,
    prepare: bool = True,
) -> tuple[Tensor, Tensor]:
    """One batch's training loss (batch mean) and the logits it was computed on (for the train accuracy).

    - "standard": cross-entropy on the clean batch.
    - "pgd": cross-entropy at the PGD point (:func:`pgd_inner`: Madry et al.'s random start, ``steps`` steps of
      size ``alpha``, last iterate).
    - "fgsm-rs": cross-entropy at the FGSM-from-random-start point (:func:`fgsm_rs`).
    - "trades": CE(f(x), y) + beta * KL(f(x) || f(x')) with x' from :func:`trades_inner` (Zhang et al. eq. 5);
      the logits returned are those at x'.
    ``prepare``: long inner attacks run a prepared copy of the current weights (see the module's docstring).
    ``eps == 0`` (the start of an eps ramp) trains on the clean batch. ``model`` is in train mode; the inner
    maximisation attacks its underlying module in eval mode.
    """
    target = attack_module(model)
    if method == "standard" or eps == 0:
        # TRADES at eps = 0 is plain CE too: its KL term vanishes when x' = x.
        logits = model(x)
        return F.cross_entropy(logits, y), logits
    if method == "pgd":
        x_adv = pgd_inner(target, x, y, eps, alpha, steps, prepare=prepare)
    elif method == "fgsm-rs":
        x_adv = fgsm_rs(target, x, y, eps, alpha)
    elif method == "trades":
        x_adv = trades_inner(target, x, eps, alpha, steps, prepare=prepare)
        logits_clean = model(x)
        logits_adv = model(x_adv)
        kl = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_clean, dim=1), reduction="sum")
        return F.cross_entropy(logits_clean, y) + beta * kl / x.shape[0], logits_adv
    else:
        raise ValueError(f"unknown method {method!r}; expected 'standard', 'pgd', 'fgsm-rs' or 'trades'")
    logits = model(x_adv)
    return F.cross_entropy(logits, y), logits
