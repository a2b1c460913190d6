"""Evaluation: attacks over a dataset, per-sample records in a run directory, summaries.

``evaluate(model, dataset, [make_spec("pgd", {"eps": "8/255", "steps": 10})], out="runs/x")`` runs the
attacks in batches, writes ``runs/x/records/...`` and ``runs/x/summary.json`` (schema in docs/evaluate.md),
and resumes a killed run. Modules, bottom up: :mod:`.specs` (attack specs, the registry and its algorithm
versions), :mod:`.records` (a sample's record, its files, the statistics), :mod:`.suite` and :mod:`.sanity`
(the worst-case suite and the gradient-masking checks), :mod:`.plans` (suites chained onto listed attacks),
:mod:`.engine` (batches, targets, one batch's records), :mod:`.rundir` (run.json, fingerprint, provenance,
record files), :mod:`.summary` (summary.json), :mod:`.run` (:func:`evaluate`), :mod:`.sharded` (the same
over the ranks of a torchrun run), :mod:`.adaptive` (the adaptive suite: checks, then EOT/BPDA where they warn).
"""

from ..numbers import parse_number
from .adaptive import AdaptivePlan, evaluate_adaptive, plan_adaptive, probe_modules, run_sanity
from .engine import attack_batch, choose_targets, load_batch, plan_batches, random_targets
from .plans import available_suites, chain_suite, suite_specs, with_suites
from .records import RECORD_SCHEMA_VERSION, summarize, summarize_attack
from .run import RunResult, evaluate, run_config
from .rundir import ProvenanceWarning, RunDirectory
from .specs import (
    ALGORITHM_VERSIONS,
    AttackSpec,
    SpecError,
    algorithm_version,
    attack_norm,
    make_spec,
    register_attack,
    registry,
    validate_specs,
)
from .summary import build_summary, robustness_lines, sanity_lines, stage_lines, summary_line

__all__ = [
    "ALGORITHM_VERSIONS",
    "RECORD_SCHEMA_VERSION",
    "AdaptivePlan",
    "AttackSpec",
    "ProvenanceWarning",
    "RunDirectory",
    "RunResult",
    "SpecError",
    "algorithm_version",
    "attack_batch",
    "attack_norm",
    "available_suites",
    "build_summary",
    "chain_suite",
    "choose_targets",
    "evaluate",
    "evaluate_adaptive",
    "load_batch",
    "make_spec",
    "parse_number",
    "plan_adaptive",
    "plan_batches",
    "probe_modules",
    "random_targets",
    "register_attack",
    "registry",
    "robustness_lines",
    "run_config",
    "run_sanity",
    "sanity_lines",
    "stage_lines",
    "suite_specs",
    "summarize",
    "summarize_attack",
    "summary_line",
    "validate_specs",
    "with_suites",
]
