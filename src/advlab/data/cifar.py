"""CIFAR-10 and CIFAR-100 (Krizhevsky, 2009, "Learning Multiple Layers of Features from Tiny Images") from the
official distributions, without unpickling arbitrary objects.

The official files come in two versions (https://www.cs.toronto.edu/~kriz/cifar.html):

- python: ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` and
  ``cifar-100-python/{train, test, meta}``, Python 2 pickles of dicts holding a ``uint8`` array ``data``
  (N, 3072: 1024 red, then green, then blue values, row-major) and lists of labels and names. They are read
  with :class:`RestrictedUnpickler`, which admits only numpy's array reconstruction on top of the plain
  containers pickle builds itself (dict, list, bytes, str, numbers); any other class refuses the file.
- binary: ``cifar-10-batches-bin/{data_batch_1..5, test_batch}.bin`` (records of 1 label byte + 3072 pixel
  bytes) and ``cifar-100-binary/{train, test}.bin`` (1 coarse + 1 fine label byte + 3072), read as bytes.

The folders are looked for where torchvision puts them (the ``root`` given to ``torchvision.datasets.CIFAR10``,
by convention ``./data``), under ``--data-root`` when given. :func:`download_cifar` fetches the python
version and checks its MD5 (the values torchvision checks) for users with a network.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from advlab.errors import MissingInputError, UsageError

DEFAULT_ROOTS = ("data", "~/.cache/advlab/data")


@dataclass(frozen=True)
class Layout:
    """One official distribution's folder and file names."""

    folder: str
    splits: dict[str, tuple[str, ...]]
    meta: str
    url: str = ""
    md5: str = ""


