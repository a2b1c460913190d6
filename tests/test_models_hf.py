"""Hugging Face image classifiers (advlab.models.huggingface): a tiny randomly initialised ViT saved with
``save_pretrained`` into a temporary Hugging Face cache, loaded by name (offline) and by folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from advlab.cli import main
from advlab.models import load_model
from tests.test_cifar import write_cifar

transformers = pytest.importorskip("transformers", reason="transformers is not installed (advlab[hf])")
pytestmark = pytest.mark.usefixtures("one_thread")
REPO = "advlab-test/tiny-vit"
REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory) -> tuple[Path, Path, torch.nn.Module]:
    """HF cache layout models--ORG--NAME/{refs/main, snapshots/<rev>/} holding the model and its processor."""
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, num_labels=3, id2label={0: "cat", 1: "dog", 2: "eel"},
    )  # fmt: skip
    net = transformers.ViTForImageClassification(config).eval()
    cache = tmp_path_factory.mktemp("hf")
    repo_dir = cache / f"models--{REPO.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / REVISION
    net.save_pretrained(snapshot)
    processor = transformers.ViTImageProcessor(
        size={"height": 32, "width": 32}, image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3], resample=3
    )
    processor.save_pretrained(snapshot)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(REVISION)
    return cache, snapshot, net


def test_preprocessing_and_logits_from_the_processor(hf_cache) -> None:
    _, snapshot, net = hf_cache
    model = load_model(f"hf:{snapshot}", download=False)
    assert model.input_size == (3, 32, 32) and model.class_names == ["cat", "dog", "eel"]
    assert model.config["mean"] == pytest.approx([0.5, 0.4, 0.3]) and model.interpolation == "bicubic"
    x = torch.rand(2, 3, 32, 32)
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(model(x), net(pixel_values=(x - mean) / std).logits, atol=1e-5)
    x.requires_grad_(True)
    model(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_loaded_by_name_from_the_cache_in_the_cli(hf_cache, tmp_path, monkeypatch, capsys) -> None:
    from huggingface_hub import constants

    cache = hf_cache[0]
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # what $HF_HUB_CACHE sets when the process starts
    monkeypatch.setenv("ADVLAB_OFFLINE", "1")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    write_cifar(tmp_path, "cifar10", "binary", {"train": (images, np.zeros(2, int)), "test": (images, np.ones(2, int))})
    out = tmp_path / "run"
    argv = ["eval", "--model", f"hf:{REPO}", "--data", "cifar10", "--data-root", str(tmp_path), "--attack", "fgsm"]
    argv += ["--eps", "8/255", "--out", str(out), "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err
    model = json.loads((out / "summary.json").read_text())["model"]
    assert model["name"] == f"hf:{REPO}" and model["num_classes"] == 3 and model["resize_size"] == 32
    capsys.readouterr()
    bad = [a if a != f"hf:{REPO}" else "hf:advlab-test/absent" for a in argv]
    assert main([*bad[:-2], str(tmp_path / "bad"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("advlab: error: hf:advlab-test/absent: cannot load it from the local") and err.count("\n") == 1
    )
    assert not (tmp_path / "bad").exists()
