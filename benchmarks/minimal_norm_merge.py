"""One minimal_norm.py table from several of its ``--save`` files on the same images.

A long run splits over processes two ways: by entries (``--entries``: each process runs some of the attacks
on all the images) and by images (``--shard I/K``: each runs on part I of K). This joins the files: per norm and
entry, the parts of a sharded entry in order (all K must be there), an entry run on all the images as it is;
then every entry is scored against all the others (AttackBench's optimality, as minimal_norm.py scores a run),
and the ensemble's row is added, per sample the smallest distance of its members (attacks.MINIMAL_MEMBERS),
where all of them are there and no file holds a run of the ensemble itself (``--run-ensemble``: that row is
kept as it is). Every file must be of the same kept images (``all_images_sha256``, or ``images_sha256`` for a
file of all of them), model, device, clock and ``--steps``, and entries may not repeat; other settings that
differ (``--batch``, ``--threads``, ...) are printed. The time column is the sum of the parts' median seconds
(the ensemble's, its members' sum), so it means what minimal_norm.py's does only when the parts ran alike (same
machine, one thread each, the same --batch); the table says which files it joined.

    .venv/bin/python benchmarks/minimal_norm_merge.py a.json b.json [--norms l2] [--save joined.json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.minimal_norm import ENSEMBLE, add_ensemble_row, norm_record, score, write_json


@dataclass
class Pieces:
    """One entry of one norm: its per-sample distances and fragile flags, and its seconds, by shard."""

    parts: int
    distance: dict[int, list[float]] = field(default_factory=dict)
    fragile: dict[int, list[bool] | None] = field(default_factory=dict)
    seconds: dict[int, float] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)


def images_key(record: dict) -> str:
    """The hash of all the kept images the file's run drew from (older files: of its own images)."""
    return record.get("all_images_sha256") or record["images_sha256"]


# Settings every joined file must share (the rows are otherwise not of one experiment); others are reported.
SAME = ("model", "images", "device", "steps")


def check_alike(records: dict[str, dict]) -> list[str]:
    """A ValueError where a file is not a minimal_norm.py --save record or the files are of other images,
    clocks or SAME settings; the other settings that differ between them, as lines to print."""
    for path, record in records.items():
        shape = isinstance(record, dict) and isinstance(record.get("norms"), dict) and "images_sha256" in record
        if not shape:
            raise ValueError(f"{path}: not a minimal_norm.py --save file (no 'norms' and 'images_sha256')")
    by_images: dict[str, list[str]] = {}
    for path, record in records.items():
        by_images.setdefault(images_key(record), []).append(path)
    if len(by_images) != 1:
        sets = "; ".join(", ".join(paths) for paths in by_images.values())
        raise ValueError(f"the files are of {len(by_images)} different image sets: {sets}")
    clocks = {r.get("clock") for r in records.values()}
    if len(clocks) != 1:
        raise ValueError(f"the files time with different clocks ({', '.join(sorted(map(str, clocks)))})")
    notes = []
    per_run = {"shard", "entries", "repeats", "norms", "save"}
    keys = sorted({k for r in records.values() for k in r.get("settings", {})} - per_run)
    for key in keys:
        values = {path: r.get("settings", {}).get(key) for path, r in records.items()}
        if len({json.dumps(v) for v in values.values()}) > 1:
            if key in SAME:
                raise ValueError(f"--{key.replace('_', '-')} differs between the files: {values}")
            notes.append(f"--{key.replace('_', '-')} differs between the files: {values}")
    return notes


