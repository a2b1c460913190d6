"""Users' own models at their own input size (advlab.models.user): TorchScript, state dict + factory, ONNX.

One small 1x28x28 CNN is trained here on a few hundred Fashion-MNIST images and saved in each format, next to a
folder of grey PNGs with a labels CSV (what a new user has); ``advlab eval`` on each must give the per-sample
records the Python model gives through the Python API.
"""

from __future__ import annotations

import json
import os
import re
import textwrap
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from advlab.cli import main
from advlab.errors import UsageError
from advlab.models import ImageClassifier, load_model

FASHION = Path(os.environ.get("ADVLAB_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(
        not any(FASHION.glob("t10k-images-idx3-ubyte*")), reason="Fashion-MNIST is missing (dataset-fashion-mnist)"
    ),
]

NET_SOURCE = textwrap.dedent(
    """
    from torch import nn

    class Net(nn.Sequential):
        def __init__(self):
            super().__init__(
                nn.Conv2d(1, 8, 5, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 5, stride=2), nn.ReLU(),
                nn.Flatten(), nn.Linear(16 * 4 * 4, 10),
            )

    def make_model():
        return Net()

    def broken():
        raise RuntimeError("no weights here")

    def not_a_module():
        return 42

    def wrong_output():
        return nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(start_dim=2))
    """
)
N_IMAGES = 12
EPS = ["0.01", "0.1"]


@pytest.fixture(scope="module")
def lenet(tmp_path_factory) -> SimpleNamespace:
    """The trained net saved as TorchScript, state dict (+ its .py file) and ONNX, and 12 grey PNGs + labels.csv."""
    from advlab.data import load_fashion_mnist

    root = tmp_path_factory.mktemp("lenet")
    (root / "net.py").write_text(NET_SOURCE)
    namespace: dict = {}
    exec(compile(NET_SOURCE, str(root / "net.py"), "exec"), namespace)
    images, labels = load_fashion_mnist("test")
    x = images[:400].float().div(255).unsqueeze(1)
    y = labels[:400]
    torch.manual_seed(0)
    net = namespace["make_model"]()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(8):
        for i in range(0, 400, 50):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[i : i + 50]), y[i : i + 50]).backward()
            opt.step()
    net.eval()
    torch.jit.save(torch.jit.script(net), str(root / "lenet.pt"))
    torch.save(net.state_dict(), root / "state.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net, (torch.zeros(1, 1, 28, 28),), str(root / "lenet.onnx"), dynamo=False, dynamic_axes={"input": {0: "n"}},
            input_names=["input"],
        )  # fmt: skip
    digits = root / "digits"
    digits.mkdir()
    rows = ["file,class_index"]
    for k in range(N_IMAGES):
        Image.fromarray(images[1000 + k].numpy(), mode="L").save(digits / f"{k:02d}.png")
        rows.append(f"{k:02d}.png,{int(labels[1000 + k])}")
    (digits / "labels.csv").write_text("\n".join(rows) + "\n")
    return SimpleNamespace(root=root, net=net, csv=digits / "labels.csv")


def _records(run_dir: Path) -> dict[tuple[str, int], tuple]:
    """Per attack and sample: clean and adversarial top-5, success, and the L2 and Linf of the perturbation
    (rounded to 4 digits: the ONNX conversion may differ from eager PyTorch in float rounding)."""
    out = {}
    for f in sorted((run_dir / "records").rglob("*.jsonl")):
        for line in f.read_text().splitlines():
            r = json.loads(line)
            if "index" not in r:  # the file's end-of-batch line
                continue
            norms = (round(r["l2"], 4), round(r["linf"], 4))
            out[(f.parent.name, int(r["index"]))] = (r["clean_top5"], r["adv_top5"], r["success"], norms)
    return out


@pytest.fixture(scope="module")
def python_records(lenet, tmp_path_factory) -> dict:
    """The Python API's records for the trained net wrapped with ImageClassifier's defaults (no normalisation)."""
    from advlab.data import load_dataset
    from advlab.evaluate import suite_specs

    model = ImageClassifier(lenet.net, input_size=(1, 28, 28))
    assert model.class_names == [str(i) for i in range(10)]  # counted by one forward pass
    dataset = load_dataset(lenet.csv, transform=model.preprocess)
    out = tmp_path_factory.mktemp("py") / "run"
    from advlab.evaluate import evaluate

    evaluate(model, dataset, suite_specs("fast", EPS), out=out, batch_size=16, seed=0, quiet=True)
    records = _records(out)
    assert len(records) == 2 * N_IMAGES
    successes = [r[2] for r in records.values()]
    assert any(successes) and not all(successes)  # a comparison that can tell models apart
    return records
    return records


