"""Exact per-row searches over a row's first k breakpoints, deepening only for the rows that need more.

advlab's exact projections (the L1 ball ∩ box of :meth:`~advlab.attacks.norms.L1.project_`, FAB's hyperplane ∩
box of :func:`~advlab.attacks.hyperplane.hyperplane_box_step`) each solve, per row, a monotone piecewise-linear
equation whose breakpoints are the row's coordinates in one order (by size, by saturation time). The textbook
way sorts all n of them (Duchi et al. 2008); but the solution lies where the running sum along that order
crosses a target, and for the small or sparse perturbations these attacks make that is near the start of the
order, so the first k breakpoints (a top-k, on images of 224 x 224 x 3 far cheaper than the sort:
docs/benchmarks.md, fab_projection.py) decide most rows exactly. :func:`search_deeper` runs a solver
at depth k and again, deeper, only on the rows whose crossing lay beyond it, ending with the full sort.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

from torch import Tensor

# solve(rows, k): per row (every row when rows is None, else those of the index tensor rows) the answer from
# the first k breakpoints, and whether the crossing lay among them (always True for k = width).
Solver = Callable[[Tensor | None, int], tuple[Tensor, Tensor]]


def whole_at_least(value: object, least: int, name: str) -> int:
    """``value`` as an int (a Python or NumPy integer, not a bool), at least ``least``."""
    try:
        whole = operator.index(value) if not isinstance(value, bool) else None
    except TypeError:
        whole = None
    if whole is None or whole < least:
        raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
    return whole


def rows_of(rows: Tensor | None, *tensors: Tensor) -> tuple[Tensor, ...]:
    """The ``tensors`` themselves (``rows`` None: every row) or their rows ``rows``, for a :data:`Solver`."""
    return tensors if rows is None else tuple(t[rows] for t in tensors)


def search_deeper(solve: Solver, width: int, first: int, growth: int) -> Tensor:
    """The answer of ``solve`` for every row, each row's from the first depth at which it was found.

    Depth ``first`` for every row, then ``growth`` times deeper (at least one more) for the rows not found,
    and so on; all ``width`` breakpoints (the full sort, which finds every row) once the next depth would
    pass a quarter of ``width``: a top-k that deep costs a good part of the sort it may still need. Reading
    which rows are left after a round short of the full sort is a host sync on CUDA.
    """
    first, growth = whole_at_least(first, 1, "first"), whole_at_least(growth, 2, "growth")
    k = min(first, width)
    answer, found = solve(None, k)
    if k >= width:
        return answer
    left = (~found).nonzero().view(-1)
    while left.numel() > 0:
        deeper = max(k + 1, k * growth)
        k = deeper if 4 * deeper <= width else width
        answer_left, found_left = solve(left, k)
        answer.index_put_((left,), answer_left)
        left = left[~found_left]
    return answer
