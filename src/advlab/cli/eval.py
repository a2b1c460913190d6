"""``advlab eval``: attacks over a dataset into a run directory (flags, or an attacks.toml with [[attack]] tables)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .common import DefaultsFormatter, add_prepare_flag, add_replace_flag, int_arg, param_pair
from .eval_inputs import (
    adaptive_params,
    attack_specs,
    check_forward,
    defend_model,
    open_data,
    preprocessing,
    sanity_budget,
    sanity_verdicts,
    string_list,
)

EVAL_CONFIG_KEYS = {
    "model": "model name (advlab.models.load_model)",
    "weights": "state-dict file or weights tag for the model",
    "data": "<wnid>/<images> folder, file,class_index CSV, 'default', fashion-mnist, cifar10, cifar100[:split]",
    "subset": "the paper's selection, 'CLASSESxPER_CLASS' (e.g. '30x5') of correctly classified images",
    "limit": "evaluate only the first N samples, in the data's order",
    "sample": "evaluate a seeded random sample of N samples, stratified by class",
    "out": "run directory",
    "batch_size": "samples per batch",
    "seed": "seed of targets and random starts",
    "device": "cpu, cuda, cuda:1, ...",
    "suite": "run a named attack suite ('strong') instead of / after the listed attacks",
    "report": "also write RUN_DIR/report.html",
    "claim": "also write a shareable claim JSON to this path",
    "save_adversarial": "save every adversarial example (float32 and uint8) with its uint8 re-check",
    "prepare": "prepare the model for the attacks (advlab.models.prepare; false = attack it as given)",
    "defense": 'list of defences put in front of the model, e.g. ["bit_depth(bits=3)"] (advlab.defenses)',
    "bpda": 'list of dotted submodule paths of the (defended) model to wrap in BPDA, e.g. ["transforms.0"]',
    "sanity": "run every gradient-masking check on the first batch and record the verdicts in summary.json",
    "attack": "list of attacks ([[attack]] tables: name, id, target, and the attack's parameters)",
    # a user's model at its own size (docs/models_data.md)
    "input_size": "the model's input, CxHxW (e.g. 1x28x28); default: stated by the model, else the data's",
    "mean": "per-channel mean the model normalises with (one number or one per channel)",
    "std": "per-channel std the model normalises with",
    "resize": "resize the short side of each image to this many pixels",
    "crop": "centre-crop to this many pixels",
    "model_dir": "RobustBench model directory (MODEL_DIR/cifar10/Linf/NAME.pt; default ./models)",
    "data_root": "folder holding cifar-10-batches-py/ (or -bin/), cifar-100-python/ (default ./data)",
}


def add_eval_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "eval",
        help="run attacks on a model and dataset, write per-sample records and summary.json",
        description="Run one attack (flags) or several (--config FILE.toml) over a dataset; records and "
        "RUN_DIR/summary.json are written as batches finish, and the same command resumes a killed run.",
        formatter_class=DefaultsFormatter,
    )
    p.add_argument("--config", metavar="FILE.toml", help="TOML file with the run's settings and [[attack]] tables")
    p.add_argument(
        "--model",
        default=None,
        help="model name, TorchScript/ONNX file or FILE.py:FACTORY (docs/models_data.md); default "
        "efficientnet_lite0, or the architecture advlab train recorded in --weights",
    )
    p.add_argument("--weights", default=None, help="state-dict file or weights tag for --model")
    p.add_argument(
        "--data",
        default="default",
        help="dataset folder, labels CSV, 'default', fashion-mnist[:split], cifar10[:split], cifar100[:split]",
    )
    p.add_argument("--subset", default=None, metavar="CxN", help="the paper's selection of C classes x N images")
    p.add_argument(
        "--limit",
        type=int_arg(1),
        default=None,
        help="only the first N samples in the data's order (an ImageNet folder: class-folder order, so the lowest "
        "class indices); --sample N for a representative sample",
    )
    p.add_argument(
        "--sample",
        type=int_arg(1),
        default=None,
        help="a random sample of N samples, seeded by --seed and stratified by class (classes in proportion)",
    )
    p.add_argument("--attack", default=None, help="attack name (fgsm, bim, pgd, cw_l2, ...)")
    p.add_argument(
        "--eps", nargs="+", default=None,
        help="budget(s) in pixel units: 0.03, 8/255 (l0: changed coordinates, 12); several = a sweep",
    )  # fmt: skip
    p.add_argument("--alpha", default=None, help="step size (pixel units)")
    p.add_argument("--steps", type=int_arg(1), default=None, help="iterations")
    p.add_argument("--restarts", type=int_arg(1), default=None, help="random restarts (pgd, apgd, apgd_t)")
    p.add_argument(
        "--norm", default=None,
        help="attack norm: linf, l2, l1 (pgd, fab, fab_t, fmn, --minimal; suites: linf, l2), l0 (pgd, fmn, sigma_zero, "
        "--minimal)",
    )  # fmt: skip
    p.add_argument("--loss", default=None, help="ce or margin")
    p.add_argument("--targeted", action="store_true", default=False, help="targeted attack")
    p.add_argument("--target", default=None, help="targets: random, least-likely, or a class index")
    p.add_argument(
        "-p",
        "--param",
        type=param_pair,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other attack parameter, e.g. -p c=0.1 -p binary_search_steps=9",
    )
    p.add_argument(
        "--suite",
        default=None,
        help="run a named suite of attacks: 'strong' (the worst-case ensemble) or 'fast'",
    )
    p.add_argument(
        "--defense",
        action="append",
        default=None,
        metavar="DEFENCE",
        help="put a defence in front of the model, e.g. 'bit_depth(bits=3)', 'median(size=3)', "
        "'gaussian_noise(sigma=0.1)' (advlab.defenses; repeat to chain them, applied in order); recorded in run.json",
    )
    p.add_argument(
        "--bpda",
        action="append",
        default=None,
        metavar="MODULE_PATH",
        help="wrap the submodule at this dotted path of the (defended) model in BPDA (identity backward), e.g. "
        "transforms.0 for the first --defense",
    )
    p.add_argument(
        "--sanity",
        action="store_true",
        default=False,
        help="run every gradient-masking check (advlab.evaluate.sanity) on the first batch; verdicts in summary.json",
    )
    p.add_argument(
        "--minimal",
        action="store_true",
        help="per-sample smallest perturbation in --norm (l0, l1, l2, linf): the ensemble of that norm's "
        "minimal-norm attacks, or the one --attack (fmn, ddn, fab, fab_t, sigma_zero); summary.json gets robustness "
        "curves",
    )
    p.add_argument("--out", default="runs/eval", help="run directory")
    add_replace_flag(p)
    add_prepare_flag(p)
    p.add_argument("--batch-size", dest="batch_size", type=int_arg(1), default=16, help="samples per batch")
    p.add_argument("--seed", type=int_arg(), default=0, help="seed of targets and random starts")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or notes")
    # A user's model at its own size (advlab.models.user): each default is the model's own, else the data's.
    p.add_argument("--input-size", dest="input_size", default=None, metavar="CxHxW", help="model input, e.g. 1x28x28")
    p.add_argument("--mean", default=None, help="normalisation mean, e.g. 0.5 or 0.485,0.456,0.406")
    p.add_argument("--std", default=None, help="normalisation std, e.g. 0.5 or 0.229,0.224,0.225")
    p.add_argument("--resize", type=int_arg(1), default=None, help="resize the short side to N pixels")
    p.add_argument("--crop", type=int_arg(1), default=None, help="centre-crop N x N pixels")
    p.add_argument("--model-dir", dest="model_dir", default=None, help="RobustBench model directory (./models)")
    p.add_argument("--data-root", dest="data_root", default=None, help="where cifar10/cifar100 are (default ./data)")
    p.add_argument(
        "--save-adversarial",
        dest="save_adversarial",
        action="store_true",
        help="save every adversarial example (float32 and uint8, safetensors per batch) under RUN_DIR/adversarial, "
        "and record whether the uint8 image still fools the model and stays in the eps-ball",
    )
    p.add_argument(
        "--claim",
        default=None,
        metavar="CLAIM.json",
        help="also write a shareable claim (model and weights hash, sample ids, threat models, accuracies with "
        "95%% intervals, attacks, advlab version); advlab verify RUN_DIR --claim CLAIM.json checks it",
    )
    p.add_argument("--report", action="store_true", help="also write RUN_DIR/report.html (as advlab report does)")
    p.set_defaults(run=cmd_eval, attack_tables=None)
    return p


def cmd_eval(args: argparse.Namespace) -> int:
    from ..evaluate import evaluate, robustness_lines, sanity_lines, stage_lines, summary_line

    specs, adaptive = attack_specs(args)
    budget = sanity_budget(specs) if args.sanity and not adaptive else None  # named before the model loads
    suite_params = adaptive_params(args) if adaptive else {}

    from ..defenses import parse_defense

    for text in string_list(args.defense, "defense"):  # a bad --defense is named before the model loads
        parse_defense(text)
    string_list(args.bpda, "bpda")

    from .. import runtime
    from ..evaluate.sharded import evaluate_sharded
    from ..models import check_device, check_fits, load_model, published_result

    if args.device is not None:
        check_device(args.device)
    # One process unless torchrun started several: then join them (before the model, so "cuda" is this rank's GPU).
    info = runtime.setup(args.device)
    model = load_model(args.model, weights=args.weights, device=args.device, **preprocessing(args))
    dataset, data_meta = open_data(args, model)
    check_fits(model, dataset, str(args.data))  # one line naming both shapes, before anything is written
    model_meta = {**getattr(model, "config", {}), "name": args.model or model.name, "weights": args.weights}
    published = published_result(args.model or "")  # RobustBench's own number, shown next to advlab's
    if published is not None:
        model_meta["published"] = published
    model, model_meta = defend_model(model, model_meta, args, bpda=not adaptive)  # adaptive: BPDA is its own step
    if "defenses" in model_meta:
        check_forward(model, dataset)
    command = "advlab " + " ".join(shlex.quote(a) for a in args.argv)
    save = bool(getattr(args, "save_adversarial", False))
    extra: dict[str, Any] = {"command": command}
    common = dict(out=args.out, batch_size=args.batch_size, seed=args.seed, model_meta=model_meta, data_meta=data_meta)
    common.update(quiet=args.quiet, replace=args.replace, prepare=bool(args.prepare))
    from ..runtime.lock import lock_folder

    # One lock over the run and what follows it (the adaptive rows, the claim, the report), so a second writer
    # cannot replace the folder between the summary and them; held by rank 0 under torchrun (review 2, F11).
    with lock_folder(args.out, enabled=info.is_main):
        common["lock"] = False
        if adaptive:
            from ..evaluate.adaptive import adaptive_line, evaluate_adaptive

            if save:
                raise UsageError("--save-adversarial does not combine with --suite adaptive yet")
            result = evaluate_adaptive(
                model, dataset, args.eps, norm=args.norm or "linf", bpda=string_list(args.bpda, "bpda"),
                adaptive_params=suite_params, extra=extra, **common,
            )  # fmt: skip
        else:
            if budget is not None:
                extra["sanity"] = sanity_verdicts(model, dataset, budget, args)
            if save:
                common["save_adversarial"] = True
            result = (evaluate_sharded if info.distributed else evaluate)(model, dataset, specs, extra=extra, **common)
        if not info.is_main:  # rank 0 reports for the whole distributed run
            return 0
        for a in result.summary["attacks"]:
            print(summary_line(a, result.summary["model"]))
            for line in stage_lines(a):  # a suite: the robust accuracy after each stage, like AutoAttack's printout
                print(line)
        for line in robustness_lines(result.summary):  # minimal-norm attacks beside fixed-eps ones
            print(line)
        if args.sanity or any(a.get("stages") for a in result.summary["attacks"]):
            for line in sanity_lines(result.summary):  # the gradient-masking checks' verdicts, where they ran
                print(line)
        if published is not None:
            print(
                f"RobustBench published (AutoAttack, eps {published['eps']}): clean {published['clean_acc']}%, "
                f"robust {published['autoattack_acc']}% ({published['source']})"
            )
        for row in (result.summary.get("adaptive") or {}).get("rows", []):
            print(adaptive_line(row))
        if not args.quiet:
            print(f"summary: {Path(args.out) / 'summary.json'}", file=sys.stderr)
        if getattr(args, "claim", None):
            from ..evaluate.claim import write_claim

            write_claim(args.out, args.claim)
        if getattr(args, "report", False):
            from ..report import write_run_report

            names = list(getattr(dataset, "class_names", []) or getattr(model, "class_names", []))
            path = write_run_report(args.out, dataset=dataset, class_names=names)
            if not args.quiet:
                print(f"report: {path}", file=sys.stderr)
        return 0
