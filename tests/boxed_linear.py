"""Two-class linear models whose images sit where the [0, 1] box binds, with each norm's exact minimal
perturbation: small LPs for L1 and Linf, the KKT conditions for L2, a greedy count for L0.

Every coordinate can move only a little way in the direction that helps (its room, 0.01 to 0.31), and the
margin is 0.3 to 0.6 of all the coordinates' reach together, so the optimum saturates some coordinates and lies
beyond the box-free formula |z| / ||w||_dual (checked, per norm and image). Used by tests/test_minimal_boxed.py
and benchmarks/minimal_boxed.py.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linprog

from tests.conftest import Linear

P = {"l0": 0.0, "l1": 1.0, "l2": 2.0, "linf": float("inf")}


def exact_distances(w: np.ndarray, x: np.ndarray, z: float) -> dict[str, float]:
    """The smallest perturbation delta with x + delta in [0, 1]^d and sign(z + w.delta) != sign(z), per norm."""
    d, s = len(w), np.sign(z)
    low, high = -x, 1 - x
    # L1: delta = u - v with u in [0, high], v in [0, -low]; minimise sum(u + v) subject to s w.(u - v) <= -|z|.
    l1 = linprog(np.ones(2 * d), A_ub=np.concatenate([s * w, -s * w])[None], b_ub=[-abs(z)],
                 bounds=[(0, h) for h in high] + [(0, -lo) for lo in low], method="highs")  # fmt: skip
    # Linf: variables (delta, t); minimise t subject to -t <= delta_i <= t and s w.delta <= -|z|, delta in the box.
    a = np.zeros((2 * d + 1, d + 1))
    a[:d, :d], a[d : 2 * d, :d], a[: 2 * d, d] = np.eye(d), -np.eye(d), -1
    a[-1, :d] = s * w
    b = np.zeros(2 * d + 1)
    b[-1] = -abs(z)
    linf = linprog(np.eye(d + 1)[d], A_ub=a, b_ub=b, bounds=[*zip(low, high, strict=True), (0, None)], method="highs")
    assert l1.status == 0 and linf.status == 0, (l1.message, linf.message)
    for delta in (l1.x[:d] - l1.x[d:], linf.x[:d]):  # the optimum reaches the boundary (within the LP's tolerance)
        assert s * (z + w @ delta) <= 1e-9 * abs(z), (z, w @ delta)
    # L2: by the KKT conditions delta_i = -s sign(w_i) min(lam |w_i|, room_i) (room_i: how far the box lets
    # coordinate i move the helpful way), lam the root of sum |w_i| min(lam |w_i|, room_i) = |z| (bisection).
    room = np.where(-s * w > 0, high, -low)
    lo, hi = 0.0, 1e6
    for _ in range(200):
        lam = (lo + hi) / 2
        lo, hi = (lam, hi) if (np.abs(w) * np.minimum(lam * np.abs(w), room)).sum() < abs(z) else (lo, lam)
    l2 = float(np.linalg.norm(np.minimum(hi * np.abs(w), room)))
    # L0: the fewest coordinates whose largest changes |w_i| room_i together reach |z|.
    reach = np.sort(np.abs(w) * room)[::-1].cumsum()
    return {"l1": float(l1.fun), "linf": float(linf.fun), "l2": l2, "l0": float((reach < abs(z)).sum() + 1)}


def boxed_problems(seed: int = 0, n: int = 6, d: int = 20) -> list[tuple[Linear, torch.Tensor, torch.Tensor, dict]]:
    """One two-class linear model (logits 0 and w.x + b, float64) per image, each image labelled by its model;
    a draw where the box moves some norm's optimum by less than 1% is drawn again."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=g, dtype=torch.float64)
    problems: list[tuple[Linear, torch.Tensor, torch.Tensor, dict]] = []
    while len(problems) < n:
        label = len(problems) % 2  # class 1 where z = w.x + b > 0
        sign = 1.0 if label == 1 else -1.0
        room = 0.01 + 0.3 * torch.rand(d, generator=g, dtype=torch.float64) ** 2
        x = torch.where(-torch.sign(w) * sign > 0, 1 - room, room)  # room left in the direction that lowers |z|
        fraction = 0.3 + 0.3 * float(torch.rand(1, generator=g, dtype=torch.float64))
        z = sign * fraction * float((w.abs() * room).sum())
        exact = exact_distances(w.numpy(), x.numpy(), z)
        free = {"l1": abs(z) / float(w.abs().max()), "linf": abs(z) / float(w.abs().sum()),
                "l2": abs(z) / float(w.norm())}  # fmt: skip
        if all(exact[k] > 1.01 * free[k] for k in free):  # the box binds in every norm
            bias = torch.tensor([0.0, z - float(x @ w)], dtype=torch.float64)
            model = Linear(torch.stack([torch.zeros_like(w), w]), bias)
            problems.append((model, x.view(1, 1, 4, d // 4), torch.tensor([label]), exact))
    return problems
