"""The adaptive suite: the gradient-masking checks first, then the fix each warning calls for, and the naive and
adaptive numbers side by side (issue 18; Athalye, Carlini & Wagner 2018, "Obfuscated Gradients Give a False Sense
of Security"; Tramer, Carlini, Brendel & Madry 2020, "On Adaptive Attacks to Adversarial Example Defenses").
One file past 400 lines: the plan (checks -> K, BPDA paths), the suite it runs and the probe are read together.

:func:`plan_adaptive` looks at the model on the run's first batch, once per run:

- ``deterministic_logits`` warns (the logits change between two calls on the same input): the gradient attacks
  run with EOT (:mod:`advlab.attacks.eot`) over K draws, K chosen from the measured gradient variance: with
  r = the median over samples of E||g_k - g||^2 / ||g||^2 (M draws g_k of the input gradient, g their mean), the
  K-draw mean has relative error ~ sqrt(r / K), and K = ceil(r / tol^2) keeps it below ``tol`` (capped at
  ``eot_cap``, at least 2 for a random model); r, K, the cap and the draws are recorded.
- masked gradients (``zero_gradients`` or any other masking check of :func:`~advlab.evaluate.sanity.sanity_checks`
  warns), or a module whose local Jacobian is zero or undefined: BPDA (:func:`advlab.defenses.bpda_at`, identity
  backward) around the offending modules, those the user names (``bpda``) or those :func:`probe_modules` finds
  (the innermost shape-keeping modules whose vector-Jacobian product is zero for most samples, non-finite or
  missing); Square (score-based, no gradient) runs in the suite as well.

The run then holds, per eps, the naive ``strong`` suite on the model as given and the adaptive suite (APGD-CE and
APGD-T with EOT through the BPDA-wrapped model, then Square), chained with ``only_unbroken`` so each sample's
adaptive record is its worst case over both: the adaptive robust accuracy is never above the naive one on any
sample. :func:`evaluate_adaptive` is the Python entry point, ``advlab eval --suite adaptive`` the command.

On a random model two rules keep the suite's number an adaptive attacker's (Athalye, Carlini & Wagner 2018, sec.
4.2, EOT: break the *expected* prediction; Tramer et al. 2020: judge the attack on the defended model's own
decision). (1) APGD's own success test asks for a break the K draws resolve (:func:`advlab.attacks.eot.decisive`:
the mean prediction wrong by more than z = 2 standard errors of the K-draw estimate, and confirmed on K fresh
draws: :meth:`advlab.attacks.eot.Expected.confirm`), not one the draws made by chance: the plain test, applied
at each of APGD's iterates, stops the attack at the first iterate whose K draws fell wrong (the optimizer's
curse), a break the suite's judgement on other draws then refutes, and the sample survives every stage untouched
(docs/benchmarks.md, adaptive.py, measures both on random resize-and-pad). (2) The stages judge what they stop
attacking by the caller's rule (``judge``, the engine's :class:`~advlab.evaluate.engine.Judge`), so a sample the
suite counts broken is one the records count broken.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..attacks import AttackResult
from ..attacks.checks import check_steps, frozen
from ..attacks.gradient import input_gradient
from ..attacks.objectives import margin
from ..defenses import bpda_at
from ..runtime import RankInfo, broadcast, current
from ..runtime.lock import lock_folder
from .engine import load_batch, model_rng_seed, plan_batches
from .records import atomic_write_text
from .run import RunResult, device_of, evaluate
from .sanity import check_deterministic, sanity_checks
from .sharded import evaluate_sharded
from .specs import SpecError, make_spec, register_attack
from .suite import Stage, apgd_ce_stage, apgd_t_stage, run_suite, square_stage

EOT_CAP = 32  # most draws per step the suite chooses by itself
EOT_TOL = 0.3  # relative error of the K-draw gradient the choice aims at (0.5 chose K = 3 for random resize-pad
# on fmnist_cnn_standard, which left 7% robust against 4.5% at K = 10: docs/benchmarks.md, adaptive.py)
VARIANCE_DRAWS = 8  # draws of the input gradient that measure its variance
MASKING_CHECKS = (
    "zero_gradients", "iterative_vs_single_step", "accuracy_monotone_in_eps", "large_eps", "unbounded_attack",
    "square_vs_whitebox", "loss_rises",
)  # fmt: skip


# ------------------------------------------------------------------------------------------------ probes


def probe_modules(model: nn.Module, x: Tensor, *, seed: int = 0) -> list[dict[str, Any]]:
    """The submodules of ``model`` whose local Jacobian is zero or undefined on the batch ``x``.

    Each submodule is run again on the input it received in one forward of the model, and the vector-Jacobian
    product with a random vector is taken: "zero" when it is all zero for at least half of the samples (a
    quantiser, a Pillow round-trip behind a zero backward), "non-finite", or "undefined" (the output carries no
    graph back to the input). Returns, per flagged module, ``{"path", "reason", "keeps_shape"}``, innermost
    first-level findings only (a container is not listed when a module inside it is).
    """
    seen: dict[str, tuple[Any, Any]] = {}
    inputs: dict[str, Any] = {}

    def before(name: str) -> Any:
        def hook(_m: nn.Module, inp: Any) -> None:  # a copy: an in-place module (ReLU6(inplace=True)) overwrites it
            if name not in inputs:
                inputs[name] = tuple(t.detach().clone() if isinstance(t, Tensor) else t for t in inp)

        return hook

    def keeper(name: str) -> Any:
        def hook(_m: nn.Module, _inp: Any, out: Any) -> None:  # returns None: the output stays as it is
            seen.setdefault(name, (inputs[name], out))

        return hook

    named = [(name, m) for name, m in model.named_modules() if name]
    hooks = [m.register_forward_pre_hook(before(name)) for name, m in named]
    hooks += [m.register_forward_hook(keeper(name)) for name, m in named]
    try:
        with torch.no_grad(), frozen(model):
            model(x)
    finally:
        for h in hooks:
            h.remove()
    modules = dict(model.named_modules())
    gen = torch.Generator().manual_seed(seed)
    flagged: list[dict[str, Any]] = []
    with frozen(model):
        for name, (inp, out) in seen.items():
            if len(inp) != 1 or not isinstance(inp[0], Tensor) or not isinstance(out, Tensor):
                continue
            if not (inp[0].is_floating_point() and out.is_floating_point()) or inp[0].shape[:1] != x.shape[:1]:
                continue
            x_in = inp[0].detach().clone().requires_grad_(True)
            with torch.enable_grad():
                y = modules[name](x_in.clone())  # not the leaf itself: an in-place module may write to its input
            reason = None
            if not isinstance(y, Tensor) or not y.requires_grad:
                reason = "undefined"
            else:
                v = torch.randn(y.shape, generator=gen, dtype=y.dtype).to(y.device)
                (g,) = torch.autograd.grad(y, x_in, v, allow_unused=True)
                if g is None:
                    reason = "undefined"
                elif not bool(torch.isfinite(g).all()):
                    reason = "non-finite"
                elif float((g.flatten(1) == 0).all(dim=1).float().mean()) >= 0.5:
                    reason = "zero"
            if reason is not None:
                flagged.append({"path": name, "reason": reason, "keeps_shape": tuple(out.shape) == tuple(inp[0].shape)})
    names = [f["path"] for f in flagged]
    return [f for f in flagged if not any(o.startswith(f["path"] + ".") for o in names)]


def gradient_variance(model: nn.Module, x: Tensor, y: Tensor, draws: int = VARIANCE_DRAWS) -> float:
    """The median over samples of E||g_k - g||^2 / ||g||^2: the spread of ``draws`` input gradients of the margin
    loss (one per forward, g_k) around their mean g; 0 for a deterministic model."""
    grads = []
    with frozen(model):
        for _ in range(draws):
            x_in = x.detach().clone().requires_grad_(True)
            g = input_gradient(margin(model(x_in), y).sum(), x_in)
            grads.append(g.detach().flatten(1).double())
    g = torch.stack(grads)  # (draws, N, d)
    mean = g.mean(0)
    spread = ((g - mean) ** 2).sum(2).sum(0) / max(draws - 1, 1)
    ratio = spread / (mean**2).sum(1).clamp_min(1e-30)
    return float(ratio.nan_to_num(nan=0.0, posinf=1e30).median())


def choose_eot_samples(variance: float, *, random: bool, cap: int = EOT_CAP, tol: float = EOT_TOL) -> int:
    """K = ceil(variance / tol^2) in [2, cap] for a random model (relative error of the mean ~ sqrt(variance/K));
    1 for a deterministic one."""
    if not random:
        return 1
    return int(min(cap, max(2, math.ceil(variance / tol**2))))


# ------------------------------------------------------------------------------------------------ the plan


@dataclass
class AdaptivePlan:
    """What the checks found and what the adaptive suite does about it (written to summary.json)."""

    eot_samples: int = 1
    bpda: list[str] = field(default_factory=list)
    square: bool = True
    triggers: list[dict[str, str]] = field(default_factory=list)
    gradient_variance: float = 0.0
    eot_cap: int = EOT_CAP
    eot_tol: float = EOT_TOL
    variance_draws: int = VARIANCE_DRAWS
    probed: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    checked_on: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_adaptive(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    norm: str = "linf",
    *,
    seed: int = 0,
    bpda: Sequence[str] = (),
    eot_cap: int = EOT_CAP,
    full_checks: bool = True,
) -> AdaptivePlan:
    """Run the checks on one batch and decide the fixes (module docstring). ``bpda``: module paths the user names
    (used whatever the checks say); ``full_checks``: all of :func:`sanity_checks`, else only the two cheap ones
    (deterministic logits, module probe)."""
    eot_cap = check_steps(eot_cap, "eot_cap")
    plan = AdaptivePlan(eot_cap=eot_cap, checked_on=int(x.shape[0]))
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(model_rng_seed(seed, range(x.shape[0]), "adaptive-plan"))
        if full_checks:
            checks = sanity_checks(model, x, y, eps, norm, seed=seed)
        else:
            with torch.no_grad(), frozen(model):
                checks = [check_deterministic(model(x), model(x))]
        plan.checks = [c.to_dict() for c in checks]
        status = {c.name: c.status for c in checks}
        plan.probed = probe_modules(model, x, seed=seed)
        paths = list(dict.fromkeys([*bpda, *(p["path"] for p in plan.probed if p["keeps_shape"])]))
        attacked = bpda_at(model, paths) if paths else model
        if paths:  # a BPDA around a module that changes the shape is refused here, before any run directory
            with torch.no_grad(), frozen(attacked):
                attacked(x[:1])
        if status.get("deterministic_logits") == "warn":
            plan.gradient_variance = gradient_variance(attacked, x, y)
            plan.eot_samples = choose_eot_samples(plan.gradient_variance, random=True, cap=eot_cap)
            fix = f"EOT over {plan.eot_samples} draws (gradient variance {plan.gradient_variance:.3g}, cap {eot_cap})"
            plan.triggers.append({"check": "deterministic_logits", "fix": fix})
    for path in bpda:
        plan.triggers.append({"check": "user", "fix": f"BPDA around {path} (named by the user)"})
    for p in plan.probed:
        fix = f"BPDA around {p['path']}" if p["keeps_shape"] else f"none: {p['path']} changes the shape, no BPDA"
        plan.triggers.append({"check": f"module_probe ({p['reason']} local Jacobian)", "fix": fix})
    masked = [name for name in MASKING_CHECKS if status.get(name) == "warn"]
    if masked:
        fix = f"BPDA around {', '.join(paths)}, and Square" if paths else "Square (no module to put BPDA around)"
        plan.triggers.append({"check": ", ".join(masked), "fix": fix})
    plan.bpda = paths
    return plan


# ------------------------------------------------------------------------------------- the suite as an attack


def adaptive_suite(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    norm: str = "linf",
    eot_samples: int = 1,
    bpda: str = "",
    steps: int = 100,
    n_target_classes: int = 9,
    square_queries: int = 1000,
    seed: Any = None,
    return_info: bool = False,
    judge: Callable[[Tensor, Tensor | None], Tensor] | None = None,
) -> AttackResult:
    """The adaptive suite on one batch: APGD-CE (``steps``) and APGD-T (top-``n_target_classes`` targets,
    ``steps`` each) with EOT over ``eot_samples`` draws through the model with BPDA around the modules at ``bpda``
    (comma-separated paths), then Square (``square_queries``) on the model as given; breaks judged on the model's
    expected prediction: by ``judge(points, rows)`` where given (an evaluation passes its records' rule), else
    :func:`~advlab.evaluate.suite.run_suite`'s own (common draws over ``eot_samples``)."""
    paths = [_resolve(model, p) for p in bpda.split(",") if p]
    through = bpda_at(model, paths) if paths else model
    k = eot_samples

    def on(stage_fn: Any) -> Any:
        return lambda _m, *a: stage_fn(through, *a)

    fix = f"EOT {k}, BPDA {paths or 'none'}"
    stages = [
        Stage("apgd-ce", on(apgd_ce_stage(steps, k)), f"APGD-CE, {steps} steps, {fix}"),
        Stage("apgd-t", on(apgd_t_stage(steps, n_target_classes, k)), f"APGD-T, top-{n_target_classes}, {fix}"),
        Stage("square", square_stage(square_queries), f"Square, {square_queries} queries"),
    ]
    result = run_suite(
        model, x, y, eps, norm, seed=0 if seed is None else seed, stages=stages, eot_samples=k, judge=judge
    )
    return AttackResult(result.x_adv, ~result.robust, None, {"broken_by": result.broken_by})


register_attack("suite_adaptive", adaptive_suite)


def _resolve(model: nn.Module, path: str) -> str:
    """``path`` in ``model``, or the one submodule path that ends with it: the engine attacks the prepared model
    (:func:`advlab.models.prepare` may put the model given inside a wrapper), the plan names paths of the model
    as given."""
    names = [name for name, _ in model.named_modules()]
    if path in names:
        return path
    ends = [name for name in names if name.endswith("." + path)]
    return ends[0] if len(ends) == 1 else path  # else bpda_at names the submodules that exist


# ------------------------------------------------------------------------------------------ the whole run


def first_batch(dataset: Any, batch_size: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """The first readable batch of the run's plan (the same one on every rank and resumption)."""
    for batch in plan_batches(len(dataset), batch_size):
        x, y, kept = load_batch(dataset, list(batch), device)
        if kept:
            return x, y
    raise SpecError("the dataset holds no readable image; nothing to check or attack")


def adaptive_specs(
    eps: Iterable[Any], plan: AdaptivePlan, params: Mapping[str, Any] | None = None, naive: str = "strong"
) -> list[Any]:
    """Per eps: the naive suite (``suite_<naive>``, norm from ``params``), then the adaptive suite with ``params``
    (norm, steps, n_target_classes, square_queries) chained onto it (``only_unbroken``)."""
    params = dict(params or {})
    specs = []
    for e in eps:
        naive_spec = make_spec(f"suite_{naive}", {"norm": params.get("norm", "linf"), "eps": e})
        fix = {"eot_samples": plan.eot_samples, "bpda": ",".join(plan.bpda)}
        adaptive = make_spec("suite_adaptive", {**params, "eps": e, **fix}, only_unbroken=(naive_spec.id,))
        specs += [naive_spec, adaptive]
    return specs


def compare(summary: Mapping[str, Any], plan: AdaptivePlan) -> list[dict[str, Any]]:
    """Naive against adaptive robust accuracy (top-1 under attack) per eps, with what triggered the change."""
    by_id = {a["id"]: a for a in summary["attacks"]}
    rows = []
    for a in summary["attacks"]:
        if a["name"] != "suite_adaptive":
            continue
        naive = by_id[a["only_unbroken"][0]] if a.get("only_unbroken") else None
        rows.append(
            {
                "eps": a["params"]["eps"],
                "naive": None if naive is None else naive["adv_top1"],
                "adaptive": a["adv_top1"],
                "triggered_by": [t["check"] for t in plan.triggers],
                "fixes": [t["fix"] for t in plan.triggers],
            }
        )
    return rows


def adaptive_line(row: Mapping[str, Any]) -> str:
    """One line per eps for the end of a run: naive -> adaptive, and why."""

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.1f}%"

    why = "; ".join(f"{c} -> {f}" for c, f in zip(row["triggered_by"], row["fixes"], strict=True)) or "no check warned"
    return f"adaptive eps={row['eps']:.4g}: robust {pct(row['naive'])} naive -> {pct(row['adaptive'])} adaptive ({why})"


def evaluate_adaptive(
    model: nn.Module,
    dataset: Any,
    eps: Sequence[Any],
    *,
    norm: str = "linf",
    bpda: Sequence[str] = (),
    eot_cap: int = EOT_CAP,
    naive: str = "strong",
    adaptive_params: Mapping[str, Any] | None = None,
    batch_size: int = 16,
    seed: int = 0,
    extra: Mapping[str, Any] | None = None,
    info: RankInfo | None = None,
    **kwargs: Any,
) -> RunResult:
    """``evaluate`` with the adaptive suite: the checks on the first batch (:func:`plan_adaptive`, all of them),
    then per eps the naive suite (``naive``: "strong", or "fast" for a quick look) and the adaptive suite
    (:func:`adaptive_specs`; ``adaptive_params``: steps, n_target_classes, square_queries of
    :func:`adaptive_suite`). summary.json gets ``adaptive`` (the plan and one row per eps, :func:`compare`) and the
    checks' verdicts under ``sanity``. Other keyword arguments go to :func:`advlab.evaluate.evaluate` (out,
    replace, quiet, model_meta, ...).

    Under torchrun (``info``, default the current process group) rank 0 alone runs the checks and decides the
    plan, which it shares with the other ranks (they wait for it); the run is then
    :func:`~advlab.evaluate.sharded.evaluate_sharded` over the ranks, and rank 0 writes the summary. The checks
    and the plan are those of the single-process run, so is the summary (all but the timings)."""
    budgets = list(eps)
    if not budgets:
        raise SpecError("the adaptive suite needs at least one eps (e.g. --eps 0.1)")
    params: dict[str, Any] = {**dict(adaptive_params or {}), "norm": norm}
    for key in ("eps", "eot_samples", "bpda", "seed"):
        if key in params:
            raise SpecError(f"the adaptive suite sets {key} itself (eps: the eps argument; the fixes: the checks)")
    make_spec("suite_adaptive", {**params, "eps": budgets[0]})  # bad settings are named before any work
    if naive not in ("strong", "fast"):
        raise SpecError(f"naive must be 'strong' or 'fast', got {naive!r}")
    info = info or current()
    plan = None
    if info.is_main:  # the checks once, on rank 0; the other ranks get its plan
        x, y = first_batch(dataset, batch_size, device_of(model))
        first_eps = float(make_spec("suite_strong", {"eps": budgets[0]}).params["eps"])
        plan = plan_adaptive(model, x, y, first_eps, norm, seed=seed, bpda=bpda, eot_cap=eot_cap)
    plan = broadcast(plan, info, "sharing the adaptive suite's plan (the checks run on rank 0)")
    assert isinstance(plan, AdaptivePlan)
    specs = adaptive_specs(budgets, plan, params, naive)
    sanity = {"checks": plan.checks, "warnings": sum(c["status"] == "warn" for c in plan.checks), "on": plan.checked_on}
    meta = {**dict(extra or {}), "adaptive": {"plan": plan.to_dict()}, "sanity": sanity}
    # The run and the rewrite of its summary with the adaptive rows under one lock, held by rank 0 under torchrun:
    # no second writer in between (review 2, F11); ``lock=False`` where the caller holds it around more.
    with lock_folder(kwargs.get("out"), enabled=kwargs.pop("lock", True) and info.is_main):
        if info.distributed:
            run = dict(batch_size=batch_size, seed=seed, extra=meta, info=info, lock=False)
            result = evaluate_sharded(model, dataset, specs, **run, **kwargs)
        else:
            result = evaluate(model, dataset, specs, batch_size=batch_size, seed=seed, extra=meta, lock=False, **kwargs)
        result.summary["adaptive"]["rows"] = compare(result.summary, plan)
        if info.is_main and result.run_dir is not None and kwargs.get("write_summary", True):
            text = json.dumps(result.summary, indent=2, sort_keys=False) + "\n"
            atomic_write_text(result.run_dir / "summary.json", text)
    return result


def run_sanity(
    model: nn.Module, dataset: Any, eps: float, norm: str, *, batch_size: int, seed: int, info: RankInfo | None = None
) -> dict:
    """Every check of :func:`sanity_checks` on the run's first batch, seeded by the run seed: the ``sanity`` entry
    of summary.json for ``advlab eval --sanity``. Under torchrun (``info``, default the current process group)
    rank 0 alone runs the checks and every rank returns its verdicts (the others wait for them)."""
    info = info or current()
    verdicts = None
    if info.is_main:
        x, y = first_batch(dataset, batch_size, device_of(model))
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            torch.manual_seed(model_rng_seed(seed, range(x.shape[0]), "sanity"))
            checks = sanity_checks(model, x, y, eps, norm, seed=seed)
        verdicts = {
            "checks": [c.to_dict() for c in checks], "warnings": sum(c.status == "warn" for c in checks), "on": len(y)
        }  # fmt: skip
    return broadcast(verdicts, info, "sharing the sanity checks' verdicts (they run on rank 0)")
