"""advlab's "strong" suite against AutoAttack "standard" (PyPI ``pyautoattack``), side by side.

For each model: the same images, labels, eps and norm go through ``advlab.evaluate.suite.run_suite`` and
``pyautoattack.AutoAttack(version="standard").run_standard_evaluation``, one after the other in this process.
Reported: clean and robust accuracy of both, wall time of both, the time ratio (advlab / AutoAttack; the
target is <= 0.5), and the per-sample disagreement (samples one of them broke and the other did not).

Models: the shipped Fashion-MNIST models (``fmnist_cnn_pgd``, ``fmnist_cnn_standard``; 1,000 test images,
eps 0.1) and the default ImageNet model (``efficientnet_lite0``; a spread of images from
../shared/data/imagenet-30x5, eps 1/255). ``--fmnist-weights DIR`` reads ``DIR/<name>.safetensors`` instead
of the shipped files (for development before they exist).

    nice -n 10 .venv/bin/python benchmarks/suite_vs_autoattack.py --threads 2 --out /tmp/suite_vs_aa.json

``--device cuda`` runs both on a GPU (robust accuracies are the device's; times are wall times there).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from advlab.evaluate.suite import DEFAULT_SQUARE_QUERIES, run_suite
from benchmarks._peers.measure import sync
from benchmarks._peers.workload import batch_slices

ROOT = Path(__file__).resolve().parents[1]
IMAGENET = ROOT.parent / "shared" / "data" / "imagenet-30x5" / "labels.csv"


def fmnist_model(name: str, weights_dir: Path | None) -> nn.Module:
    from advlab.models.small import BUILTIN, build, load_builtin

    if weights_dir is None:
        return load_builtin(name)
    from safetensors.torch import load_file

    model = build(BUILTIN[name][0])
    model.load_state_dict(load_file(str(weights_dir / f"{name}.safetensors")))
    return model.eval()


def fmnist_data(n: int) -> tuple[Tensor, Tensor]:
    from advlab.data import FashionMNIST

    x, y = FashionMNIST("test").tensors()
    return x[:n].contiguous(), y[:n].contiguous()


def imagenet_model() -> nn.Module:
    from advlab.models import load_model

    return load_model("efficientnet_lite0")


def imagenet_data(model: nn.Module, n: int) -> tuple[Tensor, Tensor]:
    from advlab.data import load_dataset, transform_for

    data = load_dataset(IMAGENET, transform=transform_for(model))
    step = max(len(data) // n, 1)
    items = [data[i] for i in range(0, step * n, step)]
    return torch.stack([it[0] for it in items]), torch.tensor([int(it[1]) for it in items])


def run_advlab(model: nn.Module, x: Tensor, y: Tensor, eps: float, batch: int, queries: int) -> dict[str, Any]:
    sync(x.device)
    start, cpu = time.perf_counter(), time.process_time()
    parts = [
        run_suite(model, x[s], y[s], eps, "linf", seed=torch.arange(s.start, s.stop), square_queries=queries)
        for s in batch_slices(x.shape[0], batch)
    ]
    sync(x.device)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    from advlab.evaluate.suite import SuiteResult

    res = SuiteResult.concat(parts)
    return {
        "robust": res.robust.cpu(),
        "clean_accuracy": res.clean_accuracy,
        "robust_accuracy": res.robust_accuracy,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "stages": [vars(s) for s in res.stages],
    }


def run_autoattack(model: nn.Module, x: Tensor, y: Tensor, eps: float, batch: int) -> dict[str, Any]:
    from pyautoattack import AutoAttack

    logging.getLogger("auto-attack").setLevel(logging.ERROR)
    adversary = AutoAttack(model, norm="Linf", eps=eps, version="standard", device=str(x.device), seed=0)
    sync(x.device)
    start, cpu = time.perf_counter(), time.process_time()
    _, y_adv = adversary.run_standard_evaluation(x, y, batch_size=batch)
    sync(x.device)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    robust = (y_adv == y).cpu()
    return {
        "robust": robust,
        "clean_accuracy": clean,
        "robust_accuracy": robust.float().mean().item(),
        "seconds": seconds,
        "cpu_seconds": cpu,
    }


def compare(name: str, model: nn.Module, x: Tensor, y: Tensor, eps: float, batch: int, queries: int) -> dict[str, Any]:
    print(f"== {name}: {x.shape[0]} images, Linf eps {eps:.5g}", flush=True)
    ours = run_advlab(model, x, y, eps, batch, queries)
    print(
        f"   advlab strong: robust {ours['robust_accuracy']:.4f} in {ours['seconds']:.1f} s", ours["stages"], flush=True
    )
    aa = run_autoattack(model, x, y, eps, batch)
    print(f"   AutoAttack standard: robust {aa['robust_accuracy']:.4f} in {aa['seconds']:.1f} s", flush=True)
    return {
        "model": name,
        "n": int(x.shape[0]),
        "eps": eps,
        "clean_accuracy": ours["clean_accuracy"],
        "advlab_robust_accuracy": ours["robust_accuracy"],
        "autoattack_robust_accuracy": aa["robust_accuracy"],
        "advlab_seconds": ours["seconds"],
        "autoattack_seconds": aa["seconds"],
        "time_ratio": ours["seconds"] / aa["seconds"],
        "advlab_cpu_seconds": ours["cpu_seconds"],
        "autoattack_cpu_seconds": aa["cpu_seconds"],
        "cpu_time_ratio": ours["cpu_seconds"] / aa["cpu_seconds"],
        "robust_only_in_advlab": int((ours["robust"] & ~aa["robust"]).sum()),
        "robust_only_in_autoattack": int((~ours["robust"] & aa["robust"]).sum()),
        "advlab_stages": ours["stages"],
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| model | n | eps | clean | robust: advlab strong | robust: AutoAttack standard | time advlab (s) "
        "| time AutoAttack (s) | ratio (wall) | ratio (CPU) | robust only in advlab / only in AA |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['n']} | {r['eps']:.4g} | {r['clean_accuracy']:.3f} | "
            f"{r['advlab_robust_accuracy']:.3f} | {r['autoattack_robust_accuracy']:.3f} | {r['advlab_seconds']:.1f} | "
            f"{r['autoattack_seconds']:.1f} | {r['time_ratio']:.2f} | {r['cpu_time_ratio']:.2f} | "
            f"{r['robust_only_in_advlab']} / {r['robust_only_in_autoattack']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="fmnist_cnn_pgd,fmnist_cnn_standard,efficientnet_lite0")
    parser.add_argument("--fmnist-n", type=int, default=1000)
    parser.add_argument("--fmnist-eps", type=float, default=0.1)
    parser.add_argument("--imagenet-n", type=int, default=16)
    parser.add_argument("--imagenet-eps", type=float, default=1 / 255)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--square-queries", type=int, default=DEFAULT_SQUARE_QUERIES)
    parser.add_argument("--fmnist-weights", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    args = parser.parse_args()
    try:
        args.device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device: expected cpu, cuda or cuda:N, got {args.device!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for name in args.models.split(","):
        if name.startswith("fmnist"):
            model = fmnist_model(name, args.fmnist_weights)
            x, y = fmnist_data(args.fmnist_n)
            model, x, y = model.to(args.device), x.to(args.device), y.to(args.device)
            rows.append(compare(name, model, x, y, args.fmnist_eps, args.batch, args.square_queries))
        else:
            model = imagenet_model()
            x, y = imagenet_data(model, args.imagenet_n)
            model, x, y = model.to(args.device), x.to(args.device), y.to(args.device)
            rows.append(compare(name, model, x, y, args.imagenet_eps, args.batch, args.square_queries))
    print(table(rows))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
