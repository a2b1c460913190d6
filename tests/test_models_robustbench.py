"""RobustBench models (advlab.models.robustbench): a real architecture from the robustbench package with random
weights saved in RobustBench's model directory layout; loading, normalisation, one attack step, the published
number next to advlab's, and the bad names."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import numpy as np
import pytest
import torch

from advlab.attacks import fgsm
from advlab.cli import main
from advlab.errors import UsageError
from advlab.models import load_model, published_result
from advlab.models.robustbench import INSTALL, robustbench_module, zoo_entry
from tests.test_cifar import write_cifar

pytestmark = pytest.mark.usefixtures("one_thread")
NAME = "robustbench:cifar10/Linf/Wong2020Fast"  # PreActResNet-18: the smallest single CIFAR-10 Linf entry


def test_a_submodule_imports_without_the_package_init(tmp_path, monkeypatch) -> None:
    """robustbench_module on a package written here whose __init__ imports a module that does not exist (as
    robustbench 1.1's imports autoattack): the submodule imports, the package is not left half-made in
    sys.modules, and a module the submodule itself lacks, or a missing package, is still named."""
    package = "advlab_test_broken_init"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("import advlab_test_no_such_module\n")
    (tmp_path / package / "zoo.py").write_text("VALUE = 42\n")
    (tmp_path / package / "needs.py").write_text("import advlab_test_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for key in [k for k in sys.modules if k.split(".")[0] == package]:
        monkeypatch.delitem(sys.modules, key)
    try:
        assert robustbench_module("zoo", package=package).VALUE == 42
        assert package not in sys.modules and f"{package}.zoo" in sys.modules
        with pytest.raises(ModuleNotFoundError, match="advlab_test_no_such_module"):
            importlib.import_module(package)  # the package itself still fails as before
        with pytest.raises(ModuleNotFoundError) as info:
            robustbench_module("needs", package=package)
        assert info.value.name == "advlab_test_no_such_dependency" and package not in sys.modules
        with pytest.raises(ModuleNotFoundError) as info:
            robustbench_module("zoo", package="advlab_test_not_installed")
        assert info.value.name == "advlab_test_not_installed"
    finally:
        for key in [k for k in sys.modules if k.split(".")[0] == package]:
            del sys.modules[key]


def require_robustbench() -> None:
    """Skips where the robustbench package is absent, except in CI (``CI=true``; make setup installs it): fails."""
    if importlib.util.find_spec("robustbench") is None:
        reason = f"robustbench is not installed: {INSTALL} (docs/models_data.md)"
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(f"{reason}; CI is set, so this fails instead of skipping")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """MODEL_DIR/cifar10/Linf/Wong2020Fast.pt holding {"state_dict": {"module.<key>": ...}}, as RobustBench's."""
    require_robustbench()
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
    init = sys.modules.get("robustbench")  # absent, or the real package where its __init__ imports (autoattack)
    assert init is None or hasattr(init, "load_model")
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
