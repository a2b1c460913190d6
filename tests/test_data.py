"""advlab.data: ImageNet folders and label files, image conversion, corrupt files, the 30x5 selection, the
default sample."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch import nn

from advlab.data import (
    ImageNetFolder,
    LabelledImages,
    default_sample,
    farthest_point_classes,
    imagenet_classes,
    iter_batches,
    load_dataset,
    make_transform,
    select_subset,
    to_rgb,
    transform_for,
)
from advlab.models import ImageClassifier
from tests.conftest import IMAGENET_30x5
from tests.models_data_helpers import default_model, require_shared_set, shared_set, shared_set_logits

TENCH, GOLDFISH, TOILET_TISSUE = "n01440764", "n01443537", "n15075141"


def _photo(path: Path, seed: int, size: tuple[int, int] = (40, 30), mode: str = "RGB") -> None:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).convert(mode).save(path)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "val"
    _photo(root / TOILET_TISSUE / "b.png", 0)
    _photo(root / TOILET_TISSUE / "a.jpg", 1)
    _photo(root / TENCH / "x.JPEG", 2)
    (root / TENCH / "notes.txt").write_text("not an image")
    return root


# ---------------------------------------------------------------------------------- class table


def test_class_table_matches_torchvision_and_timm() -> None:
    import timm.data
    from torchvision.models import ResNet50_Weights

    table = imagenet_classes()
    assert len(table.wnids) == 1000 and list(table.wnids) == sorted(table.wnids)
    assert list(table.wnids) == list(timm.data.ImageNetInfo().label_names())
    assert list(table.names) == list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    assert table.index_of(TENCH) == 0 and table.index_of(TOILET_TISSUE) == 999


def test_class_table_matches_shared_labels_file() -> None:
    require_shared_set()
    table = imagenet_classes()
    with (IMAGENET_30x5 / "labels.csv").open() as fh:
        for row in csv.DictReader(fh):
            i = int(row["class_index"])
            assert (table.wnids[i], table.names[i]) == (row["synset"], row["class_name"])


# ---------------------------------------------------------------------------------- datasets


def test_folder_maps_wnids_to_imagenet_indices(folder: Path) -> None:
    ds = ImageNetFolder(folder)
    assert len(ds) == 3  # notes.txt is not an image
    assert [p.name for p in ds.paths] == ["x.JPEG", "a.jpg", "b.png"]
    assert ds.labels.tolist() == [0, 999, 999]
    x, y, i = ds[1]
    assert (y, i) == (999, 1)
    assert x.shape == (3, 30, 40) and x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
    assert ds.class_names[999] == "toilet tissue"


def test_folder_order_is_not_the_class_index() -> None:
    """The shared set's 30 folders get their ImageNet indices from labels.csv, not 0..29."""
    require_shared_set()
    ds = ImageNetFolder(IMAGENET_30x5)
    with (IMAGENET_30x5 / "labels.csv").open() as fh:
        expected = {row["file"]: int(row["class_index"]) for row in csv.DictReader(fh)}
    got = {f"{p.parent.name}/{p.name}": int(y) for p, y in zip(ds.paths, ds.labels, strict=True)}
    assert got == expected


