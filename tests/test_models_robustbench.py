"""RobustBench models (advlab.models.robustbench): a real architecture from the robustbench package with random
weights saved in RobustBench's model directory layout; loading, normalisation, one attack step, the published
number next to advlab's, and the bad names."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from advlab.attacks import fgsm
from advlab.cli import main
from advlab.errors import UsageError
from advlab.models import load_model, published_result
from tests.test_cifar import write_cifar

pytest.importorskip("robustbench.model_zoo.models", reason="robustbench is not installed (docs/models_data.md)")
pytestmark = pytest.mark.usefixtures("one_thread")
NAME = "robustbench:cifar10/Linf/Wong2020Fast"  # PreActResNet-18: the smallest single CIFAR-10 Linf entry


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """MODEL_DIR/cifar10/Linf/Wong2020Fast.pt holding {"state_dict": {"module.<key>": ...}}, as RobustBench's."""
    from advlab.models.robustbench import zoo_entry

    torch.manual_seed(0)
    net = zoo_entry("cifar10", "Linf", "Wong2020Fast")["model"]().eval()
    root = tmp_path_factory.mktemp("models")
    path = root / "cifar10" / "Linf" / "Wong2020Fast.pt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    return root, net, path


def test_loads_from_the_model_directory_and_attacks(model_dir) -> None:
    root, net, path = model_dir
    model = load_model(NAME, model_dir=root)
    assert model.input_size == (3, 32, 32) and model.class_names[0] == "airplane" and model.num_classes == 10
    assert model.config["mean"] == [0.0] * 3 and model.config["std"] == [1.0] * 3  # the model normalises inside
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), net(x))
    y = model(x).argmax(1).detach()
    x_adv = fgsm(model, x, y, eps=8 / 255)
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6 and not torch.equal(x_adv, x)
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy
        assert loss(model(x_adv), y) > loss(model(x), y)
    by_file = load_model(NAME, weights=path)
    with torch.no_grad():
        assert torch.equal(by_file(x), net(x))


def test_cli_shows_the_published_number(model_dir, tmp_path, capsys) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    write_cifar(tmp_path, "cifar10", "binary", {"train": (images, np.arange(4)), "test": (images, np.arange(4))})
    out = tmp_path / "run"
    argv = ["eval", "--model", NAME, "--model-dir", str(model_dir[0]), "--data", "cifar10", "--data-root"]
    code = main([*argv, str(tmp_path), "--attack", "fgsm", "--eps", "8/255", "--out", str(out), "--quiet"])
    text = capsys.readouterr().out
    assert code == 0 and "RobustBench published (AutoAttack, eps 8/255): clean 83.34%, robust 43.21%" in text
    assert "(RobustBench published AutoAttack 43.21%) top-5 " in text  # next to advlab's robust top-1
    published = json.loads((out / "summary.json").read_text())["model"]["published"]
    assert published == published_result(NAME) and published["source"].endswith("/cifar10/Linf/Wong2020Fast.json")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("robustbench:cifar10/Linf/Carmon2019Unlabeld", r"not in RobustBench's cifar10/Linf table \(did you mean"),
        ("robustbench:cifar11/Linf/Standard", "must be DATASET/THREAT/NAME"),
        ("robustbench:cifar10/Linf/Standard", r"checkpoint .*Standard\.pt not found"),
    ],
)
def test_bad_robustbench_models_are_one_line(name, message, model_dir, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("ADVLAB_OFFLINE", "1")
    out = tmp_path / "run"
    argv = ["eval", "--model", name, "--model-dir", str(model_dir[0]), "--attack", "fgsm", "--eps", "8/255"]
    code = main([*argv, "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and __import__("re").search(message, err), err
    assert not out.exists()
    with pytest.raises(UsageError):
        load_model(name, model_dir=model_dir[0], download=False)
