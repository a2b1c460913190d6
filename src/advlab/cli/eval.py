"""``advlab eval``: attacks over a dataset into a run directory (flags, or an attacks.toml with [[attack]] tables)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .common import DefaultsFormatter, add_prepare_flag, add_replace_flag, int_arg, param_pair

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
    "defense": "list of defences put in front of the model, e.g. [\"bit_depth(bits=3)\"] (advlab.defenses)",
    "bpda": "list of dotted submodule paths of the (defended) model to wrap in BPDA, e.g. [\"transforms.0\"]",
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
ATTACK_TABLE_KEYS = ("name", "id", "target", "only_unbroken", "minimal")


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
    p.add_argument("--eps", nargs="+", default=None, help="budget(s) in pixel units: 0.03, 8/255; several = a sweep")
    p.add_argument("--alpha", default=None, help="step size (pixel units)")
    p.add_argument("--steps", type=int_arg(1), default=None, help="iterations")
    p.add_argument("--restarts", type=int_arg(1), default=None, help="random restarts (pgd, apgd, apgd_t)")
    p.add_argument("--norm", default=None, help="linf or l2")
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
        "minimal-norm attacks, or the one --attack (fmn, ddn, fab); summary.json gets robustness curves",
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


def _add_params(params: dict[str, Any], args: argparse.Namespace, also_flagged: set[str]) -> None:
    """Add the ``-p KEY=VALUE`` pairs to ``params``; a key a flag already set is refused (no silent winner)."""
    flagged = set(params) | also_flagged | ({"target"} if getattr(args, "target", None) is not None else set())
    for key, value in args.param:
        if key in flagged:
            raise UsageError(f"{key} is set twice, by --{key.replace('_', '-')} and by -p {key}={value}; give it once")
        params[key] = value


def _check_minimal(name: str, where: str) -> None:
    from ..evaluate.robustness import MINIMAL_ATTACKS

    if name not in MINIMAL_ATTACKS:
        raise UsageError(
            f"{where}: {name!r} is not a minimal-norm attack; minimal-norm attacks are "
            f"{', '.join(sorted(MINIMAL_ATTACKS))} ('minimal' = the ensemble of the norm's attacks)"
        )


def _minimal_attack(args: argparse.Namespace) -> list[Any]:
    """``--minimal [--attack fmn|ddn|fab] [--norm N] [--steps S]``: one minimal-norm attack spec."""
    from ..evaluate import make_spec

    name = args.attack or "minimal"
    _check_minimal(name, "--minimal")
    if args.eps and args.suite is None:
        raise UsageError("--minimal finds each sample's smallest perturbation and takes no --eps (add --suite NAME "
                         "--eps E to cross-check it against a fixed-eps suite)")
    params: dict[str, Any] = {}
    for key in ("steps", "norm"):
        if getattr(args, key) is not None:
            params[key] = getattr(args, key)
    if args.targeted:
        params["targeted"] = True
    if args.suite is None:
        _add_params(params, args, also_flagged=set())
    target: str | int | None = args.target
    if isinstance(target, str) and target.lstrip("-").isdigit():
        target = int(target)
    return [make_spec(name, params, target=target)]


def _flag_attack(args: argparse.Namespace) -> list[Any]:
    from ..evaluate import make_spec

    params: dict[str, Any] = {}
    for key in ("alpha", "steps", "restarts", "norm", "loss"):
        value = getattr(args, key)
        if value is not None:
            params[key] = value
    if args.targeted:
        params["targeted"] = True
    _add_params(params, args, also_flagged={"eps"} if args.eps else set())
    target: str | int | None = args.target
    if isinstance(target, str) and target.lstrip("-").isdigit():
        target = int(target)
    eps_values = args.eps or [None]
    specs = []
    for eps in eps_values:
        p = dict(params)
        if eps is not None:
            p["eps"] = eps
        specs.append(make_spec(args.attack, p, target=target))
    return specs


def _table_attacks(tables: Any, path: str) -> list[Any]:
    from ..evaluate import make_spec

    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise UsageError(f"{path}: 'attack' must be a list of tables ([[attack]] sections)")
    specs = []
    for k, t in enumerate(tables, start=1):
        params = {key: v for key, v in t.items() if key not in ATTACK_TABLE_KEYS}
        name = t.get("name")
        if t.get("minimal", False) is not False:
            if t["minimal"] is not True:
                raise UsageError(f"{path}: attack #{k}: minimal must be true or false, got {t['minimal']!r}")
            name = name or "minimal"
            _check_minimal(name, f"{path}: attack #{k} (minimal = true)")
        elif name is None:
            raise UsageError(f"{path}: attack #{k} has no 'name' (e.g. name = \"pgd\")")
        specs.append(
            make_spec(
                name, params, id=t.get("id"), target=t.get("target"), only_unbroken=t.get("only_unbroken", ())
            )
        )
    return specs


def _parse_subset(text: str) -> tuple[int, int]:
    a, sep, b = text.lower().partition("x")
    if not sep or not a.isdigit() or not b.isdigit() or int(a) < 1 or int(b) < 1:
        raise UsageError(f"--subset takes CLASSESxPER_CLASS like 30x5, got {text!r}")
    return int(a), int(b)


def _open_data(args: argparse.Namespace, model: Any) -> tuple[Any, dict[str, Any]]:
    from ..data import load_dataset, select_subset, transform_for

    data = str(args.data)
    meta: dict[str, Any] = {"source": data}
    if data.startswith("fashion-mnist"):
        dataset: Any = load_dataset(data)
        meta["provenance"] = f"Fashion-MNIST {dataset.split} split"
    else:
        dataset = load_dataset(data, transform=transform_for(model), root=args.data_root)
        meta["provenance"] = getattr(dataset, "provenance", "")
    if args.subset:
        classes, per_class = _parse_subset(args.subset)
        dataset = select_subset(model, dataset, classes=classes, per_class=per_class, seed=args.seed)
        meta["provenance"] = dataset.provenance
        meta["subset"] = args.subset
    if args.limit is not None and getattr(args, "sample", None) is not None:
        raise UsageError("give either --limit N (the first N samples) or --sample N (a random sample), not both")
    if getattr(args, "sample", None) is not None:
        from ..data import sample_dataset

        dataset = sample_dataset(dataset, args.sample, args.seed)
        meta["provenance"] = f"{meta['provenance']}; {dataset.how}"
        meta["sample"] = args.sample
        meta["sample_indices"] = list(dataset.indices)  # positions in the source (after --subset): the sample ids
    if args.limit is not None:
        from ..data import LimitedDataset

        dataset = LimitedDataset(dataset, args.limit)
        meta["provenance"] = f"{meta['provenance']}; the first {len(dataset)} in the data's order (--limit)"
        meta["limit"] = args.limit
    return dataset, meta


def cmd_eval(args: argparse.Namespace) -> int:
    from ..evaluate import evaluate, sanity_lines, stage_lines, summary_line

    if args.attack_tables is not None and args.attack is not None:
        raise UsageError("give the attacks either with --attack or as [[attack]] tables in --config, not both")
    if args.suite is not None and args.attack is not None and not args.minimal:
        raise UsageError("give either --attack or --suite (list several attacks with --config)")
    specs: list[Any] = []
    if args.attack_tables is not None:
        specs += _table_attacks(args.attack_tables, args.config)
    if args.attack is not None and not args.minimal:
        specs += _flag_attack(args)
    adaptive = args.suite == "adaptive"
    if adaptive:
        if args.minimal:
            raise UsageError("--minimal does not combine with --suite adaptive; run them as two evaluations")
        specs = _adaptive_check(args, specs)
    elif args.minimal:
        minimal = _minimal_attack(args)
        specs += _suite_specs(args) + minimal if args.suite is not None else minimal
    elif args.suite is not None:
        from ..evaluate import with_suites

        specs = with_suites(specs, _suite_specs(args))  # the per-sample worst case of the listed attacks
    if not specs and not adaptive:
        raise UsageError("no attack given: use --attack NAME (e.g. --attack pgd --eps 8/255), --suite or --config")
    flags = args.eps or args.alpha or args.steps or args.targeted
    if args.attack is None and args.suite is None and not args.minimal and flags:
        raise UsageError("--eps/--alpha/--steps/--targeted describe an --attack; none was given")

    from ..defenses import parse_defense

    for text in _strings(args.defense, "defense"):  # a bad --defense is named before the model loads
        parse_defense(text)
    _strings(args.bpda, "bpda")

    from .. import runtime
    from ..evaluate.sharded import evaluate_sharded
    from ..models import check_device, check_fits, load_model, published_result

    if args.device is not None:
        check_device(args.device)
    # One process unless torchrun started several: then join them (before the model, so "cuda" is this rank's GPU).
    info = runtime.setup(args.device)
    model = load_model(args.model, weights=args.weights, device=args.device, **_preprocessing(args))
    dataset, data_meta = _open_data(args, model)
    check_fits(model, dataset, str(args.data))  # one line naming both shapes, before anything is written
    model_meta = {**getattr(model, "config", {}), "name": args.model or model.name, "weights": args.weights}
    published = published_result(args.model or "")  # RobustBench's own number, shown next to advlab's
    if published is not None:
        model_meta["published"] = published
    model, model_meta = _defend(model, model_meta, args, bpda=not adaptive)  # adaptive: BPDA is its own step
    if "defenses" in model_meta:
        _check_forward(model, dataset)
    command = "advlab " + " ".join(shlex.quote(a) for a in args.argv)
    save = bool(getattr(args, "save_adversarial", False))
    if save and info.distributed:
        raise UsageError("--save-adversarial is not available under torchrun yet; run it in one process")
    extra: dict[str, Any] = {"command": command}
    common = dict(out=args.out, batch_size=args.batch_size, seed=args.seed, model_meta=model_meta, data_meta=data_meta)
    common.update(quiet=args.quiet, replace=args.replace, prepare=bool(args.prepare))
    if adaptive:
        from ..evaluate.adaptive import adaptive_line, evaluate_adaptive

        if info.distributed:
            raise UsageError("--suite adaptive runs in one process; start it without torchrun")
        if save:
            raise UsageError("--save-adversarial does not combine with --suite adaptive yet")
        result = evaluate_adaptive(
            model, dataset, args.eps, norm=args.norm or "linf", bpda=_strings(args.bpda, "bpda"),
            adaptive_params=_adaptive_params(args), extra=extra, **common,
        )  # fmt: skip
    else:
        if args.sanity:
            extra["sanity"] = _sanity(model, dataset, specs, args)
        if save:
            common["save_adversarial"] = True
        result = (evaluate_sharded if info.distributed else evaluate)(model, dataset, specs, extra=extra, **common)
    if not info.is_main:  # rank 0 reports for the whole distributed run
        return 0
    for a in result.summary["attacks"]:
        print(summary_line(a))
        for line in stage_lines(a):  # a suite: the robust accuracy after each stage, like AutoAttack's printout
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


def _adaptive_check(args: argparse.Namespace, listed: list[Any]) -> list[Any]:
    """``--suite adaptive``: alone, with --eps; its specs come from the checks, once the model is loaded."""
    if listed:
        raise UsageError("--suite adaptive runs alone (its naive and adaptive suites); drop the listed attacks")
    if not args.eps:
        raise UsageError("--suite needs --eps (one or more budgets, e.g. --eps 8/255)")
    ignored = [f"--{n}" for n in ("alpha", "steps", "restarts", "loss", "target") if getattr(args, n) is not None]
    if ignored or args.targeted:
        raise UsageError(
            "--suite adaptive takes only --eps, --norm, --defense, --bpda and -p steps=, n_target_classes=, "
            "square_queries= (it sets its own attacks)"
        )
    return []


def _adaptive_params(args: argparse.Namespace) -> dict[str, Any]:
    """``-p KEY=VALUE`` of ``--suite adaptive``: the adaptive suite's steps, n_target_classes, square_queries."""
    allowed = ("steps", "n_target_classes", "square_queries")
    params: dict[str, Any] = {}
    for key, value in args.param:
        if key not in allowed:
            raise UsageError(f"--suite adaptive takes -p {', '.join(allowed)}; got -p {key}={value}")
        params[key] = value
    return params


