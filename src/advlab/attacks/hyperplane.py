"""FAB's projection (Croce & Hein, ICML 2020, proj_p of sec. 3.1): the smallest step in Linf, L2 or L1 onto a
hyperplane within the [0, 1] box, exact, from a row's first breakpoints (:mod:`~advlab.attacks.deepening`)."""

from __future__ import annotations

import torch
from torch import Tensor

from .deepening import Solver, rows_of, search_deeper

# The projection solves each row from its HYPERPLANE_TOPK first breakpoints (a top-k), then from
# HYPERPLANE_GROWTH times as many for the rows whose crossing lies further, and so on, sorting all n once the
# next top-k would pass a quarter of n. Where FAB-T's steps cross on ImageNet-sized images, and what a top-k
# costs against the sort there: docs/benchmarks.md, fab_projection.py. Off the CPU the default is the full sort:
# reading which rows a top-k left would be a host sync in FAB's step (whether the search pays on a GPU anyway is
# fab_projection.py's GPU lane).
HYPERPLANE_NORMS = ("linf", "l2", "l1")
HYPERPLANE_TOPK = 1024
HYPERPLANE_GROWTH = 4


def hyperplane_box_step(
    x: Tensor, w: Tensor, c: Tensor, p: str, *, first: int | None = None, growth: int = HYPERPLANE_GROWTH
) -> Tensor:
    """The smallest d in ``p`` ("linf", "l2" or "l1") with <w, d> = c and x + d in [0, 1], per row of the flat
    (N, n) ``x`` and ``w``: the projection of x onto the hyperplane {z: <w, z - x> = c} intersected with the box
    (FAB's projection proj_p of Croce & Hein 2020). Where the box makes the hyperplane unreachable, the d that
    gets closest (every coordinate that helps at its bound).

    With s = sign(c) and v = s w (L2) or s sign(w) (Linf), the minimiser is d(t) = clip(t v) to the box for
    the t >= 0 where <w, d(t)> = c: <s w, d(t)> grows piecewise linearly with t, each coordinate saturating at
    t_i = room_i / |v_i|, so the t_i in increasing order give it exactly. For L1 the cheapest coordinates are
    those of largest |w_i|: they are moved to their bound in that order until c is reached (the last one
    partly). A coordinate with no room (at the bound it would move to) takes no part in either order, and a
    row whose c lies beyond what the box allows is settled without one. Either order is searched from its
    ``first`` breakpoints (default: HYPERPLANE_TOPK on the CPU, all n elsewhere), ``growth`` times deeper for
    the rows that need it (:func:`~advlab.attacks.deepening.search_deeper`), which finds what the full sort
    finds: on the CPU the same step bit for bit where the order has no ties, else to float rounding (the order
    of tied t_i), and in L1 a minimiser that may move another of several coordinates of equal |w_i| (as the
    sort's unstable order may).
    """
    if p not in HYPERPLANE_NORMS:
        raise ValueError(f"hyperplane_box_step: unknown norm {p!r}; expected one of {HYPERPLANE_NORMS}")
    n = x.shape[1]
    if first is None:
        first = HYPERPLANE_TOPK if x.device.type == "cpu" else n
    s = c.sign()
    ws = w * s[:, None]
    magnitude = w.abs()
    target = c.abs()
    room = torch.where(ws > 0, 1 - x, x)  # how far each coordinate can move in the direction that helps
    gain = magnitude * room  # what moving it to its bound adds to <s w, d>
    beyond = gain.sum(dim=1) < target  # out of reach: every coordinate that helps goes to its bound
    if p == "l1":
        key = torch.where(gain > 0, magnitude, -1.0)  # the order: largest |w_i| first, those that cannot move last
        d = search_deeper(_l1_solver(key, magnitude, gain, room, target, beyond), n, first, growth)
        return d * ws.sign() * (c != 0)[:, None]
    v = ws if p == "l2" else ws.sign()
    speed = v.abs()
    moving = (speed > 0) & (room > 0)
    t_sat = torch.where(moving, room / speed.clamp_min(1e-30), torch.full_like(room, float("inf")))
    slope = torch.where(moving, magnitude * speed, 0.0)  # how fast <s w, d(t)> grows while coordinate i moves
    t = search_deeper(_ray_solver(t_sat, gain, slope, slope.sum(dim=1), target, beyond), n, first, growth)
    d = torch.minimum(t[:, None] * speed, room).nan_to_num(0.0) * v.sign()
    return d * (c != 0)[:, None]


