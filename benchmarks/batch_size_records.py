"""Do a run's records depend on --batch-size? The same images attacked at two batch sizes, record by record.

For the model as given (``prepare=False``) and prepared (``prepare=True``, eval's default): run the attacks at
each batch size, then count the records whose fields differ between the batch sizes: the top-1 outcome
(``success``), the adversarial top-5 order, l0, and l1/l2/linf beyond 1e-9 (relative), and the largest difference
of an adversarial probability. Differences come from float rounding of batched convolutions (a kernel's
reduction order depends on the batch size), amplified by the attacks' iterations (PGD's sign steps, CW's Adam
steps), and for CW with its default ``abort_early`` from the batch-wide end of a binary-search round; the
``abort_early=False`` row isolates the rounding. Results: docs/benchmarks.md.

    PYTHONPATH=src .venv/bin/python benchmarks/batch_size_records.py --limit 16 --batch 1 8 --prepare no
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from advlab.data import LimitedDataset, load_dataset, transform_for
from advlab.evaluate import evaluate, make_spec
from advlab.models import load_model

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imagenet-30x5"


def compare(a: dict, b: dict, ids: list[str]) -> dict[str, float]:
    out = {"records": 0, "success": 0, "adv_top5": 0, "l0": 0, "l1/l2/linf": 0, "max |d prob|": 0.0}
    for aid in ids:
        ra = sorted(a[aid], key=lambda r: r["index"])
        rb = sorted(b[aid], key=lambda r: r["index"])
        for x, y in zip(ra, rb, strict=True):
            out["records"] += 1
            out["success"] += x["success"] != y["success"]
            out["adv_top5"] += x["adv_top5"] != y["adv_top5"]
            out["l0"] += x["l0"] != y["l0"]
            out["l1/l2/linf"] += any(abs(x[k] - y[k]) > 1e-9 * max(abs(x[k]), 1e-12) for k in ("l1", "l2", "linf"))
            d = max(abs(p - q) for p, q in zip(x["adv_probs"], y["adv_probs"], strict=True))
            out["max |d prob|"] = max(out["max |d prob|"], d)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--limit", type=int, default=16)
    parser.add_argument("--batch", nargs=2, type=int, default=[1, 8])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prepare", choices=["both", "yes", "no"], default="both")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    data = LimitedDataset(load_dataset(args.data, transform=transform_for(model)), args.limit)
    specs = [
        make_spec("fgsm", {"eps": "4/255"}),
        make_spec("pgd", {"eps": "4/255", "steps": 10}),
        make_spec("cw_l2", {"steps": 20, "binary_search_steps": 2}),
        make_spec("cw_l2", {"steps": 20, "binary_search_steps": 2, "abort_early": False}),
    ]
    print(f"{args.model}, first {args.limit} images of {args.data}, batch sizes {args.batch[0]} vs {args.batch[1]}")
    print("| model | attack | records | success | adv top-5 order | l0 | l1, l2 or linf | max abs dprob |")
    print("|---|---|---|---|---|---|---|---|")
    for prepare in {"both": (False, True), "yes": (True,), "no": (False,)}[args.prepare]:
        runs = []
        start = time.perf_counter()
        for bs in args.batch:
            with tempfile.TemporaryDirectory() as out:
                runs.append(evaluate(model, data, specs, out=out, batch_size=bs, quiet=True, prepare=prepare).records)
        label = "prepared" if prepare else "as given"
        for ids in [[s.id] for s in specs] + [[s.id for s in specs]]:
            c = compare(*runs, ids)
            name = ids[0] if len(ids) == 1 else "all"
            print(
                f"| {label} | {name} | {c['records']} | {c['success']} | {c['adv_top5']} | {c['l0']} | "
                f"{c['l1/l2/linf']} | {c['max |d prob|']:.2e} |",
                flush=True,
            )
        print(f"({label}: {time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
