"""Atomic training checkpoints that a killed run resumes from, bit for bit.

A checkpoint is a dict of tensors and plain Python values written with ``torch.save`` and read back with
``torch.load(..., weights_only=True)``, so loading one never unpickles arbitrary objects. It holds the model,
optimiser and scheduler state, every random number generator the loop draws from (Python's ``random``,
NumPy's global generator, torch's CPU generator and each CUDA device's), the number of finished epochs, the
per-epoch history and the run's config. Every file is written to a temporary name in the same folder, synced,
and moved over the old one with ``os.replace`` (atomic on POSIX), so a kill at any moment leaves either the
previous complete file or the new complete file, never half of one.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from advlab.errors import MissingInputError, UsageError
from advlab.runtime.files import atomic_write_bytes

FORMAT = "advlab-train-checkpoint/1"
CHECKPOINT_NAME = "checkpoint.pt"


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> None:
    """Delete temp files a killed writer left behind (they were never renamed, so nothing refers to them)."""
    for tmp in Path(folder).glob(".*.tmp-*"):
        with contextlib.suppress(OSError):
            tmp.unlink()


def rng_state() -> dict[str, Any]:
    """Every global generator's state, in types that ``weights_only`` loading accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    # weights_only loading gives lists where tuples were saved; random.setstate needs the tuples back.
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def shapes(model: nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    epoch: int,
    history: list[dict[str, Any]],
    best: dict[str, Any],
    config: dict[str, Any],
) -> None:
    """Write the state after ``epoch`` finished epochs atomically to ``path``."""
    payload = {
        "format": FORMAT,
        "epoch": epoch,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng_state(),
        "history": history,
        "best": best,
        "config": config,
        "shapes": shapes(model),
    }
    # Serialised in memory, then written by plain file I/O: a full disk is then an OSError (ENOSPC) that names
    # the file, not a torch.save RuntimeError from inside its zip writer.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (no arbitrary unpickling) and check its format."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"no checkpoint at {path}; start the run without resume")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a foreign or damaged file: unpickling errors, zip errors, EOF
        raise UsageError(f"{path} is not a readable advlab training checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise UsageError(f"{path} is not an advlab training checkpoint (format {found!r}, expected {FORMAT!r})")
    return payload


def check_architecture(payload: dict[str, Any], model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Raise ValueError naming the differing parameters when the checkpoint was written for another network."""
    saved: dict[str, list[int]] = payload["shapes"]
    mine = shapes(model)
    if saved == mine:
        return
    missing = sorted(set(mine) - set(saved))
    unexpected = sorted(set(saved) - set(mine))
    reshaped = sorted(f"{k} {saved[k]} vs {mine[k]}" for k in set(saved) & set(mine) if saved[k] != mine[k])
    parts = []
    if reshaped:
        parts.append("shapes differ (checkpoint vs model): " + "; ".join(reshaped[:5]))
    if missing:
        parts.append("missing from the checkpoint: " + ", ".join(missing[:5]))
    if unexpected:
        parts.append("not in the model: " + ", ".join(unexpected[:5]))
    arch = payload.get("config", {}).get("model", "?")
    raise ValueError(
        f"checkpoint {path} was written for another architecture ({arch!r}) than the model being resumed: "
        + " | ".join(parts)
    )


def restore(payload: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any | None) -> None:
    """Load model, optimiser, scheduler and RNG states from a checked checkpoint."""
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    if scheduler is not None and payload["scheduler"] is not None:
        scheduler.load_state_dict(payload["scheduler"])
    set_rng_state(payload["rng"])


def save_weights(path: str | os.PathLike[str], state: dict[str, Tensor], metadata: dict[str, str]) -> None:
    """Model weights alone, as safetensors (what ships and what ``load_model`` reads), written atomically and
    byte for byte the same for the same tensors and metadata (:func:`canonical_safetensors`)."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    atomic_write_bytes(path, canonical_safetensors(save(tensors, metadata=metadata)))


def canonical_safetensors(data: bytes) -> bytes:
    """A safetensors file with its JSON header written in one fixed order: the ``__metadata__`` keys sorted.

    The safetensors library keeps the metadata in a hash map, whose order changes from process to process,
    so two saves of identical tensors could differ byte for byte; checksums are how users compare weights.
    The tensor entries keep their offsets (the data part is not touched); the header is padded with spaces
    to a multiple of 8 bytes, as the format asks (https://github.com/huggingface/safetensors, "Format").
    """
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__", None)
    ordered = ({"__metadata__": dict(sorted(meta.items()))} if meta is not None else {}) | dict(sorted(header.items()))
    text = json.dumps(ordered, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + n :]