@pytest.mark.parametrize("form", ["torchscript", "factory+weights", "onnx"])
def test_cli_evaluates_user_model_at_its_own_size(form, lenet, python_records, tmp_path, capsys) -> None:
    if form == "onnx":
        pytest.importorskip("onnx2torch")
    model_args = {
        "torchscript": ["--model", str(lenet.root / "lenet.pt")],
        "factory+weights": ["--model", f"{lenet.root / 'net.py'}:Net", "--weights", str(lenet.root / "state.pt")],
        "onnx": ["--model", str(lenet.root / "lenet.onnx")],
    }[form]
    out = tmp_path / "run"
    data = str(lenet.csv.parent) if form == "torchscript" else str(lenet.csv)  # the folder holding labels.csv
    argv = ["eval", *model_args, "--data", data, "--suite", "fast", "--eps", *EPS]
    code = main([*argv, "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["input_size"] == [1, 28, 28]
    assert _records(out) == python_records


def test_factory_forms_and_inferred_size(lenet, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(lenet.root))
    by_module = load_model("net:make_model", weights=lenet.root / "state.pt", data_size=(1, 28, 28))
    by_file = load_model(f"{lenet.root / 'net.py'}:make_model", weights=lenet.root / "state.pt", data_size=(3, 28, 28))
    # Colour-decoded data of a grey model: the one-channel fallback, found by a forward pass.
    assert by_module.input_size == by_file.input_size == (1, 28, 28)
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(by_module(x), lenet.net(x)) and torch.equal(by_file(x), lenet.net(x))
    stated = load_model(str(lenet.root / "lenet.pt"), input_size=(1, 28, 28), mean=(0.5,), std=(0.5,))
    with torch.no_grad():
        assert torch.allclose(stated(x), lenet.net((x - 0.5) / 0.5), atol=1e-6)


def test_image_classifier_defaults(lenet) -> None:
    model = ImageClassifier(lenet.net, mean=(0.5,), std=(0.25,), input_size=(1, 28, 28))
    assert model.num_classes == 10 and model.config["mean"] == [0.5]
    with pytest.raises(UsageError, match=r"does not take input \(1, 224, 224\)"):
        ImageClassifier(lenet.net, mean=(0.5,), std=(0.25,))


@pytest.mark.parametrize(
    ("model", "extra", "message"),
    [
        ("net.py:broken", [], "broken\\(\\) raised RuntimeError: no weights here"),
        ("net.py:not_a_module", [], "returned int, expected a torch.nn.Module"),
        ("net.py:absent", [], "has no callable 'absent'"),
        ("net.py:wrong_output", [], "must return logits of shape \\(N, classes\\)"),
        ("lenet.pt", ["--input-size", "1x32x32"], "does not take input 1x32x32 \\(the data's images are 1x28x28\\)"),
        ("lenet.pt", ["--input-size", "28x28"], "input size must be CxHxW"),
        ("net.py:Net", ["--weights", "truncated.pt"], "cannot be loaded with torch.load"),
        ("net.py:Net", ["--weights", "truncated.safetensors"], "not a readable safetensors file"),
        ("state.pt", [], "not a TorchScript file"),
        ("not_onnx.onnx", [], "not a readable ONNX file"),
    ],
)
def test_bad_user_models_are_one_line(model, extra, message, lenet, tmp_path, capsys) -> None:
    (lenet.root / "truncated.pt").write_bytes((lenet.root / "state.pt").read_bytes()[:300])
    (lenet.root / "truncated.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    (lenet.root / "not_onnx.onnx").write_bytes(b"not a protobuf at all")
    if model.endswith(".onnx"):
        pytest.importorskip("onnx2torch")
    extra = [str(lenet.root / e) if e.startswith("truncated") else e for e in extra]
    out = tmp_path / "run"
    argv = ["eval", "--model", str(lenet.root / model), "--data", str(lenet.csv), "--suite", "fast", "--eps", "0.1"]
    code = main([*argv, *extra, "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert __import__("re").search(message, err), err
    assert not out.exists()


def test_data_that_does_not_fit_the_model(lenet, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    argv = ["eval", "--model", str(lenet.root / "lenet.pt"), "--data", str(lenet.csv), "--input-size", "1x28x28"]
    code = main([*argv, "--crop", "20", "--suite", "fast", "--eps", "0.1", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "takes 1x28x28 images but data" in err and "gives 1x20x20" in err, err
    assert not out.exists()


def test_trained_run_checkpoint_opens_by_itself(tmp_path, capsys) -> None:
    """``--weights best.safetensors`` alone: the architecture advlab train recorded in its metadata."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = load_model("mnist_cnn_small", pretrained=False).backbone
    path = tmp_path / "best.safetensors"
    save_file(
        {k: v.contiguous() for k, v in net.state_dict().items()},
        str(path),
        metadata={"architecture": "mnist_cnn_small"},
    )
    model = load_model(weights=path)
    assert model.name == "mnist_cnn_small" and model.input_size == (1, 28, 28)
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), net(x))
    out = tmp_path / "run"
    argv = ["eval", "--weights", str(path), "--data", "fashion-mnist", "--limit", "2", "--attack", "fgsm"]
    assert main([*argv, "--eps", "0.1", "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "summary.json").read_text())["model"]["name"] == "mnist_cnn_small"


@pytest.mark.parametrize("recorded", ["factory file", "os:getpid", "resnet18"])
def test_a_checkpoints_recorded_name_never_runs_code_or_picks_another_source(tmp_path, recorded: str) -> None:
    # Review (session 20): the architecture a received file's metadata names chose the model; a FILE.py:FACTORY or
    # module:callable there was imported and called though the user never named it.
    from safetensors.torch import save_file

    marker = tmp_path / "ran"
    if recorded == "factory file":
        code = tmp_path / "evil.py"
        code.write_text(f"import pathlib\ndef make():\n    pathlib.Path({str(marker)!r}).write_text('x')\n")
        recorded = f"{code}:make"
    net = load_model("mnist_cnn_small", pretrained=False).backbone
    path = tmp_path / "received.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path), metadata={"architecture": recorded})
    with pytest.raises(UsageError, match=re.escape(f"names the model {recorded!r} in its metadata")):
        load_model(weights=path)
    assert not marker.exists()


def test_onnx_graph_that_does_not_convert(tmp_path) -> None:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnx2torch")
    from onnx import TensorProto, helper

    node = helper.make_node("NoSuchOperator", ["x"], ["y"], domain="advlab.test")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 28, 28])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
    )
    path = tmp_path / "custom.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(UsageError, match="onnx2torch cannot convert this graph"):
        load_model(str(path))


def test_grey_png_is_read_back_exactly(lenet) -> None:
    """The grey fallback path (RGB decode, then ITU-R 601 luma) returns the stored grey levels unchanged."""
    from advlab.data import make_transform, read_image

    png = sorted(lenet.csv.parent.glob("*.png"))[0]
    stored = np.asarray(Image.open(png), dtype=np.float32) / 255
    got = make_transform(resize_size=28, crop_size=28, channels=1)(read_image(png))
    assert torch.equal(got[0], torch.from_numpy(stored))


def test_preprocessing_keys_in_attacks_toml(lenet, tmp_path, capsys) -> None:
    config = tmp_path / "attacks.toml"
    config.write_text(
        f'model = "{lenet.root / "lenet.pt"}"\ndata = "{lenet.csv}"\nsuite = "fast"\n'
        "input_size = [1, 28, 28]\nmean = [0.5]\nstd = 0.5\nresize = 28\ncrop = 28\nlimit = 4\n"
    )
    out = tmp_path / "run"
    assert main(["eval", "--config", str(config), "--eps", "0.1", "--out", str(out), "--quiet"]) == 0
    model = json.loads((out / "summary.json").read_text())["model"]
    assert model["input_size"] == [1, 28, 28] and model["mean"] == [0.5] and model["std"] == [0.5]
    assert model["resize_size"] == 28 and model["crop_size"] == 28


def test_fine_tuned_zoo_architecture_at_cifar_size(tmp_path, capsys) -> None:
    """A torchvision resnet18 fine-tuned to 10 classes: the class count from the state dict's head, and data
    already at the stated --input-size passes unresized."""
    import numpy as np
    import torchvision

    from tests.test_cifar import write_cifar

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    path = tmp_path / "ft.pt"
    torch.save(net.state_dict(), path)
    model = load_model("resnet18", weights=path, input_size=(3, 32, 32), data_size=(3, 32, 32))
    assert model.num_classes == 10 and model.resize_size == 32 and model.crop_size == 32
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        mean, std = model.mean, model.std
        assert torch.allclose(model(x), net((x - mean) / std), atol=1e-5)
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    write_cifar(tmp_path, "cifar10", "python", {"train": (images, np.arange(2)), "test": (images, np.arange(2))})
    out = tmp_path / "run"
    argv = ["eval", "--model", "resnet18", "--weights", str(path), "--input-size", "3x32x32", "--data", "cifar10"]
    argv += ["--data-root", str(tmp_path), "--attack", "fgsm", "--eps", "8/255", "--out", str(out), "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())["model"]
    assert summary["num_classes"] == 10 and summary["resize_size"] == 32 and summary["input_size"] == [3, 32, 32]
