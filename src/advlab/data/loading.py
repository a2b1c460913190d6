"""``load_dataset``: one entry point from a user's ``--data`` argument to a dataset."""

from __future__ import annotations

import os
from pathlib import Path

from advlab.data.imagenet import ImageList, ImageNetFolder, LabelledImages, Transform
from advlab.data.sample import default_sample
from advlab.errors import MissingInputError, UsageError

DEFAULT_DATA = "default"
FASHION_MNIST = "fashion-mnist"


CIFAR = ("cifar10", "cifar100")


def load_dataset(
    data: str | os.PathLike[str] | None = None,
    transform: Transform | None = None,
    root: str | os.PathLike[str] | None = None,
) -> ImageList:
    """Open ``data`` as an image dataset yielding ``(image, label, index)``.

    - ``None`` or ``"default"``: the 20 labelled ImageNet images of the foolbox wheel (:func:`default_sample`);
    - a ``.csv`` file: :class:`LabelledImages` (``file,class_index`` columns);
    - a folder: :class:`ImageNetFolder` (``<wnid>/<images>``), or, for a folder without sub-folders that
      holds ``labels.csv``, :class:`LabelledImages` of that file;
    - ``"fashion-mnist"`` or ``"fashion-mnist:train"``: :class:`~advlab.data.FashionMNIST` (the test split by
      default; ``transform`` does not apply: its images are already (1, 28, 28) tensors in [0, 1]);
    - ``"cifar10"``, ``"cifar100"`` (``:test`` by default, or ``:train``): :class:`~advlab.data.cifar.CIFAR` from
      the official python or binary files under ``root`` (default ``./data``, where torchvision puts them).

    All checks (missing folder, unknown wnid folders, missing files, out-of-range classes) run here, before
    any image is decoded.
    """
    if data is None or str(data) == DEFAULT_DATA:
        return default_sample(transform)
    if str(data).startswith(FASHION_MNIST):
        from .fashion_mnist import FashionMNIST

        split = str(data).partition(":")[2] or "test"
        if str(data).partition(":")[0] != FASHION_MNIST or split not in ("train", "test"):
            raise UsageError(f"unknown data {str(data)!r}; expected 'fashion-mnist', 'fashion-mnist:train' or ':test'")
        return FashionMNIST(split)  # type: ignore[return-value]
    if str(data).partition(":")[0] in CIFAR:
        from .cifar import CIFAR as CIFARDataset

        name, _, split = str(data).partition(":")
        return CIFARDataset(name, split or "test", root=root, transform=transform)  # type: ignore[return-value]
    path = Path(data).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise UsageError(f"{path} is a file but not a .csv labels file (expected a folder or FILE.csv)")
        return LabelledImages(path, transform=transform)
    if not path.exists():
        raise MissingInputError(
            f"data {path} does not exist (expected a <wnid>/<images> folder, a labels .csv, 'default' or "
            "'fashion-mnist', 'cifar10', 'cifar100')"
        )
    labels = path / "labels.csv"
    if labels.is_file() and not any(p.is_dir() for p in path.iterdir()):
        return LabelledImages(labels, transform=transform)  # a flat folder of images with its labels file
    return ImageNetFolder(path, transform=transform)


GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


def image_shape(
    data: str | os.PathLike[str] | None, root: str | os.PathLike[str] | None = None
) -> tuple[int, int, int] | None:
    """(C, H, W) of ``data``'s first image as stored (C = 1 for grey files), or ``None`` for the default sample.

    A user's model that does not state its input size takes this one (advlab.models.load_model ``data_size``).
    """
    if data is None or str(data) == DEFAULT_DATA:
        return None
    if str(data).startswith(FASHION_MNIST):
        return (1, 28, 28)
    if str(data).partition(":")[0] in CIFAR:
        return (3, 32, 32)
    dataset = load_dataset(data, root=root)
    if not dataset.paths:
        return None
    from PIL import Image

    try:
        with Image.open(dataset.paths[0]) as img:
            return (1 if img.mode in GREY_MODES else 3, img.height, img.width)
    except OSError:  # unreadable first image: the dataset skips it later; no size to infer from
        return None
