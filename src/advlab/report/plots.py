"""Matplotlib figures for reports, returned as PNG bytes (non-interactive Agg backend, no display needed)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..errors import MissingDependencyError


def _pyplot():
    try:
        import matplotlib
    except ModuleNotFoundError:
        raise MissingDependencyError(
            "advlab's report figures are drawn with matplotlib, which is not installed: pip install 'advlab[report]'",
            "matplotlib",
        ) from None

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    _pyplot().close(fig)
    return buf.getvalue()


@dataclass(frozen=True)
class Series:
    """One line of a curve plot: y values (fractions in [0, 1]) at x values."""

    label: str
    x: Sequence[float]
    y: Sequence[float | None]
    style: str = "-o"


def curve_png(
    series: Sequence[Series],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    log_x: bool = True,
    secondary_scale: float | None = None,
    secondary_label: str = "",
) -> bytes:
    """Accuracy-style curves (y in percent) against eps; an optional top axis shows eps / ``secondary_scale``.

    A value of None in ``y`` is left out (a point not measured).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    for s in series:
        pts = [(x, y) for x, y in zip(s.x, s.y, strict=True) if y is not None]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, [100 * v for v in ys], s.style, label=s.label, markersize=4)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(-3, 103)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    if secondary_scale:
        k = float(secondary_scale)
        top = ax.secondary_xaxis("top", functions=(lambda e: e / k, lambda e: e * k))
        top.set_xlabel(secondary_label)
    return _png(fig)


def _image(t: Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W, C) or (H, W) float array for imshow."""
    a = t.detach().cpu().float().clamp(0, 1).numpy()
    return a[0] if a.shape[0] == 1 else np.transpose(a, (1, 2, 0))


def _top5_text(classes: Sequence[int], probs: Sequence[float], names: Sequence[str], mark: Sequence[int]) -> str:
    lines = []
    for c, p in zip(classes, probs, strict=True):
        name = names[c] if 0 <= c < len(names) else str(c)
        star = " *" if c in mark else ""
        lines.append(f"{100 * p:5.1f}%  {name[:28]}{star}")
    return "\n".join(lines)


def panel_png(
    x: Tensor,
    x_adv: Tensor,
    clean_top5: tuple[Sequence[int], Sequence[float]],
    adv_top5: tuple[Sequence[int], Sequence[float]],
    class_names: Sequence[str],
    *,
    title: str,
    label: int,
    target: int | None = None,
) -> bytes:
    """Original | perturbation (amplified to the full grey range) | adversarial, each with its top-5.

    The perturbation is shown as 0.5 + delta / (2 max|delta|): mid-grey is no change, and the scale factor
    is printed so that the amplification is never hidden.
    """
    plt = _pyplot()
    delta = (x_adv - x).detach().cpu().float()
    peak = float(delta.abs().max())
    shown = 0.5 + delta / (2 * peak) if peak > 0 else torch.full_like(delta, 0.5)
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 4.4), gridspec_kw={"wspace": 0.08})
    marks = [label] if target is None else [label, target]
    texts = [
        ("original", _top5_text(*clean_top5, class_names, marks)),
        (f"perturbation (x{0.5 / peak:.0f} amplified)" if peak > 0 else "perturbation (none)", ""),
        ("adversarial", _top5_text(*adv_top5, class_names, marks)),
    ]
    for ax, img, (head, text) in zip(axes, (x, shown, x_adv), texts, strict=True):
        arr = _image(img)
        ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(head, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        if text:
            ax.text(0.0, -0.04, text, transform=ax.transAxes, va="top", ha="left", family="monospace", fontsize=7.5)
    l2 = float(delta.flatten().norm())
    fig.suptitle(
        f"{title}\nLinf {peak:.4f}, L2 {l2:.3f} (pixel units); * marks the true class and the target",
        fontsize=10,
        y=0.98,
    )
    return _png(fig)
