"""ImageNet-1k class table and ImageNet-style image datasets.

Two dataset forms, both yielding ``(image, label, index)`` with ``image`` a float tensor in [0, 1]
(after the given transform), ``label`` the standard ImageNet-1k class index and ``index`` the item's
position in the dataset (stable, so it can seed per-sample randomness):

- :class:`ImageNetFolder`: ``root/<wnid>/<image files>`` (ImageNet val in the usual layout, or any
  subset of it). The label is the index of ``<wnid>`` among the 1000 sorted ImageNet-1k wnids, *not*
  the folder's position in ``root`` (a subset with 30 folders still gets indices in 0..999).
- :class:`LabelledImages`: a CSV file with at least the columns ``file,class_index`` (extra columns are
  ignored); ``file`` is relative to the CSV's folder unless ``root`` is given. A UTF-8 byte-order mark (as
  spreadsheets write) is accepted; a file listed twice (with one label or two) is refused, naming the lines.

Bad input is found before any work starts (missing/empty folder, unknown wnid folder, missing files,
out-of-range classes). An image that cannot be decoded is only found when it is read: it is skipped with
one warning naming the file and recorded in ``dataset.skipped``; ``__getitem__`` returns ``None`` for it
and :func:`collate_skip` (used by :func:`make_loader`) drops it from the batch.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from advlab.errors import MissingInputError, UsageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")

Transform = Callable[[Image.Image], torch.Tensor]


@dataclass(frozen=True)
class ImageNetClasses:
    """The 1000 ImageNet-1k classes: ``wnids[i]`` and ``names[i]`` belong to class index ``i``."""

    wnids: tuple[str, ...]
    names: tuple[str, ...]

    def index_of(self, wnid: str) -> int:
        try:
            return self._wnid_to_index[wnid]
        except KeyError:
            raise UsageError(f"{wnid!r} is not an ImageNet-1k wnid (expected e.g. 'n01440764')") from None

    @functools.cached_property
    def _wnid_to_index(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.wnids)}


@functools.cache
def imagenet_classes() -> ImageNetClasses:
    """The ImageNet-1k class table shipped with advlab (``advlab/data/imagenet_classes.json``).

    Index order is the sorted-wnid order used by torchvision, timm and the ILSVRC2012 devkit tools; the
    wnids come from timm's ``imagenet_synsets.txt`` and the short names from torchvision's weight meta.
    """
    text = resources.files("advlab.data").joinpath("imagenet_classes.json").read_text(encoding="utf-8")
    classes = json.loads(text)["classes"]
    wnids = tuple(c[0] for c in classes)
    names = tuple(c[1] for c in classes)
    if len(wnids) != 1000 or list(wnids) != sorted(wnids):
        raise RuntimeError("advlab/data/imagenet_classes.json is damaged: expected 1000 sorted wnids")
    return ImageNetClasses(wnids, names)


def imagenet_class_names() -> list[str]:
    """The 1000 short ImageNet-1k class names in class-index order."""
    return list(imagenet_classes().names)


# --------------------------------------------------------------------------------------------- images


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode (grey L/I/I;16, LA, P with or without transparency, RGBA, CMYK, YCbCr) to RGB.

    Alpha is dropped, not composited: that is what the ImageNet training pipelines did, so models saw
    the colour channels only. 16/32-bit grey is rescaled to 8 bits rather than clipped: a 16-bit mode (I;16*)
    from its full range 0..65535 whatever the image's own maximum (a dark 16-bit image stays dark); the 32-bit
    I and F modes, which do not say their range, from 0..65535 where a value passes 255, else 0..255.
    """
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        sixteen_bit = img.mode.startswith("I;16")
        top = 65535.0 if sixteen_bit or arr.max(initial=0.0) > 255 else 255.0
        img = Image.fromarray(np.clip(np.round(arr * (255.0 / top)), 0, 255).astype(np.uint8), mode="L")
    elif img.mode == "P":
        # Palette images can carry transparency in the palette; PIL wants them converted via RGBA.
        img = img.convert("RGBA")
    return img.convert("RGB")


def read_image(path: str | os.PathLike[str]) -> Image.Image:
    """Decode an image file fully (so truncation is detected here) and return it as RGB."""
    with Image.open(path) as img:
        img.load()
        return to_rgb(img)


