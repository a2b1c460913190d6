"""Users' own models at their own input size: TorchScript files, ONNX files and Python factories.

A user's model rarely states the input it takes (a TorchScript or ``nn.Module`` carries no input size), so
advlab takes it, in this order, from what the user states (``input_size=``, ``--input-size 1x28x28``), from the
model file (an ONNX graph's static input shape), or from the data it will be evaluated on (``data_size``, the
first image's channels, height and width). Whatever size is chosen is checked with one forward pass of zeros
before any attack runs; grey data tried at three channels (or colour data at one) is the one fallback, because
images are decoded as RGB and a grey model wants one channel (``make_transform(channels=1)`` converts back
exactly: the luma weights sum to one). A model that takes none of these, or whose output is not
``(N, classes)``, is one :class:`~advlab.errors.UsageError` naming the model's and the data's shapes.
"""

from __future__ import annotations

import importlib
import importlib.util
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advlab.errors import MissingInputError, UsageError
from advlab.models.classifier import ImageClassifier
from advlab.models.weights import load_state_dict_file, load_state_dict_strict, strip_prefix

Size = tuple[int, int, int]
PREFIXES = ("timm", "hf", "robustbench")  # ``PREFIX:NAME`` model names that are not factories


def format_size(size: Sequence[int]) -> str:
    return "x".join(str(int(v)) for v in size)


def parse_input_size(value: str | Sequence[int]) -> Size:
    """``"1x28x28"``, ``"1,28,28"`` or ``[1, 28, 28]`` as ``(C, H, W)``; a UsageError otherwise."""
    parts: Sequence[Any] = value.replace(",", "x").split("x") if isinstance(value, str) else value
    try:
        size = tuple(int(v) for v in parts)
    except (TypeError, ValueError):
        size = ()
    if len(size) != 3 or min(size) < 1:
        raise UsageError(f"input size must be CxHxW with positive integers, e.g. 1x28x28 or 3x32x32; got {value!r}")
    return size  # type: ignore[return-value]


def parse_floats(value: str | float | Sequence[float], what: str) -> tuple[float, ...]:
    """``"0.5"``, ``"0.485,0.456,0.406"``, ``0.5`` or ``[0.5, 0.5, 0.5]`` as a tuple of floats (one per channel)."""
    parts: Sequence[Any] = (
        value.split(",") if isinstance(value, str) else [value] if isinstance(value, int | float) else value
    )
    try:
        return tuple(float(v) for v in parts)
    except (TypeError, ValueError):
        raise UsageError(f"{what} takes one number per channel, e.g. 0.5 or 0.485,0.456,0.406; got {value!r}") from None


def is_factory(name: str) -> bool:
    """``file.py:make_model`` or ``package.module:Net`` (a callable returning an ``nn.Module``)."""
    target, sep, attr = name.rpartition(":")
    if not sep or not attr.isidentifier() or target in PREFIXES:
        return False
    return target.endswith(".py") or all(part.isidentifier() for part in target.split("."))


def call_factory(spec: str) -> nn.Module:
    """Import ``spec``'s module (a ``.py`` file by path, or a module by dotted name) and call its ``attr()``.

    The file is the user's own code, run as they asked; it is not registered in ``sys.modules``.
    """
    target, _, attr = spec.rpartition(":")
    try:
        if target.endswith(".py"):
            path = Path(target).expanduser()
            if not path.is_file():
                raise MissingInputError(f"model factory file {path} does not exist (expected FILE.py:FUNCTION)")
            mod_spec = importlib.util.spec_from_file_location(f"advlab_user_model_{path.stem}", path)
            if mod_spec is None or mod_spec.loader is None:
                raise UsageError(f"{path} cannot be imported as a Python module")
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except UsageError:
        raise
    except Exception as err:  # the user's module failed to import: their error, in one line
        raise UsageError(f"--model {spec}: importing {target} raised {type(err).__name__}: {_first_line(err)}") from err
    factory = getattr(module, attr, None)
    if not callable(factory):
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))[:8]
        raise UsageError(f"--model {spec}: {target} has no callable {attr!r} (it has {', '.join(found) or 'none'})")
    try:
        net = factory()
    except Exception as err:
        raise UsageError(f"--model {spec}: {attr}() raised {type(err).__name__}: {_first_line(err)}") from err
    if not isinstance(net, nn.Module):
        raise UsageError(f"--model {spec}: {attr}() returned {type(net).__name__}, expected a torch.nn.Module")
    return net


def load_onnx(path: Path) -> tuple[nn.Module, Size | None]:
    """An ONNX file converted to a differentiable ``nn.Module`` by ``onnx2torch``, and its static input size."""
    try:
        import onnx
        import onnx2torch
    except ImportError as err:
        raise UsageError(f"{path}: ONNX models need onnx and onnx2torch (pip install 'advlab[onnx]')") from err
    try:
        graph = onnx.load(str(path))
    except Exception as err:
        raise UsageError(f"{path} is not a readable ONNX file ({type(err).__name__}: {_first_line(err)})") from err
    initialisers = {t.name for t in graph.graph.initializer}
    inputs = [i for i in graph.graph.input if i.name not in initialisers]
    if len(inputs) != 1:
        raise UsageError(f"{path}: an image classifier takes one input; this ONNX graph takes {len(inputs)}")
    dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim]
    size = tuple(dims[1:]) if len(dims) == 4 and all(d > 0 for d in dims[1:]) else None
    try:
        net = onnx2torch.convert(graph)
    except Exception as err:
        raise UsageError(
            f"{path}: onnx2torch cannot convert this graph ({type(err).__name__}: {_first_line(err)}); "
            "export it again with a standard opset, or give advlab the PyTorch model"
        ) from err
    return net, size  # type: ignore[return-value]


