"""Timing, the raw forward+backward floor, constraint checks and strength metrics."""

from __future__ import annotations

import random
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .libraries import Spec

# A returned example may exceed the box or the ball by float rounding only (issue 2: at most 1e-6).
TOLERANCE = 1e-6


@dataclass
class Timing:
    wall: float
    cpu: float
    system: float = 0.0  # of ``cpu``, the kernel's seconds: mostly page faults of fresh allocations
    faults: int = 0  # minor page faults


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Timing, Any]:
    """Wall-clock and process CPU time of ``fn()``.

    CPU time (all threads of this process) is reported next to wall time because the benchmark machine is
    shared: other processes stretch wall time by a varying factor while CPU time counts only this process's
    work. On a GPU only wall time is meaningful. The kernel's share of the CPU time and the minor page faults come
    with it: on ImageNet-sized batches glibc's malloc makes them depend on what the process allocated before
    (docs/benchmarks.md, minimal_norm.py).
    """
    sync(device)
    w, c, usage = time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF)
    out = fn()
    sync(device)
    cpu, end = time.process_time() - c, resource.getrusage(resource.RUSAGE_SELF)
    return Timing(time.perf_counter() - w, cpu, end.ru_stime - usage.ru_stime, end.ru_minflt - usage.ru_minflt), out


def seed_everything(seed: int = 0) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def floor_step(model: nn.Module, x: Tensor, y: Tensor, channels_last: bool = False) -> Tensor:
    """The raw cost of one attack iteration: d(sum CE)/dx with the parameters frozen, nothing else."""
    xi = x.detach().clone().requires_grad_(True)
    inp = xi.contiguous(memory_format=torch.channels_last) if channels_last else xi
    loss = F.cross_entropy(model(inp), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, xi)
    return g


