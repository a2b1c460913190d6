"""End-to-end time of ``advlab reproduce``: the demo (default model, default 20-image sample) and the full
protocol (default model, the 30 x 5 selection of ../shared/data/imagenet-30x5).

Issue 4's targets on 2 CPU cores: demo <= 5 minutes, full protocol <= 20 minutes. Each run starts a fresh
process in a fresh run directory (nothing to resume), exactly as a user types it, so interpreter start-up,
model loading, every attack, the plots and the HTML report are all inside the measured time.

    nice -n 10 .venv/bin/python benchmarks/reproduce_time.py --which demo full
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "imagenet-30x5"
TARGET_S = {"demo": 5 * 60, "full": 20 * 60}


def run(which: str, keep: Path | None) -> dict[str, object]:
    out = (keep or Path(tempfile.mkdtemp(prefix="advlab-reproduce-"))) / which
    cmd = [sys.executable, "-m", "advlab", "reproduce", "--out", str(out), "--quiet"]
    if which == "full":
        cmd += ["--data", str(SHARED)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=os.environ.copy())
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{which}: advlab reproduce failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    images = summary["n_samples"]
    return {
        "which": which,
        "command": " ".join(["advlab", *cmd[3:]]),
        "images": images,
        "wall_s": round(wall, 1),
        "target_s": TARGET_S[which],
        "within_target": wall <= TARGET_S[which],
        "report": str(out / "report.html"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--which", nargs="+", choices=("demo", "full"), default=["demo", "full"])
    ap.add_argument("--keep", type=Path, default=None, help="write the run directories here (default: a temp dir)")
    ap.add_argument("--json", default="", help="also write the results to this file")
    args = ap.parse_args()
    if "full" in args.which and not SHARED.is_dir():
        raise SystemExit(f"the full protocol needs {SHARED} (the shared 30 x 5 set)")
    rows = [run(which, args.keep) for which in args.which]
    print("| run | images | wall (s) | target (s) | within |\n|---|---:|---:|---:|---|")
    for r in rows:
        print(f"| `{r['command']}` | {r['images']} | {r['wall_s']} | {r['target_s']} | {r['within_target']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
