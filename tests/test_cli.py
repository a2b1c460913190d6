"""The ``advlab`` command line: help everywhere, one-line errors before any work, eval/config/suite/train runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from advlab.cli import main

ROOT = Path(__file__).resolve().parents[1]
ADVLAB = Path(sys.executable).parent / "advlab"
FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(
    not any(FASHION.glob("t10k-images-idx3-ubyte*")) and not os.environ.get("ADVLAB_FASHION_MNIST"),
    reason="Fashion-MNIST is missing: apt-get install dataset-fashion-mnist (or run scripts/install-system-deps.sh)",
)


pytestmark = pytest.mark.usefixtures("one_thread")


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A state-dict file for the small Fashion-MNIST CNN (random weights: these tests check plumbing)."""
    from safetensors.torch import save_file

    from advlab.models import load_model

    torch.manual_seed(0)
    model = load_model("mnist_cnn_small", pretrained=False)
    path = tmp_path_factory.mktemp("w") / "cnn.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def small_eval(weights: Path, out: Path, *extra: str) -> list[str]:
    return [
        "eval", "--model", "mnist_cnn_small", "--weights", str(weights), "--data", "fashion-mnist",
        "--limit", "24", "--batch-size", "8", "--out", str(out), "--quiet", *extra,
    ]  # fmt: skip


