"""Fault injection: kills at seeded random moments, two writers, damaged files, a full disk, bad inputs.

Each test drives the real code (subprocess ``python -m advlab`` where a process must die, ``advlab.cli.main``
in process otherwise) on tiny workloads, and checks the guarantees of docs/reliability.md: a resumed run
equals the uninterrupted one exactly, one writer per run directory, damaged files are named (and records
recomputed), a full disk is one line naming the file with the last good file intact, bad inputs are one line
and exit 2. The full disk is real: the writer's temporary file is made a link to ``/dev/full``, whose every
write fails with ENOSPC.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from advlab.cli import main
from advlab.data import LabelledImages
from advlab.errors import UsageError
from advlab.evaluate import evaluate, make_spec
from advlab.evaluate.records import NonFiniteError, RecordsFileError, read_batch_file, write_jsonl
from advlab.evaluate.rundir import RecordsFileWarning
from advlab.runtime.lock import LOCK_NAME, RunLock
from advlab.train.checkpoint import load_checkpoint, save_weights
from tests.conftest import Items

from .conftest import Linear

FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(
    not any(FASHION.glob("t10k-images-idx3-ubyte*")) and not os.environ.get("ADVLAB_FASHION_MNIST"),
    reason="Fashion-MNIST is missing: apt-get install dataset-fashion-mnist (or run scripts/install-system-deps.sh)",
)
pytestmark = pytest.mark.usefixtures("one_thread")
SRC = Path(__file__).resolve().parents[1] / "src"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    _, err = capsys.readouterr()
    return code, err


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """Random weights of the small Fashion-MNIST CNN (these tests check the plumbing, not the accuracy)."""
    from safetensors.torch import save_file

    from advlab.models import load_model

    torch.manual_seed(0)
    model = load_model("mnist_cnn_small", pretrained=False)
    path = tmp_path_factory.mktemp("w") / "cnn.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def eval_args(weights: Path, out: Path, *extra: str, attack: tuple[str, ...] = ("--attack", "fgsm")) -> list[str]:
    return [
        "eval", "--model", "mnist_cnn_small", "--weights", str(weights), "--data", "fashion-mnist",
        "--limit", "32", "--batch-size", "4", *attack, "--eps", "0.1", "--out", str(out), "--quiet", *extra,
    ]  # fmt: skip


SLOW = ("--attack", "pgd", "--steps", "20")  # slow enough per batch to be caught mid-run


def batch_files(out: Path) -> list[Path]:
    return sorted((out / "records").rglob("*.jsonl")) if out.exists() else []


def untimed_records(out: Path) -> dict[str, list[dict]]:
    return {
        str(f.relative_to(out)): [{k: v for k, v in r.items() if k != "time_s"} for r in map(json.loads, f.open())]
        for f in batch_files(out)
    }


def untimed_summary(out: Path) -> dict:
    summary = json.loads((out / "summary.json").read_text())

    def strip(obj):
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if k not in ("time_s", "wall_s", "command")}
        return [strip(v) for v in obj] if isinstance(obj, list) else obj

    return strip(summary)


def start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "advlab", *argv], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def wait_for(proc: subprocess.Popen, ready, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the run ended before the moment to inject the fault: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "timed out waiting for the run"
        time.sleep(0.005)


# ------------------------------------------------------------------------------------------------- eval


@needs_fashion
def test_eval_killed_stopped_and_terminated_at_seeded_moments_resumes_exactly_with_one_writer(
    capsys, weights, tmp_path
):
    """SIGKILL twice and SIGTERM once, each after a seeded random number of batches plus a random delay; while
    the first run is frozen mid-run (SIGSTOP, so it holds the lock), a second writer is refused with and without
    --replace, naming the holder. The run finished afterwards equals an uninterrupted run, record for record."""
    rnd = random.Random(16)
    reference = tmp_path / "reference"
    assert cli(capsys, *eval_args(weights, reference, attack=SLOW))[0] == 0
    out = tmp_path / "run"
    args = eval_args(weights, out, attack=SLOW)
    for round_ in range(3):
        have = len(batch_files(out))
        target = have + rnd.randint(1, 2)
        proc = start(args)
        wait_for(proc, lambda target=target: len(batch_files(out)) >= target)
        time.sleep(0.05 * rnd.random())
        proc.send_signal(signal.SIGSTOP)  # frozen at a random moment, still holding the run directory
        assert len(batch_files(out)) < 8, "the kill must leave work to do"
        if round_ == 0:
            for extra in ((), ("--replace",)):
                code, err = cli(capsys, *eval_args(weights, out, "--seed", "1", *extra))
                assert code == 2 and err.count("\n") == 1, err
                assert f"pid {proc.pid} on {socket.gethostname()}, started 20" in err and str(out) in err
            assert json.loads((out / "run.json").read_text())["config"]["seed"] == 0  # untouched
        if round_ < 2:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        else:  # SIGTERM: stops like Ctrl-C, with the resume hint, status 143
            proc.send_signal(signal.SIGTERM)
            proc.send_signal(signal.SIGCONT)
            assert proc.wait(timeout=60) == 143
            err = proc.stderr.read()
            assert err.count("\n") == 1 and "terminated (SIGTERM; the run directory holds" in err, err
        proc.stderr.close()
    assert (out / LOCK_NAME).exists()  # left by killed holders: stale, taken over by the next run
    code, err = cli(capsys, *args)
    assert code == 0, err
    assert untimed_records(out) == untimed_records(reference)
    assert untimed_summary(out) == untimed_summary(reference)


@needs_fashion
def test_a_lock_names_its_holder_and_dies_with_it(capsys, weights, tmp_path):
    """Any writer (eval, train) is refused while another process holds the folder; the lock of a process killed
    with SIGKILL is released by the kernel, so the next run takes it over."""
    run, train_out = tmp_path / "run", tmp_path / "train"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom advlab.runtime.lock import RunLock\n"
         "locks = [RunLock(p).acquire() for p in sys.argv[1:]]\nprint('held', flush=True)\ntime.sleep(600)",
         str(run), str(train_out)],
        env=ENV, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        code, err = cli(capsys, *eval_args(weights, run))
        assert code == 2 and f"pid {holder.pid}" in err and err.count("\n") == 1
        code, err = cli(
            capsys,
            "train", "--method", "standard", "--model", "mnist_cnn_small", "--epochs", "1", "--train-subset", "64",
            "--val-size", "32", "--batch-size", "32", "--out", str(train_out), "--quiet",
        )  # fmt: skip
        assert code == 2 and f"pid {holder.pid}" in err and "another advlab process" in err, err
        with pytest.raises(UsageError, match="being written by another advlab process"):
            RunLock(run).acquire()
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    lock = RunLock(run).acquire()
    assert lock.stale is not None and lock.stale["pid"] == holder.pid  # recognised as the dead holder's
    lock.release()
    code, err = cli(capsys, *eval_args(weights, run))
    assert code == 0 and json.loads((run / "summary.json").read_text())["complete"], err


def test_a_lock_file_planted_as_a_link_is_refused_and_its_target_left_alone(tmp_path):
    """A run directory received from someone else may hold ``.advlab.lock -> ~/.bashrc``: taking the lock would
    write the holder record through the link and truncate the target."""
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).symlink_to(target)
    with pytest.raises(UsageError, match="is a symbolic link; advlab writes its lock only to a plain file"):
        RunLock(run).acquire()
    assert target.read_text() == "keep me\n"
    (run / LOCK_NAME).unlink()
    (run / LOCK_NAME).mkdir()
    with pytest.raises(UsageError, match="is a folder; advlab writes its lock only to a plain file"):
        RunLock(run).acquire()


def test_the_adaptive_rows_are_written_under_the_run_lock(digits_model, tmp_path, monkeypatch):
    """evaluate_adaptive rewrites summary.json with its naive-vs-adaptive rows after the evaluation: a second
    writer must still be refused then, or it could replace the folder and get a stale summary written into it."""
    from advlab.evaluate import adaptive as adaptive_module
    from advlab.evaluate import evaluate_adaptive
    from advlab.runtime.lock import RunLockedError

    from .test_evaluate import Items

    model, x, y = digits_model
    out = tmp_path / "run"
    refused: list[str] = []
    compare = adaptive_module.compare

    def compare_while_a_second_writer_tries(summary, plan):
        with pytest.raises(RunLockedError) as e:
            RunLock(out).acquire()
        refused.append(str(e.value))
        return compare(summary, plan)

    monkeypatch.setattr(adaptive_module, "compare", compare_while_a_second_writer_tries)
    quick = {"steps": 5, "n_target_classes": 1, "square_queries": 20}
    evaluate_adaptive(model, Items(x[:4], y[:4]), [0.1], batch_size=4, naive="fast", adaptive_params=quick,
                      out=out, quiet=True)  # fmt: skip
    assert len(refused) == 1 and "another advlab process" in refused[0]
    assert json.loads((out / "summary.json").read_text())["adaptive"]["rows"]
    RunLock(out).acquire().release()  # and released at the end


def full_disk_on_write(path: Path, nth: int = 1) -> None:
    """Make the ``nth`` atomic write of ``path`` by this process fail with ENOSPC: as the writer opens its
    temporary file, that name becomes a link to /dev/full. Armed by an audit hook on ``open``, so the moment is
    exact (no thread racing a fast writer); the hook does nothing once it has fired (hooks cannot be removed)."""
    tmp = str(path.with_name(f".{path.name}.tmp-{os.getpid()}"))
    opened = [0]

    def hook(event: str, args: tuple) -> None:
        if event != "open" or opened[0] >= nth or not isinstance(args[0], str | os.PathLike):
            return
        if os.fspath(args[0]) != tmp:
            return
        opened[0] += 1
        if opened[0] == nth:
            Path(tmp).parent.mkdir(parents=True, exist_ok=True)
            Path(tmp).symlink_to("/dev/full")

    sys.addaudithook(hook)


@needs_fashion
def test_eval_on_a_full_disk_names_the_file_and_resumes(capsys, weights, tmp_path):
    out = tmp_path / "run"
    full_disk_on_write(out / "run.json")
    code, err = cli(capsys, *eval_args(weights, out))
    assert code == 1 and err.count("\n") == 1 and f"cannot write {out / 'run.json'}: no space left" in err, err
    assert cli(capsys, *eval_args(weights, out))[0] == 0  # space is back: the same command runs


# ------------------------------------------------------------------------------------------------ train

TRAIN = [
    "train", "--method", "fgsm-rs", "--eps", "0.1", "--model", "mnist_cnn_small", "--epochs", "3",
    "--train-subset", "192", "--val-size", "32", "--batch-size", "64", "--quiet",
]  # fmt: skip


@needs_fashion
def test_train_killed_at_a_seeded_moment_and_on_a_full_disk_ends_with_byte_identical_weights(capsys, tmp_path):
    """An uninterrupted run; a run killed (SIGKILL) at a seeded random moment after its first checkpoint, then
    resumed; a run whose disk fills up as it writes its second checkpoint (one line naming the file, the first
    checkpoint intact), then resumed. All three end with the same bytes in final.safetensors."""
    rnd = random.Random(16)
    reference = tmp_path / "reference"
    proc = start([*TRAIN, "--out", str(reference)])  # timed, so the kill below falls inside the work on any machine
    wait_for(proc, lambda: (reference / "checkpoint.pt").exists())
    first_checkpoint = time.monotonic()
    wait_for(proc, lambda: (reference / "final.safetensors").exists())
    rest = time.monotonic() - first_checkpoint  # from the first checkpoint to the last weights
    assert proc.wait() == 0, proc.stderr.read()
    proc.stderr.close()

    killed = tmp_path / "killed"
    proc = start([*TRAIN, "--out", str(killed)])
    wait_for(proc, lambda: (killed / "checkpoint.pt").exists())
    time.sleep(0.5 * rest * rnd.random())
    proc.kill()
    proc.wait()
    proc.stderr.close()
    assert not (killed / "final.safetensors").exists(), "the kill must leave work to do"
    assert cli(capsys, *TRAIN, "--out", str(killed), "--resume")[0] == 0

    full = tmp_path / "full"
    full_disk_on_write(full / "checkpoint.pt", nth=2)
    code, err = cli(capsys, *TRAIN, "--out", str(full))
    assert code == 1 and err.count("\n") == 1 and f"cannot write {full / 'checkpoint.pt'}: no space" in err, err
    assert load_checkpoint(full / "checkpoint.pt")["epoch"] == 1  # the last good checkpoint, whole
    assert cli(capsys, *TRAIN, "--out", str(full), "--resume")[0] == 0

    expected = (reference / "final.safetensors").read_bytes()
    assert (killed / "final.safetensors").read_bytes() == expected
    assert (full / "final.safetensors").read_bytes() == expected


def test_identical_weights_give_identical_safetensors_files(tmp_path):
    state = {f"layer{i}.weight": torch.randn(3, 2, generator=torch.Generator().manual_seed(i)) for i in range(4)}
    meta = {f"key{i}": str(i) for i in range(16)}
    files = []
    for k in range(4):
        save_weights(tmp_path / f"{k}.safetensors", state, meta)
        files.append((tmp_path / f"{k}.safetensors").read_bytes())
    assert len(set(files)) == 1
    from safetensors import safe_open

    with safe_open(str(tmp_path / "0.safetensors"), "pt") as f:
        assert f.metadata() == meta and all(torch.equal(f.get_tensor(k), v) for k, v in state.items())


@needs_fashion
def test_damaged_checkpoints_and_weights_are_one_line_naming_the_file(capsys, weights, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    cut = bad / "cut.safetensors"
    cut.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    pickled = bad / "pickled.safetensors"
    torch.save({"w": torch.ones(1)}, pickled)  # a pickle renamed .safetensors
    for path in (cut, pickled):
        code, err = cli(capsys, *eval_args(path, tmp_path / "run"))
        assert code == 2 and err.count("\n") == 1 and f"weights file {path} is not a readable safetensors" in err
    run = tmp_path / "train"
    short = ["train", "--method", "standard", "--model", "mnist_cnn_small", "--epochs", "1", "--train-subset", "64",
             "--val-size", "32", "--batch-size", "32", "--quiet"]  # fmt: skip
    assert cli(capsys, *short, "--out", str(run))[0] == 0
    ckpt = run / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    code, err = cli(capsys, *short, "--out", str(run), "--resume")
    assert code == 2 and err.count("\n") == 1 and f"{ckpt} is not a readable advlab training checkpoint" in err


# ---------------------------------------------------------------------------------------------- records


@pytest.fixture()
def linear() -> tuple[Linear, Items]:
    gen = torch.Generator().manual_seed(0)
    model = Linear(torch.randn(4, 12, generator=gen), torch.zeros(4))
    x = torch.rand(24, 1, 3, 4, generator=gen) * 0.9
    return model, Items(x, torch.randint(0, 4, (24,), generator=gen))


SPECS = [make_spec("fgsm", {"eps": 0.1}, id="fgsm"), make_spec("pgd", {"eps": 0.1, "steps": 3}, id="pgd")]


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text[: len(text) // 2],  # cut mid-line
        lambda text: "".join(text.splitlines(keepends=True)[:3]),  # cut at a line boundary
        lambda text: "".join(text.splitlines(keepends=True)[:-1]),  # only its end-of-batch line lost
        lambda text: text.replace('"index": 8,', '"index": 99,'),  # a sample from another batch
    ],
)
def test_a_damaged_records_file_is_named_and_recomputed_never_read_as_fewer_samples(linear, tmp_path, damage):
    model, data = linear
    reference = evaluate(model, data, SPECS, out=tmp_path / "reference", batch_size=8, quiet=True)
    out = tmp_path / "run"
    evaluate(model, data, SPECS, out=out, batch_size=8, quiet=True)
    victim = batch_files(out)[1]
    victim.write_text(damage(victim.read_text()))
    with pytest.warns(RecordsFileWarning, match=re.escape(str(victim))):
        again = evaluate(model, data, SPECS, out=out, batch_size=8, quiet=True)
    assert again.summary["attacks"][0]["n"] == 24 and again.summary["complete"]
    assert untimed_records(out) == untimed_records(tmp_path / "reference")
    assert reference.summary["attacks"][0]["adv_top1"] == again.summary["attacks"][0]["adv_top1"]
    # A damaged file outside the batches this process computes (another shard's) is refused by path.
    victim.write_text(damage(victim.read_text()))
    with warnings.catch_warnings(), pytest.raises(RecordsFileError, match=re.escape(str(victim))):
        warnings.simplefilter("ignore", RecordsFileWarning)
        evaluate(model, data, SPECS, out=out, batch_size=8, quiet=True, batches=[0])


class NanAt(Linear):
    """The linear model, with NaN logits for images whose first pixel is exactly 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x)
        return torch.where(x.flatten(1)[:, :1] == 1.0, torch.full_like(logits, float("nan")), logits)


