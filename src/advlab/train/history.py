"""Per-epoch training logs: CSV and JSON (rewritten atomically after every epoch) and a plot of the curves."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from ..runtime.files import atomic_write_bytes

COLUMNS: tuple[str, ...] = (
    "epoch",
    "eps",
    "lr",
    "train_loss",
    "train_acc",
    "val_clean_acc",
    "val_pgd_acc",
    "seconds",
)


def write_history(folder: str | os.PathLike[str], history: list[dict[str, Any]]) -> None:
    """``history.csv`` and ``history.json`` in ``folder``, one row per finished epoch."""
    folder = Path(folder)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    text = buf.getvalue()
    atomic_write_bytes(folder / "history.csv", text.encode("utf-8"))
    blob = json.dumps(history, indent=1)
    atomic_write_bytes(folder / "history.json", (blob + "\n").encode("utf-8"))


def plot_history(folder: str | os.PathLike[str], history: list[dict[str, Any]], title: str = "") -> Path:
    """``curves.png``: training loss, and train / held-out clean / held-out PGD accuracy per epoch."""
    try:
        import matplotlib
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError("plots need matplotlib: pip install 'advlab[report]'", name="matplotlib") from e

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    folder = Path(folder)
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [row["train_loss"] for row in history], marker="o")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss")
    for key, label in (
        ("train_acc", "train (on trained inputs)"),
        ("val_clean_acc", "held-out clean"),
        ("val_pgd_acc", "held-out PGD"),
    ):
        ax_acc.plot(epochs, [row[key] for row in history], marker="o", label=label)
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy")
    ax_acc.set_ylim(0, 1)
    ax_acc.legend()
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = folder / "curves.png"
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    atomic_write_bytes(path, png.getvalue())
    plt.close(fig)
    return path
