"""Minimal-norm attacks, advlab against adv_lib's, Foolbox's and torchattacks' implementations (FMN, FAB, DDN).

On a shipped Fashion-MNIST model and the correctly classified of the first ``--images`` test images, each attack
runs with the same number of steps (FMN and DDN: one forward and one backward each; FAB: a Jacobian, one backward
per class, and one more forward; both FABs without restarts). Every returned point is re-checked on a
fresh forward pass of the model and its distance re-measured in the norm (a point that is not adversarial counts
as a failure, distance inf). Scored as AttackBench does (Cina et al. 2025): per sample, the distance relative to
the smallest distance any entry of the same norm found (optimality: the mean of best / distance over samples,
1 = always the best, 0 for a failure), the median distance, the success rate and the process CPU time (seconds).
The ``fragile`` column counts the successes of that check that another evaluation of the same point undoes
(the point alone, or in float64: the label decided by float rounding; see ``fragile``); they stay counted as
successes, as AttackBench counts them. The check runs once per entry, after its last timed run, outside the
timings (a forward pass per returned point); ``--no-fragile`` leaves it out (the column then says -).
``--save FILE`` writes the rows with each entry's per-sample distances (null for a failure), the samples its
fragile check flagged and every timed run's seconds as JSON (after each norm), so that a table can be
re-derived, rows of separate processes on the same images (``images_sha256``) combined per sample, and an
entry's points compared image by image with another's. ``--batch B`` runs every entry on consecutive batches of
B images (memory) and checks the points on the same batches.
Also advlab's FAB-T (targeted FAB towards the 9 likeliest classes) and its ``minimal`` ensemble, and the peers'
entries where installed: Foolbox's
``L*FMNAttack``/``DDNAttack``/``EADAttack`` (EAD: L1, 9 binary-search steps of ``--steps``), torchattacks'
``FAB`` in L2 and Linf (with a budget no attack needs, so that it is minimal-norm; its L1 fails in 3.5.1), and
AutoAttack's FAB-T (pyautoattack's ``FABAttack_PT``, targeted, 9 targets) kept per sample at the smallest
point of its targeted runs, as advlab's FAB-T keeps (:func:`autoattack_fab_t`).
``--entries`` keeps the entries whose name contains one of the given words (e.g. ``--entries fmn,minimal``), or
is one of those given with a leading ``=`` (``--entries "=advlab fab,=adv_lib fab"``); the kept entries run in
the order of the words that keep them.
``--shard I/K`` attacks only part I of K of the correctly classified images (consecutive, as equal as can be),
so that one run can be split over processes; ``benchmarks/minimal_norm_merge.py`` joins their ``--save`` files
(and those of runs of other entries on the same images) into one table.
``--repeats R`` runs each entry R times, in alternating order (forwards, then backwards, ...), and reports the
median time (the distances are those of the last run; every entry is deterministic without restarts).

``--model efficientnet_lite0`` attacks EfficientNet-Lite0 on the correctly classified of the shared ImageNet
images (../shared/data/imagenet-30x5, or ``--imagenet DIR``; at most ``--n`` of them). With its 1,000 classes
the untargeted FABs (advlab's, adv_lib's, torchattacks') are left out: their Jacobian is one backward per class,
999 a step; FAB-T (9 targets) stays. ``--device cuda`` puts the model, the images and every library's attack
on the GPU; the time column is then wall seconds between ``torch.cuda.synchronize()`` calls, on the CPU it is
process time. Before its timed runs, each entry runs once untimed with ``--warmup-steps`` steps (default 2) on
the same images, on every device: on a GPU the first call of a process otherwise bears the CUDA context, the
kernels' loading and cuDNN's plans (the first entry of the earlier GPU tables took 2x its time).

The ensemble's row is, by default, not a separate run: ``attacks.minimal`` is deterministic (on the CPU; on a
GPU up to the nondeterminism of some CUDA kernels) and returns per sample the smallest verified distance of its
members (attacks.MINIMAL_MEMBERS, each run with the same arguments as its own row here; tests/test_robustness.py
and tests/test_bench_minimal_norm.py check the equality), so the row is the per-sample minimum of its members'
rows and its time the sum of theirs. That saves a third of the benchmark's time;
``--run-ensemble`` runs ``attacks.minimal`` itself instead. In L0 the ensemble's second FMN run (alpha_init 1000,
gamma_init 0.7) has its own row, and FMN with the paper's L0 step and eps factor (1, 0.05: adv_lib's and
Foolbox's defaults) one more, so that advlab and adv_lib are also compared at the same settings; sigma-zero
(Cina et al., ICLR 2025, the ensemble's third L0 member) runs as advlab's and as adv_lib's, both with the paper's
defaults, and ``--sigma-zero-reference DIR`` adds the authors' own (a checkout of
github.com/Cinofix/sigma-zero-adversarial-attack).

    .venv/bin/python benchmarks/minimal_norm.py --model fmnist_cnn_standard --images 200 --steps 100
    .venv/bin/python benchmarks/minimal_norm.py --model efficientnet_lite0 --n 150 --steps 100 --device cuda

One file: the entries, the run loop and the scoring are read together (minimal_norm_merge.py and the tests import
the scoring from here).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from advlab import attacks
from advlab.attacks.minimal import verified_distance
from benchmarks._peers.entries import entry_rank, entry_words
from benchmarks._peers.libraries import stub_visdom
from benchmarks._peers.measure import timed
from benchmarks._peers.workload import (
    IMAGENET_30X5,
    attack_workload,
    batch_slices,
    images_sha256,
    parse_shard,
    shard_slice,
)

P = {"l0": 0.0, "l1": 1.0, "l2": 2.0, "linf": math.inf}
# The untargeted FABs: one backward per class a step, left out for a model of more than MAX_JACOBIAN_CLASSES.
JACOBIAN_FABS = ("advlab fab", "adv_lib fab", "torchattacks fab")
MAX_JACOBIAN_CLASSES = 100
# An entry: its attack run with the given number of steps on the given images and labels (the benchmark's model).
Entry = Callable[[int, Tensor, Tensor], Tensor]
# The row of each member of attacks.MINIMAL_MEMBERS (the same call as the ensemble makes).
ENSEMBLE = "advlab minimal"  # the ensemble's row
ENSEMBLE_ROWS = {
    "fmn": "advlab fmn", "fmn_large_step": "advlab fmn a1000", "ddn": "advlab ddn", "fab_t": "advlab fab_t",
    "sigma_zero": "advlab sigma_zero",
}  # fmt: skip


def in_batches(name: str, run: Entry, steps: int, x: Tensor, y: Tensor, batch: int) -> Tensor:
    """Entry ``name`` on ``x`` in consecutive batches of ``batch`` images (all at once for 0), the points
    concatenated. Every attack here treats each sample on its own (no restarts, no batch-wide state), so
    batching changes the memory, the time and the float rounding of batched kernels (EfficientNet-Lite0 at 128
    images of 224 x 224 takes about 12 GB a process on the CPU); ``measured`` checks the points on forward
    passes of the same batches, as ``attacks.minimal`` run batch by batch would."""
    points = []
    for part in batch_slices(len(x), batch):
        out = run(steps, x[part], y[part])
        if out.shape != x[part].shape:
            raise RuntimeError(f"{name} returned points of shape {tuple(out.shape)} for {tuple(x[part].shape)}")
        points.append(out.detach())
    return torch.cat(points)


def measured(model: torch.nn.Module, x: Tensor, y: Tensor, x_adv: Tensor, norm: str, batch: int = 0) -> Tensor:
    """Distance in ``norm`` (float64) of each returned point that a fresh forward pass finds adversarial, else
    inf: ``attacks.minimal``'s own check of its members' points (``verified_distance``), on the batches of
    ``in_batches``, so that the ensemble's row is what ``attacks.minimal`` returns. A point with a NaN
    coordinate (a diverged attack) is a failure."""
    d = torch.cat([verified_distance(model, x[b], y[b], x_adv[b], norm, False) for b in batch_slices(len(x), batch)])
    return torch.where(torch.isnan(d), math.inf, d)


@dataclass
class Row:
    """One entry's line of a norm's table."""

    success: float  # share of samples with a verified adversarial point
    median: float  # the lower median distance (torch's; inf where more than half failed)
    optimality: float  # AttackBench's score: mean over samples of best / distance, 0 for a failure
    fragile: int | None  # successes another evaluation undoes (None: not checked)


def ensemble(
    distances: dict[str, Tensor], flips: dict[str, Tensor], members: list[str]
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The ``attacks.minimal`` row from its members' rows: per sample the smallest distance, the index of the
    member that gives it (the first of the smallest, as ``attacks.minimal`` keeps it) and that member's fragile
    flag (None when the fragile flags were not computed)."""
    member_distances = torch.stack([distances[m] for m in members])
    chosen = member_distances.argmin(0)  # the first index of the minimum
    flags = torch.stack([flips[m] for m in members]).gather(0, chosen[None])[0] if flips else None
    return member_distances.amin(0), chosen, flags


