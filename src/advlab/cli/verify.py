"""``advlab verify RUN_DIR``: reload the run's model and data and check every saved adversarial example with
forward passes only (advlab.evaluate.verify); mismatches are printed and the exit status is 1."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import UsageError
from .common import DefaultsFormatter


def add_verify_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "verify",
        help="check a --save-adversarial run's examples with forward passes only (box, ball, misclassified)",
        description="Reload the model and data a run names, check every saved adversarial example (inside [0, 1] "
        "and its eps-ball, of the L0/L1/L2/Linf sizes its record states, misclassified where the record says "
        "broken) and recompute the summary. Prints the mismatches; exit status 1 if there are any, 2 for a run that "
        "cannot be verified.",
        formatter_class=DefaultsFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by advlab eval --save-adversarial")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cpu)")
    p.add_argument("--data", default=None, help="the run's data at another path (default: the path the run used)")
    p.add_argument("--weights", default=None, help="the run's weights at another path (default: the run's)")
    p.add_argument(
        "--model",
        default=None,
        help="the run's model, required where run.json names a FILE.py:FACTORY or module:callable (reopening it "
        "runs that code, so advlab runs it only when you name it)",
    )
    p.add_argument("--data-root", dest="data_root", default=None, help="where cifar10/cifar100 are, as the run's "
                   "--data-root (default ./data)")  # fmt: skip
    p.add_argument("--model-dir", dest="model_dir", default=None, help="RobustBench model directory, as the run's "
                   "--model-dir (default ./models)")  # fmt: skip
    p.add_argument(
        "--tol", type=_tolerance, default=1e-3, help="a top-1 disagreement counts only where the top-2 "
        "probabilities of verify's own forward pass are further apart than this, in [0, 1) (float differences "
        "between machines)"
    )  # fmt: skip
    p.add_argument(
        "--claim", default=None, metavar="CLAIM.json", help="also check a claim (advlab eval --claim) against the run"
    )
    p.set_defaults(run=cmd_verify)
    return p


def reopen_run(
    run: Any,
    *,
    device: str | None = None,
    data: str | None = None,
    weights: str | None = None,
    data_root: str | None = None,
    model_dir: str | None = None,
    model: str | None = None,
) -> Any:
    """The model and dataset of a run made by ``advlab eval``, reopened from its configuration (the data at
    ``data``, the weights at ``weights`` where they moved; CIFAR under ``data_root`` and RobustBench models
    under ``model_dir`` as the run's ``--data-root`` and ``--model-dir``): ``(model, dataset)``."""
    from ..models import check_device, load_model, runs_user_code
    from .eval_inputs import open_data

    m, d = run.config["model"], run.config["data"]
    if not m.get("name") or not d.get("source"):
        raise UsageError(f"{run.path} was not made by advlab eval (no model name or data source); use the Python API")
    name = model or m["name"]
    if model is None and runs_user_code(name):  # a received run.json must not choose code for advlab to run
        raise UsageError(
            f"{run.path}/run.json names the model {name!r}, code or a program file that reopening the model would "
            "run; pass --model yourself (for a run you trust)"
        )
    if device is not None:
        check_device(device)
    extra: dict[str, Any] = {"model_dir": model_dir} if model_dir is not None else {}
    # The preprocessing the run's model had (its --input-size/--mean/--std/--resize/--crop, recorded in run.json),
    # then its defences: the function the run attacked, not the name's defaults (review F8 b).
    for key in ("mean", "std", "resize_size", "crop_size", "interpolation"):
        if m.get(key) is not None:
            extra[key] = m[key]
    if m.get("input_size") is not None:
        extra["input_size"] = tuple(int(v) for v in m["input_size"])
    net = load_model(name, weights=weights or m.get("weights"), device=device, **extra)
    how = argparse.Namespace(
        data=data or d["source"],
        data_root=data_root,  # open_data reads it for every source but Fashion-MNIST (review F8 a)
        subset=d.get("subset"),
        sample=d.get("sample"),
        limit=d.get("limit"),
        seed=run.config["seed"],
    )
    dataset, _ = open_data(how, net)  # the data as the undefended classifier's preprocessing reads it
    if m.get("defenses") or m.get("bpda"):
        from ..defenses import defend

        net, _ = defend(net, m.get("defenses") or [], m.get("bpda") or [])
    return net, dataset


def _tolerance(text: str) -> float:
    """--tol: a probability gap in [0, 1) (1 or more would excuse every top-1 disagreement)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:  # NaN fails this too
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text!r}")
    return value


def cmd_verify(args: argparse.Namespace) -> int:
    from ..evaluate.compare import load_run
    from ..evaluate.verify import check_run_is_verifiable, verification_lines, verify_run

    run = load_run(args.run_dir)
    claimed: list[str] = []
    if args.claim is not None:
        from ..evaluate.claim import check_claim, read_claim

        claimed = list(check_claim(read_claim(args.claim), run))
    for line in claimed:  # before the run's own checks, which may refuse it (e.g. an older record schema)
        print(f"claim mismatch: {line}")
    check_run_is_verifiable(run)
    where = {"data_root": args.data_root, "model_dir": args.model_dir, "model": args.model}
    model, dataset = reopen_run(run, device=args.device, data=args.data, weights=args.weights, **where)
    result = verify_run(run.path, model, dataset, tol=args.tol, run=run)
    for line in verification_lines(result):
        print(line)
    if args.claim is not None:
        print(f"claim: {'OK' if not claimed else f'{len(claimed)} mismatches'} ({args.claim})")
    return 0 if result.ok and not claimed else 1
