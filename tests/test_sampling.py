"""``--sample N``: a seeded random sample, stratified by class, and said plainly (vs ``--limit N``: the first N)."""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from advlab.cli import main
from advlab.data import sample_dataset, stratified_indices
from advlab.errors import UsageError

FASHION = Path(os.environ.get("ADVLAB_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
needs_fashion = pytest.mark.skipif(not any(FASHION.glob("t10k-images-idx3-ubyte*")), reason="Fashion-MNIST missing")
pytestmark = pytest.mark.usefixtures("one_thread")


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 6), min_size=1, max_size=300).flatmap(
        lambda labels: st.tuples(st.just(labels), st.integers(1, len(labels)), st.integers(0, 2**31))
    )
)
def test_each_class_gets_its_share_up_to_one_item(case):
    labels, n, seed = case
    chosen = stratified_indices(labels, n, seed)
    assert len(chosen) == len(set(chosen)) == n and chosen == sorted(chosen)
    got, sizes = Counter(labels[i] for i in chosen), Counter(labels)
    for c, size in sizes.items():
        share = n * size / len(labels)
        assert math.floor(share) <= got[c] <= math.ceil(share)
    assert stratified_indices(labels, n, seed) == chosen  # the seed decides the sample


def test_seeds_draw_different_samples_and_bad_sizes_are_refused():
    labels = [i // 5 for i in range(150)]  # 30 classes x 5, in class order like an ImageNet folder
    a, b = stratified_indices(labels, 48, 0), stratified_indices(labels, 48, 1)
    assert a != b and len({labels[i] for i in a}) == 30  # every class, not the 10 lowest as the first 48 would be
    for n in (0, 151):
        with pytest.raises(UsageError, match=r"--sample takes 1\.\.150"):
            stratified_indices(labels, n, 0)


class Unlabelled:
    def __len__(self) -> int:
        return 20

    def __getitem__(self, i: int):
        return i


def test_data_without_labels_gets_a_uniform_sample_and_says_so():
    ds = sample_dataset(Unlabelled(), 5, seed=3)
    assert len(ds) == 5 and "not stratified" in ds.how and "seed 3" in ds.how
    assert [ds[i] for i in range(5)] == ds.indices


@needs_fashion
def test_cli_sample_is_stratified_recorded_and_exclusive_with_limit(tmp_path, capsys):
    from safetensors.torch import save_file

    from advlab.models import load_model

    model = load_model("mnist_cnn_small", pretrained=False)
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    base = ["eval", "--model", "mnist_cnn_small", "--weights", str(weights), "--data", "fashion-mnist"]
    base += ["--attack", "fgsm", "--eps", "0.1", "--batch-size", "10", "--quiet"]
    code = main([*base, "--sample", "20", "--out", str(tmp_path / "run")])
    _, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads((tmp_path / "run" / "summary.json").read_text())["data"]
    assert data["sample"] == 20 and len(data["sample_indices"]) == 20
    assert "stratified by class: 2-2 per class from 10 of 10 classes" in data["provenance"]
    assert main([*base, "--limit", "10", "--out", str(tmp_path / "first")]) == 0
    first = json.loads((tmp_path / "first" / "summary.json").read_text())["data"]
    assert first["provenance"].endswith("; the first 10 in the data's order (--limit)") and "sample" not in first
    code = main([*base, "--sample", "20", "--limit", "5", "--out", str(tmp_path / "both")])
    _, err = capsys.readouterr()
    assert code == 2 and "either --limit N (the first N samples) or --sample N" in err