def add_ensemble_row(norm: str, distances: dict[str, Tensor], flips: dict[str, Tensor]) -> list[str] | None:
    """Add the ensemble's row of ``norm`` (:func:`ensemble` of its members' rows, with their fragile flags where
    each member has them) to ``distances`` and ``flips``, and return its members; None, adding nothing, where a
    member is missing or the ensemble has a row of its own (a run of ``attacks.minimal``)."""
    members = [ENSEMBLE_ROWS[m] for m in attacks.MINIMAL_MEMBERS[norm]]
    if ENSEMBLE in distances or not all(m in distances for m in members):
        return None
    member_flips = flips if all(m in flips for m in members) else {}
    distances[ENSEMBLE], _, flags = ensemble(distances, member_flips, members)
    if flags is not None:
        flips[ENSEMBLE] = flags
    return members


def score(distances: dict[str, Tensor], flips: dict[str, Tensor]) -> dict[str, Row]:
    """Each entry's row, scored against the per-sample smallest distance of all the entries (AttackBench,
    Cina et al. 2025): a failure (inf) scores 0; a distance of 0 (the image already misclassified) scores 1."""
    best = torch.stack(list(distances.values())).amin(0)
    rows = {}
    for name, d in distances.items():
        ok = torch.isfinite(d)
        ratio = torch.where(ok, best / d.clamp_min(1e-30), torch.zeros_like(d))
        ratio = torch.where(ok & (d == 0), torch.ones_like(d), ratio)
        rows[name] = Row(
            float(ok.double().mean()),
            float(d.median()),
            float(ratio.mean()),
            int(flips[name].sum()) if name in flips else None,
        )
    return rows


