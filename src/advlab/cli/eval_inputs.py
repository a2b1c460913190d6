"""From ``advlab eval``'s flags and config keys to the run's inputs: the attack specs (flags, ``[[attack]]``
tables, suites, the minimal-norm ensemble), the data and its sample, the model's preprocessing and its defences.
``cli/eval.py`` holds the parser and the command; everything here raises :class:`~advlab.errors.UsageError` for a
mistake in the command line.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import UsageError

ATTACK_TABLE_KEYS = ("name", "id", "target", "only_unbroken", "minimal")


def attack_specs(args: argparse.Namespace) -> tuple[list[Any], bool]:
    """The run's attacks from --attack/--eps/..., [[attack]] tables, --suite and --minimal, and whether the run is
    the adaptive suite (whose attacks the masking checks choose once the model is loaded)."""
    if args.attack_tables is not None and args.attack is not None:
        raise UsageError("give the attacks either with --attack or as [[attack]] tables in --config, not both")
    if args.suite is not None and args.attack is not None and not args.minimal:
        raise UsageError("give either --attack or --suite (list several attacks with --config)")
    specs: list[Any] = []
    if args.attack_tables is not None:
        specs += table_attacks(args.attack_tables, args.config)
    if args.attack is not None and not args.minimal:
        specs += flag_attack(args)
    adaptive = args.suite == "adaptive"
    if adaptive:
        if args.minimal:
            raise UsageError("--minimal does not combine with --suite adaptive; run them as two evaluations")
        specs = adaptive_check(args, specs)
    elif args.minimal:
        if args.suite is None:
            specs += minimal_attack(args)
        else:  # one norm for both, the suite's unless --norm gives it, so that the two are cross-checked
            from ..evaluate import attack_norm

            suites = suite_specs_of(args)
            specs += suites + minimal_attack(args, norm=attack_norm(suites[0].name, suites[0].params))
    elif args.suite is not None:
        from ..evaluate import with_suites

        specs = with_suites(specs, suite_specs_of(args))  # the per-sample worst case of the listed attacks
    if not specs and not adaptive:
        raise UsageError("no attack given: use --attack NAME (e.g. --attack pgd --eps 8/255), --suite or --config")
    if args.attack is None and args.suite is None and not args.minimal:
        # Every flag that describes an attack would be dropped here ([[attack]] tables carry their own).
        given = (
            [
                "--" + name.replace("_", "-")
                for name in ("eps", "alpha", "steps", "restarts", "norm", "loss", "target")
                if getattr(args, name, None) not in (None, [])
            ]
            + (["--targeted"] if args.targeted else [])
            + (["-p"] if args.param else [])
        )
        if given:
            where = " (put them in the [[attack]] tables of --config)" if args.attack_tables is not None else ""
            raise UsageError(f"{', '.join(given)} describe an --attack or --suite; none was given{where}")
    return specs, adaptive


def add_params(params: dict[str, Any], args: argparse.Namespace, also_flagged: set[str]) -> None:
    """Add the ``-p KEY=VALUE`` pairs to ``params``; a key a flag already set is refused (no silent winner)."""
    flagged = set(params) | also_flagged | ({"target"} if getattr(args, "target", None) is not None else set())
    for key, value in args.param:
        if key in flagged:
            raise UsageError(f"{key} is set twice, by --{key.replace('_', '-')} and by -p {key}={value}; give it once")
        params[key] = value


def check_minimal(name: str, where: str) -> None:
    from ..evaluate.robustness import MINIMAL_ATTACKS

    if name not in MINIMAL_ATTACKS:
        raise UsageError(
            f"{where}: {name!r} is not a minimal-norm attack; minimal-norm attacks are "
            f"{', '.join(sorted(MINIMAL_ATTACKS))} ('minimal' = the ensemble of the norm's attacks)"
        )


def takes_norm(name: str) -> bool:
    """Whether attack ``name`` has a ``norm`` parameter."""
    import inspect

    from ..evaluate import registry

    return "norm" in inspect.signature(registry()[name]).parameters


def minimal_attack(args: argparse.Namespace, norm: str | None = None) -> list[Any]:
    """``--minimal [--attack fmn|ddn|fab|fab_t|sigma_zero] [--norm N] [--steps S]``: one minimal-norm attack spec
    (``norm``: the norm where --norm gives none, the suite's beside --suite)."""
    from ..evaluate import make_spec

    name = args.attack or "minimal"
    check_minimal(name, "--minimal")
    if args.eps and args.suite is None:
        raise UsageError(
            "--minimal finds each sample's smallest perturbation and takes no --eps (add --suite NAME "
            "--eps E to cross-check it against a fixed-eps suite)"
        )
    dropped = ["--" + key for key in ("alpha", "restarts", "loss") if getattr(args, key, None) is not None]
    if dropped:
        raise UsageError(
            f"--minimal takes --norm, --steps, --targeted/--target and -p KEY=VALUE; {', '.join(dropped)} would be "
            "ignored (give an attack's own step parameters with -p, e.g. -p gamma_init=0.1 for fmn)"
        )
    params: dict[str, Any] = {}
    for key in ("steps", "norm"):
        if getattr(args, key) is not None:
            params[key] = getattr(args, key)
    if "norm" not in params and norm is not None and takes_norm(name):  # ddn, sigma_zero: their one norm
        params["norm"] = norm
    if args.targeted:
        params["targeted"] = True
    if args.suite is None:
        add_params(params, args, also_flagged=set())
    target: str | int | None = args.target
    if isinstance(target, str) and target.lstrip("-").isdigit():
        target = int(target)
    return [make_spec(name, params, target=target)]


def flag_attack(args: argparse.Namespace) -> list[Any]:
    from ..evaluate import make_spec

    params: dict[str, Any] = {}
    for key in ("alpha", "steps", "restarts", "norm", "loss"):
        value = getattr(args, key)
        if value is not None:
            params[key] = value
    if args.targeted:
        params["targeted"] = True
    add_params(params, args, also_flagged={"eps"} if args.eps else set())
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


def table_attacks(tables: Any, path: str) -> list[Any]:
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
            check_minimal(name, f"{path}: attack #{k} (minimal = true)")
        elif name is None:
            raise UsageError(f"{path}: attack #{k} has no 'name' (e.g. name = \"pgd\")")
        only_unbroken = t.get("only_unbroken", [])
        if not isinstance(only_unbroken, list) or not all(isinstance(d, str) for d in only_unbroken):
            raise UsageError(
                f"{path}: attack #{k}: only_unbroken must be a list of attack ids (e.g. only_unbroken = "
                f"[\"pgd\"]), got {only_unbroken!r}"
            )
        specs.append(make_spec(name, params, id=t.get("id"), target=t.get("target"), only_unbroken=only_unbroken))
    return specs


def parse_subset(text: str) -> tuple[int, int]:
    a, sep, b = text.lower().partition("x")
    if not sep or not a.isdigit() or not b.isdigit() or int(a) < 1 or int(b) < 1:
        raise UsageError(f"--subset takes CLASSESxPER_CLASS like 30x5, got {text!r}")
    return int(a), int(b)


def open_data(args: argparse.Namespace, model: Any) -> tuple[Any, dict[str, Any]]:
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
        classes, per_class = parse_subset(args.subset)
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


def adaptive_check(args: argparse.Namespace, listed: list[Any]) -> list[Any]:
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


def adaptive_params(args: argparse.Namespace) -> dict[str, Any]:
    """``-p KEY=VALUE`` of ``--suite adaptive``: the adaptive suite's steps, n_target_classes, square_queries."""
    allowed = ("steps", "n_target_classes", "square_queries")
    params: dict[str, Any] = {}
    for key, value in args.param:
        if key not in allowed:
            raise UsageError(f"--suite adaptive takes -p {', '.join(allowed)}; got -p {key}={value}")
        params[key] = value
    return params


def sanity_budget(specs: list[Any]) -> tuple[float, str]:
    """``--sanity``'s eps and norm: those of the first attack with an eps in Linf or L2, where the masking checks
    are defined (refused before the model loads when there is none)."""
    from ..evaluate import attack_norm

    with_eps = [s for s in specs if isinstance(s.params.get("eps"), float)]
    if not with_eps:
        raise UsageError("--sanity needs an attack with an eps (the checks run at that budget)")
    budgets = [(s.params["eps"], attack_norm(s.name, s.params) or "linf") for s in with_eps]
    usable = [b for b in budgets if b[1] in ("linf", "l2")]
    if not usable:
        raise UsageError(
            f"--sanity's masking checks run at an Linf or L2 budget; this run's attacks with an eps are "
            f"{', '.join(sorted({n for _, n in budgets}))} (add an Linf or L2 attack, or leave out --sanity)"
        )
    return usable[0]


def sanity_verdicts(model: Any, dataset: Any, budget: tuple[float, str], args: argparse.Namespace) -> dict[str, Any]:
    """``--sanity``: every masking check on the first batch, at ``budget`` (:func:`sanity_budget`)."""
    from ..evaluate import run_sanity

    eps, norm = budget
    return run_sanity(model, dataset, eps, norm, batch_size=args.batch_size, seed=args.seed)


def string_list(value: Any, key: str) -> list[str]:
    """A flag repeated or a config key given as one string or a list of strings."""
    if value is None:
        return []
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise UsageError(f"{key} takes a string or a list of strings, got {value!r}")
    return values


def defend_model(model: Any, meta: dict[str, Any], args: argparse.Namespace, bpda: bool) -> tuple[Any, dict[str, Any]]:
    """``--defense``/``--bpda``: the model behind its defences, recorded under the model's description (``--bpda``
    only where ``bpda``: the adaptive suite applies it in its own attacks, not to the naive one)."""
    from ..defenses import defend

    defenses, paths = string_list(args.defense, "defense"), string_list(args.bpda, "bpda") if bpda else []
    if not defenses and not paths:
        return model, meta
    defended_model, record = defend(model, defenses, paths)
    return defended_model, {**meta, **record}


def check_forward(model: Any, dataset: Any) -> None:
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


def suite_specs_of(args: argparse.Namespace) -> list[Any]:
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
    add_params(params, args, also_flagged={"eps"})
    return suite_specs(args.suite, args.eps, params)


def preprocessing(args: argparse.Namespace) -> dict[str, Any]:
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