_DECODE_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError)


def _to_tensor(img: Image.Image) -> torch.Tensor:
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


class ImageList(Dataset):
    """A fixed list of (image path, label): decoding, conversion to a [0, 1] tensor, unreadable images skipped
    with a warning. The base of ImageNetFolder, LabelledImages and DefaultSample (what load_dataset returns)."""

    def __init__(
        self,
        samples: Sequence[tuple[Path, int]],
        transform: Transform | None,
        class_names: Sequence[str],
        provenance: str,
    ) -> None:
        self.samples: list[tuple[Path, int]] = list(samples)
        self.transform = transform
        self.class_names: list[str] = list(class_names)
        self.provenance = provenance
        self.skipped: list[tuple[str, str]] = []
        self._skip_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def paths(self) -> list[Path]:
        return [p for p, _ in self.samples]

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([y for _, y in self.samples], dtype=torch.int64)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int] | None:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} images")
        index = index % len(self)
        path, label = self.samples[index]
        try:
            img = read_image(path)
        except _DECODE_ERRORS as err:
            self._record_skip(path, err)
            return None
        x = self.transform(img) if self.transform is not None else _to_tensor(img)
        return x, label, index

    def _record_skip(self, path: Path, err: BaseException) -> None:
        with self._skip_lock:
            if any(p == str(path) for p, _ in self.skipped):
                return
            self.skipped.append((str(path), f"{type(err).__name__}: {err}"))
        warnings.warn(f"skipping unreadable image {path} ({type(err).__name__}: {err})", RuntimeWarning, stacklevel=3)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} images, {self.provenance})"


class ImageNetFolder(ImageList):
    """``root/<wnid>/<images>`` mapped to ImageNet-1k class indices (sorted 1000 wnids).

    Args:
        root: folder holding one sub-folder per class, each named by its WordNet id (``n01440764``).
        transform: PIL image -> tensor in [0, 1]; typically ``advlab.data.transform_for(model)``.
            ``None`` gives the full-size image as a tensor (then items differ in size).
    Raises:
        FileNotFoundError: ``root`` does not exist or is not a folder.
        ValueError: no class folders / no images, or a sub-folder that is not an ImageNet-1k wnid.
    """

    def __init__(self, root: str | os.PathLike[str], transform: Transform | None = None) -> None:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise MissingInputError(f"image folder {root} does not exist (expected <root>/<wnid>/<images>)")
        table = imagenet_classes()
        subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not subdirs:
            raise UsageError(f"{root} has no class folders (expected <root>/<wnid>/<images>, e.g. n01440764/x.JPEG)")
        unknown = [d.name for d in subdirs if d.name not in table._wnid_to_index]
        if unknown:
            shown = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
            raise UsageError(
                f"{root}: {len(unknown)} folder(s) are not ImageNet-1k wnids ({shown}); expected folders named "
                "like n01440764, or use advlab.data.LabelledImages with a file,class_index CSV"
            )
        samples: list[tuple[Path, int]] = []
        for d in subdirs:
            label = table.index_of(d.name)
            files = sorted(
                f
                for f in d.iterdir()
                if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith(".")
            )
            samples.extend((f, label) for f in files)
        if not samples:
            raise UsageError(f"{root} has class folders but no image files ({', '.join(IMAGE_EXTENSIONS)})")
        super().__init__(samples, transform, table.names, f"ImageNet folder {root}")
        self.root = root


