"""The table of benchmarks/compare_versions.sh: an older advlab against this one, row by row, from the JSON files
of their compare_peers.py runs (``old-MODEL-ATTACK.json`` and ``new-MODEL-ATTACK.json`` in one folder).

Columns: the fastest peer of the row (in the new run), each version's CPU time over that peer's in its own
process, the new prepared advlab's CPU time over the old advlab's (the two processes ran at the same time), and
it/floor (CPU time per iteration over the raw forward+backward of the same process) of each advlab row.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

Row = dict[str, Any]


def key(r: Row) -> tuple[Any, ...]:
    return r["workload"], r["name"], bool(r.get("targeted", False)), r.get("setting")


def pick(rows: list[Row], k: tuple[Any, ...], library: str) -> Row | None:
    for r in rows:
        if key(r) == k and r["library"] == library and not r.get("error"):
            return r
    return None


def ratio(a: Row | None, b: Row | None, field: str = "cpu") -> str:
    return "-" if a is None or b is None else f"{a[field] / b[field]:.2f}"


def table(folder: Path) -> str:
    lines = [
        "| workload | attack | peer | old / peer | new prepared / peer | new prepared / old | "
        "it/floor: new as given | new prepared | old |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for new_path in sorted(folder.glob("new-*.json")):
        old_path = folder / new_path.name.replace("new-", "old-", 1)
        new = json.loads(new_path.read_text())["rows"]
        old = json.loads(old_path.read_text())["rows"] if old_path.exists() else []
        keys = list(dict.fromkeys(key(r) for r in new))
        for k in keys:
            peers = [r for r in new if key(r) == k and not r["library"].startswith("advlab") and not r.get("error")]
            if not peers:
                continue
            peer = min(peers, key=lambda r: r["cpu"])
            given, prepared, before = pick(new, k, "advlab"), pick(new, k, "advlab (prepared)"), pick(old, k, "advlab")
            floor = [f"{r['overhead_cpu']:.2f}" if r else "-" for r in (given, prepared, before)]
            name = k[1] + (" targeted" if k[2] and "targeted" not in k[1] else "")
            lines.append(
                f"| {k[0].split(' ')[0]} | {name} | {peer['library']} | "
                f"{ratio(before, pick(old, k, peer['library']))} | {ratio(prepared, peer)} | "
                f"{ratio(prepared, before)} | {' | '.join(floor)} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(Path(sys.argv[1])))