def json_number(v: float | int | None) -> float | int | None:
    """JSON has no inf or NaN: a failure's distance (or an infinite median) is written as null."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def norm_record(
    rows: dict[str, Row],
    distances: dict[str, Tensor],
    flips: dict[str, Tensor],
    seconds: dict[str, list[float]],
    derived: dict[str, list[str]],
) -> dict[str, dict[str, object]]:
    """One norm's part of ``--save``'s JSON: per entry its row, the seconds of each timed run, the per-sample
    distances (null for a failure) and the samples the fragile check flagged (null when it did not run). A row
    derived from other rows (the ensemble's, by default) has the names of those rows in ``members`` and no
    seconds of its own."""
    return {
        name: {
            **{k: json_number(v) for k, v in asdict(row).items()},
            "seconds": seconds.get(name),
            "members": derived.get(name),
            "distance": [json_number(v) for v in distances[name].tolist()],
            "fragile_samples": None if name not in flips else flips[name].nonzero().flatten().tolist(),
        }
        for name, row in rows.items()
    }


def write_json(path: Path, record: dict[str, object]) -> None:
    """``record`` into ``path`` through a temporary file: a run stopped between norms leaves the last complete
    record, never a half-written one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)


def fragile(model: torch.nn.Module, model64: torch.nn.Module, y: Tensor, x_adv: Tensor, distance: Tensor) -> Tensor:
    """Per sample: the returned point passed ``measured``'s check (a fresh forward pass of its batch) but
    is classified correctly by another evaluation of the same point, alone (a batch of one) or in float64.
    A finite distance of 0 (the image itself, which the workload kept as correctly classified in another batch)
    is checked too: that is the plainest case of a label decided by rounding.

    Such a point sits so near the decision boundary that float rounding decides its label: a re-check with
    another batch size, another kernel or another device can undo the success the table counts (advlab's
    attacks return points past the boundary by ``rounding_slack``, 1e-4 of the largest |logit|, against that).
    """
    out = torch.zeros_like(distance, dtype=torch.bool)
    idx = torch.isfinite(distance).nonzero().flatten()
    if idx.numel() == 0:
        return out
    with torch.no_grad():
        alone = torch.cat([model(x_adv[i : i + 1]).argmax(1) for i in idx.tolist()])
        wide = model64(x_adv[idx].double()).argmax(1)
    out[idx] = (alone == y[idx]) | (wide == y[idx])
    return out


