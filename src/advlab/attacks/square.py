"""Square Attack (Andriushchenko, Croce, Flammarion & Hein 2020, "Square Attack: a query-efficient black-box
adversarial attack via random search", ECCV 2020), Linf (Algorithm 2) and L2 (Algorithm 3).

A score-based random search: it only queries the model's logits, never its gradients. Each iteration proposes
one change inside a random square window of side s (the fraction p of pixels it covers shrinks on a fixed
schedule) and keeps it when the loss improves. Because it needs no gradients, it is the check that a white-box
evaluation was not fooled by masked gradients (Croce & Hein 2020 use it as the last attack of AutoAttack).

Randomness and per-sample independence. Every random number a sample uses at iteration k (window positions,
colours, the L2 pattern's orientation) is a hash of (its seed, k, a stream number): a counter-based generator,
evaluated for the whole batch in a few vectorised integer operations. So each sample draws its own window
(unlike the reference code, where one window position is shared by the batch), its result does not depend on
its batch, and there is no per-sample Python loop: per-sample ``torch.Generator`` objects would cost a Python
call per sample per iteration, thousands of times per sample.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor, nn

from .checks import check_choice, check_positive, check_steps, first_logits, frozen, validate
from .noise import CounterRandom
from .norms import batch_view, flat_norm
from .objectives import is_success, objective, rounding_slack
from .result import AttackResult
from .state import PerSample

_SIGN_CANDIDATES = 8  # Linf: colour vectors tried per iteration so that the proposal changes the window
_COMPACT_EVERY = 16  # iterations between drops of the finished samples from the batch (one host sync each)
_INIT = 0x7FFF0000  # counters of the initialisation's draws; iteration i draws with counters i + 1 and i + 2**30
_COLOURS = 1 << 30


# ------------------------------------------------------------------------------------------- schedule


def p_schedule(p_init: float, i: int, queries: int, rescale: bool = True) -> float:
    """Fraction of pixels changed at iteration i: p_init halved at iterations 10, 50, 200, 500, 1000, 2000,
    4000, 6000 and 8000 of a 10,000-query run (Andriushchenko et al. 2020, sec. 4). With ``rescale`` the
    schedule is stretched to the actual budget (the authors' code); AutoAttack's "standard" run does not
    rescale its 5,000 queries."""
    it = int(i / queries * 10000) if rescale else i
    halvings = sum(it > b for b in (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000))
    return p_init / 2**halvings


def _window(offset: Tensor, size: int, length: int) -> Tensor:
    """(N, length) bool: positions offset..offset+size-1 of a row/column, per sample."""
    pos = torch.arange(length, device=offset.device)
    return (pos >= offset[:, None]) & (pos < offset[:, None] + size)


def _rectangle_pattern(a: int, b: int) -> Tensor:
    """Concentric rectangles around the centre (a//2, b//2): sum over r >= d of 1 / (r + 1)^2, where d is the
    pixel's Chebyshev distance to the centre and r runs to max(a//2, b//2) (Andriushchenko et al. 2020, sec. 3.2).
    Unit L2 norm."""
    rows = (torch.arange(a, dtype=torch.float64) - a // 2).abs()
    cols = (torch.arange(b, dtype=torch.float64) - b // 2).abs()
    d = torch.maximum(rows[:, None], cols[None, :]).long()
    top = max(a // 2, b // 2) + 1
    weights = 1.0 / torch.arange(1, top + 1, dtype=torch.float64) ** 2
    tail = weights.flip(0).cumsum(0).flip(0)  # tail[r] = sum_{r' >= r} 1 / (r' + 1)^2
    m = tail[d]
    return m / m.norm()


@lru_cache(maxsize=64)
def square_pattern(s: int) -> Tensor:
    """The L2 attack's s x s update before its random sign: the top half a positive bump, the bottom half a
    negative one, unit L2 norm (eta in Algorithm 3 of Andriushchenko et al. 2020). Cached: do not modify."""
    eta = torch.zeros(s, s, dtype=torch.float64)
    if s // 2 > 0:
        eta[: s // 2] = _rectangle_pattern(s // 2, s)
    eta[s // 2 :] = -_rectangle_pattern(s - s // 2, s)
    return eta / eta.norm()


def _place(pattern: Tensor, vh: Tensor, vw: Tensor, h: int, w: int, transpose: Tensor) -> Tensor:
    """(N, h, w) per-sample copies of an s x s ``pattern`` (or its transpose) at rows vh.., columns vw..; 0 outside."""
    s = pattern.shape[0]
    ri = torch.arange(h, device=vh.device) - vh[:, None]
    ci = torch.arange(w, device=vw.device) - vw[:, None]
    inside = ((ri >= 0) & (ri < s))[:, :, None] & ((ci >= 0) & (ci < s))[:, None, :]
    r, c = ri.clamp(0, s - 1)[:, :, None], ci.clamp(0, s - 1)[:, None, :]
    straight = pattern[r, c]
    flipped = pattern.T[r, c]
    return torch.where(transpose[:, None, None], flipped, straight) * inside


# ----------------------------------------------------------------------------------------- proposals


def _linf_init(st: PerSample, rng: CounterRandom) -> Tensor:
    """Vertical stripes: each column of each channel at x + eps or x - eps (Algorithm 2, initialisation)."""
    n, c, _, w = st.x.shape
    signs = rng.bits(_INIT, c * w).view(n, c, 1, w) >> 31
    return torch.where(signs.bool(), st.hi, st.lo)


def _linf_proposal(st: PerSample, rng: CounterRandom, i: int, s: int) -> Tensor:
    """One window of side s, each channel set to x + eps or x - eps, so that the window changes (the authors'
    code resamples the colours until it does; here the first of 8 candidate colour vectors that changes it)."""
    n, c, h, w = st.x.shape
    pos = rng.integers(i, 2, torch.tensor([h - s + 1, w - s + 1], device=st.x.device))
    win = _window(pos[:, 0], s, h)[:, None, :, None] & _window(pos[:, 1], s, w)[:, None, None, :]
    # Is every pixel of the window, per channel, already at its upper (lower) corner?
    at_hi = ((st.x_best == st.hi) | ~win).flatten(2).all(dim=2)
    at_lo = ((st.x_best == st.lo) | ~win).flatten(2).all(dim=2)
    candidates = (rng.bits(i + _COLOURS, _SIGN_CANDIDATES * c).view(n, _SIGN_CANDIDATES, c) >> 31).bool()
    changes = ((candidates & ~at_hi[:, None]) | (~candidates & ~at_lo[:, None])).any(dim=2)
    first = torch.where(changes.any(dim=1), changes.long().argmax(dim=1), 0)
    up = candidates[torch.arange(n, device=first.device), first]
    return torch.where(win, torch.where(up[:, :, None, None], st.hi, st.lo), st.x_best)


def _l2_init(st: PerSample, rng: CounterRandom) -> Tensor:
    """A grid of s x s bumps (s = min(h, w) // 5), each with a random sign per channel and a random orientation,
    scaled to the L2 sphere of radius eps (Algorithm 3, initialisation)."""
    n, c, h, w = st.x.shape
    s = max(min(h, w) // 5, 1)
    eta = square_pattern(s).to(device=st.x.device, dtype=st.x.dtype)
    rows, cols = range((h - 5 * s) // 2, h - s + 1, s), range((w - 5 * s) // 2, w - s + 1, s)
    cells = [(r, q) for r in rows for q in cols]
    signs = rng.signs(_INIT, len(cells) * c, st.x.dtype).view(n, len(cells), c)
    flips = (rng.bits(_INIT + 1, len(cells)) >> 31).bool()
    delta = torch.zeros_like(st.x)
    for j, (r, q) in enumerate(cells):
        bump = torch.where(flips[:, j, None, None], eta.T, eta)  # (N, s, s)
        delta[:, :, r : r + s, q : q + s] += bump[:, None] * signs[:, j, :, None, None]
    return _on_sphere(st, delta)


def _on_sphere(st: PerSample, delta: Tensor) -> Tensor:
    scale = batch_view(st.eps, delta) / batch_view(flat_norm(delta, 2.0).clamp_min(1e-12), delta)
    return (st.x + delta * scale).clamp_(0, 1)


def _l2_proposal(st: PerSample, rng: CounterRandom, i: int, s: int) -> Tensor:
    """Algorithm 3: in window 1 a new bump (random sign per channel, random orientation) is added to the old
    content; window 2 is emptied; the mass the two windows held, plus what the budget has left, is spent on
    window 1 per channel; the whole perturbation is then put back on the eps-sphere and in the box."""
    _, c, h, w = st.x.shape
    delta = st.x_best - st.x
    r = rng.bits(i, 5 + c)
    vh1, vh2 = (r[:, 0] >> 8) % (h - s + 1), (r[:, 2] >> 8) % (h - s + 1)
    vw1, vw2 = (r[:, 1] >> 8) % (w - s + 1), (r[:, 3] >> 8) % (w - s + 1)
    transpose = (r[:, 4] >> 31).bool()
    sign = ((r[:, 5:] >> 31) * 2 - 1).to(st.x.dtype)[:, :, None, None]
    win1 = _window(vh1, s, h)[:, None, :, None] & _window(vw1, s, w)[:, None, None, :]
    win2 = _window(vh2, s, h)[:, None, :, None] & _window(vw2, s, w)[:, None, None, :]
    eta = square_pattern(s).to(device=st.x.device, dtype=st.x.dtype)
    bump = _place(eta, vh1, vw1, h, w, transpose)[:, None]  # (N, 1, h, w)

    def channel_norm(t: Tensor) -> Tensor:
        return t.pow(2).sum(dim=(2, 3), keepdim=True).sqrt()

    old = delta * win1
    norm_image = batch_view(flat_norm(delta, 2.0), delta)
    norm_windows = channel_norm(delta * (win1 | win2))
    new = bump * sign + old / (channel_norm(old) + 1e-12)
    budget = ((batch_view(st.eps, delta) ** 2 - norm_image**2).clamp_min(0) / c + norm_windows**2).sqrt()
    new = new / (channel_norm(new) + 1e-12) * budget
    delta = torch.where(win1, new, torch.where(win2, torch.zeros_like(delta), delta))
    return _on_sphere(st, delta)


# ------------------------------------------------------------------------------------------- public API


def square_result(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float | Tensor,
    *,
    norm: str = "linf",
    queries: int = 5000,
    p_init: float = 0.8,
    targeted: bool = False,
    loss: str | None = None,
    rescale_schedule: bool = True,
    seed: int | Tensor | None = None,
) -> AttackResult:
    """:func:`square`, always returning the :class:`AttackResult`."""
    inp = validate(model, x, y, eps=eps, norm=norm)
    assert inp.eps is not None and inp.norm is not None
    x, y, y_max, eps_t = inp.x, inp.y, inp.y_max, inp.eps
    if x.ndim != 4:
        raise ValueError(f"the Square attack needs images shaped (N, C, H, W), got shape {tuple(x.shape)}")
    queries = check_steps(queries, "queries")
    p_init = check_positive(p_init, "p_init")
    if p_init > 1:
        raise ValueError(f"p_init must be in (0, 1] (a fraction of the pixels), got {p_init}")
    loss = ("ce" if targeted else "margin") if loss is None else check_choice(loss, "loss", ("ce", "margin"))
    n, _, h, w = x.shape
    if min(h, w) < 2:
        raise ValueError(f"the Square attack needs images of at least 2 x 2 pixels, got {h} x {w}")
    rng = CounterRandom(seed, n, x.device)

    e = batch_view(eps_t, x)
    st = PerSample(idx=torch.arange(n, device=x.device), x=x, y=y, eps=eps_t, key=rng.key)
    if norm == "linf":
        st.lo, st.hi = (x - e).clamp(0, 1), (x + e).clamp(0, 1)
    out = PerSample(
        x_best=x.detach().clone(),
        obj=torch.full((n,), float("-inf"), dtype=x.dtype, device=x.device),
        success=torch.zeros(n, dtype=torch.bool, device=x.device),
        used=torch.zeros(n, dtype=torch.long, device=x.device),
    )

    def write_back(state: PerSample) -> None:
        out.put(state.idx, PerSample(x_best=state.x_best, obj=state.obj, success=state.success, used=state.used))

    with frozen(model), torch.no_grad():
        # x itself first (not a query of the search): where it is already adversarial, it is the answer, as in
        # AutoAttack, which runs Square on the correctly classified only; the stripes could land back in class.
        # Only past the rounding slack: a near-tie that this batch's rounding calls adversarial is searched (a
        # suite hands Square the samples its own judgement left standing).
        logits = first_logits(model, x, y_max).to(x.dtype)
        clean_obj = objective(logits, y, loss, targeted)
        clean = objective(logits, y, "margin", targeted) > rounding_slack(logits)
        st.x_best = _linf_init(st, rng) if norm == "linf" else _l2_init(st, rng)
        logits = model(st.x_best)
        st.obj = objective(logits.to(x.dtype), y, loss, targeted)  # x's dtype: half logits of an autocast model
        st.success = is_success(logits, y, targeted)
        st.x_best = torch.where(batch_view(clean, x), x, st.x_best)
        st.obj = torch.where(clean, clean_obj, st.obj)
        st.used = torch.where(clean, 0, 1)  # no query spent where x already was adversarial
        st.success = st.success | clean
        for i in range(queries - 1):
            if i % _COMPACT_EVERY == 0:
                keep = ~st.success
                if not bool(keep.all()):  # host sync every _COMPACT_EVERY iterations only
                    write_back(st.take(~keep))
                    st = st.take(keep)
                if st.idx.numel() == 0:
                    break
            p = p_schedule(p_init, i, queries, rescale_schedule)
            side = round(math.sqrt(p * h * w))
            if norm == "linf":
                s = min(max(side, 1), min(h, w) - 1)
                x_new = _linf_proposal(st, CounterRandom.from_keys(st.key), i + 1, s)
            else:
                s = max(side, 3)
                s = min(s + 1 if s % 2 == 0 else s, min(h, w))
                x_new = _l2_proposal(st, CounterRandom.from_keys(st.key), i + 1, s)
            logits = model(x_new)
            obj = objective(logits.to(x.dtype), st.y, loss, targeted)
            success = is_success(logits, st.y, targeted)
            # A broken sample is frozen at once (not at the next compaction), so nothing depends on the batch.
            active = ~st.success
            accept = active & ((obj > st.obj) | success)
            st.x_best = torch.where(batch_view(accept, x_new), x_new, st.x_best)
            st.obj = torch.where(accept, obj, st.obj)
            st.success = st.success | (accept & success)
            st.used = st.used + active.long()
        write_back(st)
    return AttackResult(out.x_best, out.success, out.obj, {"queries": out.used})


def square(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float | Tensor,
    *,
    norm: str = "linf",
    queries: int = 5000,
    p_init: float = 0.8,
    targeted: bool = False,
    loss: str | None = None,
    rescale_schedule: bool = True,
    seed: int | Tensor | None = None,
    return_info: bool = False,
) -> Tensor | AttackResult:
    """Square Attack: random search over square-shaped updates at the border of the eps-ball.

    Linf (Algorithm 2): start from vertical stripes x +- eps; each iteration sets one random s x s window
    (all channels) to x + eps or x - eps per channel, s = round(sqrt(p * h * w)) clipped to [1, min(h, w) - 1].
    L2 (Algorithm 3): start from a grid of +-bumps on the eps-sphere; each iteration moves the perturbation's
    mass from a random window into a fresh bump in another (s odd, >= 3). Both keep a proposal when the loss
    falls (the margin z_y - max_{i != y} z_i untargeted, the target's cross-entropy targeted, by default) or the
    sample breaks, and stop a sample once it breaks.

    Args:
        queries: model evaluations per sample, the initialisation included (the query budget).
        p_init: initial fraction of pixels per window; 0.8 is AutoAttack's choice for robust models, the
            paper used 0.05 (Linf) and 0.1 (L2) for standard ImageNet models.
        loss: "margin" or "ce"; default "margin" untargeted and "ce" targeted, as in the paper.
        rescale_schedule: stretch the p schedule (written for 10,000 queries) to ``queries``.
        seed: per-sample seeds (see :class:`CounterRandom`); with an int or tensor the attack is deterministic
            and each sample's result is independent of its batch.

    A sample already adversarial at x (misclassified, or classified as the target, past the rounding slack of
    :func:`~advlab.attacks.objectives.rounding_slack`) is not searched: it comes back as x itself, successful,
    with 0 queries (one forward pass of the batch at x, before the search, not counted).

    Returns x_adv (the best point found; in the box and the ball), or with ``return_info=True`` an
    :class:`AttackResult` whose ``loss`` is the objective that was ascended and ``extras["queries"]`` the number
    of model evaluations each sample's search used.
    """
    result = square_result(
        model, x, y, eps, norm=norm, queries=queries, p_init=p_init, targeted=targeted, loss=loss,
        rescale_schedule=rescale_schedule, seed=seed,
    )
    return result if return_info else result.x_adv