def _sanity(model: Any, dataset: Any, specs: list[Any], args: argparse.Namespace) -> dict[str, Any]:
    """``--sanity``: every masking check on the first batch, at the eps and norm of the first attack with an eps."""
    from ..evaluate import run_sanity

    with_eps = [s for s in specs if isinstance(s.params.get("eps"), float)]
    if not with_eps:
        raise UsageError("--sanity needs an attack with an eps (the checks run at that budget)")
    eps, norm = with_eps[0].params["eps"], with_eps[0].params.get("norm", "linf")
    return run_sanity(model, dataset, eps, norm, batch_size=args.batch_size, seed=args.seed)


def _strings(value: Any, key: str) -> list[str]:
    """A flag repeated or a config key given as one string or a list of strings."""
    if value is None:
        return []
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise UsageError(f"{key} takes a string or a list of strings, got {value!r}")
    return values


def _defend(model: Any, meta: dict[str, Any], args: argparse.Namespace, bpda: bool) -> tuple[Any, dict[str, Any]]:
    """``--defense``/``--bpda``: the model behind its defences, recorded under the model's description (``--bpda``
    only where ``bpda``: the adaptive suite applies it in its own attacks, not to the naive one)."""
    from ..defenses import defend

    defenses, paths = _strings(args.defense, "defense"), _strings(args.bpda, "bpda") if bpda else []
    if not defenses and not paths:
        return model, meta
    defended_model, record = defend(model, defenses, paths)
    return defended_model, {**meta, **record}


