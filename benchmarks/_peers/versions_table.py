"""The table of benchmarks/compare_versions.sh: an older advlab against this one, row by row, from the JSON files
of their compare_peers.py runs (``old-MODEL-ATTACK.json`` and ``new-MODEL-ATTACK.json`` in a folder).

    python benchmarks/_peers/versions_table.py FOLDER [FOLDER ...]   # several runs: the median of each cell

Columns: the fastest peer of the row (in the new run), each version's CPU time over that peer's in its own
process, the new prepared advlab's CPU time over the old advlab's (the two processes ran at the same time, on
two cores), and it/floor (CPU time per iteration over the raw forward+backward of the same process) of each
advlab row; ``runs`` is the number of folders that hold the row.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

Row = dict[str, Any]
Key = tuple[Any, ...]
COLUMNS = ("old / peer", "new prepared / peer", "new prepared / old", "it/floor: new as given", "new prepared", "old")


def key(r: Row) -> Key:
    return r["workload"], r["name"], bool(r.get("targeted", False)), r.get("setting")


def pick(rows: list[Row], k: Key, library: str) -> Row | None:
    for r in rows:
        if key(r) == k and r["library"] == library and not r.get("error"):
            return r
    return None


def ratio(a: Row | None, b: Row | None) -> float | None:
    return None if a is None or b is None else a["cpu"] / b["cpu"]


def cells(folder: Path) -> dict[Key, tuple[str, list[float | None]]]:
    """Per row of one run: (the fastest peer, the values of COLUMNS)."""
    out: dict[Key, tuple[str, list[float | None]]] = {}
    for new_path in sorted(folder.glob("new-*.json")):
        old_path = folder / new_path.name.replace("new-", "old-", 1)
        new = json.loads(new_path.read_text())["rows"]
        old = json.loads(old_path.read_text())["rows"] if old_path.exists() else []
        for k in dict.fromkeys(key(r) for r in new):
            peers = [r for r in new if key(r) == k and not r["library"].startswith("advlab") and not r.get("error")]
            if not peers:
                continue
            peer = min(peers, key=lambda r: r["cpu"])
            given, prepared, before = pick(new, k, "advlab"), pick(new, k, "advlab (prepared)"), pick(old, k, "advlab")
            out[k] = (
                peer["library"],
                [
                    ratio(before, pick(old, k, peer["library"])),
                    ratio(prepared, peer),
                    ratio(prepared, before),
                    *(r["overhead_cpu"] if r else None for r in (given, prepared, before)),
                ],
            )
    return out


def table(folders: list[Path]) -> str:
    runs = [cells(f) for f in folders]
    lines = ["| workload | attack | peer | " + " | ".join(COLUMNS) + " | runs |", "|---|---|---|" + "---:|" * 7]
    for k in dict.fromkeys(k for run in runs for k in run):
        found = [run[k] for run in runs if k in run]
        values = []
        for i in range(len(COLUMNS)):
            got = [v[1][i] for v in found if v[1][i] is not None]
            values.append(f"{statistics.median(got):.2f}" if got else "-")
        name = k[1] + (" targeted" if k[2] and "targeted" not in k[1] else "")
        lines.append(f"| {k[0].split(' ')[0]} | {name} | {found[0][0]} | " + " | ".join(values) + f" | {len(found)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table([Path(p) for p in sys.argv[1:]]))
