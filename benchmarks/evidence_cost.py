"""What the evidence costs: ``--save-adversarial`` against a plain run, and ``advlab verify`` against a clean
evaluation (issue 20's "Where it must stand").

EfficientNet-Lite0 (prepared, as the CLI runs it) and the strong suite on a seeded stratified sample of the
shared 30 x 5 ImageNet images. Per round, in alternating order, the same run without and with
``save_adversarial`` in fresh run directories (CPU seconds of ``evaluate``); then ``verify_run`` on the saved
run against a clean evaluation as ``evaluate`` runs it (data loading, the model prepared once on the first
batch, one forward pass per image, the same batches). Targets: saving
costs <= 5% more time; verify <= the clean evaluation (since it checks the records' clean predictions, verify
forwards the clean images too, and since it checks the uint8 evidence the kept uint8 images: about three clean
evaluations). Disk use per image is measured on the saved files.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/evidence_cost.py --n 32 --rounds 2

``--verify-run DIR`` times only verify against the clean evaluation, on a finished ``--save-adversarial`` run
made with the same ``--n`` and batch size (e.g. a 150-image strong-suite run, too slow to redo every round on
a loaded 2-core machine), verify and clean in alternating order per round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from advlab.data import load_dataset, sample_dataset, transform_for
from advlab.evaluate import evaluate, load_batch, make_spec, plan_batches, suite_specs
from advlab.evaluate.verify import verify_run
from advlab.models import load_model, prepare

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "imagenet-30x5"


def cpu(fn):  # type: ignore[no-untyped-def]
    start = time.process_time()
    out = fn()
    return out, time.process_time() - start


def verify_against_clean(run, model, data, batch_size, k, verify_s, clean_s):  # type: ignore[no-untyped-def]
    """One round: verify_run on ``run`` and a clean evaluation of the same data (as evaluate() runs it: the model
    prepared once on the first batch, one forward pass per batch), in alternating order by round ``k``."""

    def clean() -> None:
        fwd = None
        with torch.no_grad():
            for b in plan_batches(len(data), batch_size):
                x, _, _ = load_batch(data, list(b), torch.device("cpu"))
                fwd = fwd or prepare(model, x)
                fwd(x)

    v = None
    for which in ("verify", "clean") if k % 2 == 0 else ("clean", "verify"):
        if which == "verify":
            v, s = cpu(lambda: verify_run(run, model, data))
            assert v.ok, v.mismatches
            verify_s.append(s)
        else:
            _, s = cpu(clean)
            clean_s.append(s)
    return v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=SHARED)
    ap.add_argument("--n", type=int, default=32, help="images (a stratified sample of the data, seed 0)")
    ap.add_argument("--eps", default="1/255")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument(
        "--attack",
        choices=("strong", "fgsm"),
        default="strong",
        help="the strong suite, or FGSM: verify's cost depends only on the saved examples (one per sample either "
        "way), so FGSM measures verify on many images cheaply (its save overhead is a worst case, not the target)",
    )
    ap.add_argument("--verify-run", type=Path, default=None, help="time verify on this finished saved run only")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_model("efficientnet_lite0")
    data = sample_dataset(load_dataset(str(args.data), transform=transform_for(model)), args.n, seed=0)
    specs = suite_specs("strong", [args.eps], {}) if args.attack == "strong" else [make_spec("fgsm", {"eps": args.eps})]
    plain_s: list[float] = []
    saved_s: list[float] = []
    verify_s: list[float] = []
    clean_s: list[float] = []
    if args.verify_run is not None:
        for k in range(args.rounds):
            v = verify_against_clean(args.verify_run, model, data, args.batch_size, k, verify_s, clean_s)
            print(f"round {k}: verify {verify_s[-1]:.2f} s, clean {clean_s[-1]:.2f} s (CPU)", flush=True)
        row = {
            "verify_run": str(args.verify_run),
            "n": args.n,
            "verify_cpu_s": verify_s,
            "clean_eval_cpu_s": clean_s,
            "verify_over_clean": statistics.median(a / b for a, b in zip(verify_s, clean_s, strict=True)),
            "verify_forward_passes": v.forward_passes,
            "verify_images_forwarded": v.images_forwarded,
            "verify_clean_images": v.clean_forwarded,
            "verify_records_checked": v.checked,
        }
        print(json.dumps(row, indent=2))
        return
    disk = 0
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.rounds):
            order = [False, True] if k % 2 == 0 else [True, False]
            for save in order:
                out = Path(tmp) / f"r{k}-{int(save)}"
                _, s = cpu(lambda out=out, save=save: evaluate(
                    model, data, specs, out=out, batch_size=args.batch_size, quiet=True, save_adversarial=save
                ))  # fmt: skip
                (saved_s if save else plain_s).append(s)
            run = Path(tmp) / f"r{k}-1"
            disk = sum(f.stat().st_size for f in (run / "adversarial").rglob("*.safetensors"))
            v = verify_against_clean(run, model, data, args.batch_size, k, verify_s, clean_s)
            print(f"round {k}: plain {plain_s[-1]:.1f} s, saved {saved_s[-1]:.1f} s, verify {verify_s[-1]:.2f} s, "
                  f"clean {clean_s[-1]:.2f} s (CPU)", flush=True)  # fmt: skip
    ratios = [b / a for a, b in zip(plain_s, saved_s, strict=True)]
    row = {
        "attack": args.attack,
        "n": args.n,
        "eps": args.eps,
        "plain_cpu_s": statistics.median(plain_s),
        "saved_cpu_s": statistics.median(saved_s),
        "saved_over_plain": statistics.median(ratios),
        "saved_over_plain_rounds": ratios,
        "verify_cpu_s": statistics.median(verify_s),
        "clean_eval_cpu_s": statistics.median(clean_s),
        "verify_over_clean": statistics.median(v / c for v, c in zip(verify_s, clean_s, strict=True)),
        "disk_bytes_per_image": disk / args.n,
        "verify_forward_passes": v.forward_passes,
        "verify_images_forwarded": v.images_forwarded,
        "verify_clean_images": v.clean_forwarded,
    }
    print(json.dumps(row, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=2) + "\n")


if __name__ == "__main__":
    main()
