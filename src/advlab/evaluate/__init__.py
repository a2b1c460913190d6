"""Evaluation: attacks over a dataset, per-sample records in a run directory, summaries, reproduction.

``evaluate(model, dataset, [make_spec("pgd", {"eps": "8/255", "steps": 10})], out="runs/x")`` runs the
attacks in batches, writes ``runs/x/records/...`` and ``runs/x/summary.json`` (schema in docs/evaluate.md),
and resumes a killed run. ``advlab.evaluate.reproduce`` runs the seed paper's experiments.
"""

from .engine import (
    RunDirectory,
    RunResult,
    attack_batch,
    build_summary,
    choose_targets,
    evaluate,
    load_batch,
    plan_batches,
    random_targets,
    run_config,
    summary_line,
)
from .plans import available_suites, chain_suite, suite_specs, with_suites
from .records import summarize, summarize_attack
from .specs import AttackSpec, SpecError, make_spec, parse_number, register_attack, registry, validate_specs

__all__ = [
    "AttackSpec",
    "RunDirectory",
    "RunResult",
    "SpecError",
    "attack_batch",
    "available_suites",
    "build_summary",
    "chain_suite",
    "choose_targets",
    "evaluate",
    "load_batch",
    "make_spec",
    "parse_number",
    "plan_batches",
    "random_targets",
    "register_attack",
    "registry",
    "run_config",
    "suite_specs",
    "summarize",
    "summarize_attack",
    "summary_line",
    "validate_specs",
    "with_suites",
]