class FrozenParams:
    """Freeze the parameters for the floor measurement (restored after)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> None:
        self.saved = [(p, p.requires_grad) for p in self.model.parameters()]
        for p, _ in self.saved:
            p.requires_grad_(False)

    def __exit__(self, *exc: object) -> None:
        for p, r in self.saved:
            p.requires_grad_(r)


def floor_block(model: nn.Module, x: Tensor, y: Tensor, steps: int) -> Timing:
    """One timed block of ``steps`` floor steps, per step: what an attack's iterations cost with nothing of the
    attack around them, timed the way the attacks are (one block of the same length, in the same rotation)."""
    with FrozenParams(model):
        t, _ = timed(lambda: [floor_step(model, x, y) for _ in range(steps)], x.device)
    return Timing(t.wall / steps, t.cpu / steps)


def measure_floor(model: nn.Module, x: Tensor, y: Tensor, calls: int, channels_last: bool = False) -> Timing:
    """Median over ``calls`` of the floor step (wall and CPU taken separately)."""
    walls, cpus = [], []
    with FrozenParams(model):
        for _ in range(calls):
            t, _ = timed(lambda: floor_step(model, x, y, channels_last), x.device)
            walls.append(t.wall)
            cpus.append(t.cpu)
    return Timing(float(np.median(walls)), float(np.median(cpus)))


@dataclass
class Check:
    """Which returned examples violate the box [0, 1] or the eps-ball (beyond float rounding)."""

    valid: Tensor  # (N,) bool
    box_violations: int
    ball_violations: int
    worst_box: float  # largest distance outside [0, 1]
    worst_ball: float  # largest norm beyond eps
    other: str = ""  # shape/dtype/device/NaN problems
    blanks: int = 0  # minimal-norm attacks: examples returned as an all-zero image (a failure placeholder)

    @property
    def ok(self) -> bool:
        return bool(self.valid.all()) and not self.other

    def describe(self) -> str:
        parts = []
        if self.other:
            parts.append(self.other)
        if self.box_violations:
            parts.append(f"{self.box_violations} outside [0,1] (by up to {self.worst_box:.3g})")
        if self.ball_violations:
            parts.append(f"{self.ball_violations} outside the eps-ball (by up to {self.worst_ball:.3g})")
        if self.blanks:
            parts.append(f"{self.blanks} returned as an all-black image (its value where the search failed)")
        return "; ".join(parts)


def check(x_adv: Tensor, x: Tensor, spec: Spec) -> Check:
    n = x.shape[0]
    if not isinstance(x_adv, Tensor) or x_adv.shape != x.shape:
        shape = tuple(x_adv.shape) if isinstance(x_adv, Tensor) else type(x_adv).__name__
        return Check(
            torch.zeros(n, dtype=torch.bool), 0, 0, 0.0, 0.0, f"returned shape {shape}, expected {tuple(x.shape)}"
        )
    other = []
    if x_adv.dtype != x.dtype:
        other.append(f"returned dtype {x_adv.dtype}, expected {x.dtype}")
    if x_adv.device != x.device:
        other.append(f"returned device {x_adv.device}, expected {x.device}")
    xa = x_adv.detach().to(device=x.device, dtype=x.dtype)
    finite = torch.isfinite(xa).flatten(1).all(1)
    if not bool(finite.all()):
        other.append(f"{int((~finite).sum())} examples with NaN/inf")
    flat = xa.flatten(1)
    box_excess = torch.maximum(-flat.amin(1), flat.amax(1) - 1).clamp_min(0)
    box_ok = box_excess <= TOLERANCE
    if spec.minimal_norm:
        ball_excess = torch.zeros(n, dtype=x.dtype, device=x.device)
    else:
        delta = (xa - x).flatten(1)
        norm = delta.abs().amax(1) if spec.norm == "linf" else delta.norm(dim=1)
        assert spec.eps is not None
        ball_excess = (norm - spec.eps).clamp_min(0)
    ball_ok = ball_excess <= TOLERANCE * max(1.0, spec.eps or 1.0)
    # Foolbox's CW starts its best-so-far at zeros and returns them where no adversarial point was found; the
    # model then misreads a black image, which is no perturbation the attack found: counted as a failure.
    blank = (flat == 0).all(1) & (x.flatten(1) != 0).any(1) if spec.minimal_norm else torch.zeros_like(finite)
    valid = box_ok & ball_ok & finite & ~blank
    return Check(
        valid,
        int((~box_ok).sum()),
        int((~ball_ok).sum()),
        float(box_excess.max()),
        float(ball_excess.max()),
        "; ".join(other),
        int(blank.sum()),
    )


@torch.no_grad()
def strength(
    model: nn.Module, x_adv: Tensor, x: Tensor, y: Tensor, targets: Tensor, spec: Spec, valid: Tensor
) -> dict[str, Any]:
    """Top-1/top-5 accuracy under attack, success rate, and for CW the L2 of the successful examples.

    Examples that broke a constraint are not used: they count as the clean image (not adversarial).
    """
    xa = torch.where(valid.view(-1, *[1] * (x.ndim - 1)), x_adv.detach().to(x.dtype), x)
    logits = model(xa)
    top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
    correct1 = top5[:, 0] == y
    correct5 = (top5 == y[:, None]).any(1)
    success = top5[:, 0] == targets if spec.targeted else ~correct1
    l2 = (xa - x).flatten(1).norm(dim=1)
    out: dict[str, Any] = {
        "n": len(x),
        "top1": float(correct1.float().mean()),
        "top5": float(correct5.float().mean()),
        "success": float(success.float().mean()),
        "correct1": int(correct1.sum()),
        "successes": int(success.sum()),
    }
    if spec.minimal_norm:
        s = l2[success]
        out["l2_median"] = float(s.median()) if len(s) else None
        out["l2_mean"] = float(s.mean()) if len(s) else None
    return out


def model_state(model: nn.Module) -> tuple[bool, list[bool]]:
    return model.training, [p.requires_grad for p in model.parameters()]


def side_effects(model: nn.Module, before: tuple[bool, list[bool]]) -> list[str]:
    """What an attack left changed on the model; then put it back so the next library starts equal."""
    found = []
    training, req = before
    if model.training != training:
        found.append(f"left the model in {'train' if model.training else 'eval'} mode")
        model.train(training)
    params = list(model.parameters())
    if any(p.grad is not None for p in params):
        found.append("left .grad on the parameters")
        for p in params:
            p.grad = None
    if [p.requires_grad for p in params] != req:
        found.append("changed requires_grad of the parameters")
        for p, r in zip(params, req, strict=True):
            p.requires_grad_(r)
    return found