PYTHON = {
    "cifar10": Layout(
        "cifar-10-batches-py",
        {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
        "batches.meta",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
    ),
    "cifar100": Layout(
        "cifar-100-python",
        {"train": ("train",), "test": ("test",)},
        "meta",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
    ),
}
BINARY = {
    "cifar10": Layout(
        "cifar-10-batches-bin",
        {"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test": ("test_batch.bin",)},
        "batches.meta.txt",
    ),
    "cifar100": Layout("cifar-100-binary", {"train": ("train.bin",), "test": ("test.bin",)}, "fine_label_names.txt"),
}


def _codecs_encode(text: str, encoding: str = "latin1") -> bytes:
    """What Python 3 pickles (protocol < 3) use to store bytes: admitted for the latin-1 round trip only."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError("refused _codecs.encode call other than (str, 'latin1')")
    return text.encode("latin1")


def _plain_dtype(*args: Any) -> np.dtype:
    """numpy.dtype for the dtypes of numbers and bytes only: an object dtype would let the pickle build arbitrary
    Python objects inside an array (CIFAR batches hold uint8 pixels and integer labels)."""
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError(f"refused dtype {dtype}: only arrays of numbers")
    return dtype


ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "dtype"): _plain_dtype,
    ("_codecs", "encode"): _codecs_encode,
}


def _check_array(shape: Any, dtype: Any, max_bytes: int) -> None:
    """Refuse an array the unpickler would allocate before reading any of the file's bytes into it: one of
    objects, or one larger than the whole file could fill."""
    dt = np.dtype(dtype)
    size = int(np.prod(shape, dtype=np.float64)) * max(dt.itemsize, 1)
    if dt.hasobject:
        raise pickle.UnpicklingError(f"refused an array of {size} bytes (object): only arrays of numbers")
    if size > max_bytes:
        raise pickle.UnpicklingError(f"refused an array of {size} bytes from a {max_bytes}-byte file")


def _bounded_reconstruct(max_bytes: int) -> Callable[..., Any]:
    """numpy's array reconstruction (how pickled arrays are rebuilt), through :func:`_check_array`."""
    fn = _reconstruct()

    def rebuild(subtype: Any, shape: Any, dtype: Any, *args: Any) -> Any:
        _check_array(shape, dtype, max_bytes)
        return fn(subtype, shape, dtype, *args)

    return rebuild


def _reconstruct() -> Callable[..., Any]:
    try:
        from numpy._core.multiarray import _reconstruct as fn  # numpy >= 2
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct as fn  # type: ignore[no-redef]
    return fn


def _bounded_ndarray(max_bytes: int) -> type[np.ndarray]:
    """numpy's array type, through :func:`_check_array` when a pickle calls ``ndarray(shape)`` directly (no CIFAR
    file does; their arrays come through the reconstruction, :func:`_bounded_reconstruct`)."""

    class BoundedArray(np.ndarray):
        def __new__(cls, shape: Any, dtype: Any = float, *args: Any, **kwargs: Any) -> BoundedArray:
            _check_array(shape, dtype, max_bytes)
            return super().__new__(cls, shape, dtype, *args, **kwargs)

    return BoundedArray


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickle only plain containers, numbers, strings/bytes and numpy arrays; refuse every other global.

    Pickle builds dict, list, tuple, str, bytes, int, float, bool and None with its own opcodes (no global
    lookup), so ``find_class`` sees only what needs importing: here numpy's array and dtype reconstruction,
    and ``_codecs.encode`` restricted to the latin-1 byte round trip. Anything else (``os.system``,
    ``builtins.eval``, a user class) raises ``pickle.UnpicklingError`` before it is called.
    """

    def __init__(self, file: Any, max_bytes: int, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self.ndarray = _bounded_ndarray(max_bytes)
        self.reconstruct = _bounded_reconstruct(max_bytes)

    def find_class(self, module: str, name: str) -> Any:
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return self.reconstruct
        if (module, name) == ("numpy", "ndarray"):
            return self.ndarray
        found = ALLOWED.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"refused global {module}.{name}: only numpy arrays and plain containers")
        return found


def restricted_load(path: Path) -> Any:
    """Read a pickle with :class:`RestrictedUnpickler` (``encoding='bytes'``, as the Python 2 files need)."""
    try:
        with path.open("rb") as fh:
            return RestrictedUnpickler(fh, path.stat().st_size, encoding="bytes").load()
    except (
        pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, MemoryError,
        RecursionError, OverflowError,
    ) as err:  # fmt: skip
        raise UsageError(f"{path} is not a CIFAR python batch advlab can read safely: {err}") from err


def _key(d: dict[Any, Any], name: str) -> Any:
    """A dict entry whose key may be bytes (the official Python 2 pickles) or str (re-pickled copies)."""
    for k in (name.encode(), name):
        if k in d:
            return d[k]
    raise KeyError(name)


def _text(v: Any) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def read_python(folder: Path, name: str, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images uint8 (N, 32, 32, 3), labels int64 (N,), class names) from the python version."""
    layout = PYTHON[name]
    images, labels = [], []
    label_key = "labels" if name == "cifar10" else "fine_labels"
    for file in layout.splits[split]:
        batch = restricted_load(_need(folder, file, name))
        try:
            data = np.asarray(_key(batch, "data"), dtype=np.uint8)
            lab = np.asarray(_key(batch, label_key), dtype=np.int64)
        except (KeyError, TypeError, ValueError) as err:
            raise UsageError(f"{folder / file}: not a {name} batch (needs data and {label_key}): {err}") from None
        if data.ndim != 2 or data.shape[1] != 3072 or len(lab) != len(data):
            raise UsageError(f"{folder / file}: data shape {data.shape} / {len(lab)} labels, expected (N, 3072) / N")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(lab)
    meta = restricted_load(_need(folder, layout.meta, name))
    names = [_text(v) for v in _key(meta, "label_names" if name == "cifar10" else "fine_label_names")]
    return np.concatenate(images), np.concatenate(labels), names


def read_binary(folder: Path, name: str, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images uint8 (N, 32, 32, 3), labels int64 (N,), class names) from the binary version."""
    layout = BINARY[name]
    skip = 1 if name == "cifar10" else 2  # CIFAR-100 records start with the coarse label, then the fine one
    images, labels = [], []
    for file in layout.splits[split]:
        raw = np.frombuffer(_need(folder, file, name).read_bytes(), dtype=np.uint8)
        if raw.size % (skip + 3072):
            raise UsageError(f"{folder / file}: {raw.size} bytes is not a whole number of {skip + 3072}-byte records")
        records = raw.reshape(-1, skip + 3072)
        labels.append(records[:, skip - 1].astype(np.int64))
        images.append(records[:, skip:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    meta = _need(folder, layout.meta, name).read_text().split("\n")
    return np.concatenate(images), np.concatenate(labels), [n.strip() for n in meta if n.strip()]


def _need(folder: Path, file: str, name: str) -> Path:
    path = folder / file
    if not path.is_file():
        raise MissingInputError(f"{name} folder {folder} lacks {file}; the official archive has it (re-extract it)")
    return path


def find_cifar(name: str, root: str | os.PathLike[str] | None = None) -> tuple[Path, str]:
    """The folder of ``name`` (python version first, then binary) under ``root`` or the default roots."""
    if name not in PYTHON:
        raise UsageError(f"unknown CIFAR dataset {name!r}; expected cifar10 or cifar100")
    roots = [Path(root).expanduser()] if root is not None else [Path(r).expanduser() for r in DEFAULT_ROOTS]
    for r in roots:
        for version, layouts in (("python", PYTHON), ("binary", BINARY)):
            if (r / layouts[name].folder).is_dir():
                return r / layouts[name].folder, version
    where = " or ".join(str(r) for r in roots)
    raise MissingInputError(
        f"{name} not found: no {PYTHON[name].folder}/ or {BINARY[name].folder}/ in {where}; extract the official "
        f"archive ({PYTHON[name].url}) there or pass --data-root FOLDER"
    )


def download_cifar(name: str, root: str | os.PathLike[str], url: str | None = None, md5: str | None = None) -> Path:
    """Download the python version into ``root``, check its MD5, extract it (data files only); its folder.

    ``url`` and ``md5`` default to the official archive and its published checksum (a mirror may be given).
    A URL that cannot be fetched is a :class:`~advlab.errors.MissingInputError` naming it and the folder.
    """
    layout = PYTHON[name]
    url, md5 = url or layout.url, md5 or layout.md5
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            blob = response.read()
    except OSError as err:  # URLError, HTTPError (404, 503), timeouts, refused connections
        raise MissingInputError(
            f"could not download {name} from {url} ({err}); extract the official archive into {root} yourself "
            "or pass --data-root FOLDER"
        ) from err
    digest = hashlib.md5(blob).hexdigest()  # the published checksum is MD5
    if digest != md5:
        raise UsageError(f"{name} archive from {url} has MD5 {digest}, expected {md5}; nothing was extracted")
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        tar.extractall(root, filter="data")
    return root / layout.folder


class CIFAR(Dataset):
    """CIFAR-10 / CIFAR-100 split as ``(image float (3, 32, 32) in [0, 1], label, index)``, held in memory.

    ``transform`` (a PIL image -> tensor function, e.g. a model's preprocessing) applies when given; without
    it images are the stored pixels / 255 exactly.
    """

    def __init__(
        self,
        name: str = "cifar10",
        split: str = "test",
        root: str | os.PathLike[str] | None = None,
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
    ) -> None:
        if split not in ("train", "test"):
            raise UsageError(f"unknown {name} split {split!r}; expected train or test")
        self.folder, self.version = find_cifar(name, root)
        reader = read_python if self.version == "python" else read_binary
        self.images, labels, self.class_names = reader(self.folder, name, split)
        self.labels = torch.from_numpy(labels)
        self.name, self.split, self.transform = name, split, transform
        self.provenance = f"{name} {split} split ({self.version} version, {self.folder})"

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        pixels = self.images[i]
        if self.transform is not None:
            x = self.transform(Image.fromarray(pixels))
        else:
            x = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div_(255.0)
        return x, int(self.labels[i]), i
