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

Each such record gains ``adversarial``: the file, the row, and whether the uint8 image is in the ball and, for
a successful example, still succeeds (``null`` where the float example did not succeed: not checked); the same
for the in-ball version. The re-check is one forward pass per (attack, batch), over the successful rows.
The safetensors file is written (atomically) before the records file of its batch, so a run killed in
between recomputes that batch and overwrites the file: no duplicate, no missing example. The field exists
only in runs whose configuration has ``save_adversarial`` (no older advlab wrote those), so records without
it are never mixed with records that have it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .records import L0_TOL
from .specs import AttackSpec, attack_norm

SAVED_DIR = "adversarial"
# Slack of "inside the eps-ball" and "inside [0, 1]" in pixel units: float32 round-off of x + delta, far
# below one uint8 step (1/255).
BALL_TOL = 1e-6


def ball_of(name: str, params: Mapping[str, Any]) -> tuple[str, float] | None:
    """The (norm, eps) ball of attack ``name`` with ``params``; None for an attack without an eps (the
    minimal-norm attacks, cw_l2)."""
    eps = params.get("eps")
    norm = attack_norm(name, params)
    if eps is None or isinstance(eps, list | tuple) or norm is None:
        return None
    return norm, float(eps)


def distance(x: Tensor, x_adv: Tensor, norm: str) -> Tensor:
    """Per-sample ``||x_adv - x||`` (pixel units, returned as float64) for linf, l2, l1 or l0.

    The difference is taken in the inputs' own dtype (float32 subtraction is correctly rounded: a relative error
    below 6e-8, far under :data:`BALL_TOL`) and only the sums accumulate in float64, so no float64 copy of the
    images is made (verify and the uint8 re-check call this on every saved example)."""
    d = (x_adv - x).flatten(1)
    if norm == "linf":
        return d.abs().amax(dim=1).double()
    if norm == "l2":
        return torch.linalg.vector_norm(d, dim=1, dtype=torch.float64)
    if norm == "l1":
        return d.abs().sum(dim=1, dtype=torch.float64)
    return (d.abs() > L0_TOL).sum(dim=1).double()


def in_ball(x: Tensor, x_adv: Tensor, ball: tuple[str, float] | None, tol: float = BALL_TOL) -> Tensor:
    """Per sample: inside [0, 1] and, where the attack has one, inside its eps-ball (``tol`` slack)."""
    flat = x_adv.flatten(1)
    ok = (flat.amin(dim=1).double() >= -tol) & (flat.amax(dim=1).double() <= 1 + tol)
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

    n = x.shape[0]
    lo, hi = torch.zeros(n, dtype=torch.float64), torch.ones(n, dtype=torch.float64)
    done = inside(hi)
    lo[done] = 1.0
    for _ in range(30):  # 2**-30 of the perturbation: finer than any uint8 step
        mid = (lo + hi) / 2
        ok = inside(mid)
        lo = torch.where(ok & ~done, mid, lo)
        hi = torch.where(ok | done, hi, mid)
    return rounded(lo)


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
    model: Callable[[Tensor], Tensor],
    spec: AttackSpec,
    records: Sequence[dict[str, Any]],
    x: Tensor,
    x_adv: Tensor,
    path: Path,
    run_root: Path,
) -> None:
    """Write one batch's examples to ``path`` (atomically) and add the ``adversarial`` field to ``records``."""
    from safetensors.torch import save_file

    ball = ball_of(spec.name, spec.params)
    u8, u8_ball = to_uint8(x_adv), nearest_uint8_in_ball(x, x_adv, ball)
    changed = (u8 != u8_ball).flatten(1).any(dim=1).tolist()
    # One forward pass, over the successful rows only (an example that does not succeed as floats has nothing
    # to keep), with the in-ball version appended where it differs from the plain rounding.
    hits = [k for k, r in enumerate(records) if r["success"]]
    moved = [k for k in hits if changed[k]]
    fools: list[bool | None] = [None] * len(records)
    fools_ball: list[bool | None] = [None] * len(records)
    if hits:
        batch = torch.cat([u8[hits], u8_ball[moved]]).to(x.dtype) / 255
        with torch.no_grad():
            ok = _succeeds(model(batch), [records[k] for k in hits + moved])
        for j, k in enumerate(hits):
            fools[k] = fools_ball[k] = ok[j]
        for j, k in enumerate(moved):
            fools_ball[k] = ok[len(hits) + j]
    inside = in_ball(x, u8.double() / 255, ball).tolist()
    inside_ball = in_ball(x, u8_ball.double() / 255, ball).tolist()
    tensors = {
        "index": torch.tensor([int(r["index"]) for r in records], dtype=torch.int64),
        "x_adv": x_adv.detach().float().cpu().contiguous(),
        "uint8": u8.cpu().contiguous(),
        "uint8_in_ball": u8_ball.cpu().contiguous(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)
    rel = path.relative_to(run_root).as_posix()
    for k, r in enumerate(records):
        r["adversarial"] = {
            "file": rel,
            "row": k,
            "uint8_success": fools[k],
            "uint8_in_ball": bool(inside[k]),
            "uint8_in_ball_changed": bool(changed[k]),
            "uint8_in_ball_success": fools_ball[k],
            "uint8_in_ball_inside": bool(inside_ball[k]),
        }


def load_examples(path: Path) -> dict[str, Tensor]:
    """The tensors of one saved batch (safetensors: no code is unpickled)."""
    from safetensors.torch import load_file

    return load_file(str(path))


def bytes_per_image(shape: Sequence[int]) -> int:
    """Disk use of one saved example of ``shape`` (C, H, W): float32 plus two uint8 copies, plus its index."""
    return 6 * math.prod(shape) + 8