def probe(backbone: nn.Module, sizes: Sequence[Size], name: str, data_size: Size | None) -> tuple[Size, int]:
    """The first of ``sizes`` the backbone takes (one forward pass of zeros) and its number of classes."""
    errors: list[str] = []
    for size in sizes:
        try:
            with torch.no_grad():
                out = backbone(torch.zeros(2, *size))
        except Exception as err:  # any layer's shape error: try the next candidate, then report
            errors.append(f"{format_size(size)}: {type(err).__name__}: {_first_line(err)}")
            continue
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 2:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise UsageError(
                f"{name}: the model must return logits of shape (N, classes); for input 2x{format_size(size)} "
                f"it returned {got}"
            )
        return size, int(out.shape[1])
    data = f"the data's images are {format_size(data_size)}" if data_size else "no data size was given"
    raise UsageError(
        f"{name} does not take input {' or '.join(format_size(s) for s in sizes)} ({data}): {errors[0]}; "
        "state the model's input with --input-size CxHxW (input_size=)"
    )


def load_user_model(
    name: str,
    *,
    user_file: Path | None,
    num_classes: int | None,
    overrides: dict[str, Any],
    data_size: Size | None,
) -> ImageClassifier:
    """A TorchScript file, ONNX file or ``file.py:factory`` as an ImageClassifier at its own input size."""
    if is_factory(name):
        backbone = call_factory(name)
        kind = "Python factory"
        if user_file is not None:
            state = strip_prefix(load_state_dict_file(user_file), ("backbone.", "module."))
            load_state_dict_strict(backbone, state, source=f"{user_file} (architecture {name})")
            kind = f"{kind} with weights {user_file}"
        stated: Size | None = None
        label = name
    else:
        path = Path(name).expanduser()
        if not path.is_file():
            raise MissingInputError(
                f"model file {path} does not exist (a model name must be one of advlab.models.list_models(), "
                "timm:NAME, FILE.py:FACTORY, or a TorchScript / ONNX file)"
            )
        if user_file is not None:
            raise UsageError(
                f"{path} carries its own weights; --weights is for a named architecture or a FILE.py:FACTORY model"
            )
        label = path.name
        if path.suffix.lower() == ".onnx":
            backbone, stated = load_onnx(path)
            kind = "ONNX file"
        else:
            backbone, stated, kind = _load_torchscript(path), None, "TorchScript file"
        kind = f"{kind} {path}"
    backbone.eval()
    given = overrides.get("input_size")
    if given is not None:
        sizes = [parse_input_size(given)]
    elif stated is not None:
        sizes = [stated]
    elif data_size is not None:
        c, h, w = data_size
        sizes = [data_size, (1 if c == 3 else 3, h, w)]
    else:
        sizes = [(3, 224, 224)]
    input_size, n = probe(backbone, sizes, label, data_size)
    if num_classes is not None and num_classes != n:
        raise UsageError(f"{label} has {n} outputs but num_classes={num_classes} was given")
    c, h, w = input_size
    crop = overrides.get("crop_size") or (h if h == w else (h, w))
    # Data of the model's own size (the usual case for a user's model) passes through unchanged; unknown data
    # gets the ImageNet convention (short side to crop / 0.875, centre crop).
    resize = overrides.get("resize_size") or (min(h, w) if data_size is not None else round(min(h, w) / 0.875))
    return ImageClassifier(
        backbone,
        mean=tuple(overrides.get("mean") or (0.0,) * c),
        std=tuple(overrides.get("std") or (1.0,) * c),
        input_size=input_size,
        class_names=list(overrides.get("class_names") or [str(i) for i in range(n)]),
        resize_size=resize,
        crop_size=crop,  # type: ignore[arg-type]
        interpolation=overrides.get("interpolation") or "bilinear",
        name=label,
        source=kind,
    )


def check_fits(model: Any, dataset: Any, data: str) -> None:
    """One clear line when the dataset's first image is not the shape the model takes, or its labels name classes
    the model does not have (before any attack)."""
    classes, labels = getattr(model, "num_classes", None), getattr(dataset, "labels", None)
    if isinstance(classes, int) and isinstance(labels, torch.Tensor) and labels.numel() > 0:
        largest = int(labels.max())
        if largest >= classes:
            raise UsageError(
                f"data {data} has labels up to {largest} but model {getattr(model, 'name', '') or 'model'} has "
                f"{classes} classes (0..{classes - 1}); give the data the model was trained on (--data)"
            )
    size = tuple(getattr(model, "input_size", ()) or ())
    if len(dataset) == 0 or not size:
        return
    item = dataset[0]
    if item is None or not isinstance(item[0], torch.Tensor):
        return
    got = tuple(item[0].shape)
    if got != size:
        raise UsageError(
            f"model {getattr(model, 'name', '') or 'model'} takes {format_size(size)} images but data {data} gives "
            f"{format_size(got)} after preprocessing; set --input-size, --resize and --crop to match"
        )


def _load_torchscript(path: Path) -> nn.Module:
    try:
        with warnings.catch_warnings():  # torch >= 2.9 deprecates TorchScript; users still have such files
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as err:  # torch raises RuntimeError variants for non-TorchScript archives
        raise UsageError(
            f"{path} is not a TorchScript file ({type(err).__name__}); for a state dict pass the architecture and "
            "the file: --model ARCH or FILE.py:FACTORY with --weights FILE"
        ) from err


def _first_line(err: BaseException) -> str:
    """The message's first line; for TorchScript's interpreter errors (a traceback of the scripted code), the
    last line, which says what failed."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if not lines:
        return ""
    return lines[-1] if "TorchScript interpreter" in lines[0] else lines[0]
