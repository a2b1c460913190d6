"""Safe weight loading: safetensors or ``torch.load(weights_only=True)``, local caches, clear key diffs.

Nothing here unpickles arbitrary objects. Pretrained weights come from the standard caches:

- torchvision and URL-based checkpoints: ``<torch hub dir>/checkpoints/<file>`` where the hub dir is
  ``torch.hub.get_dir()`` (``$TORCH_HOME/hub``, default ``~/.cache/torch/hub``);
- timm models on the Hugging Face Hub: the HF cache (``$HF_HUB_CACHE``, default ``~/.cache/huggingface/hub``).

A missing file is downloaded only when downloads are allowed (``download=True``, or ``download=None``
and neither ``ADVLAB_OFFLINE`` nor ``HF_HUB_OFFLINE`` is set and the host answers within a few seconds);
otherwise :class:`WeightsNotFoundError` names the file and the folder to put it in.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from advlab.errors import MissingInputError, UsageError

STATE_DICT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


class WeightsNotFoundError(MissingInputError):
    """Pretrained weights are not in the local cache and cannot be downloaded."""


def offline_by_env() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("ADVLAB_OFFLINE", "HF_HUB_OFFLINE")
    )


def host_reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the URL's host opens within ``timeout`` seconds (fail fast offline)."""
    parsed = urlparse(url)
    host = parsed.hostname
    if not host:
        return False
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def may_download(download: bool | None, url: str) -> bool:
    if download is not None:
        return download
    return not offline_by_env() and host_reachable(url)


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from a ``.safetensors`` file or a torch file with ``weights_only=True``.

    Checkpoints that wrap the weights (``{"state_dict": ...}`` or ``{"model": ...}``, as Lightning and many
    training scripts save them) are unwrapped.

    Raises:
        FileNotFoundError: no such file.
        ValueError: (a :class:`~advlab.errors.UsageError`) the file is not a state dict, is truncated or not
            of the format its suffix names, or needs unpickling of arbitrary objects.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingInputError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu"))
        except Exception as err:  # SafetensorError (truncated, not safetensors at all), OSError, ...
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UsageError(
                f"weights file {path} is not a readable safetensors file ({reason[:200]}); is it truncated, or "
                "another format renamed .safetensors? (advlab never unpickles it)"
            ) from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError / RuntimeError variants depending on version
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(
            f"{path} cannot be loaded with torch.load(weights_only=True) ({reason[:200]}); advlab does not "
            "unpickle arbitrary objects: save a plain state dict (torch.save(model.state_dict(), f)) or safetensors"
        ) from err
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, Mapping) and wrapper in obj and isinstance(obj[wrapper], Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UsageError(f"{path} does not hold a state dict of tensors (got {type(obj).__name__})")
    return dict(obj)


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Remove a common key prefix (e.g. ``backbone.`` from an advlab ImageClassifier's state dict,
    ``module.`` from DataParallel) when *every* key carries it."""
    for prefix in prefixes:
        if state_dict and all(k.startswith(prefix) for k in state_dict):
            return {k[len(prefix) :]: v for k, v in state_dict.items()}
    return dict(state_dict)


def describe_key_diff(model: nn.Module, state_dict: Mapping[str, torch.Tensor], limit: int = 6) -> str:
    """One line saying which keys are missing, unexpected or of a different shape (empty if none)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]

    def fmt(label: str, items: list[str]) -> str:
        shown = ", ".join(items[:limit]) + (f", ... ({len(items)} in all)" if len(items) > limit else "")
        return f"{label}: {shown}"

    parts = [fmt(lbl, it) for lbl, it in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)) if it]
    return "; ".join(parts)


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str) -> None:
    """``model.load_state_dict(state_dict, strict=True)`` with an error that lists the differing keys."""
    diff = describe_key_diff(model, state_dict)
    if diff:
        raise UsageError(f"state dict from {source} does not match {type(model).__name__}: {diff}")
    model.load_state_dict(state_dict, strict=True)


# ------------------------------------------------------------------------------------------ caches


def hub_checkpoint_path(url: str) -> Path:
    """Where torch hub keeps (or would keep) the file of ``url``: ``<hub dir>/checkpoints/<file name>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def cached_url_file(url: str, *, download: bool | None = None, hash_prefix: str | None = None) -> Path:
    """The torch-hub cache file for ``url``, downloading it only when allowed (see module docstring)."""
    path = hub_checkpoint_path(url)
    if path.is_file():
        return path
    if not may_download(download, url):
        raise WeightsNotFoundError(
            f"weights file {path.name} is not in the local cache and cannot be downloaded (offline); "
            f"put it into {path.parent}/ (from {url}), or set TORCH_HOME to a folder whose hub/checkpoints/ has it"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(path), hash_prefix=hash_prefix, progress=True)
    return path


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at call time (``HF_HUB_CACHE``, ``HF_HOME``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def cached_hf_file(
    repo_id: str, filenames: tuple[str, ...], *, revision: str | None = None, download: bool | None = None
) -> Path:
    """The first of ``filenames`` found in the Hugging Face cache for ``repo_id``; download if allowed."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cache = hf_cache_dir()
    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=str(cache), revision=revision)
        if isinstance(found, str) and os.path.isfile(found):
            return Path(found)
    url = f"https://huggingface.co/{repo_id}"
    if may_download(download, url):
        return Path(hf_hub_download(repo_id, filenames[0], revision=revision, cache_dir=str(cache)))
    folder = cache / f"models--{repo_id.replace('/', '--')}"
    raise WeightsNotFoundError(
        f"weights file {filenames[0]} of {repo_id} is not in the Hugging Face cache and cannot be downloaded "
        f"(offline); fill {folder} (e.g. `huggingface-cli download {repo_id} {filenames[0]}` on a machine with a "
        f"network, then copy the cache), or download {url}/resolve/main/{filenames[0]} and pass weights=FILE"
    )


def recorded_architecture(path: str | os.PathLike[str]) -> str | None:
    """The architecture ``advlab train`` recorded in a ``.safetensors`` checkpoint's metadata, if any."""
    path = Path(path).expanduser()
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return (fh.metadata() or {}).get("architecture")
    except Exception as err:  # corrupt or truncated file
        raise UsageError(f"weights file {path} is not a readable safetensors file: {err}") from err


def head_classes(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> int | None:
    """The class count of a state dict whose only difference from ``model`` is the classifier head: the same
    keys, and every key of another shape differs in its first dimension alone, all agreeing on it (a
    fine-tuned model with ``num_classes`` outputs). ``None`` when the shapes agree or differ otherwise."""
    own = model.state_dict()
    if set(own) != set(state_dict):  # other differences: leave the full key diff to load_state_dict_strict
        return None
    found = {
        int(v.shape[0])
        for k, v in state_dict.items()
        if k in own and v.shape != own[k].shape and v.dim() == own[k].dim() and v.shape[1:] == own[k].shape[1:]
    }
    other = [
        k for k, v in state_dict.items() if k in own and v.shape != own[k].shape and v.shape[1:] != own[k].shape[1:]
    ]
    return found.pop() if len(found) == 1 and not other else None