def test_non_finite_logits_are_an_error_naming_the_sample_and_the_attack(linear, tmp_path):
    model, data = linear
    nan_model = NanAt(model.weight.detach(), model.bias.detach())
    data.x[13].view(-1)[0] = 1.0
    with pytest.raises(NonFiniteError, match=r"sample 13, attack fgsm: the model's clean logits are not finite"):
        evaluate(nan_model, data, SPECS, out=tmp_path / "run", batch_size=8, quiet=True)
    written = [line for f in batch_files(tmp_path / "run") for line in f.open()]
    assert written and not any(word in line for line in written for word in ("NaN", "Infinity"))  # strict JSON
    with pytest.raises(NonFiniteError, match="non-finite"):
        write_jsonl(tmp_path / "x.jsonl", [{"l2": float("nan")}])


def test_a_folder_where_no_image_can_be_read_is_refused_naming_it(capsys, weights, tmp_path):
    folder = tmp_path / "images"
    (folder / "n01440764").mkdir(parents=True)
    for name in ("a.jpg", "b.png"):
        (folder / "n01440764" / name).write_bytes(b"not an image")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the per-image "skipping unreadable image" warnings
        code, err = cli(capsys, *eval_args(weights, tmp_path / "run"), "--data", str(folder))
    assert code == 2 and f"no image of the data could be read (ImageNet folder {folder};" in err, err
    assert f"{folder / 'n01440764' / 'a.jpg'}: UnidentifiedImageError" in err and err.count("\n") == 1
    assert not (tmp_path / "run" / "summary.json").exists()