def peer_entries(model: torch.nn.Module, device: torch.device, norm: str, num_classes: int) -> list[tuple[str, Entry]]:
    """Foolbox's and torchattacks' minimal-norm attacks of ``norm``, where installed (on ``device``)."""
    out: list[tuple[str, Entry]] = []
    try:
        import foolbox as fb
    except ImportError:
        fb = None
    if fb is not None:
        fmodel = fb.PyTorchModel(model, bounds=(0, 1), device=device)
        fmn = {"l0": fb.attacks.L0FMNAttack, "l1": fb.attacks.L1FMNAttack, "l2": fb.attacks.L2FMNAttack,
               "linf": fb.attacks.LInfFMNAttack}[norm]  # fmt: skip

        def run_fb(attack: object, x: Tensor, y: Tensor) -> Tensor:
            return attack(fmodel, x, y, epsilons=None)[1]  # type: ignore[operator]

        out.append(("foolbox fmn", lambda s, x, y: run_fb(fmn(steps=s), x, y)))
        if norm == "l2":
            out.append(("foolbox ddn", lambda s, x, y: run_fb(fb.attacks.DDNAttack(steps=s), x, y)))
        if norm == "l1":
            ead = fb.attacks.EADAttack
            out.append(("foolbox ead", lambda s, x, y: run_fb(ead(steps=s, binary_search_steps=9), x, y)))
    try:
        import torchattacks
    except ImportError:
        torchattacks = None
    if torchattacks is not None and norm in ("l2", "linf"):  # its FAB's perturb() fails on "L1" (3.5.1)
        ta_norm = {"l2": "L2", "linf": "Linf"}[norm]
        big = {"l2": 1e3, "linf": 1.0}[norm]  # a budget no attack needs: minimal-norm FAB

        def run_ta(steps: int, x: Tensor, y: Tensor) -> Tensor:
            fab = torchattacks.FAB(model, norm=ta_norm, eps=big, steps=steps, n_restarts=1, n_classes=num_classes)
            return fab(x, y)

        out.append(("torchattacks fab", run_ta))
    try:
        from pyautoattack.fab_pt import FABAttack_PT
    except ImportError:
        FABAttack_PT = None
    if FABAttack_PT is not None and norm != "l0":
        out.append(("autoattack fab_t", lambda s, x, y: autoattack_fab_t(FABAttack_PT, model, norm, s, x, y)))
    return out


def autoattack_fab_t(fab_class: type, model: torch.nn.Module, norm: str, steps: int, x: Tensor, y: Tensor) -> Tensor:
    """AutoAttack's FAB-T (``FABAttack_PT``, targeted, its 9 targets: the 2nd to 10th likeliest classes) as a
    minimal-norm attack: per sample the smallest adversarial point of its targeted runs, as advlab's ``fab_t``
    keeps. (AutoAttack's own ``perturb`` attacks a sample with the next target only while it is unbroken at its
    eps, so with an eps no attack needs it would keep the first target's point; the runs are the same.)
    pyautoattack casts the images to float32 inside each run, so the model must take float32."""
    fab = fab_class(model, norm={"linf": "Linf", "l2": "L2", "l1": "L1"}[norm], n_restarts=1, n_iter=steps,
                    targeted=True, n_target_classes=9, device=x.device)  # fmt: skip
    best, best_size = x.clone(), torch.full((len(x),), math.inf, device=x.device)
    with torch.no_grad():
        logits_classes = model(x).shape[1]
        for target_class in range(2, min(fab.n_target_classes, logits_classes - 1) + 2):
            fab.target_class = target_class
            point = fab.attack_single_run(x, y, use_rand_start=False, is_targeted=True)
            size = (point - x).flatten(1).norm(p=P[norm], dim=1)
            size = torch.where(model(point).argmax(1) != y, size, math.inf)
            better = size < best_size
            best[better], best_size = point[better], torch.minimum(size, best_size)
    return best


def authors_sigma_zero(checkout: Path, model: torch.nn.Module) -> Entry:
    """The authors' sigma-zero (``sigma_zero_attack.py`` of github.com/Cinofix/sigma-zero-adversarial-attack,
    which imports adv_lib's ``difference_of_logits``) as an entry, with its defaults."""
    if not (checkout / "sigma_zero_attack.py").is_file():
        raise SystemExit(f"--sigma-zero-reference {checkout}: no sigma_zero_attack.py there")
    sys.path.insert(0, str(checkout))
    from sigma_zero_attack import sigma_zero as reference  # type: ignore[import-not-found]

    return lambda s, x, y: reference(model, x, y, steps=s)


