"""Naive against adaptive attacks on the input-transformation defences of advlab.defenses (issue 18).

For each defence wrapped around each shipped Fashion-MNIST model: clean accuracy, robust accuracy under naive PGD
(the defended model attacked as it is), under adaptive PGD (BPDA around a non-differentiable transform, EOT over a
random one; Athalye, Carlini & Wagner 2018), and of the undefended model under the same PGD. These defences add no
robustness against an adaptive attacker, so the adaptive number should come near the undefended one, while naive
PGD overstates robustness where the defence masks gradients.

    .venv/bin/python benchmarks/adaptive.py --subset 20 --threads 2        # 500 test images
    .venv/bin/python benchmarks/adaptive.py --suite --subset 100 --models fmnist_cnn_standard   # the suites
    .venv/bin/python benchmarks/adaptive.py --imagenet ../shared/data/imagenet-30x5 --images 20 --steps 10 \
        --eot 4 --defences "bit_depth(bits=3)"            # EfficientNet-Lite0 (eps 4/255, alpha 1/255)
    python benchmarks/adaptive.py --suite --device cuda --imagenet DIR --images 150   # every defence, on a GPU

``--device cuda`` puts the models and images on the GPU (the seeds stay per-sample integers, the attacks' noise
is drawn on the CPU as everywhere in advlab) and times with ``torch.cuda.synchronize`` on both sides. With
``--imagenet`` the defaults are EfficientNet-Lite0, Linf eps 4/255, alpha 1/255 and the defences of
``IMAGENET_DEFENCES`` (Gaussian noise at sigma 0.03: 0.1 leaves an ImageNet image unrecognisable).
``--out FILE`` also writes the JSON rows there, one a line. ``--suite --batch N`` attacks N images at a time (a
full batch of 150 EfficientNet-Lite0 images takes 13-14 GB on the CPU). The attacks' per-sample seeds follow the
samples, so on a deterministic model the split changes a result only through float rounding; a random defence
draws its noise from torch's global generator in call order, so its attack rows depend on ``--batch``, while
the judgements (per-sample streams of the engine's Judge) do not.

With ``--suite`` the columns are: clean, naive PGD, the adaptive suite (:mod:`advlab.evaluate.adaptive`: the
checks on the first 16 images, then EOT with K from the gradient variance (capped at ``--eot-cap``) and BPDA
around the modules the probe flags, plus Square) and the ``strong`` suite on the undefended model; with
``--naive-suite`` the naive ``strong`` suite on the defended model as well (a sample then counts robust only if
both suites left it). A random defence is judged on its expected prediction (mean softmax over
``--judge-draws``), a deterministic one on one forward. The clean, naive-PGD and re-judged columns judge by the
engine's rule (:class:`advlab.evaluate.engine.Judge`, what ``advlab eval`` records): common random numbers, each
sample's clean and attacked points on the same draws of its own per-sample stream (keyed by the run seed 0 and
its test-set index); the adaptive column is the suite's own judgement (its K draws, common to a sample's clean
and stage points).

PGD: Linf eps 0.1, ``--steps`` steps of ``--alpha``, one random start seeded by the test-set index. A sample counts
as robust under the adaptive attack only if neither the naive nor the adaptive attack broke it (the defender faces
both). Accuracy at a point is one forward of the defended model (one fresh draw for a random defence), as the
deployed model would answer. Prints one JSON line per (model, defence) and a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from advlab import attacks
from advlab.data.fashion_mnist import load_fashion_mnist, to_float_images
from advlab.defenses import bpda, defended, parse_defense
from advlab.models import load_model
from benchmarks._peers.workload import batch_slices

# defence -> how the adaptive attack handles it: "bpda" (identity backward around it) or "eot" (expectation)
DEFENCES: dict[str, str] = {
    "bit_depth(bits=3)": "bpda",
    "median(size=3)": "bpda",
    "jpeg(quality=75)": "bpda",
    "random_resize_pad(min_ratio=0.9)": "eot",
    "gaussian_noise(sigma=0.1)": "eot",
}
IMAGENET_DEFENCES = [*list(DEFENCES)[:4], "gaussian_noise(sigma=0.03)"]


def clock(device: torch.device) -> float:
    """Wall time, after the device's queued work has finished (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def emit(row: dict, args: argparse.Namespace) -> None:
    """One JSON line on stdout, and in ``--out`` if given."""
    line = json.dumps(row)
    print(line, flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")


@torch.no_grad()
def correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> torch.Tensor:
    return torch.cat([model(x[i : i + batch]).argmax(1) == y[i : i + batch] for i in range(0, len(y), batch)])


def robust(model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, args, eot: int = 1) -> torch.Tensor:
    """Per sample: still correct at PGD's point (evaluated by one forward of ``model``)."""
    x_adv = attacks.pgd(model, x, y, args.eps, alpha=args.alpha, steps=args.steps, seed=idx, eot_samples=eot)
    return correct(model, x_adv, y)


def engine_judged(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, draws: int, batch: int = 250
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Per chunk of ``batch`` images, the engine's :class:`~advlab.evaluate.engine.Judge` over ``draws`` (run seed
    0, the test-set indices): ``right(points)`` says per sample whether the expected prediction at its point is
    its label, judged on the same per-sample draws as its clean point (common random numbers)."""
    from advlab.evaluate.engine import Judge

    chunks = batch_slices(len(y), batch)
    judges = [Judge(net, x[c], 0, idx[c].tolist(), draws) for c in chunks]

    def right(points: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([j.logits(points[c]).argmax(1) == y[c] for c, j in zip(chunks, judges, strict=True)])

    return right


def suite_rows(args: argparse.Namespace, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> None:
    """One row per (model, defence): clean, naive PGD, [naive strong suite,] adaptive suite, undefended strong.

    Accuracy of a random defence is judged on its expected prediction (the mean softmax over ``--judge-draws``
    forwards: the smoothed classifier's prediction; the engine's Judge, common random numbers), of a deterministic
    one on one forward. The adaptive suite's number is its own (it ends with Square on the model as given, so it
    covers the naive attacks' ground); with ``--naive-suite`` the naive ``strong`` suite runs too and the adaptive
    number counts a sample robust only if both suites left it.
    """
    from advlab.evaluate.adaptive import adaptive_suite, plan_adaptive
    from advlab.evaluate.suite import SuiteResult, run_suite

    print(f"{'model':22} {'defence':44} {'clean':>6} {'naive':>6} {'adapt':>6} {'undef':>6}  fix", flush=True)
    chunks = batch_slices(len(y), args.batch)

    def strong_suite(net: torch.nn.Module) -> SuiteResult:
        """The ``strong`` suite on every image, ``--batch`` images at a time."""
        return SuiteResult.concat([run_suite(net, x[c], y[c], args.eps, seed=idx[c], suite="strong") for c in chunks])

    for name in args.models:
        model = load_model(name).to(args.device)
        t0 = clock(args.device)
        base = strong_suite(model)
        base_s = clock(args.device) - t0
        for spec in args.defences:
            net = defended(model, parse_defense(spec))
            t0 = clock(args.device)
            plan = plan_adaptive(net, x[:16], y[:16], args.eps, seed=0, eot_cap=args.eot_cap)
            t_plan = clock(args.device) - t0
            draws = args.judge_draws if plan.eot_samples > 1 else 1
            t0 = clock(args.device)
            right = engine_judged(net, x, y, idx, draws)
            clean = right(x)
            x_pgd = torch.cat([
                attacks.pgd(net, x[c], y[c], args.eps, alpha=args.alpha, steps=args.steps, seed=idx[c]) for c in chunks
            ])  # fmt: skip
            naive_pgd = clean & right(x_pgd)
            t_pgd = clock(args.device) - t0
            naive_suite, t_naive = None, 0.0
            if args.naive_suite:
                t0 = clock(args.device)
                naive_suite = strong_suite(net).robust
                t_naive = clock(args.device) - t0
            t0 = clock(args.device)
            results = [
                adaptive_suite(
                    net, x[c], y[c], args.eps, eot_samples=plan.eot_samples, bpda=",".join(plan.bpda), seed=idx[c]
                )
                for c in chunks
            ]
            broken = torch.cat([r.success for r in results])
            t_adaptive = clock(args.device) - t0
            robust = ~broken if naive_suite is None else naive_suite & ~broken
            judge_robust = clean & right(torch.cat([r.x_adv for r in results]))  # re-judged by the engine's rule
            row = {
                "model": name,
                "defence": spec,
                "images": len(y),
                "batch": args.batch,
                "clean_acc": round(clean.double().mean().item(), 4),
                "naive_pgd_acc": round(naive_pgd.double().mean().item(), 4),
                "naive_suite_acc": None if naive_suite is None else round(naive_suite.double().mean().item(), 4),
                "adaptive_suite_acc": round(robust.double().mean().item(), 4),
                "adaptive_rejudged_acc": round((judge_robust & robust).double().mean().item(), 4),
                "undefended_clean_acc": round(base.clean_accuracy, 4),
                "undefended_strong_acc": round(base.robust_accuracy, 4),
                "eot_samples": plan.eot_samples,
                "judge_draws": draws,
                "gradient_variance": round(plan.gradient_variance, 4),
                "bpda": plan.bpda,
                "triggers": [t["check"] for t in plan.triggers],
                "pgd": f"Linf eps={args.eps} steps={args.steps} alpha={args.alpha}",
                "seconds": {"checks": round(t_plan, 2), "naive_pgd": round(t_pgd, 2), "naive_suite": round(t_naive, 2),
                            "adaptive": round(t_adaptive, 2), "undefended": round(base_s, 2)},
                "threads": torch.get_num_threads(),
                "device": str(args.device),
            }  # fmt: skip
            emit(row, args)
            fixes = [f"EOT K={plan.eot_samples}"] if plan.eot_samples > 1 else []
            fixes += [f"BPDA {','.join(plan.bpda)}"] if plan.bpda else []
            fix = " + ".join(fixes)
            print(
                f"{name:22} {spec:44} {row['clean_acc']:6.3f} {row['naive_pgd_acc']:6.3f} "
                f"{row['adaptive_suite_acc']:6.3f} {row['undefended_strong_acc']:6.3f}  {fix or 'none'}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="*", default=["fmnist_cnn_standard", "fmnist_cnn_pgd"])
    parser.add_argument("--defences", nargs="*", default=None, help="default: DEFENCES (IMAGENET_DEFENCES)")
    parser.add_argument("--eps", type=float, default=None, help="Linf eps (default 0.1; 4/255 with --imagenet)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--alpha", type=float, default=None, help="PGD step (default 0.01; 1/255 with --imagenet)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--out", default=None, metavar="FILE", help="also append the JSON rows to FILE")
    parser.add_argument("--eot", type=int, default=10, help="EOT draws per step for the random defences")
    parser.add_argument("--subset", type=int, default=20, help="take every N-th test image (20: 500 images)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--imagenet", default=None, metavar="DIR",
        help="ImageNet folder (<wnid>/<images>): attack efficientnet_lite0 there instead of Fashion-MNIST",
    )  # fmt: skip
    parser.add_argument("--images", type=int, default=30, help="--imagenet: evenly spaced images of the folder")
    parser.add_argument("--suite", action="store_true", help="naive strong suite vs the adaptive suite")
    parser.add_argument("--eot-cap", type=int, default=10, help="--suite: the most EOT draws the suite may choose")
    parser.add_argument("--naive-suite", action="store_true", help="--suite: run the naive strong suite too")
    parser.add_argument(
        "--judge-draws", type=int, default=32, help="--suite: forwards whose mean softmax judges a random defence"
    )
    parser.add_argument(
        "--batch", type=int, default=None, help="--suite: attack this many images at a time (memory; default all)"
    )
    args = parser.parse_args()
    if args.batch is not None and (args.batch < 1 or not args.suite):
        parser.error(f"--batch: expected a positive number of images with --suite, got {args.batch}")
    try:
        args.device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device: expected cpu, cuda or cuda:N, got {args.device!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)  # the random defences draw from torch's global generator

    imagenet = args.imagenet is not None
    args.eps = args.eps if args.eps is not None else (4 / 255 if imagenet else 0.1)
    args.alpha = args.alpha if args.alpha is not None else (1 / 255 if imagenet else 0.01)
    args.defences = args.defences if args.defences is not None else (IMAGENET_DEFENCES if imagenet else list(DEFENCES))
    if imagenet:
        from advlab.data import load_dataset, transform_for

        if args.models == parser.get_default("models"):
            args.models = ["efficientnet_lite0"]
        dataset = load_dataset(args.imagenet, transform=transform_for(load_model(args.models[0])))
        idx = torch.linspace(0, len(dataset) - 1, args.images).long()
        items = [dataset[int(i)] for i in idx]
        x, y = torch.stack([it[0] for it in items]), torch.tensor([int(it[1]) for it in items])
    else:
        images, labels = load_fashion_mnist("test")
        idx = torch.arange(0, len(labels), args.subset)
        x, y = to_float_images(images)[idx], labels[idx]
    x, y = x.to(args.device), y.to(args.device)  # idx (the per-sample seeds) stays a CPU tensor
    if args.suite:
        suite_rows(args, x, y, idx)
        return
    rows = []
    for name in args.models:
        model = load_model(name).to(args.device)
        t0 = clock(args.device)
        base_clean = correct(model, x, y)
        base_robust = robust(model, x, y, idx, args) & base_clean
        base_s = clock(args.device) - t0
        for spec in args.defences:
            how = DEFENCES.get(spec) or ("eot" if spec.startswith(("gaussian_noise", "random_resize_pad")) else "bpda")
            transform = parse_defense(spec)
            net = defended(model, transform)
            t0 = clock(args.device)
            clean = correct(net, x, y)
            naive = robust(net, x, y, idx, args) & clean
            t_naive = clock(args.device) - t0
            t0 = clock(args.device)
            if how == "eot":
                adaptive = robust(net, x, y, idx, args, eot=args.eot)
            else:  # attack through bpda(transform); judge the point on the real defended model
                x_adv = attacks.pgd(
                    defended(model, bpda(transform)), x, y, args.eps, alpha=args.alpha, steps=args.steps, seed=idx
                )
                adaptive = correct(net, x_adv, y)
            adaptive = adaptive & naive
            row = {
                "model": name,
                "defence": spec,
                "images": len(y),
                "clean_acc": round(clean.double().mean().item(), 4),
                "naive_pgd_acc": round(naive.double().mean().item(), 4),
                "adaptive_pgd_acc": round(adaptive.double().mean().item(), 4),
                "adaptive": "BPDA (identity)" if how == "bpda" else f"EOT K={args.eot}",
                "undefended_clean_acc": round(base_clean.double().mean().item(), 4),
                "undefended_pgd_acc": round(base_robust.double().mean().item(), 4),
                "attack": f"PGD Linf eps={args.eps} steps={args.steps} alpha={args.alpha} restarts=1",
                "seconds": {
                    "naive": round(t_naive, 1),
                    "adaptive": round(clock(args.device) - t0, 1),
                    "undefended": round(base_s, 1),
                },
                "threads": torch.get_num_threads(),
                "device": str(args.device),
            }
            rows.append(row)
            emit(row, args)
    print(f"\n{'model':22} {'defence':34} {'clean':>6} {'naive':>6} {'adapt':>6} {'undef':>6}  adaptive attack")
    for r in rows:
        print(
            f"{r['model']:22} {r['defence']:34} {r['clean_acc']:6.3f} {r['naive_pgd_acc']:6.3f} "
            f"{r['adaptive_pgd_acc']:6.3f} {r['undefended_pgd_acc']:6.3f}  {r['adaptive']}"
        )


if __name__ == "__main__":
    main()
