"""Images attacked per second by ``advlab eval`` in 1 process and in 2 processes under torchrun (gloo, CPU).

Fair on a 2-core machine: the single process gets 2 threads, each of the 2 ranks 1 thread (OMP_NUM_THREADS),
so both configurations use the same cores. A single process with 1 thread is measured too: on a machine
shared with other jobs, 2 intra-op threads can be far slower than 1 (OpenMP threads wait for each other at
every operation's barrier while the scheduler has one of them off the core), so the ratio to 1 x 1 is the
plain per-process scaling. Throughput is the number of images over the evaluation's wall time
as ``summary.json`` reports it (``wall_s``: rank 0's time from the start of the evaluation to the merged
summary, gathering included; interpreter start-up and model loading excluded); the end-to-end time of the
command (start-up included) is listed too. Rounds interleave the two configurations so that a busy machine
slows both alike; medians over rounds are reported, with the per-round scaling ratio
(2-process throughput / 1-process throughput). Each round also checks that 2 processes x 1 thread give exactly
the summary of 1 process x 1 thread (1 x 2 threads: the same accuracies; its float sums run in another order).

Workloads:
- ``fmnist``: the 28x28 CNN ``mnist_cnn_small`` (random weights unless a trained file is given with
  ``--weights``; the attack's cost does not depend on them) on the first ``--limit`` Fashion-MNIST test
  images, PGD-10, batch 32;
- ``lite0``: the default model EfficientNet-Lite0 on the default 20-image sample, PGD-10, batch 10.

    nice -n 10 .venv/bin/python benchmarks/distributed_throughput.py --workload both --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE", "GROUP_RANK")


def workload_args(name: str, weights: Path, limit: int, steps: int) -> tuple[list[str], int]:
    """The ``advlab eval`` arguments of a workload and its number of images."""
    attack = ["--attack", "pgd", "--eps", "8/255" if name == "lite0" else "0.1", "--steps", str(steps), "--quiet"]
    if name == "lite0":
        return ["eval", "--model", "efficientnet_lite0", "--data", "default", "--batch-size", "10", *attack], 20
    data = ["--data", "fashion-mnist:test", "--limit", str(limit), "--batch-size", "32"]
    return ["eval", "--model", "mnist_cnn_small", "--weights", str(weights), *data, *attack], limit


def random_weights(folder: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    from advlab.models.small import build

    torch.manual_seed(0)
    path = folder / "mnist_cnn_small_random.safetensors"
    save_file({k: v.contiguous() for k, v in build("mnist_cnn_small").state_dict().items()}, str(path))
    return path


CONFIGS = ((1, 2), (1, 1), (2, 1))  # (processes, threads per process)


def run(args: list[str], procs: int, threads: int, cwd: Path) -> tuple[float, float, dict[str, Any]]:
    """(evaluation wall_s, end-to-end seconds, summary) of one run in a fresh run directory."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    if procs == 1:
        cmd = [sys.executable, "-m", "advlab", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
        cmd += ["-m", "advlab", *args]
    out = cwd / f"run-{procs}-{time.monotonic_ns()}"
    start = time.perf_counter()
    result = subprocess.run([*cmd, "--out", str(out)], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"command failed ({result.returncode}): {shlex.join(cmd)}\n{result.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    return float(summary["wall_s"]), seconds, summary


def without_timings(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items() if k not in ("time_s", "wall_s", "command")}
    if isinstance(obj, list):
        return [without_timings(v) for v in obj]
    return obj


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", choices=("fmnist", "lite0", "both"), default="both")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--limit", type=int, default=512, help="Fashion-MNIST images (fmnist workload)")
    ap.add_argument("--steps", type=int, default=10, help="PGD steps")
    ap.add_argument("--weights", type=Path, default=None, help="mnist_cnn_small weights (default: random)")
    ap.add_argument("--json", default="", help="also write the raw numbers to this file")
    args = ap.parse_args()
    names = ["fmnist", "lite0"] if args.workload == "both" else [args.workload]
    rows, raw = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        weights = args.weights or random_weights(cwd)
        for name in names:
            eval_args, n = workload_args(name, weights, args.limit, args.steps)
            walls: dict[str, list[float]] = {f"{p}x{t}": [] for p, t in CONFIGS}
            ends: dict[str, list[float]] = {f"{p}x{t}": [] for p, t in CONFIGS}
            ratio_2x1: list[float] = []
            ratio_1x1: list[float] = []
            for r in range(args.rounds):
                summaries = {}
                for procs, threads in CONFIGS if r % 2 == 0 else CONFIGS[::-1]:
                    key = f"{procs}x{threads}"
                    wall, seconds, summaries[key] = run(eval_args, procs, threads, cwd)
                    walls[key].append(wall)
                    ends[key].append(seconds)
                    print(f"# {name} round {r + 1} {key}: eval {wall:.2f} s, end-to-end {seconds:.1f} s", flush=True)
                # The claim (issue 8): 2 ranks give exactly the summary of 1 process at the same threads per
                # process. A different intra-op thread count changes float summation order inside the model,
                # which can flip the sign of near-zero gradient pixels: 1x2 is compared on accuracies only.
                same = {k: json.dumps(without_timings(v), sort_keys=True) for k, v in summaries.items()}
                if same["1x1"] != same["2x1"]:
                    raise SystemExit(f"{name}: 2 processes x 1 thread differ from 1 process x 1 thread")
                accuracies = {k: [(a["adv_top1"], a["adv_top5"]) for a in v["attacks"]] for k, v in summaries.items()}
                if accuracies["1x2"] != accuracies["1x1"]:
                    raise SystemExit(f"{name}: 1 process x 2 threads changes the accuracies: {accuracies}")
                ratio_2x1.append(walls["1x2"][-1] / walls["2x1"][-1])
                ratio_1x1.append(walls["1x1"][-1] / walls["2x1"][-1])
            raw[name] = {"n": n, "wall_s": walls, "end_to_end_s": ends}
            rate = {k: n / statistics.median(v) for k, v in walls.items()}
            rows.append(
                (
                    name,
                    n,
                    rate,
                    statistics.median(ratio_2x1),
                    statistics.median(ratio_1x1),
                    {k: statistics.median(v) for k, v in ends.items()},
                    "advlab " + shlex.join(eval_args),
                )
            )
    load = os.getloadavg()
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs, load average {load[0]:.1f}; rounds {args.rounds}")
    print("| workload | images | img/s 1x2 | img/s 1x1 | img/s 2x1 | 2x1/1x2 | 2x1/1x1 | end-to-end s 1x2, 1x1, 2x1 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, n, rate, r21, r11, end, _ in rows:
        ends = ", ".join(f"{end[k]:.1f}" for k in ("1x2", "1x1", "2x1"))
        print(
            f"| {name} | {n} | {rate['1x2']:.1f} | {rate['1x1']:.1f} | {rate['2x1']:.1f} | {r21:.2f} | {r11:.2f} "
            f"| {ends} |"
        )
    for name, *_, command in rows:
        print(f"{name}: {command}")
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