def merge(records: dict[str, dict], norms: list[str] | None = None) -> dict[str, dict[str, Pieces]]:
    """Per norm and entry, the pieces of every file; a usage error (ValueError) names what does not fit."""
    joined: dict[str, dict[str, Pieces]] = {}
    for path, record in records.items():
        part, parts = record.get("shard") or (1, 1)
        for norm, entries in record["norms"].items():
            if norms is not None and norm not in norms:
                continue
            for name, entry in entries.items():
                if entry.get("members"):  # a derived row (the ensemble): rebuilt from the joined members
                    continue
                pieces = joined.setdefault(norm, {}).setdefault(name, Pieces(parts))
                if pieces.parts != parts:
                    raise ValueError(f"{norm} {name!r}: {path} splits it in {parts}, {pieces.files} in {pieces.parts}")
                if part in pieces.distance:
                    raise ValueError(f"{norm} {name!r}: {path} repeats its part {part} of {parts} ({pieces.files})")
                flagged = None if entry["fragile_samples"] is None else set(entry["fragile_samples"])
                pieces.distance[part] = [math.inf if v is None else v for v in entry["distance"]]
                pieces.fragile[part] = (
                    None if flagged is None else [i in flagged for i in range(len(entry["distance"]))]
                )
                pieces.seconds[part] = statistics.median(entry["seconds"])
                pieces.files.append(path)
    for norm, entries in joined.items():
        for name, pieces in entries.items():
            missing = sorted(set(range(1, pieces.parts + 1)) - set(pieces.distance))
            if missing:
                raise ValueError(f"{norm} {name!r}: shards {missing} of {pieces.parts} missing ({pieces.files})")
            total = {r.get("all_images") for r in records.values() if r.get("shard")}
            count = sum(len(d) for d in pieces.distance.values())
            if pieces.parts > 1 and total != {count}:
                raise ValueError(f"{norm} {name!r}: its shards hold {count} images, their files say {total}")
    return joined


def table(entries: dict[str, Pieces], norm: str) -> tuple[dict, dict, dict, dict]:
    """The joined distances, fragile flags (where every part has them), seconds and derived rows of one norm,
    with the ensemble's row where all its members are there."""
    distances, flips, seconds = {}, {}, {}
    for name, p in entries.items():
        order = range(1, p.parts + 1)
        distances[name] = torch.tensor([v for i in order for v in p.distance[i]], dtype=torch.float64)
        if all(p.fragile[i] is not None for i in order):
            flips[name] = torch.tensor([v for i in order for v in p.fragile[i]])
        seconds[name] = [sum(p.seconds.values())]
    sizes = {len(d) for d in distances.values()}
    if len(sizes) != 1:
        raise ValueError(f"{norm}: the joined entries have {sorted(sizes)} samples; expected one count")
    derived = {}
    members = add_ensemble_row(norm, distances, flips)  # none over a run of the ensemble itself: that row is kept
    if members is not None:
        seconds[ENSEMBLE] = [sum(seconds[m][0] for m in members)]
        derived[ENSEMBLE] = members
    return distances, flips, seconds, derived


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="minimal_norm.py --save files of the same images")
    parser.add_argument("--norms", default="", help="comma-separated norms to join (default: all)")
    parser.add_argument("--save", default="", help="write the joined table as a minimal_norm.py --save file")
    args = parser.parse_args()
    records = {}
    for path in args.files:
        try:
            records[path] = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            parser.error(f"{path}: {err}")
    try:
        notes = check_alike(records)
        joined = merge(records, [n for n in args.norms.split(",") if n] or None)
        tables = {norm: table(entries, norm) for norm, entries in joined.items()}
    except ValueError as err:
        parser.error(str(err))
    if not tables:
        parser.error(f"no norm of --norms {args.norms!r} in the files")
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    first = next(iter(records.values()))
    clock = first["clock"]
    saved = {}
    for norm, (distances, flips, seconds, derived) in tables.items():
        rows = score(distances, flips)
        n = len(next(iter(distances.values())))
        print(f"\n{first['workload']}, {norm}: {n} images, from {', '.join(args.files)}")
        print(f"| entry | success | fragile | median | optimality | {clock} |\n|---|---|---|---|---|---|")
        for name, row in rows.items():
            fragile = "-" if row.fragile is None else str(row.fragile)
            print(
                f"| {name} | {row.success:.3f} | {fragile} | {row.median:.4g} | {row.optimality:.4f} | "
                f"{seconds[name][0]:.1f} |"
            )
        own = {name: s for name, s in seconds.items() if name not in derived}  # derived rows: no seconds of their own
        saved[norm] = norm_record(rows, distances, flips, own, derived)
    if args.save:  # a record of all the images, which can be joined again
        header = {k: first[k] for k in ("workload", "clock")}
        key = images_key(first)
        header.update(images=n, images_sha256=key, shard=None, all_images=n, all_images_sha256=key)
        header.update(settings={k: first.get("settings", {}).get(k) for k in SAME}, joined=args.files)
        write_json(Path(args.save), {**header, "norms": saved})


if __name__ == "__main__":
    main()
