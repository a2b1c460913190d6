"""Distributed runs (advlab.runtime, advlab.evaluate.sharded, advlab.train.ddp): sharding, merging, DDP training
and evaluation across processes (gloo, 2 ranks, 1 thread).

The multi-process tests start real processes: ``torchrun`` (as ``python -m torch.distributed.run``) for normal
runs, and two hand-started ranks (the environment torchrun would set) where a test needs to kill one rank or
give the ranks different commands, as happens across machines. Budget: about 60 s on 2 busy cores.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from advlab import runtime as distributed
from advlab.data import fashion_mnist as fm
from advlab.evaluate.sharded import merge_records
from advlab.runtime import RankInfo, shard_batches, shard_range
from advlab.train import TensorLoader, load_checkpoint, method_loss
from advlab.train.ddp import RankBatches

needs_data = pytest.mark.skipif(
    not (fm.SYSTEM_ROOT / "t10k-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST is not installed: {fm.HOW_TO_GET} (scripts/install-system-deps.sh)",
)
DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE", "GROUP_RANK")


# ------------------------------------------------------------------------------------------ sharding


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 500), world=st.integers(1, 17))
def test_shards_cover_every_item_once_without_padding(n: int, world: int) -> None:
    for shard in (shard_range, shard_batches):
        parts = [list(shard(n, r, world)) for r in range(world)]
        flat = sorted(i for p in parts for i in p)
        assert flat == list(range(n))  # no item lost, none repeated, nothing padded in
        sizes = [len(p) for p in parts]
        assert max(sizes) - min(sizes) <= 1


def test_shard_batches_is_round_robin_and_shard_range_contiguous() -> None:
    assert shard_batches(7, 1, 3) == [1, 4]
    assert shard_range(5, 0, 2) == range(0, 2) and shard_range(5, 1, 2) == range(2, 5)


@pytest.mark.parametrize(
    ("args", "error"),
    [((5, 2, 2), ValueError), ((5, -1, 2), ValueError), ((5, 0, 0), ValueError), ((-1, 0, 1), ValueError)],
)
def test_shard_arguments_are_checked(args: tuple[int, int, int], error: type[Exception]) -> None:
    with pytest.raises(error):
        shard_range(*args)


def test_rank_info_from_env_checks_what_torchrun_sets() -> None:
    assert distributed.rank_info_from_env({}) == RankInfo(0, 1, 0)
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"}
    assert distributed.rank_info_from_env(env) == RankInfo(1, 2, 1)
    with pytest.raises(distributed.DistributedError, match="MASTER_ADDR"):
        distributed.rank_info_from_env({"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(distributed.DistributedError, match=r"RANK must be in 0\.\.1"):
        distributed.rank_info_from_env({**env, "RANK": "2"})
    with pytest.raises(distributed.DistributedError, match="integer"):
        distributed.rank_info_from_env({**env, "WORLD_SIZE": "two"})


# ------------------------------------------------------------------------------------------- merging


def _record(i: int, label: int) -> dict[str, Any]:
    return {"index": i, "label": label, "adv_top5": [label, 1, 2], "success": i % 3 == 0, "time_s": 0.01 * i}


@settings(max_examples=100, deadline=None)
@given(
    n=st.integers(0, 60),
    world=st.integers(1, 6),
    data=st.data(),
)
def test_merge_is_independent_of_how_records_are_split_and_ordered(n: int, world: int, data: Any) -> None:
    records = [_record(i, i % 10) for i in range(n)]
    owner = data.draw(st.lists(st.integers(0, world - 1), min_size=n, max_size=n))
    parts: list[dict[str, list[dict[str, Any]]]] = [{"a": [], "b": []} for _ in range(world)]
    for r, rank in zip(records, owner, strict=True):
        parts[rank]["a"].append(r)
        parts[rank]["b"].append({**r, "success": not r["success"]})
    # A record read twice (a shared run directory) merges into one, even with another time_s.
    if n:
        parts[0]["a"].append({**records[0], "time_s": 99.0})
    for p in parts:
        data.draw(st.randoms()).shuffle(p["a"])
    merged = merge_records(parts)
    assert [r["index"] for r in merged["a"]] == list(range(n))
    assert [{k: v for k, v in r.items() if k != "time_s"} for r in merged["a"]] == [
        {k: v for k, v in r.items() if k != "time_s"} for r in records
    ]
    assert len(merged["b"]) == n


def test_merge_refuses_two_different_records_of_one_sample() -> None:
    with pytest.raises(ValueError, match="attack 'a': sample 3 has different records"):
        merge_records([{"a": [_record(3, 1)]}, {"a": [_record(3, 2)]}])


# -------------------------------------------------------------------------------------- training bits


def test_rank_batches_split_each_global_batch_and_keep_step_counts_equal() -> None:
    x = torch.arange(10.0).view(10, 1, 1, 1)
    loader = TensorLoader(x, torch.arange(10), 4, shuffle=True, seed=1)
    global_batches = [y.tolist() for _, y in loader]  # sizes 4, 4, 2
    for world in (1, 2, 3):
        shards = [list(RankBatches(loader, RankInfo(r, world))) for r in range(world)]
        kept = [b for b in global_batches if len(b) >= world]  # 2 < 3 ranks: skipped on every rank
        for r in range(world):
            assert len(RankBatches(loader, RankInfo(r, world))) == len(shards[r]) == len(kept)
        for step, batch in enumerate(kept):
            assert sorted(i for r in range(world) for i in shards[r][step][1].tolist()) == sorted(batch)


def test_the_inner_maximisation_never_all_reduces_gradients() -> None:
    """With DDP, only the outer backward may synchronise: the attack's backward passes go to ``ddp.module``."""
    assert not dist.is_initialized()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        ddp = nn.parallel.DistributedDataParallel(
            nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
        )
        reductions: list[int] = []

        # No annotations: DDP checks them against the real classes, and this file's are strings.
        def count(state, bucket):  # type: ignore[no-untyped-def]
            reductions.append(1)
            fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()
            fut.set_result(bucket.buffer())
            return fut

        ddp.register_comm_hook(None, count)
        x, y = torch.rand(6, 1, 28, 28), torch.randint(0, 10, (6,))
        for method in ("pgd", "fgsm-rs", "trades"):
            reductions.clear()
            loss, _ = method_loss(method, ddp, x, y, eps=0.1, alpha=0.02, steps=4, beta=6.0)
            assert reductions == [], f"{method}: the inner maximisation all-reduced gradients"
            loss.backward()
            assert len(reductions) >= 1, f"{method}: the outer step did not synchronise gradients"
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------ multi-process


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