class LabelledImages(ImageList):
    """Images listed in a CSV file with (at least) the columns ``file,class_index``.

    Args:
        labels_file: the CSV file (header row required; extra columns are allowed and ignored).
        root: folder the ``file`` entries are relative to; default: the CSV file's folder.
        transform: PIL image -> tensor in [0, 1].
        num_classes: valid class indices are ``0 .. num_classes - 1`` (default 1000, ImageNet-1k).
        class_names: names for the classes; default the ImageNet-1k names when ``num_classes == 1000``,
            else ``"0", "1", ...``.
    Raises:
        FileNotFoundError: the CSV file or any image it names is missing (all missing files are counted).
        ValueError: missing columns, a non-integer or out-of-range class index, an empty list.
    """

    def __init__(
        self,
        labels_file: str | os.PathLike[str],
        root: str | os.PathLike[str] | None = None,
        transform: Transform | None = None,
        *,
        num_classes: int = 1000,
        class_names: Sequence[str] | None = None,
    ) -> None:
        labels_file = Path(labels_file).expanduser()
        if not labels_file.is_file():
            raise MissingInputError(f"labels file {labels_file} does not exist (expected a CSV with file,class_index)")
        base = Path(root).expanduser() if root is not None else labels_file.parent
        if class_names is None:
            class_names = imagenet_class_names() if num_classes == 1000 else [str(i) for i in range(num_classes)]
        if len(class_names) != num_classes:
            raise UsageError(f"class_names has {len(class_names)} entries, expected num_classes={num_classes}")
        with labels_file.open(newline="", encoding="utf-8-sig") as fh:  # -sig: a spreadsheet's UTF-8 BOM
            reader = csv.DictReader(fh)
            fields = [f.strip() for f in (reader.fieldnames or [])]
            if "file" not in fields or "class_index" not in fields:
                raise UsageError(f"{labels_file}: header must name the columns file,class_index (found {fields})")
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
        samples: list[tuple[Path, int]] = []
        missing: list[str] = []
        first_line: dict[Path, tuple[int, int]] = {}  # each listed file: its first line and label
        for lineno, row in enumerate(rows, start=2):
            try:
                label = int(row["class_index"])
            except ValueError:
                raise UsageError(
                    f"{labels_file}:{lineno}: class_index {row['class_index']!r} is not an integer"
                ) from None
            if not 0 <= label < num_classes:
                raise UsageError(f"{labels_file}:{lineno}: class_index {label} is outside 0..{num_classes - 1}")
            path = base / row["file"]
            key = Path(os.path.normpath(path))
            if key in first_line:
                line, other = first_line[key]
                what = "twice" if other == label else f"with two labels ({other} and {label})"
                raise UsageError(
                    f"{labels_file}: lines {line} and {lineno} list {row['file']!r} {what}; list each image once "
                    "(it would be evaluated twice)"
                )
            first_line[key] = (lineno, label)
            if not path.is_file():
                missing.append(row["file"])
            samples.append((path, label))
        if missing:
            shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise MissingInputError(f"{labels_file}: {len(missing)} listed file(s) not found under {base}: {shown}")
        if not samples:
            raise UsageError(f"{labels_file} lists no images")
        super().__init__(samples, transform, class_names, f"labels file {labels_file}")
        self.labels_file = labels_file
        self.root = base


LabelsFileDataset = LabelledImages  # alias: the name some callers (benchmarks) use


# -------------------------------------------------------------------------------------------- loading


def collate_skip(batch: list[Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Collate ``(image, label, index)`` items, dropping the ``None`` of unreadable images.

    Returns ``None`` when every item of the batch was unreadable.
    """
    items = [b for b in batch if b is not None]
    if not items:
        return None
    shapes = {tuple(x.shape) for x, _, _ in items}
    if len(shapes) > 1:
        raise UsageError(
            f"images in a batch differ in size {sorted(shapes)}: give the dataset a transform that resizes and "
            "crops (advlab.data.transform_for(model))"
        )
    xs = torch.stack([x for x, _, _ in items])
    ys = torch.tensor([int(y) for _, y, _ in items], dtype=torch.int64)
    idx = torch.tensor([int(i) for _, _, i in items], dtype=torch.int64)
    return xs, ys, idx


def make_loader(dataset: Dataset, batch_size: int = 32, *, num_workers: int = 0) -> DataLoader:
    """A DataLoader over ``dataset`` in order, yielding ``(x, y, index)`` batches with unreadable images dropped.

    With ``num_workers=0`` (the default) ``dataset.skipped`` is filled in this process; worker processes
    keep their own copies, so use 0 when the skip count matters.
    """
    if batch_size < 1:
        raise UsageError(f"batch_size must be >= 1, got {batch_size}")
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_skip)


def iter_batches(dataset: Dataset, batch_size: int = 32):
    """Yield ``(x, y, index)`` batches in dataset order, skipping unreadable images (in this process)."""
    for batch in make_loader(dataset, batch_size):
        if batch is not None:
            yield batch