def config_head(weights: Path, **settings: object) -> str:
    """The top of an attacks.toml for the small Fashion-MNIST CNN: model, weights, data and ``settings``."""
    lines = ['model = "mnist_cnn_small"', f'weights = "{weights}"', 'data = "fashion-mnist"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ help


@pytest.mark.parametrize("argv", [["--help"], ["eval", "--help"], ["reproduce", "--help"], ["train", "--help"]])
def test_help_everywhere(capsys, argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: advlab") and "--help" in out


def test_console_script_and_module_entry_point():
    for cmd in ([str(ADVLAB), "--version"], [sys.executable, "-m", "advlab", "--version"]):
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0 and res.stdout.startswith("advlab "), res.stderr


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["eval", "--attack", "nope"], "unknown attack 'nope'; available attacks:"),
        (["eval", "--attack", "pgd", "--eps", "8/0"], "divides by zero"),
        (["eval", "--attack", "pgd", "--eps", "-1"], "eps must be >= 0"),
        (["eval", "--attack", "fgsm", "--eps", "0.1", "--steps", "3"], "unknown parameter steps for attack 'fgsm'"),
        (["eval", "--attack", "pgd", "--eps", "0.1", "-p", "stepz=3"], "unknown parameter stepz"),
        (["eval"], "no attack given"),
        (["eval", "--eps", "0.1"], "no attack given"),
        (["eval", "--attack", "pgd", "--eps", "0.1", "--suite", "strong"], "either --attack or --suite"),
        (["eval", "--suite", "nope", "--eps", "0.1"], "unknown suite 'nope'"),
        (["eval", "--suite", "strong"], "--suite needs --eps"),
        (["eval", "--suite", "strong", "--eps", "0.1", "--steps", "5"], "--steps would be ignored"),
        (["eval", "--config", "/no/such.toml"], "config file /no/such.toml does not exist"),
        (["eval", "--attack", "fgsm", "--eps", "0.1", "--model", "no_such_model"], "no_such_model"),
        (["reproduce", "--data", "/no/such/folder"], "does not exist"),
        (["reproduce", "--cw-steps", "0"], "--cw-steps must be >= 1"),
        (["train", "--eps", "8/0"], "--eps '8/0' divides by zero"),
        (["train", "--train-subset", "0"], "--train-subset must be >= 1, got 0"),
        (["train", "--val-size", "59990", "--train-subset", "256"], "--train-subset 256 is more than the 10"),
        (["reproduce", "--model", "fmnist_cnn_pgd"], "fmnist_cnn_pgd has 10 classes, but the labels of the default"),
        *[(["verify", "/no/run", "--tol", t], f"argument --tol: must be a number in [0, 1), got '{t}'")
          for t in ("nan", "-1", "1")],
        (["eval", "--model", "fmnist_cnn_pgd", "--attack", "fgsm", "--eps", "0.1"],  # --data forgotten
         "data default has labels up to 990 but model fmnist_cnn_pgd has 10 classes"),
        (["eval", "--attack", "pgd", "--eps", "0.1", "--steps", "0"], "argument --steps: must be >= 1, got '0'"),
        (["eval", "--attack", "pgd", "--eps", "0.1", "-p", "eps=0.2"], "eps is set twice, by --eps and by -p eps=0.2"),
        (["eval", "--attack", "pgd", "--eps", "0.1", "--steps", "3", "-p", "steps=4"], "steps is set twice"),
        (["eval", "--suite", "strong", "--eps", "0.1", "--norm", "l2", "-p", "norm=linf"], "norm is set twice"),
        (["eval", "--attack", "fgsm", "--eps", "0.1", "--device", "gpu"], "unknown device 'gpu'; expected cpu, cuda"),
        (["eval", "--attack", "pgd", "--eps", "0.1", "--norm", "l3"], "pgd: unknown norm 'l3'; expected one of"),
        (["eval", "--attack", "apgd", "--eps", "0.1", "-p", "rho=2.0"], "apgd: rho must be in (0, 1], got 2"),
        (["eval", "--attack", "fgsm", "--eps", "0.1", "--data", "/no/such/folder"], "/no/such/folder"),
        *(
            []
            if torch.cuda.is_available()
            else [(["eval", "--attack", "fgsm", "--eps", "0.1", "--device", "cuda"], "device 'cuda' is not available")]
        ),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(capsys, argv, needle):
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("advlab: error: ") and needle in lines[0], err
    assert "Traceback" not in err


def test_an_out_path_through_a_file_is_one_line_and_exit_2(capsys, tmp_path):
    # Review: NotADirectoryError came out as a traceback (exit 1) for --out under a regular file.
    afile = tmp_path / "afile"
    afile.write_text("")
    code, _, err = run_cli(capsys, "eval", "--attack", "fgsm", "--eps", "0.1", "--limit", "1", "--out",
                           str(afile / "run"))  # fmt: skip
    assert code == 2 and err == f"advlab: error: cannot create the folder {afile / 'run'} for --out: Not a directory\n"


class _BuggyBackbone(torch.nn.Module):
    """A real network with a bug: it assumes a batch of one (ValueError on any larger batch)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3 * 16 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (image,) = x  # the bug: "too many values to unpack (expected 1)"
        return self.linear(image.flatten())[None]


def test_a_bug_is_not_a_usage_error_and_shows_its_traceback(capsys, monkeypatch, tmp_path):
    """Only advlab's own usage errors are one line; a ValueError from inside a model propagates out of main
    (so the console script prints its traceback). The bug is injected by handing the CLI a buggy model."""
    from advlab import models
    from advlab.errors import UsageError
    from tests.conftest import IMAGENET_30x5

    if not IMAGENET_30x5.is_dir():
        pytest.skip(f"{IMAGENET_30x5} is missing")
    buggy = models.ImageClassifier(
        _BuggyBackbone(), mean=[0.5] * 3, std=[0.5] * 3, input_size=(3, 16, 16),
        class_names=[str(k) for k in range(10)], resize_size=16, crop_size=16, name="buggy",
    )  # fmt: skip
    monkeypatch.setattr(models, "load_model", lambda *args, **kwargs: buggy)
    argv = ["eval", "--attack", "fgsm", "--eps", "0.1", "--data", str(IMAGENET_30x5), "--limit", "4",
            "--out", str(tmp_path / "run"), "--quiet"]  # fmt: skip
    with pytest.raises(ValueError, match="too many values to unpack") as err:
        main(argv)
    assert not isinstance(err.value, UsageError)
    assert "advlab: error" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("env", "needle"),
    [({"WORLD_SIZE": "2", "RANK": "5"}, "RANK must be in 0..1"), ({"WORLD_SIZE": "two"}, "must be an integer")],
)
def test_bad_torchrun_settings_are_usage_mistakes(capsys, monkeypatch, env, needle):
    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", **env}.items():
        monkeypatch.setenv(key, value)
    code, _, err = run_cli(capsys, "eval", "--attack", "fgsm", "--eps", "0.1", "--data", "fashion-mnist")
    assert code == 2 and err.count("\n") == 1 and needle in err, err


def test_no_traceback_from_the_real_console_script():
    res = subprocess.run(
        [str(ADVLAB), "eval", "--attack", "pgd", "--eps", "8/0"], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 2
    assert res.stderr.strip() == "advlab: error: eps '8/0' divides by zero; write it like 8/255 or 0.03"


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('modle = "x"\n[[attack]]\nname = "fgsm"\neps = 0.1\n', "unknown key modle"),
        ('[[attack]]\nname = "pgd"\neps = "8/255"\nsteppes = 3\n', "unknown parameter steppes for attack 'pgd'"),
        ("[[attack]]\neps = 0.1\n", "has no 'name'"),
        ("[[attack]\n", "not valid TOML"),
    ],
)
def test_config_with_unknown_keys_is_refused(capsys, tmp_path, toml, message):
    config = tmp_path / "run.toml"
    config.write_text(toml)
    code, _, err = run_cli(capsys, "eval", "--config", str(config))
    assert code == 2 and message in err


# ------------------------------------------------------------------------------------------------- runs


@needs_fashion
def test_eval_writes_summary_and_refuses_to_mix_runs(capsys, weights, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, *small_eval(weights, out, "--attack", "pgd", "--eps", "8/255", "--steps", "3"))
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["schema"] == "advlab.summary/1" and summary["complete"] and summary["n_samples"] == 24
    (attack,) = summary["attacks"]
    assert attack["name"] == "pgd" and attack["params"]["eps"] == 8 / 255 and attack["params"]["steps"] == 3
    assert attack["norms"]["linf"]["max"] <= 8 / 255 + 1e-6
    assert stdout.count("\n") == 1 and stdout.startswith("pgd(eps=8/255, steps=3): top-1")
    assert summary["command"].startswith("advlab eval --model mnist_cnn_small")
    # The same command again resumes (nothing to do) and prints the same line.
    code, again, _ = run_cli(capsys, *small_eval(weights, out, "--attack", "pgd", "--eps", "8/255", "--steps", "3"))
    assert code == 0 and again.split(", ")[:3] == stdout.split(", ")[:3]
    # Another command into the same folder is refused, and nothing there changes.
    before = sorted(p.name for p in out.rglob("*"))
    code, _, err = run_cli(capsys, *small_eval(weights, out, "--attack", "pgd", "--eps", "4/255", "--steps", "3"))
    assert code == 2 and "holds a different run (differs in: attacks)" in err and "--replace" in err
    assert sorted(p.name for p in out.rglob("*")) == before
    # --replace starts the folder over with the new command.
    code, replaced, err = run_cli(
        capsys, *small_eval(weights, out, "--attack", "pgd", "--eps", "4/255", "--steps", "3", "--replace")
    )
    assert code == 0, err
    (attack,) = json.loads((out / "summary.json").read_text())["attacks"]
    assert attack["params"]["eps"] == 4 / 255 and replaced.startswith("pgd(eps=4/255, steps=3): top-1")
    (folder,) = (out / "records").iterdir()  # the 8/255 records are gone
    assert "eps=4_255" in folder.name


@needs_fashion
def test_a_run_resumed_by_other_advlab_code_warns_in_one_line(capsys, weights, tmp_path):
    """Provenance is not the fingerprint: the same command after an upgrade resumes, saying so in one line."""
    out = tmp_path / "run"
    argv = small_eval(weights, out, "--attack", "fgsm", "--eps", "0.1")
    code, first, err = run_cli(capsys, *argv)
    assert code == 0 and "warning" not in err, err
    run = json.loads((out / "run.json").read_text())
    run["provenance"] = {"advlab_version": "0.0.9", "code_sha256": "0" * 64}
    (out / "run.json").write_text(json.dumps(run))
    code, again, err = run_cli(capsys, *argv)
    assert code == 0 and again.split(", ")[:3] == first.split(", ")[:3]
    (line,) = err.strip().splitlines()
    assert line.startswith("advlab: warning: ") and "started by other advlab code (advlab 0.0.9" in line


@needs_fashion
def test_fashion_mnist_takes_a_class_balanced_subset_and_refuses_the_wrong_model(capsys, weights, tmp_path):
    argv = small_eval(weights, tmp_path / "run", "--attack", "fgsm", "--eps", "0.1", "--subset", "2x2")
    code, _, err = run_cli(capsys, *(a for a in argv if a not in ("--limit", "24")))
    assert code == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["n_samples"] == 4 and summary["data"]["subset"] == "2x2"
    # Grey 28 x 28 images into the default ImageNet model: said, not silently broadcast to three channels.
    code, _, err = run_cli(
        capsys, "eval", "--data", "fashion-mnist", "--limit", "2", "--attack", "fgsm", "--eps", "0.1",
        "--out", str(tmp_path / "wrong"), "--quiet",
    )  # fmt: skip
    assert code == 2 and "takes 3x224x224 images" in err and "fashion-mnist gives 1x28x28" in err, err


@needs_fashion
def test_config_file_with_several_attacks_and_a_sweep(capsys, weights, tmp_path):
    config = tmp_path / "attacks.toml"
    config.write_text(
        config_head(weights, limit=16, batch_size=8, seed=3, out=str(tmp_path / "from-config"))
        + """
[[attack]]
name = "fgsm"
id = "fgsm-small"
eps = "4/255"

[[attack]]
name = "bim"
eps = 0.1
steps = 2
targeted = true
target = "least-likely"
"""
    )
    code, stdout, err = run_cli(capsys, "eval", "--config", str(config), "--quiet")
    assert code == 0, err
    summary = json.loads((tmp_path / "from-config" / "summary.json").read_text())
    assert summary["attacks"][0]["id"] == "fgsm-small" and summary["attacks"][1]["target"] == "least-likely"
    assert summary["seed"] == 3 and summary["n_samples"] == 16 and summary["attacks"][1]["targeted"]
    # A flag given on the command line wins over the config file.
    code, _, err = run_cli(capsys, "eval", "--config", str(config), "--out", str(tmp_path / "flag"), "--quiet")
    assert code == 0 and (tmp_path / "flag" / "summary.json").exists()
    # An eps sweep from the flags gives one attack per eps.
    code, stdout, err = run_cli(
        capsys, *small_eval(weights, tmp_path / "sweep", "--attack", "fgsm", "--eps", "0.01", "0.1")
    )
    assert code == 0, err
    sweep = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert [a["params"]["eps"] for a in sweep["attacks"]] == [0.01, 0.1] and stdout.count("\n") == 2


@needs_fashion
def test_a_suite_after_listed_attacks_is_their_per_sample_worst_case(capsys, weights, tmp_path):
    config = tmp_path / "attacks.toml"
    config.write_text(
        config_head(weights, limit=32, batch_size=16, suite="fast")
        + """
[[attack]]
name = "fgsm"
eps = 0.1

[[attack]]
name = "pgd"
eps = 0.1
steps = 3

[[attack]]
name = "fgsm"
eps = 0.05
"""
    )
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "eval", "--config", str(config), "--eps", "0.1", "--out", str(out), "--quiet")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    by_name = {a["id"]: a for a in summary["attacks"]}
    suite = summary["attacks"][-1]
    assert suite["name"] == "suite_fast" and suite["only_unbroken"] == [a["id"] for a in summary["attacks"][:2]]
    assert suite["adv_top1"] <= min(a["adv_top1"] for a in list(by_name.values())[:2])
    # AutoAttack's running robust accuracy, stage by stage, ending at the suite's number.
    assert [st["name"] for st in suite["stages"]] == ["clean", "apgd-ce", "apgd-t"]
    assert suite["stages"][-1]["robust_after"] == pytest.approx(suite["adv_top1"])
    standing = suite["broken_by"].get("robust", 0)
    assert sum(st["broken"] for st in suite["stages"]) + suite["n_from_other_attacks"] + standing == suite["n"]
    assert "targeted DLR towards the top-3" in suite["stages"][2]["description"]
    checks = {c["name"]: c for c in summary["sanity"]["checks"]}
    assert (
        checks["suite_is_worst_case"]["status"] == "pass"
        and checks["suite_is_worst_case"]["numbers"]["missed_by_suite"] == 0
    )


@needs_fashion
def test_suite_strong_runs_as_one_attack(capsys, weights, tmp_path):
    out = tmp_path / "suite"
    code, _, err = run_cli(capsys, *small_eval(weights, out, "--suite", "strong", "--eps", "0.1"))
    assert code == 0, err
    (attack,) = json.loads((out / "summary.json").read_text())["attacks"]
    assert attack["name"] == "suite_strong" and sum(attack["broken_by"].values()) == 24
    assert set(attack["broken_by"]) <= {"clean", "apgd-ce", "apgd-t", "square", "robust"}
    assert attack["adv_top1"] == attack["broken_by"].get("robust", 0) / 24


@needs_fashion
def test_train_runs_through_the_cli(capsys, tmp_path):
    out = tmp_path / "train"
    code, _, err = run_cli(
        capsys,
        "train", "--method", "standard", "--model", "mnist_cnn_small", "--epochs", "1", "--train-subset", "256",
        "--val-size", "64", "--batch-size", "64", "--out", str(out), "--quiet",
    )  # fmt: skip
    assert code == 0, err
    assert any(out.iterdir())
    # The same command again is refused (a run is there), as a user mistake: one line, status 2.
    code, _, err = run_cli(
        capsys,
        "train", "--method", "standard", "--model", "mnist_cnn_small", "--epochs", "1", "--train-subset", "256",
        "--val-size", "64", "--batch-size", "64", "--out", str(out), "--quiet",
    )  # fmt: skip
    assert code == 2 and err.count("\n") == 1 and "already exists; resume it (resume=True, --resume)" in err
    code, _, err = run_cli(capsys, "train", "--method", "nope")
    assert code == 2 and err.count("\n") == 1 and "invalid choice: 'nope'" in err
    code, _, err = run_cli(capsys, "eval", "--no-such-flag")
    assert code == 2 and err.count("\n") == 1 and "unrecognized arguments: --no-such-flag" in err


def test_no_prepare_flag_and_config_key(tmp_path):
    from advlab.cli import _parse

    assert _parse(["eval"]).prepare is True and _parse(["eval", "--no-prepare"]).prepare is False
    assert _parse(["reproduce"]).prepare is True and _parse(["reproduce", "--no-prepare"]).prepare is False
    config = tmp_path / "attacks.toml"
    config.write_text('prepare = false\n[[attack]]\nname = "fgsm"\neps = 0.1\n')
    assert _parse(["eval", "--config", str(config)]).prepare is False


@needs_fashion
def test_eval_records_the_model_preparation_in_run_json(capsys, weights, tmp_path):
    from advlab.models import load_model, preparation_record, prepare

    for flags, out in (((), tmp_path / "on"), (("--no-prepare",), tmp_path / "off")):
        code, _, err = run_cli(capsys, *small_eval(weights, out, "--attack", "fgsm", "--eps", "0.1", *flags))
        assert code == 0, err
    model = load_model("mnist_cnn_small", weights=str(weights))
    x = torch.stack([load_dataset_first(i) for i in range(8)])
    assert json.loads((tmp_path / "on" / "run.json").read_text())["config"]["prepare"] == preparation_record(
        prepare(model, x)
    )
    assert json.loads((tmp_path / "off" / "run.json").read_text())["config"]["prepare"] == {"enabled": False}


def load_dataset_first(i: int) -> torch.Tensor:
    """Image ``i`` of the Fashion-MNIST test split as ``advlab eval --data fashion-mnist`` reads it."""
    from advlab.data import load_dataset

    return load_dataset("fashion-mnist")[i][0]


@needs_fashion
def test_a_bug_during_training_shows_its_traceback(monkeypatch, tmp_path):
    """advlab train turns only advlab.train's checks of its settings into one line; a ValueError raised while
    training (here: a network that assumes a batch of one, handed to the run) propagates out of main."""
    import advlab.train.run

    class OneAtATime(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(28 * 28, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            (image,) = x  # the bug: "too many values to unpack (expected 1)"
            return self.linear(image.flatten())[None]

    monkeypatch.setattr(advlab.train.run, "build", lambda name: OneAtATime())
    argv = ["train", "--method", "standard", "--model", "mnist_cnn_small", "--epochs", "1", "--train-subset", "64",
            "--val-size", "64", "--batch-size", "32", "--out", str(tmp_path / "train"), "--quiet"]  # fmt: skip
    with pytest.raises(ValueError, match="too many values to unpack") as err:
        main(argv)
    assert type(err.value) is ValueError


def test_train_budgets_are_written_as_in_eval():
    from advlab.cli import _parse

    args = _parse(["train", "--eps", "8/255", "--alpha", "2/255"])
    assert (args.eps, args.alpha) == (8 / 255, 2 / 255)


@needs_fashion
def test_quiet_is_an_argument_not_a_process_setting(capsys, weights, tmp_path, monkeypatch):
    """--quiet silences this run's progress bar, and only this run's: nothing is left set in the process
    (a later run without --quiet in the same process shows its bar)."""
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    code, _, err = run_cli(capsys, *small_eval(weights, tmp_path / "quiet", "--attack", "fgsm", "--eps", "0.1"))
    assert code == 0 and "attack-batch" not in err
    assert "TQDM_DISABLE" not in os.environ
    loud = [a for a in small_eval(weights, tmp_path / "loud", "--attack", "fgsm", "--eps", "0.1") if a != "--quiet"]
    code, _, err = run_cli(capsys, *loud)
    assert code == 0 and "attack-batch" in err