def _ray_solver(t_sat: Tensor, gain: Tensor, slope: Tensor, total: Tensor, target: Tensor, beyond: Tensor) -> Solver:
    """solve(rows, k) for Linf and L2: the t where <s w, d(t)> reaches ``target``, from the k smallest t_i.

    At the k-th smallest t_(k), <s w, d> = (gains of the coordinates saturated by then) + t_(k) (the slope of
    those still moving: ``total`` less the saturated ones'), both prefix sums along the order; the crossing
    lies in the first piece whose end reaches the target. It is among the k when some t_(j), j < k, reaches
    it; a row ``beyond`` reach has t = inf (every coordinate saturates short of the target), as has one that
    the sum along all n leaves short by rounding.
    """
    n = t_sat.shape[1]

    def solve(rows: Tensor | None, k: int) -> tuple[Tensor, Tensor]:
        ts, gs, ss, tot, tg, out = rows_of(rows, t_sat, gain, slope, total, target, beyond)
        t_k, order = ts.topk(k, dim=1, largest=False) if k < n else ts.sort(dim=1)
        saturated = gs.gather(1, order).cumsum(dim=1)
        free = (tot[:, None] - ss.gather(1, order).cumsum(dim=1)).clamp_min(0)  # the slope after t_(j)
        reached = torch.where(torch.isfinite(t_k), saturated + t_k * free, saturated)
        j = (reached < tg[:, None]).sum(dim=1, keepdim=True)  # the piece (t_(j-1), t_(j)] where it is reached
        before = (j - 1).clamp_min(0)
        sat_before = torch.where(j > 0, saturated.gather(1, before), torch.zeros_like(saturated[:, :1]))
        free_before = torch.where(j > 0, free.gather(1, before), tot[:, None])
        t = ((tg[:, None] - sat_before) / free_before.clamp_min(1e-30)).squeeze(1)
        j = j.squeeze(1)
        t = torch.where(out | (j >= n), float("inf"), t)
        found = out | (j < k) if k < n else torch.ones_like(out)
        return t, found

    return solve


def _l1_solver(key: Tensor, weight: Tensor, gain: Tensor, room: Tensor, target: Tensor, beyond: Tensor) -> Solver:
    """solve(rows, k) for L1: |d| per coordinate (the ``room`` of those moved fully, in decreasing ``key``
    (|w_i|, -1 for those that cannot move), until the gains reach ``target``; the next one partly, by
    (target - gains so far) / ``weight`` |w_i|), from the k first in that order. The crossing is among the k
    when the gains of the first j < k reach the target; a row ``beyond`` reach moves every coordinate fully."""
    n = key.shape[1]

    def solve(rows: Tensor | None, k: int) -> tuple[Tensor, Tensor]:
        ks, ws, gs, rs, tg, out = rows_of(rows, key, weight, gain, room, target, beyond)
        order = ks.topk(k, dim=1).indices if k < n else ks.argsort(dim=1, descending=True)
        cum = gs.gather(1, order).cumsum(dim=1)
        j = (cum < tg[:, None]).sum(dim=1, keepdim=True)  # coordinates moved fully, in that order
        before = torch.where(j > 0, cum.gather(1, (j - 1).clamp_min(0)), torch.zeros_like(cum[:, :1]))
        room_sorted = rs.gather(1, order)
        partly = (tg[:, None] - before) / ws.gather(1, order).gather(1, j.clamp(max=k - 1)).clamp_min(1e-30)
        place = torch.arange(k, device=order.device)
        moved = torch.where(
            place < j, room_sorted, torch.where(place == j, partly.clamp_min(0).minimum(room_sorted), 0.0)
        )
        amount = torch.where(out[:, None], rs, torch.zeros_like(rs).scatter_(1, order, moved))
        found = out | (j.squeeze(1) < k) if k < n else torch.ones_like(out)
        return amount, found

    return solve
