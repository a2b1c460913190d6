"""Under torchrun, rank 0 holds the run directory's lock over the run AND what follows it (the adaptive suite's
rewrite of summary.json; in ``advlab eval`` also the claim and the report): review 2, F11. Two hand-started ranks
with the environment torchrun gives its workers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .test_distributed import _env, free_port

RANK_SCRIPT = r"""
import sys
import torch
from torch import nn
from advlab import runtime
from advlab.evaluate import adaptive
from advlab.runtime.lock import RunLock, RunLockedError

info = runtime.setup("cpu")
out = sys.argv[1]


class Code(nn.Module):  # class round(10 x[0]), a wide margin: robust at eps 0.01 (no record copied between suites)

    def __init__(self):
        super().__init__()
        self.register_buffer("classes", torch.arange(10.0))

    def forward(self, x):
        return -100 * (10 * x.flatten(1)[:, :1] - self.classes) ** 2


model = Code()
x, y = torch.zeros(4, 1, 8, 8), torch.arange(4)
x[:, 0, 0, 0] = y / 10


class Items:
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return x[i], int(y[i]), i


compare = adaptive.compare


def compare_while_a_second_writer_tries(summary, plan):  # after the sharded run, before the rewrite
    if info.is_main:
        try:
            RunLock(out).acquire().release()
            print("second writer: let in", flush=True)
        except RunLockedError:
            print("second writer: refused", flush=True)
    return compare(summary, plan)


adaptive.compare = compare_while_a_second_writer_tries
quick = {"steps": 3, "n_target_classes": 1, "square_queries": 10}
adaptive.evaluate_adaptive(model, Items(), [0.01], batch_size=2, naive="fast", adaptive_params=quick, out=out,
                           quiet=True, info=info)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="flock and gloo on Linux")
def test_rank_0_holds_the_lock_over_the_adaptive_rewrite(tmp_path: Path) -> None:
    port = str(free_port())
    out = tmp_path / "run"
    procs = []
    for rank in range(2):
        env = _env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parent.parent / "src"),
                                             env.get("PYTHONPATH", "")])  # fmt: skip
        procs.append(subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, str(out)], cwd=tmp_path, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))  # fmt: skip
    results = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(r[1][-3000:] for r in results)
    assert "second writer: refused" in results[0][0], results[0]
    assert (out / "summary.json").exists()
