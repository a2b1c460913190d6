"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017): 70,000 28x28 grey images of 10 clothing classes.

The files are the four IDX files of the original release, gzipped or not. They are looked up, in order, in
``root`` (when given), in ``$ADVLAB_FASHION_MNIST``, and in ``/usr/share/datasets/fashion-mnist`` (Debian's
``dataset-fashion-mnist`` package). ``root`` may hold the files directly or in torchvision's layout
(``root/FashionMNIST/raw/``). When no copy is found and ``download=True``, torchvision downloads one into
``root`` (this needs a network; without one the error says where to put the files).

The IDX format (LeCun et al., http://yann.lecun.com/exdb/mnist/): a big-endian header ``0x00 0x00 <type>
<ndim>``, then ``ndim`` big-endian uint32 sizes, then the data in row-major order. The reader checks the magic
number, the data type (unsigned byte), the sizes against the file length, and the label range.
"""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from advlab.errors import MissingInputError, UsageError

CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
SPLITS: dict[str, tuple[str, str, int]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60_000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10_000),
}
SYSTEM_ROOT = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "ADVLAB_FASHION_MNIST"
HOW_TO_GET = (
    "install Debian's package (apt-get install dataset-fashion-mnist, which puts the IDX files in "
    f"{SYSTEM_ROOT}), or set ${ENV_VAR} / pass root= (advlab train: --data-root) to a folder holding "
    "train-images-idx3-ubyte.gz and the three other IDX files (directly or under FashionMNIST/raw/), or pass "
    "download=True (Python API) with a network"
)
_IDX_UBYTE = 0x08


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzipped when the name ends in .gz) into a numpy uint8 array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:  # gzip raises EOFError/BadGzipFile on a truncated or corrupt file
        raise UsageError(f"cannot read IDX file {path}: {e}") from e
    if len(data) < 4:
        raise UsageError(f"{path} is not an IDX file: {len(data)} bytes, shorter than the 4-byte magic number")
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or ndim == 0:
        raise UsageError(f"{path} is not an IDX file: magic number {data[:4].hex()} (expected 0000 <type> <ndim>)")
    if dtype != _IDX_UBYTE:
        raise UsageError(f"{path}: IDX data type 0x{dtype:02x} is not supported (expected 0x08, unsigned byte)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UsageError(f"{path}: truncated IDX header ({len(data)} bytes, expected at least {header})")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected:
        raise UsageError(f"{path}: {len(data)} bytes but the header's shape {shape} needs {expected}; truncated?")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _find(stem: str, folders: Sequence[Path]) -> Path | None:
    for folder in folders:
        for sub in (folder, folder / "FashionMNIST" / "raw", folder / "raw"):
            for name in (stem + ".gz", stem):
                if (sub / name).is_file():
                    return sub / name
    return None


def _candidate_roots(root: str | os.PathLike[str] | None) -> list[Path]:
    if root is not None:
        return [Path(root)]
    roots = []
    if os.environ.get(ENV_VAR):
        roots.append(Path(os.environ[ENV_VAR]))
    roots.append(SYSTEM_ROOT)
    return roots


def _download(root: Path) -> None:
    """Let torchvision fetch the files into ``root/FashionMNIST/raw`` (it checks their md5 sums)."""
    from torchvision.datasets import FashionMNIST

    try:
        FashionMNIST(str(root), train=True, download=True)
        FashionMNIST(str(root), train=False, download=True)
    except Exception as e:  # URLError, socket errors, HTTP errors: all mean "no copy could be fetched"
        raise MissingInputError(f"Fashion-MNIST download into {root} failed ({e}); {HOW_TO_GET}") from e


def load_fashion_mnist(
    split: str, root: str | os.PathLike[str] | None = None, *, download: bool = False
) -> tuple[Tensor, Tensor]:
    """Load one split of Fashion-MNIST as ``(images, labels)``.

    Args:
        split: "train" (60,000 images) or "test" (10,000 images).
        root: folder holding the IDX files (or torchvision's ``FashionMNIST/raw`` below it). Default: search
            ``$ADVLAB_FASHION_MNIST`` then ``/usr/share/datasets/fashion-mnist``.
        download: when no copy is found, download one with torchvision into ``root`` (default ``./data``).

    Returns:
        images: uint8 tensor (N, 28, 28); labels: int64 tensor (N,) with values in 0..9 (see ``CLASSES``).

    Raises:
        ValueError: unknown split, corrupt file, or counts/labels that are not those of Fashion-MNIST.
        FileNotFoundError: no copy found (the message says how to get one).
    """
    if split not in SPLITS:
        raise UsageError(f"unknown Fashion-MNIST split {split!r}; expected 'train' or 'test'")
    image_stem, label_stem, count = SPLITS[split]
    folders = _candidate_roots(root)
    image_path, label_path = _find(image_stem, folders), _find(label_stem, folders)
    if (image_path is None or label_path is None) and download:
        target = Path(root) if root is not None else Path("data")
        _download(target)
        folders = [target]
        image_path, label_path = _find(image_stem, folders), _find(label_stem, folders)
    if image_path is None or label_path is None:
        missing = image_stem if image_path is None else label_stem
        where = ", ".join(str(f) for f in folders)
        raise MissingInputError(f"Fashion-MNIST file {missing}(.gz) not found in {where}; {HOW_TO_GET}")

    images, labels = read_idx(image_path), read_idx(label_path)
    if images.shape != (count, 28, 28):
        raise UsageError(f"{image_path}: images shaped {images.shape}, expected ({count}, 28, 28) for split {split}")
    if labels.shape != (count,):
        raise UsageError(f"{label_path}: labels shaped {labels.shape}, expected ({count},) for the {split} split")
    if labels.max() >= len(CLASSES):
        raise UsageError(f"{label_path}: label {labels.max()} out of range; Fashion-MNIST labels are 0..9")
    # Fashion-MNIST is balanced by construction: 6,000 (train) / 1,000 (test) images per class.
    histogram = np.bincount(labels, minlength=len(CLASSES))
    if not (histogram == count // len(CLASSES)).all():
        raise UsageError(
            f"{label_path}: label histogram {histogram.tolist()} is not the balanced {count // len(CLASSES)} "
            "per class of Fashion-MNIST; the file is not the original release"
        )
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def to_float_images(images: Tensor) -> Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28) in [0, 1], the input convention of every advlab model."""
    if images.dtype != torch.uint8:
        raise TypeError(f"images must be uint8 (as load_fashion_mnist returns), got {images.dtype}")
    return images.unsqueeze(1).float().div_(255.0)


class FashionMNIST(Dataset[tuple[Tensor, Tensor, int]]):
    """Map-style dataset of ``(image float32 (1, 28, 28) in [0, 1], label int64, index)``, held in memory.

    ``index`` is the image's position in the split, as for every advlab image dataset. ``indices`` keeps a
    subset (e.g. a held-out split) in the given order; its items keep their index in the split. The whole
    split is converted once (60,000 images take 188 MB as float32), so a ``DataLoader`` costs only indexing.
    """

    classes = CLASSES

    def __init__(
        self,
        split: str,
        root: str | os.PathLike[str] | None = None,
        *,
        indices: Sequence[int] | Tensor | None = None,
        download: bool = False,
    ) -> None:
        images, labels = load_fashion_mnist(split, root, download=download)
        self.indices = torch.arange(labels.shape[0])
        if indices is not None:
            self.indices = torch.as_tensor(indices, dtype=torch.long)
            images, labels = images[self.indices], labels[self.indices]
        self.split = split
        self.images = to_float_images(images)
        self.labels = labels

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, int]:
        return self.images[i], self.labels[i], int(self.indices[i])

    def tensors(self) -> tuple[Tensor, Tensor]:
        """All images (N, 1, 28, 28) float32 in [0, 1] and labels (N,) int64."""
        return self.images, self.labels