def count(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a count >= 0, got {value}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fmnist_cnn_standard")
    parser.add_argument("--images", "--n", type=int, default=200, help="test images (before keeping the correct)")
    parser.add_argument("--imagenet", default=str(IMAGENET_30X5), help="the ImageNet folder of efficientnet_lite0")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup-steps", type=int, default=2, help="steps of each entry's untimed warm-up run")
    parser.add_argument("--norms", default="l0,l1,l2,linf")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--entries", default="", help="comma-separated words; keep entries whose name has one")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each entry, alternating order; median time")
    parser.add_argument("--run-ensemble", action="store_true", help="run attacks.minimal instead of combining rows")
    parser.add_argument("--no-fragile", action="store_true", help="skip the fragile column's re-evaluations")
    parser.add_argument("--batch", type=count, default=0, help="images per attack call (0: all at once)")
    parser.add_argument("--save", default="", help="write the rows and per-sample distances to this JSON file")
    parser.add_argument("--shard", type=parse_shard, default=None, help="I/K: attack part I of K of the images only")
    parser.add_argument(
        "--sigma-zero-reference", default="",
        help="a checkout of Cinofix/sigma-zero-adversarial-attack: adds its sigma_zero in L0",
    )  # fmt: skip
    args = parser.parse_args()
    save = Path(args.save) if args.save else None
    if save is not None and not save.parent.is_dir():
        parser.error(f"--save {args.save}: the folder {save.parent} does not exist")
    stub_visdom()
    from adv_lib.attacks import ddn as adv_lib_ddn
    from adv_lib.attacks import fab as adv_lib_fab
    from adv_lib.attacks import fmn as adv_lib_fmn
    from adv_lib.attacks import sigma_zero as adv_lib_sigma_zero

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    wl = attack_workload(args.model, args.images, Path(args.imagenet))
    kept, kept_sha256 = len(wl.x), "" if save is None else images_sha256(wl.x)
    if args.shard is not None:
        if args.shard[1] > kept:
            parser.error(f"--shard {args.shard[0]}/{args.shard[1]}: only {kept} images to split")
        part = shard_slice(kept, *args.shard)
        wl.x, wl.y, wl.targets = wl.x[part], wl.y[part], wl.targets[part]
    model, x, y = wl.model.to(device), wl.x.to(device), wl.y.to(device)
    model64 = None if args.no_fragile else copy.deepcopy(model).double()  # the "fragile" column's float64 check

    entries: dict[str, list[tuple[str, Entry]]] = {}
    for norm in args.norms.split(","):
        entries[norm] = [
            ("advlab fmn", lambda s, x, y, norm=norm: attacks.fmn(model, x, y, norm=norm, steps=s)),
            ("adv_lib fmn", lambda s, x, y, norm=norm: adv_lib_fmn(model, x, y, norm=P[norm], steps=s)),
        ]
        if norm == "l0":
            entries[norm] += [
                ("advlab fmn a1000", lambda s, x, y: attacks.fmn(model, x, y, norm="l0", steps=s, alpha_init=1000.0,
                                                         gamma_init=0.7)),
                ("advlab fmn a1", lambda s, x, y: attacks.fmn(model, x, y, norm="l0", steps=s, alpha_init=1.0,
                                                      gamma_init=0.05)),
                ("advlab sigma_zero", lambda s, x, y: attacks.sigma_zero(model, x, y, steps=s)),
                ("adv_lib sigma_zero", lambda s, x, y: adv_lib_sigma_zero(model, x, y, num_steps=s)),
            ]  # fmt: skip
        if norm != "l0":
            entries[norm] += [
                ("advlab fab", lambda s, x, y, norm=norm: attacks.fab(model, x, y, norm=norm, steps=s)),
                ("adv_lib fab", lambda s, x, y, norm=norm: adv_lib_fab(model, x, y, norm=P[norm], n_iter=s)),
            ]
        if norm == "l2":
            entries[norm] += [
                ("advlab ddn", lambda s, x, y: attacks.ddn(model, x, y, steps=s)),
                ("adv_lib ddn", lambda s, x, y: adv_lib_ddn(model, x, y, steps=s, levels=None)),
            ]
        if norm != "l0":
            entries[norm].append(
                ("advlab fab_t", lambda s, x, y, norm=norm: attacks.fab_t(model, x, y, norm=norm, steps=s))
            )
        if args.run_ensemble:
            entries[norm].append(
                ("advlab minimal", lambda s, x, y, norm=norm: attacks.minimal(model, x, y, norm=norm, steps=s))
            )
        entries[norm] += peer_entries(model, device, norm, wl.num_classes)
        if norm == "l0" and args.sigma_zero_reference:
            entries[norm].append(("authors sigma_zero", authors_sigma_zero(Path(args.sigma_zero_reference), model)))
    if wl.num_classes > MAX_JACOBIAN_CLASSES:
        print(f"({wl.num_classes} classes: {', '.join(JACOBIAN_FABS)} left out)", file=sys.stderr)
        entries = {k: [e for e in v if e[0] not in JACOBIAN_FABS] for k, v in entries.items()}
    words = entry_words(args.entries)
    if words:

        def rank(name: str) -> int | None:
            return entry_rank(name, words)

        # Kept entries run in the order of the words that keep them (a process's first timed run can differ).
        entries = {
            k: sorted((e for e in v if rank(e[0]) is not None), key=lambda e: rank(e[0])) for k, v in entries.items()
        }

    clock = "wall s" if device.type == "cuda" else "cpu s"
    print(f"{wl.name}: {len(x)} correctly classified images, {args.steps} steps, {args.threads} thread(s), {device}")
    print(f"{'norm':5} {'attack':16} {'success':>8} {'fragile':>7} {'median':>9} {'optimality':>10} {clock:>7}")
    saved: dict[str, dict[str, dict[str, object]]] = {}
    header = (
        {}
        if save is None
        else {  # --save's record, less the norms
            "workload": wl.name,
            "images": len(x),
            "images_sha256": images_sha256(x),
            "shard": args.shard,  # [I, K], or null: all the kept images
            "all_images": kept,  # the kept images of which --shard took a part
            "all_images_sha256": kept_sha256,
            "clock": clock,
            "settings": {k: v for k, v in vars(args).items() if k != "save"},
        }
    )
    for norm, runs in entries.items():
        distances, points = {}, {}
        samples: dict[str, list[float]] = {name: [] for name, _ in runs}
        for name, run in runs:  # warm-up (CUDA context, kernels, cuDNN plans, allocator) outside the timings
            in_batches(name, run, args.warmup_steps, x, y, args.batch)
        for r in range(args.repeats):  # rounds in alternating order (load drifts), the median time of each
            for name, run in runs if r % 2 == 0 else runs[::-1]:
                t, x_adv = timed(lambda name=name, run=run: in_batches(name, run, args.steps, x, y, args.batch), device)
                seconds = t.wall if device.type == "cuda" else t.cpu  # process seconds on the CPU
                samples[name].append(seconds)
                points[name] = x_adv.to(device)  # the last run's, which the table reports
                distances[name] = measured(model, x, y, points[name], norm, args.batch)
                cpu_only = f", {100 * t.system / max(t.cpu, 1e-9):.0f}% system, {t.faults} minor faults"
                share = cpu_only if device.type != "cuda" else ""
                print(f"  ({norm} {name}: {seconds:.1f} {clock}{share})", file=sys.stderr, flush=True)
        times = {name: statistics.median(v) for name, v in samples.items()}
        flips = {} if model64 is None else {n: fragile(model, model64, y, points[n], d) for n, d in distances.items()}
        derived = {}
        members = add_ensemble_row(norm, distances, flips)  # none with --run-ensemble: its row is measured
        if members is not None:
            times[ENSEMBLE] = sum(times[m] for m in members)
            derived[ENSEMBLE] = members
        rows = score(distances, flips)
        for name, row in rows.items():
            fragile_count = "-" if row.fragile is None else str(row.fragile)
            print(
                f"{norm:5} {name:16} {row.success:8.3f} {fragile_count:>7} {row.median:9.4g} "
                f"{row.optimality:10.4f} {times[name]:7.2f}"
            )
        if save is not None:  # after every norm: a run stopped by a time limit keeps the norms it finished
            saved[norm] = norm_record(rows, distances, flips, samples, derived)
            write_json(save, {**header, "norms": saved})


if __name__ == "__main__":
    main()