def _check_forward(model: Any, dataset: Any) -> None:
    """One forward of the defended model on the first image, before the run directory is touched: a BPDA around a
    module that changes the shape is then one line (UsageError), not a run directory holding a failed run."""
    import torch

    for i in range(min(len(dataset), 8)):
        item = dataset[i]
        if item is not None:
            with torch.no_grad():
                model.eval()
                model(item[0][None].to(next(iter(model.parameters()), torch.empty(0)).device))
            return


def _suite_specs(args: argparse.Namespace) -> list[Any]:
    """``--suite strong --eps E...``: the worst-case suite (advlab.evaluate.suite) as one attack per eps."""
    from ..evaluate import available_suites, suite_specs

    available = available_suites()
    if args.suite not in available:
        raise UsageError(f"unknown suite {args.suite!r}; available: {', '.join(available) or 'none installed'}")
    if not args.eps:
        raise UsageError("--suite needs --eps (one or more budgets, e.g. --eps 8/255)")
    # The suite fixes its own steps, losses and targets; a flag that would be dropped is a mistake to report.
    ignored = [
        "--" + name
        for name in ("alpha", "steps", "restarts", "loss", "target")
        if getattr(args, name, None) is not None and not (name == "steps" and args.minimal)  # --minimal's steps
    ] + (["--targeted"] if args.targeted else [])
    if ignored:
        raise UsageError(
            f"--suite takes only --eps, --norm and -p KEY=VALUE; {', '.join(ignored)} would be ignored "
            "(the suite sets its own steps and targets)"
        )
    params: dict[str, Any] = {}
    if args.norm is not None:
        params["norm"] = args.norm
    _add_params(params, args, also_flagged={"eps"})
    return suite_specs(args.suite, args.eps, params)


