"""Hugging Face image classifiers (advlab.models.huggingface): a tiny randomly initialised ViT saved with
``save_pretrained`` into a temporary Hugging Face cache, loaded by name (offline) and by folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def _hub_server(folder: Path) -> tuple[Any, str]:
    """A Hugging Face Hub stand-in on 127.0.0.1 serving ``folder`` as every repo's ``resolve/<rev>/<file>``
    (with the X-Repo-Commit and ETag headers the hub client reads); anything else is 404."""
    import hashlib
    import http.server
    import threading

    class Hub(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _answer(self, body: bool) -> None:
            parts = self.path.split("?")[0].strip("/").split("/")
            file = folder.joinpath(*parts[4:]) if len(parts) >= 5 and parts[:2] == REPO.split("/") else None
            data = file.read_bytes() if file is not None and parts[2] == "resolve" and file.is_file() else None
            self.send_response(200 if data is not None else 404)
            self.send_header("X-Repo-Commit", REVISION)
            if data is not None:
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            else:
                self.send_header("X-Error-Code", "RepoNotFound" if file is None else "EntryNotFound")
            self.send_header("Content-Length", str(len(data or b"")))
            self.end_headers()
            if body and data:
                self.wfile.write(data)

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def test_downloaded_from_a_local_hub(hf_cache, tmp_path) -> None:
    """The download path, offline: ``HF_ENDPOINT`` (read when huggingface_hub is imported, hence a fresh
    process) points at a server on 127.0.0.1 holding the saved model; ``download=True`` fetches it into an
    empty cache and gives the saved model's logits; a repo the hub lacks is one clear error."""
    import os
    import subprocess
    import sys

    import advlab

    _, snapshot, net = hf_cache
    server, url = _hub_server(snapshot)
    script = (
        "import sys, torch\n"
        "from advlab.models import load_model\n"
        f"m = load_model('hf:{REPO}', download=True)\n"
        "x = torch.linspace(0, 1, 2 * 3 * 32 * 32).view(2, 3, 32, 32)\n"
        "with torch.no_grad():\n"
        "    torch.save({'logits': m(x), 'classes': m.class_names}, sys.argv[1])\n"
        "try:\n"
        "    load_model('hf:advlab-test/absent', download=True)\n"
        "except Exception as err:\n"
        "    print(type(err).__name__, err)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "ADVLAB_OFFLINE", "HF_HOME")}
    env |= {"HF_ENDPOINT": url, "HF_HUB_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(advlab.__file__).parents[1]), env.get("PYTHONPATH", "")])
    try:
        done = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / "out.pt")], env=env, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 0, done.stderr[-2000:]
    got = torch.load(tmp_path / "out.pt", weights_only=True)
    x = torch.linspace(0, 1, 2 * 3 * 32 * 32).view(2, 3, 32, 32)
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(got["logits"], net(pixel_values=(x - mean) / std).logits, atol=1e-5)
    assert got["classes"] == ["cat", "dog", "eel"]
    assert (tmp_path / "cache" / f"models--{REPO.replace('/', '--')}" / "snapshots" / REVISION).is_dir()
    lines = done.stdout.strip().splitlines()
    assert lines[-1].startswith("WeightsNotFoundError hf:advlab-test/absent: cannot load it from the Hugging Face Hub")