def test_labels_file_form(folder: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text(f"file,class_index,comment\n{TENCH}/x.JPEG,0,fish\n{TOILET_TISSUE}/a.jpg,999,\n")
    ds = LabelledImages(labels, root=folder, transform=make_transform(resize_size=16, crop_size=16))
    assert len(ds) == 2 and ds.labels.tolist() == [0, 999]
    x, y, i = ds[0]
    assert x.shape == (3, 16, 16) and (y, i) == (0, 0)


def test_labels_file_errors_before_any_work(folder: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text(f"file,class_index\n{TENCH}/x.JPEG,0\n{TENCH}/gone.jpg,0\nalso_gone.png,1\n")
    with pytest.raises(FileNotFoundError, match=r"2 listed file\(s\) not found.*gone\.jpg, also_gone\.png"):
        LabelledImages(labels, root=folder)
    labels.write_text(f"file,class_index\n{TENCH}/x.JPEG,1000\n")
    with pytest.raises(ValueError, match=r"labels\.csv:2: class_index 1000 is outside 0\.\.999"):
        LabelledImages(labels, root=folder)
    labels.write_text(f"file,class_index\n{TENCH}/x.JPEG,3\n")
    with pytest.raises(ValueError, match=r"outside 0\.\.1"):
        LabelledImages(labels, root=folder, num_classes=2)
    labels.write_text(f"file,class_index\n{TENCH}/x.JPEG,tench\n")
    with pytest.raises(ValueError, match="not an integer"):
        LabelledImages(labels, root=folder)
    labels.write_text(f"path,label\n{TENCH}/x.JPEG,0\n")
    with pytest.raises(ValueError, match="file,class_index"):
        LabelledImages(labels, root=folder)
    labels.write_text("file,class_index\n")
    with pytest.raises(ValueError, match="lists no images"):
        LabelledImages(labels, root=folder)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LabelledImages(tmp_path / "absent.csv")


def test_folder_errors_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageNetFolder(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class folders"):
        ImageNetFolder(tmp_path / "empty")
    (tmp_path / "noimg" / TENCH).mkdir(parents=True)
    with pytest.raises(ValueError, match="no image files"):
        ImageNetFolder(tmp_path / "noimg")
    _photo(tmp_path / "named" / "cats" / "a.png", 0)
    _photo(tmp_path / "named" / TENCH / "a.png", 0)
    with pytest.raises(ValueError, match=r"1 folder\(s\) are not ImageNet-1k wnids \(cats\)"):
        ImageNetFolder(tmp_path / "named")


def test_load_dataset_dispatch(folder: Path, tmp_path: Path) -> None:
    assert isinstance(load_dataset(folder), ImageNetFolder)
    labels = tmp_path / "l.csv"
    labels.write_text(f"file,class_index\nval/{TENCH}/x.JPEG,0\n")
    assert isinstance(load_dataset(labels), LabelledImages)
    assert len(load_dataset("default")) == 20
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset(tmp_path / "nowhere")


# ------------------------------------------------------------------------------- image modes


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16", "1"])
def test_modes_become_rgb(tmp_path: Path, mode: str) -> None:
    rgb = Image.new("RGB", (4, 3), (200, 100, 50))
    if mode == "I;16":
        img = Image.fromarray(np.full((3, 4), 65535 // 2, dtype=np.uint16))
    elif mode == "P":
        img = rgb.convert("P")
        img.info["transparency"] = 0
    else:
        img = rgb.convert(mode)
    suffix = ".jpg" if mode == "CMYK" else ".png"
    path = tmp_path / TENCH / f"img{suffix}"
    path.parent.mkdir()
    img.save(path)
    x, _, _ = ImageNetFolder(tmp_path)[0]
    assert x.shape == (3, 3, 4)
    if mode in ("RGBA", "P"):  # P: PIL's web palette has steps of 51 grey levels
        tol = 6 / 255 if mode == "P" else 1e-6
        assert torch.allclose(x[:, 0, 0], torch.tensor([200, 100, 50]) / 255, atol=tol)
    elif mode in ("L", "LA"):
        grey = Image.new("RGB", (1, 1), (200, 100, 50)).convert("L").getpixel((0, 0))
        assert torch.allclose(x[:, 0, 0], torch.full((3,), grey / 255), atol=1 / 255)
    elif mode == "I;16":
        assert torch.allclose(x, torch.full_like(x, 127 / 255), atol=1 / 255)  # rescaled, not clipped to 255
    elif mode == "CMYK":
        assert torch.allclose(x[:, 0, 0], torch.tensor([200, 100, 50]) / 255, atol=12 / 255)  # JPEG loss


def test_a_dark_16_bit_image_is_scaled_from_its_full_range() -> None:
    # Review (session 20): the scale was chosen by the image's own maximum, so a 16-bit image whose pixels stay
    # below 256 was read as 8-bit: 200/65535 came out as 200/255, 250 times too bright.
    arr = np.full((3, 4), 200, dtype=np.uint16)
    img = Image.fromarray(arr)
    if not img.mode.startswith("I;16"):
        img = Image.fromarray(arr, mode="I;16")
    rgb = np.asarray(to_rgb(img))
    assert img.mode.startswith("I;16") and int(rgb.max()) == round(200 * 255 / 65535)


def test_to_rgb_keeps_rgb_object() -> None:
    img = Image.new("RGB", (2, 2))
    assert to_rgb(img) is img


# ----------------------------------------------------------------------------- corrupt files


def test_corrupt_images_are_skipped_warned_and_counted(folder: Path) -> None:
    good = folder / TENCH / "x.JPEG"
    truncated = folder / TENCH / "y_truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    garbage = folder / GOLDFISH / "z.png"
    garbage.parent.mkdir()
    garbage.write_bytes(b"\x89PNG not really")
    ds = ImageNetFolder(folder, transform=make_transform(resize_size=8, crop_size=8))
    assert len(ds) == 5
    with pytest.warns(RuntimeWarning) as record:
        batches = list(iter_batches(ds, batch_size=2))
    messages = [str(w.message) for w in record if "skipping unreadable image" in str(w.message)]
    assert len(messages) == 2
    assert any(str(truncated) in m for m in messages) and any(str(garbage) in m for m in messages)
    seen = torch.cat([idx for _, _, idx in batches]).tolist()
    assert sorted(seen) == [i for i, p in enumerate(ds.paths) if p not in (truncated, garbage)]
    assert {p for p, _ in ds.skipped} == {str(truncated), str(garbage)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second pass must not warn again nor double-count
        list(iter_batches(ds, batch_size=2))
    assert len(ds.skipped) == 2


# ------------------------------------------------------------------------------- transforms


def test_transform_for_model() -> None:
    model = default_model()
    img = Image.new("RGB", (500, 375), (255, 0, 0))
    x = transform_for(model)(img)
    assert x.shape == (3, 224, 224)
    assert torch.allclose(x[:, 100, 100], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.equal(model.preprocess(img), x)
    with pytest.raises(TypeError, match="ImageClassifier"):
        transform_for(nn.Linear(2, 2))
    grey = make_transform(resize_size=28, crop_size=28, channels=1)(img)
    assert grey.shape == (1, 28, 28)


# --------------------------------------------------------------------------- default sample


def test_default_sample_is_labelled_imagenet() -> None:
    model = default_model()
    ds = default_sample(transform_for(model))
    assert len(ds) == 20 and "foolbox" in ds.provenance
    names = [p.name for p in ds.paths]
    assert names[0].startswith("imagenet_00_") and names[-1].startswith("imagenet_19_")
    assert ds.labels.tolist() == [int(n.rsplit("_", 1)[1].split(".")[0]) for n in names]
    (x, y, _), *_ = list(iter_batches(ds, batch_size=20))
    with torch.inference_mode():
        accuracy = (model(x).argmax(dim=1) == y).float().mean().item()
    assert accuracy >= 0.8  # real, correctly labelled photos (measured 0.90)


# ------------------------------------------------------------------------------ select_subset


def test_select_subset_on_shared_set_keeps_exactly_the_correct_images() -> None:
    require_shared_set()
    model, ds = default_model(), shared_set()
    logits, labels = shared_set_logits()
    pred = logits.argmax(dim=1)
    sub = select_subset(model, ds, classes=30, per_class=5, seed=0, predictions=pred)
    assert sorted(sub.indices) == torch.nonzero(pred == labels).flatten().tolist()
    assert sorted(sub.classes) == sorted(set(labels.tolist()))
    again = select_subset(model, ds, classes=30, per_class=5, seed=1, predictions=pred)
    assert again.indices == sub.indices  # only one way to choose 30 of 30 classes
    _, y, i = sub[0]
    assert i == sub.indices[0] and y == labels[i]


class _Points(torch.utils.data.Dataset):
    """Images whose pixels are 2-D points: a tiny labelled dataset for select_subset."""

    def __init__(self, points: torch.Tensor, labels: torch.Tensor) -> None:
        self.points = points
        self.labels = labels
        self.class_names = [str(i) for i in range(6)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        return self.points[i].view(2, 1, 1), int(self.labels[i]), i


def _linear_model(rows: torch.Tensor) -> ImageClassifier:
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(2, len(rows), bias=False))
    with torch.no_grad():
        backbone[1].weight.copy_(rows)
    return ImageClassifier(backbone, mean=(0, 0), std=(1, 1), input_size=(2, 1, 1), class_names=list("abcdef"))


def test_select_subset_farthest_point_and_quota() -> None:
    """Six classes on the unit circle: 0/1/2 close together near 0 degrees, 3 at 90, 4 at 180, 5 at 270.
    Class 5's images are all misclassified; class 4 has only two correct images."""
    angles = torch.tensor([0.0, 10.0, 20.0, 90.0, 180.0, 270.0]) * torch.pi / 180
    rows = torch.stack([angles.cos(), angles.sin()], dim=1)
    model = _linear_model(rows)
    labels = torch.arange(6).repeat_interleave(4)
    points = rows[labels].clone()
    points[labels == 5] = rows[3]  # predicted as class 3: wrong
    points[torch.nonzero(labels == 4).flatten()[:2]] = rows[0]  # two of class 4 wrong
    ds = _Points(points, labels)

    sub = select_subset(model, ds, classes=3, per_class=3, seed=0)
    assert len(sub.classes) == 3 and 5 not in sub.classes
    assert 4 not in sub.classes  # full-quota classes first: 4 has only 2 correct images
    assert 3 in sub.classes and len({0, 1, 2} & set(sub.classes)) == 2  # spread: one far class, the ends of 0..2
    for c in sub.classes:
        picked = [i for i in sub.indices if labels[i] == c]
        assert len(picked) == 3
    assert all(labels[i] != 5 for i in sub.indices)
    assert select_subset(model, ds, classes=3, per_class=3, seed=0).indices == sub.indices

    four = select_subset(model, ds, classes=5, per_class=3, seed=0)
    assert sorted(four.classes) == [0, 1, 2, 3, 4]
    assert sum(labels[i] == 4 for i in four.indices) == 2  # a short class keeps what it has
    with pytest.raises(ValueError, match="only 5 classes have a correctly classified image"):
        select_subset(model, ds, classes=6, per_class=3)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 12),
    k=st.integers(1, 12),
    dim=st.integers(2, 6),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_farthest_point_invariants(n: int, k: int, dim: int, seed: int, data: st.DataObject) -> None:
    k = min(k, n)
    vectors = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))
    priority = data.draw(st.lists(st.integers(1, 3), min_size=n, max_size=n))
    candidates = list(range(n))
    chosen = farthest_point_classes(vectors, candidates, priority, k, np.random.default_rng(seed))
    assert len(chosen) == k == len(set(chosen))
    prios = [priority[c] for c in chosen]
    assert prios == sorted(prios, reverse=True)  # higher priority tiers are exhausted first
    assert prios[0] == max(priority)
    unit = torch.nn.functional.normalize(vectors.double(), dim=1)
    dist = 1 - unit @ unit.T
    for step in range(1, k):
        picked, rest = chosen[:step], [c for c in candidates if c not in chosen[:step]]
        same_tier = [c for c in rest if priority[c] == priority[chosen[step]]]
        gap = {c: dist[c, picked].min().item() for c in same_tier}
        assert gap[chosen[step]] >= max(gap.values()) - 1e-9  # the farthest remaining point of its tier
    again = farthest_point_classes(vectors, candidates, priority, k, np.random.default_rng(seed))
    assert again == chosen


class _HeldOut(_Points):
    """The same points, but each item reports the index it had in a larger set (a held-out split's, a sample's)."""

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        x, y, _ = super().__getitem__(i)
        return x, y, 9000 + 7 * i


def test_select_subset_reads_labels_and_images_by_position_not_by_the_index_items_report() -> None:
    # Review (session 20): the index an item reports was used as its position, so a held-out split raised
    # IndexError and a reordered one picked misclassified images.
    angles = torch.tensor([0.0, 10.0, 20.0, 90.0, 180.0, 270.0]) * torch.pi / 180
    rows = torch.stack([angles.cos(), angles.sin()], dim=1)
    model = _linear_model(rows)
    labels = torch.arange(6).repeat_interleave(4).flip(0)  # reversed: positions and natural order disagree
    points = rows[labels].clone()
    points[labels == 5] = rows[3]  # misclassified
    ds = _HeldOut(points, labels)
    sub = select_subset(model, ds, classes=3, per_class=2, seed=0)
    assert all(0 <= i < len(ds) for i in sub.indices)  # positions
    assert sub.indices == select_subset(model, _Points(points, labels), classes=3, per_class=2, seed=0).indices
    with torch.no_grad():
        for j in range(len(sub)):
            x, y, reported = sub[j]
            assert int(model(x[None]).argmax()) == y and reported == 9000 + 7 * sub.indices[j]