def _preprocessing(args: argparse.Namespace) -> dict[str, Any]:
    """--input-size/--mean/--std/--resize/--crop (or their attacks.toml keys) as load_model arguments, and the
    data's image size for a model that states none."""
    from ..data import image_shape
    from ..models import is_factory, parse_floats, parse_input_size

    given = {
        "input_size": None if args.input_size is None else parse_input_size(args.input_size),
        "mean": None if args.mean is None else parse_floats(args.mean, "--mean"),
        "std": None if args.std is None else parse_floats(args.std, "--std"),
        "resize_size": None if args.resize is None else int(args.resize),
        "crop_size": None if args.crop is None else int(args.crop),
    }
    extra = {"model_dir": args.model_dir} if args.model_dir is not None else {}
    # The data's size matters to a user's model file or factory (its input size) and to a stated --input-size
    # (resize or not); opening the data twice is skipped for the zoo's named models.
    name = str(args.model or "")
    user_model = not name.startswith(("hf:", "robustbench:", "timm:")) and (
        is_factory(name) or "/" in name or Path(name).suffix != "" or Path(name).is_file()
    )
    if user_model or args.input_size is not None:
        extra["data_size"] = image_shape(args.data, args.data_root)
    return {**{k: v for k, v in given.items() if v is not None}, **extra}