def torchrun(args: Sequence[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "advlab", *args]
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def advlab(args: Sequence[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "advlab", *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_ranks(
    argvs: Sequence[Sequence[str]], cwd: Path | Sequence[Path], **extra: str
) -> list[subprocess.Popen[str]]:
    """Start one process per argv with the environment torchrun gives its workers (as on separate machines);
    ``cwd`` is one folder for all or one per rank."""
    port = str(free_port())
    procs = []
    cwds = [cwd] * len(argvs) if isinstance(cwd, Path) else list(cwd)
    for rank, argv in enumerate(argvs):
        env = _env(
            RANK=str(rank), LOCAL_RANK="0", WORLD_SIZE=str(len(argvs)), MASTER_ADDR="127.0.0.1", MASTER_PORT=port
        )
        env.update(extra)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "advlab", *argv],
                cwd=cwds[rank],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return procs


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def without_timings(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items() if k not in ("time_s", "wall_s")}
    if isinstance(obj, list):
        return [without_timings(v) for v in obj]
    return obj


def record_files(run: Path) -> dict[str, str]:
    return {str(p.relative_to(run)): p.read_text() for p in sorted((run / "records").glob("*/*.jsonl"))}


def records_of(run: Path) -> dict[str, Any]:
    return {k: without_timings([json.loads(line) for line in v.splitlines()]) for k, v in record_files(run).items()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One short epoch of PGD adversarial training with DistributedDataParallel on 2 processes."""
    if not (fm.SYSTEM_ROOT / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST is not installed: {fm.HOW_TO_GET}")
    cwd = tmp_path_factory.mktemp("train")
    args = ["train", "--model", "mnist_cnn_small", "--method", "pgd", "--eps", "0.1", "--steps", "2", "--epochs", "1"]
    args += ["--train-subset", "256", "--batch-size", "64", "--val-size", "0"]
    ok(torchrun([*args, "--threads", "1", "--no-progress", "--out", "run"], cwd))
    return cwd / "run"


EVAL_CONFIG = """\
model = "mnist_cnn_small"
weights = "{weights}"
data = "fashion-mnist:test"
limit = 96
batch_size = 8
out = "run"

[[attack]]
name = "pgd"
eps = 0.1
alpha = 0.025
steps = 8

[[attack]]
name = "pgd"
id = "pgd-targeted"
eps = 0.1
steps = 4
targeted = true
target = "random"
"""
EVAL_ARGS = ["eval", "--config", "attacks.toml", "--quiet"]


@pytest.fixture(scope="module")
def eval_dirs(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Folders holding the same attacks.toml (the ranks' commands and summaries are then identical) and the
    single-process reference run."""
    dirs = {k: tmp_path_factory.mktemp(k) for k in ("single", "two", "killed", "mismatch")}
    for d in dirs.values():
        (d / "attacks.toml").write_text(EVAL_CONFIG.format(weights=trained / "final.safetensors"))
    ok(advlab(EVAL_ARGS, dirs["single"]))
    return dirs


@needs_data
def test_two_process_training_writes_a_checkpoint_that_loads(trained: Path) -> None:
    from safetensors.torch import load_file

    from advlab.models import load_model

    payload = load_checkpoint(trained / "checkpoint.pt")
    assert payload["epoch"] == 1 and len(payload["history"]) == 1
    final = load_file(str(trained / "final.safetensors"))
    assert final.keys() == payload["model"].keys()
    assert all(torch.equal(final[k], payload["model"][k]) for k in final)
    assert not any(k.startswith("module.") for k in final)  # the plain network's weights, not DDP's wrapper
    model = load_model("mnist_cnn_small", weights=trained / "final.safetensors")
    logits = model(torch.rand(2, 1, 28, 28))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    assert not list(trained.glob(".*.tmp-*"))  # only rank 0 wrote, atomically


@needs_data
def test_two_process_eval_equals_single_process(eval_dirs: dict[str, Path]) -> None:
    single, two = eval_dirs["single"] / "run", eval_dirs["two"] / "run"
    result = ok(torchrun(EVAL_ARGS, eval_dirs["two"]))
    summary = json.loads((two / "summary.json").read_text())
    assert summary["complete"] and summary["n_samples"] == 96
    assert without_timings(summary) == without_timings(json.loads((single / "summary.json").read_text()))
    assert records_of(two) == records_of(single)  # per sample identical: random starts and targets follow the index
    assert len(result.stdout.strip().splitlines()) == 2  # rank 0 alone prints the two per-attack lines
    # Another seed into the same folder with --replace: the first rank clears the old run, both redo it all.
    ok(torchrun([*EVAL_ARGS, "--seed", "1", "--replace"], eval_dirs["two"]))
    again = json.loads((two / "summary.json").read_text())
    assert again["seed"] == 1 and again["complete"] and again["n_samples"] == 96
    assert set(record_files(two)) == set(record_files(single)) and records_of(two) != records_of(single)


@needs_data
def test_two_process_eval_saves_every_ranks_examples_and_verify_reads_them_all(
    eval_dirs: dict[str, Path], tmp_path: Path
) -> None:
    # Issue 20: --save-adversarial under torchrun, each rank saving its own batches; verify checks them all.
    cwd = tmp_path
    (cwd / "attacks.toml").write_text((eval_dirs["two"] / "attacks.toml").read_text())
    ok(torchrun([*EVAL_ARGS, "--save-adversarial"], cwd))
    run = cwd / "run"
    saved_dir, records_dir = run / "adversarial", run / "records"
    saved = sorted(p.relative_to(saved_dir).with_suffix("") for p in saved_dir.rglob("*.safetensors"))
    records = sorted(p.relative_to(records_dir).with_suffix("") for p in records_dir.rglob("*.jsonl"))
    assert saved == records and len(saved) == 2 * 12  # 2 attacks x 12 batches of 8, written by both ranks
    result = ok(advlab(["verify", "run"], cwd))
    assert "verify: OK; 192 records checked" in result.stdout


@needs_data
def test_killed_rank_stops_the_other_within_the_timeout_and_the_run_resumes(eval_dirs: dict[str, Path]) -> None:
    cwd = eval_dirs["killed"]
    run = cwd / "run"
    rank0, rank1 = start_ranks([EVAL_ARGS, EVAL_ARGS], cwd, ADVLAB_DIST_HEARTBEAT_TIMEOUT="3")
    try:
        deadline = time.monotonic() + 90
        while not list(run.glob("records/*/000000008-000000016.jsonl")):  # rank 1's first batch is on disk
            assert rank0.poll() is None and rank1.poll() is None, "a rank ended before the kill"
            assert time.monotonic() < deadline, "rank 1 wrote nothing within 90 s"
            time.sleep(0.01)
        rank1.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        _, err = rank0.communicate(timeout=60)
        stopped_after = time.monotonic() - killed_at
    finally:
        for p in (rank0, rank1):
            if p.poll() is None:
                p.kill()
            p.communicate()
    assert rank0.returncode == 1, err[-3000:]
    assert "advlab: error: rank 1 of 2 sent no heartbeat" in err, err[-3000:]
    assert "Traceback" not in err
    assert stopped_after < 30
    assert not (run / "summary.json").exists()
    before = record_files(run)
    assert 0 < len(before) < 24  # 12 batches x 2 attacks: some done, not all
    # The same command started again resumes: finished batches are kept as they are, the rest is computed.
    ok(torchrun(EVAL_ARGS, cwd))
    after = record_files(run)
    assert {k: after[k] for k in before} == before
    single = eval_dirs["single"] / "run"
    assert without_timings(json.loads((run / "summary.json").read_text())) == without_timings(
        json.loads((single / "summary.json").read_text())
    )
    assert records_of(run) == records_of(single)


@needs_data
def test_ranks_with_different_commands_stop_at_start(eval_dirs: dict[str, Path]) -> None:
    cwd = eval_dirs["mismatch"]
    procs = start_ranks([[*EVAL_ARGS, "--seed", "0"], [*EVAL_ARGS, "--seed", "1"]], cwd)
    outputs = [p.communicate(timeout=90) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 1, err[-3000:]
        assert "advlab: error: ranks disagree on the command: rank 0 has `" in err, err[-3000:]
        assert "--seed 1" in err and "Traceback" not in err
    assert not (cwd / "run" / "records").exists()  # stopped before any work


@needs_data
def test_a_rank_that_fails_after_joining_is_named_by_the_others(trained: Path, tmp_path: Path) -> None:
    """Rank 1 cannot read the weights (a relative path that exists only where rank 0 runs) while rank 0 waits in a
    collective: rank 0 must report rank 1's error, not its own broken connection."""
    here, there = tmp_path / "here", tmp_path / "there"
    (here / "w").mkdir(parents=True)
    there.mkdir()
    (here / "w" / "fm.safetensors").write_bytes((trained / "final.safetensors").read_bytes())
    argv = ["eval", "--model", "mnist_cnn_small", "--weights", "w/fm.safetensors", "--data", "fashion-mnist"]
    argv += ["--limit", "16", "--batch-size", "8", "--attack", "fgsm", "--eps", "0.1", "--quiet", "--out", "run"]
    procs = start_ranks([argv, argv], [here, there])
    outputs = [p.communicate(timeout=90) for p in procs]
    (_, err0), (_, err1) = outputs
    assert procs[1].returncode == 2 and "weights file w/fm.safetensors does not exist" in err1, err1[-2000:]
    assert procs[0].returncode == 1, err0[-2000:]
    assert "advlab: error: rank 1 stopped with an error: MissingInputError: weights file" in err0, err0[-2000:]
    assert "Traceback" not in err0
