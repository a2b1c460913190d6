"""Saved adversarial examples (``--save-adversarial``): exact floats, the uint8 image a user would save, and
whether that image still fools the model and still lies in the eps-ball.

Published evaluations have returned adversarial examples that stop fooling the model, or leave the eps-ball,
once written as an 8-bit image: rounding moves every pixel by up to 1/510, which can cross the decision
boundary or push an Linf perturbation of exactly eps past it. Per (attack, batch) the run directory gets
``adversarial/<attack>/<batch>.safetensors`` holding, row by row in the order of that batch's records the
attack computed itself:

- ``index`` (int64): the sample index; ``x_adv`` (float32): the attack's output, bit for bit;
- ``uint8``: ``round(255 * x_adv)``, the image a user would save;
- ``uint8_in_ball``: the nearest uint8 point inside the eps-ball and [0, 1] (Linf: exact, a per-pixel clamp
  of the rounding to ``[ceil(255 (x - eps)), floor(255 (x + eps))]``; other norms: the rounding of the largest
  shrunk perturbation ``x + t (x_adv - x)`` that lands inside, t found by bisection).

Each such record gains ``adversarial``: the file, the row, whether the uint8 image is in the ball, and
whether the uint8 image a user should keep still succeeds. The re-check is ONE forward pass per (attack,
batch), over the successful rows only, ONE image per row: the plain rounding where it stays inside the ball
(then it is also the nearest in-ball point: ``uint8_success`` and ``uint8_in_ball_success`` are the same
check), else the nearest uint8 point inside the ball (``uint8_in_ball_success``), while ``uint8_success`` is
``null``: a rounding outside the ball is no example of the threat model, whether it fools the model says
nothing about the claim, and checking it too would double the re-check (images off the uint8 grid, as
resized photos are, round out of an Linf ball of exactly eps almost always). ``null`` also where the float
example did not succeed (nothing to keep). :data:`SAVED_VERSION` (in the run's configuration, so in its
fingerprint) is 2 since this single re-check (1 forwarded both versions), 3 since the re-check is judged by
the records' rule (the run's K draws of a random model, seeded per batch and attack, not one draw of the process's
generator: review 2, F4 addendum).
The safetensors file is written (atomically, without fsync: a crash before its batch's records are
written recomputes the batch) before the records file of its batch, so a run killed in between recomputes
that batch and overwrites the file: no duplicate, no missing example. The field exists only in runs whose
configuration has ``save_adversarial``, so records without it are never mixed with records that have it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..attacks.norms import batch_view
from ..runtime.files import atomic_write_bytes
from .records import L0_TOL, RECORD_NORMS
from .specs import AttackSpec, ball_of

SAVED_DIR = "adversarial"
# What ``save_adversarial`` holds in a run's configuration: the version of the ``adversarial`` record field
# (module docstring). Runs of another version have another fingerprint, so they are never resumed into.
SAVED_VERSION = 3
# Slack of "inside the eps-ball" and "inside [0, 1]" in pixel units: float32 round-off of x + delta, far
# below one uint8 step (1/255).
BALL_TOL = 1e-6
# How far from L0_TOL a float32 difference of images in [0, 1] may land on the other side of it in float64 (the
# float32 subtraction's rounding is below 6e-8).
L0_NEAR = 1e-7


def distance(x: Tensor, x_adv: Tensor, norm: str) -> Tensor:
    """Per-sample ``||x_adv - x||`` (pixel units, returned as float64) for linf, l2, l1 or l0.

    The difference is taken in the inputs' own dtype (float32 subtraction is correctly rounded: a relative error
    below 6e-8, far under :data:`BALL_TOL`) and only the sums accumulate in float64, so no float64 copy of the
    images is made (verify and the uint8 re-check call this on every saved example)."""
    d = (x_adv - x).flatten(1)
    return _size(d, d.abs(), norm)


def distances(x: Tensor, x_adv: Tensor) -> dict[str, Tensor]:
    """:func:`distance` in every norm at once (one difference, one absolute value), and ``l0_near``: per sample,
    the elements whose float32 difference lies within :data:`L0_NEAR` of ``L0_TOL``, where a float64 difference
    (the records', evaluate/records.py) may fall on the other side of it."""
    d = (x_adv - x).flatten(1)
    a = d.abs()
    out = {norm: _size(d, a, norm) for norm in RECORD_NORMS}
    out["l0_near"] = ((a - L0_TOL).abs() <= L0_NEAR).sum(dim=1).double()
    return out


def _size(d: Tensor, a: Tensor, norm: str) -> Tensor:
    """The norm of each row of ``d`` (``a`` = |d|), accumulated in float64."""
    if norm == "linf":
        return a.amax(dim=1).double()
    if norm == "l2":
        return torch.linalg.vector_norm(d, dim=1, dtype=torch.float64)
    if norm == "l1":
        return a.sum(dim=1, dtype=torch.float64)
    return (a > L0_TOL).sum(dim=1).double()


def in_ball(x: Tensor, x_adv: Tensor, ball: tuple[str, float] | None, tol: float = BALL_TOL) -> Tensor:
    """Per sample: inside [0, 1] and, where the attack has one, inside its eps-ball (``tol`` slack)."""
    lo, hi = torch.aminmax(x_adv.flatten(1), dim=1)
    ok = (lo.double() >= -tol) & (hi.double() <= 1 + tol)
    if ball is not None:
        ok &= distance(x, x_adv, ball[0]) <= ball[1] + (0.5 if ball[0] == "l0" else tol)
    return ok


def to_uint8(x_adv: Tensor) -> Tensor:
    """The 8-bit image a user would save: ``round(255 x)`` clamped to 0..255."""
    return (x_adv.double() * 255).round().clamp(0, 255).to(torch.uint8)


def nearest_uint8_in_ball(x: Tensor, x_adv: Tensor, ball: tuple[str, float] | None) -> Tensor:
    """A uint8 image inside the ball and [0, 1] close to ``x_adv`` (see the module docstring for how)."""
    if ball is None:
        return to_uint8(x_adv)
    norm, eps = ball
    if norm == "linf":
        x64 = x.double() * 255
        lo = torch.ceil(x64 - eps * 255 - 1e-6).clamp(0, 255)
        hi = torch.floor(x64 + eps * 255 + 1e-6).clamp(0, 255)
        u = (x_adv.double() * 255).round()
        return torch.maximum(torch.minimum(u, hi), lo).to(torch.uint8)
    delta = x_adv.double() - x.double()
    shape = (-1,) + (1,) * (x.dim() - 1)

    def rounded(t: Tensor) -> Tensor:
        return to_uint8(x.double() + t.view(shape) * delta)

    def inside(t: Tensor) -> Tensor:
        return in_ball(x, rounded(t).double() / 255, ball)

    out = to_uint8(x_adv)
    rows = (~in_ball(x, out.double() / 255, ball)).nonzero().flatten()  # only these need the bisection
    if len(rows):
        x, delta = x[rows], delta[rows]
        lo = torch.zeros(len(rows), dtype=torch.float64, device=x.device)
        hi = torch.ones_like(lo)
        for _ in range(30):  # 2**-30 of the perturbation: finer than any uint8 step
            mid = (lo + hi) / 2
            ok = inside(mid)
            lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
        out[rows] = rounded(lo)
    return out


class Uint8Versions(NamedTuple):
    """The two uint8 images of a batch of saved examples and what the records say of them (module docstring)."""

    u8: Tensor  # round(255 x_adv)
    u8_ball: Tensor  # the image to keep: u8 where it is inside the ball, else the nearest uint8 point inside
    inside: list[bool]  # u8 is inside [0, 1] and the ball
    changed: list[bool]  # u8_ball differs from u8
    inside_ball: list[bool]  # u8_ball is inside (False only where no uint8 point inside was found)


def uint8_versions(x: Tensor, x_adv: Tensor, ball: tuple[str, float] | None) -> Uint8Versions:
    """What ``save_examples`` writes besides the floats, a function of the clean images, the examples and the
    attack's ball alone (so ``advlab verify`` recomputes it)."""
    u8 = to_uint8(x_adv)
    # float32 pixels (k / 255 is within 6e-8 of exact, far below BALL_TOL). Where the plain rounding is inside the
    # ball it is the point to keep; the nearest in-ball point only where it is not (the Linf clamp's bounds, in
    # 255-units, can move a pixel sitting exactly at x +- eps one level inwards although it is inside).
    inside_t = in_ball(x, u8.float() / 255, ball)
    u8_ball = torch.where(batch_view(inside_t, u8), u8, nearest_uint8_in_ball(x, x_adv, ball))
    changed = (u8 != u8_ball).flatten(1).any(dim=1).tolist()
    inside = inside_t.tolist()
    inside_ball = list(inside)
    moved = [k for k, c in enumerate(changed) if c]
    if moved:
        for k, v in zip(moved, in_ball(x[moved], u8_ball[moved].float() / 255, ball).tolist(), strict=True):
            inside_ball[k] = v
    return Uint8Versions(u8, u8_ball, [bool(v) for v in inside], [bool(c) for c in changed],
                         [bool(v) for v in inside_ball])  # fmt: skip


def _succeeds(logits: Tensor, records: Sequence[Mapping[str, Any]]) -> list[bool]:
    top1 = logits.argmax(dim=1).tolist()
    out = []
    for r, t in zip(records, top1, strict=True):
        out.append(t != r["label"] if r["target"] is None else t == r["target"])
    return out


def saved_path(records_file: Path) -> Path:
    """``adversarial/<attack>/<batch>.safetensors`` beside ``records/<attack>/<batch>.jsonl``."""
    return records_file.parent.parent.parent / SAVED_DIR / records_file.parent.name / f"{records_file.stem}.safetensors"


def save_examples(
    model: Callable[[Tensor, list[int]], Tensor],
    spec: AttackSpec,
    records: Sequence[dict[str, Any]],
    x: Tensor,
    x_adv: Tensor,
    path: Path,
    run_root: Path,
) -> None:
    """Write one batch's examples to ``path`` (atomically) and add the ``adversarial`` field to ``records``.

    ``model(points, rows)`` gives the logits the re-check judges by, ``points`` standing in for ``records[rows]``:
    the records' own rule (for a random model, the run's expected prediction over its K draws with the records'
    common random numbers, :class:`advlab.evaluate.engine.Judge`)."""
    from safetensors.torch import save

    v = uint8_versions(x, x_adv, ball_of(spec.name, spec.params))
    # One forward pass over the successful rows only, one image each: the uint8 point a user should keep
    # (the plain rounding where it stays in the ball, else the nearest one inside; module docstring).
    hits = [k for k, r in enumerate(records) if r["success"]]
    fools: list[bool | None] = [None] * len(records)
    fools_ball: list[bool | None] = [None] * len(records)
    if hits:
        with torch.inference_mode():
            ok = _succeeds(model(v.u8_ball[hits].to(x.dtype) / 255, hits), [records[k] for k in hits])
        for j, k in enumerate(hits):
            fools_ball[k] = ok[j]
            fools[k] = None if v.changed[k] else ok[j]
    tensors = {
        "index": torch.tensor([int(r["index"]) for r in records], dtype=torch.int64),
        "x_adv": x_adv.detach().float().cpu().contiguous(),
        "uint8": v.u8.cpu().contiguous(),
        "uint8_in_ball": v.u8_ball.cpu().contiguous(),
    }
    # Durable before the records that point at it are written (temp file, fsync, rename: a full disk is one line
    # naming the file, and a crash never leaves a records file pointing at a half-written example file).
    atomic_write_bytes(path, save(tensors))
    rel = path.relative_to(run_root).as_posix()
    for k, r in enumerate(records):
        r["adversarial"] = {
            "file": rel,
            "row": k,
            "uint8_success": fools[k],
            "uint8_in_ball": v.inside[k],
            "uint8_in_ball_changed": v.changed[k],
            "uint8_in_ball_success": fools_ball[k],
            "uint8_in_ball_inside": v.inside_ball[k],
        }


def load_examples(path: Path, names: Sequence[str] | None = None) -> dict[str, Tensor]:
    """The tensors of one saved batch (safetensors: no code is unpickled); only ``names`` when given."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in (names if names is not None else f.keys())}


def bytes_per_image(shape: Sequence[int]) -> int:
    """Disk use of one saved example of ``shape`` (C, H, W): float32 plus two uint8 copies, plus its index."""
    return 6 * math.prod(shape) + 8
