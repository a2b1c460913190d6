"""The uint8 evidence of a saved run (``--save-adversarial``), checked by ``advlab verify``.

Each saved file holds, besides the float examples, ``uint8`` (the rounding a user would save) and ``uint8_in_ball``
(the image to keep: the rounding where it stays in the attack's ball, else the nearest uint8 point inside), and
each record says of them whether the rounding is inside the ball, whether the kept image had to move, whether it is
inside, and whether it still fools the model (:mod:`advlab.evaluate.saved`). All of it is a function of the clean
image, the float example and the attack's ball (:func:`~advlab.evaluate.saved.uint8_versions`) and of the model's
prediction on the kept image, so verify recomputes it: the two images bit for bit, the three geometric flags
exactly, and the two success flags from its own forward pass of the kept image, by the records' rule, where that
pass is not within ``tol`` of a tie between its top two classes (float differences between machines).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .saved import Uint8Versions


def uint8_file_mismatches(name: str, tensors: Mapping[str, torch.Tensor], want: Uint8Versions) -> list[str]:
    """The file's two uint8 images against the ones its float examples give (row by row, at most 10 named)."""
    out = []
    for key, expected, what in (
        ("uint8", want.u8, "round(255 x_adv) of its example (the image a user would save)"),
        ("uint8_in_ball", want.u8_ball, "the uint8 image eval keeps (the rounding if inside the ball, else the "
         "nearest uint8 point inside)"),
    ):  # fmt: skip
        got = tensors.get(key)
        if got is None or got.shape != expected.shape or got.dtype != torch.uint8:
            out.append(f"{name}: {key} is missing or not a uint8 tensor of the examples' shape")
            continue
        rows = (got != expected.to(got.device)).flatten(1).any(dim=1).nonzero().flatten().tolist()
        if rows:
            out.append(f"{name}: {key} of rows {rows[:10]} is not {what}")
    return out


def uint8_record_mismatches(
    where: str, record: Mapping[str, Any], want: Uint8Versions, row: int, fools: bool, borderline: bool
) -> list[str]:
    """A record's ``adversarial`` flags against the recomputed ones; ``fools``: whether verify's forward pass of
    the kept image breaks the record's sample, ``borderline``: whether that pass's top two are within the tolerance
    (its success flags are then not judged)."""
    saved = record["adversarial"]
    out = []
    for key, expected in (
        ("uint8_in_ball", want.inside[row]),
        ("uint8_in_ball_changed", want.changed[row]),
        ("uint8_in_ball_inside", want.inside_ball[row]),
    ):
        if saved.get(key) is not expected:
            out.append(f"{where}: the record's {key} {saved.get(key)} is not the example's {expected}")
    ball_ok, plain_ok = saved.get("uint8_in_ball_success"), saved.get("uint8_success")
    if record["success"]:
        # Geometry alone: both flags are booleans, but uint8_success is null where the kept image had to move.
        if not isinstance(ball_ok, bool) or (plain_ok is None) != want.changed[row] or (
            plain_ok is not None and not isinstance(plain_ok, bool)
        ):
            out.append(
                f"{where}: the record's uint8_in_ball_success {ball_ok} and uint8_success {plain_ok} are not eval's "
                f"form (booleans, uint8_success null exactly where the kept image moved into the ball)"
            )
        elif not borderline and (ball_ok is not fools or (plain_ok is not None and plain_ok is not fools)):
            out.append(
                f"{where}: the record's uint8_in_ball_success {ball_ok} and uint8_success {plain_ok} are not the "
                f"model's on the kept uint8 image ({fools})"
            )
    elif ball_ok is not None or plain_ok is not None:
        out.append(f"{where}: a record that is not broken states uint8 success flags (eval writes null)")
    return out