# ----------------------------------------------------------------------------------------------- inputs


def test_labels_csv_from_a_spreadsheet_is_read_and_a_file_listed_twice_is_refused(tmp_path):
    for name in ("a.png", "b.png"):
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    csv = tmp_path / "labels.csv"
    csv.write_bytes("file,class_index\r\na.png,1\r\nb.png,2\r\n".encode("utf-8-sig"))
    assert LabelledImages(csv, num_classes=3).labels.tolist() == [1, 2]
    csv.write_text("file,class_index\na.png,1\nb.png,2\n./a.png,1\n")
    with pytest.raises(UsageError, match=r"lines 2 and 4 list './a.png' twice"):
        LabelledImages(csv, num_classes=3)
    csv.write_text("file,class_index\na.png,1\nb.png,2\na.png,0\n")
    with pytest.raises(UsageError, match=r"lines 2 and 4 list 'a.png' with two labels \(1 and 0\)"):
        LabelledImages(csv, num_classes=3)


@needs_fashion
def test_an_linf_eps_above_one_is_refused_in_flags_and_config_files(capsys, weights, tmp_path):
    code, err = cli(capsys, *eval_args(weights, tmp_path / "r"), "--eps", "8")
    assert code == 2 and "Linf eps must be in [0, 1] (pixel units, images in [0, 1]), got 8" in err, err
    config = tmp_path / "attacks.toml"
    config.write_text(
        f'model = "mnist_cnn_small"\nweights = "{weights}"\ndata = "fashion-mnist"\n'
        '[[attack]]\nname = "apgd"\neps = 4\n'
    )
    code, err = cli(capsys, "eval", "--config", str(config), "--out", str(tmp_path / "r"))
    assert code == 2 and "apgd: Linf eps must be in [0, 1]" in err and not (tmp_path / "r").exists()
    assert make_spec("pgd", {"eps": 2.0, "norm": "l2"}).params["eps"] == 2.0  # L2 radii above 1 are fine
    with pytest.raises(UsageError, match="8/255"):
        make_spec("bim", {"eps": "8"})


record_values = st.fixed_dictionaries(
    {"index": st.integers(0, 7), "l2": st.floats(0, 10), "note": st.text(max_size=8), "top": st.lists(st.integers())}
)


@settings(max_examples=40, deadline=None)
@given(records=st.lists(record_values, max_size=5), cut=st.floats(0, 1, exclude_max=True))
def test_any_cut_of_a_records_file_is_refused_by_path(tmp_path_factory, records, cut):
    """Whatever the records and wherever a crash cut the file (short of its final newline), reading it back is
    a RecordsFileError naming it: never fewer records."""
    path = tmp_path_factory.mktemp("cut") / "000000000-000000008.jsonl"
    write_jsonl(path, records, batch=range(0, 8))
    data = path.read_bytes()
    assert read_batch_file(path, range(0, 8)) == records
    path.write_bytes(data[: int(cut * (len(data) - 1))])
    with pytest.raises(RecordsFileError, match=re.escape(str(path))):
        read_batch_file(path, range(0, 8))
