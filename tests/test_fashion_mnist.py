"""Fashion-MNIST: the IDX reader on files written here, the real set's counts and histogram, the root layouts."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from advlab.data import fashion_mnist as fm

REAL = fm.SYSTEM_ROOT / "train-images-idx3-ubyte.gz"
needs_data = pytest.mark.skipif(
    not REAL.is_file(), reason=f"Fashion-MNIST is not installed: {fm.HOW_TO_GET} (scripts/install-system-deps.sh)"
)


def write_idx(path: Path, array: np.ndarray, *, compress: bool | None = None) -> Path:
    """The IDX format by hand: 0x0000, type 0x08, ndim, big-endian uint32 sizes, row-major bytes."""
    blob = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    blob += np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    compress = path.suffix == ".gz" if compress is None else compress
    path.write_bytes(gzip.compress(blob) if compress else blob)
    return path


def write_split(folder: Path, split: str, labels: np.ndarray, *, gz: bool = True) -> np.ndarray:
    image_stem, label_stem, _ = fm.SPLITS[split]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(labels.shape[0], 28, 28), dtype=np.uint8)
    suffix = ".gz" if gz else ""
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / (image_stem + suffix), images)
    write_idx(folder / (label_stem + suffix), labels.astype(np.uint8))
    return images


@settings(max_examples=25, deadline=None)
@given(
    shape=st.lists(st.integers(1, 6), min_size=1, max_size=4).map(tuple),
    gz=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_idx_round_trip(tmp_path_factory: pytest.TempPathFactory, shape: tuple[int, ...], gz: bool, seed: int) -> None:
    array = np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)
    path = write_idx(tmp_path_factory.mktemp("idx") / ("a.idx.gz" if gz else "a.idx"), array)
    out = fm.read_idx(path)
    assert out.dtype == np.uint8 and out.shape == shape
    np.testing.assert_array_equal(out, array)


def test_idx_rejects_damaged_files(tmp_path: Path) -> None:
    good = write_idx(tmp_path / "x.idx", np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    blob = good.read_bytes()
    (tmp_path / "short.idx").write_bytes(blob[:-1])
    with pytest.raises(ValueError, match="truncated"):
        fm.read_idx(tmp_path / "short.idx")
    (tmp_path / "magic.idx").write_bytes(b"\x01\x02" + blob[2:])
    with pytest.raises(ValueError, match="magic number"):
        fm.read_idx(tmp_path / "magic.idx")
    (tmp_path / "float.idx").write_bytes(blob[:2] + b"\x0d" + blob[3:])
    with pytest.raises(ValueError, match="not supported"):
        fm.read_idx(tmp_path / "float.idx")
    (tmp_path / "cut.idx.gz").write_bytes(gzip.compress(blob)[:40])
    with pytest.raises(ValueError, match="cannot read"):
        fm.read_idx(tmp_path / "cut.idx.gz")


def test_torchvision_layout_and_plain_files(tmp_path: Path) -> None:
    labels = np.repeat(np.arange(10), 1000)
    images = write_split(tmp_path / "tv" / "FashionMNIST" / "raw", "test", labels)
    x, y = fm.load_fashion_mnist("test", tmp_path / "tv")
    assert x.dtype == torch.uint8 and x.shape == (10_000, 28, 28)
    assert y.dtype == torch.int64 and y.tolist() == labels.tolist()
    assert torch.equal(x, torch.from_numpy(images))
    # Uncompressed files directly in root read the same.
    write_split(tmp_path / "plain", "test", labels, gz=False)
    assert torch.equal(fm.load_fashion_mnist("test", tmp_path / "plain")[1], y)


def test_wrong_counts_histogram_and_missing_files_are_errors(tmp_path: Path) -> None:
    unbalanced = np.zeros(10_000, dtype=np.uint8)
    write_split(tmp_path / "unbalanced", "test", unbalanced)
    with pytest.raises(ValueError, match="histogram"):
        fm.load_fashion_mnist("test", tmp_path / "unbalanced")
    write_split(tmp_path / "short", "test", np.repeat(np.arange(10), 10))
    with pytest.raises(ValueError, match=r"expected \(10000, 28, 28\)"):
        fm.load_fashion_mnist("test", tmp_path / "short")
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        fm.load_fashion_mnist("test", tmp_path / "nothing-here")
    with pytest.raises(ValueError, match="unknown Fashion-MNIST split"):
        fm.load_fashion_mnist("validation", tmp_path)


@needs_data
def test_real_fashion_mnist_counts_and_balanced_histogram() -> None:
    for split, n in (("train", 60_000), ("test", 10_000)):
        x, y = fm.load_fashion_mnist(split)
        assert x.shape == (n, 28, 28) and x.dtype == torch.uint8
        assert torch.bincount(y, minlength=10).tolist() == [n // 10] * 10
        # Real photographs of clothes: dark background, full dynamic range, not constant.
        assert int(x.min()) == 0 and int(x.max()) == 255
        assert 0.2 < x.float().mean().item() / 255 < 0.4


@needs_data
def test_dataset_gives_float_images_in_unit_range() -> None:
    ds = fm.FashionMNIST("test", indices=[0, 5, 9999])
    assert len(ds) == 3
    img, label, index = ds[1]
    assert index == 5 and [ds[i][2] for i in range(3)] == [0, 5, 9999]  # the position in the split
    assert img.shape == (1, 28, 28) and img.dtype == torch.float32
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0
    x, y = fm.load_fashion_mnist("test")
    assert torch.equal(img, x[5].float().div(255).unsqueeze(0)) and label == y[5]
    with pytest.raises(TypeError, match="uint8"):
        fm.to_float_images(x.float())


@needs_data
def test_load_dataset_opens_fashion_mnist_by_name() -> None:
    from advlab.data import load_dataset

    test, train = load_dataset("fashion-mnist"), load_dataset("fashion-mnist:train")
    assert (len(test), len(train)) == (10_000, 60_000) and test.split == "test"
    img, _label, index = train[59_999]
    assert img.shape == (1, 28, 28) and index == 59_999
    with pytest.raises(ValueError, match="expected 'fashion-mnist', 'fashion-mnist:train'"):
        load_dataset("fashion-mnist:val")
