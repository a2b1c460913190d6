"""advlab against torchattacks, Foolbox, ART, adv_lib and AutoAttack: same model, images and parameters, one run.

For every (model, attack, setting) each library that offers the attack attacks the same batch with the same
parameters. Per library the benchmark records

- wall time and process CPU time, median of ``--repeats`` timed runs after an untimed warm-up run (the same
  attack with at most two iterations on the same batch, which fills the allocator and oneDNN caches);
  libraries run in a rotating order within each repeat so that a change of machine load hits all of them;
- time per iteration divided by the raw forward+backward floor of the same batch (``torch.autograd.grad`` of
  the summed cross-entropy w.r.t. the input with the parameters frozen), timed as one block of as many floor
  steps as the attack has iterations, in the same rotation as the libraries (median over the repeats);
- model evaluations (forward calls with and without autograd), counted by a pass-through wrapper;
- top-1 / top-5 accuracy under attack, success rate, and for CW the median and mean L2 of the successful
  examples, over the timing batch plus the further ``--strength-images`` (run once, not timed); for the
  random-start attacks (PGD, PGD-L2, APGD) ``--strength-seeds K`` adds K-1 untimed runs with other seeds and
  the verdict compares mean top-1 over the K draws (one draw moves a few samples either way);
- every returned example checked to lie in [0, 1] and in the eps-ball (1e-6 tolerance); a violating example
  is printed as a BUG of that library and counted as not adversarial; side effects on the model (mode,
  ``.grad`` left on parameters, ``requires_grad`` changed) are recorded and undone before the next library.

The model is handed to every library as a user loads it (eval mode, parameters requiring grad).

Run (writes docs/bench/compare_peers.json and .md, the one kept result, unless ``--out`` names another stem;
progress on stdout):

    .venv/bin/python benchmarks/compare_peers.py --quick          # minutes on 2 shared CPU cores
    .venv/bin/python benchmarks/compare_peers.py --full           # hours on CPU; minutes on a GPU
    .venv/bin/python benchmarks/compare_peers.py --render docs/bench/compare_peers.json  # table only

Install the peers with ``make bench-deps`` (``pip install -e .[bench]`` and ``pip install --no-deps adv-lib``).
"""

from __future__ import annotations

import os
import sys


def _threads_from_argv(default: int = 1) -> int:
    """Threads must be fixed before numpy/torch load their thread pools, so read the flag early."""
    for i, arg in enumerate(sys.argv):
        if arg == "--threads" and i + 1 < len(sys.argv):
            return int(sys.argv[i + 1])
        if arg.startswith("--threads="):
            return int(arg.split("=", 1)[1])
    return default


THREADS = _threads_from_argv()
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = str(THREADS)

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `_peers` when run as a script

from _peers.libraries import LIBRARIES, Library, Spec, version  # noqa: E402
from _peers.measure import (  # noqa: E402
    Timing,
    check,
    floor_block,
    measure_floor,
    model_state,
    seed_everything,
    side_effects,
    strength,
    timed,
)
from _peers.workload import Workload, fmnist_workload, imagenet_workload  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "bench"
ITERATIVE = ("bim", "pgd", "pgd_l2", "apgd_ce", "apgd_l2")
RANDOM_START_ATTACKS = ("pgd", "pgd_l2", "apgd_ce", "apgd_l2")
# advlab's rows: the model as given (like for like with the peers) and advlab.models.prepare's copy (what the
# CLI runs). Neither is a peer of the other: "fastest peer" and "best peer" are taken over the other libraries.
ADVLAB_ROWS = ("advlab", "advlab (prepared)")


def is_advlab(library: str) -> bool:
    return library in ADVLAB_ROWS


# ------------------------------------------------------------------------------------------------ settings


def linf_specs(attacks: list[str], eps_list: list[float], steps_list: list[int]) -> list[Spec]:
    specs = []
    for attack in attacks:
        for eps in eps_list:
            if attack == "fgsm":
                specs.append(Spec("fgsm", eps))
                continue
            for steps in steps_list:
                # Madry et al.'s step 2.5 eps / steps for PGD and BIM alike; APGD sets its own step size.
                alpha = None if attack == "apgd_ce" else 2.5 * eps / steps
                specs.append(Spec(attack, eps, steps, alpha))
    return specs


def settings(args: argparse.Namespace, small_images: bool) -> list[Spec]:
    eps = args.fmnist_eps if small_images else args.eps
    eps_l2 = args.fmnist_eps_l2 if small_images else args.eps_l2
    attacks = args.attacks
    specs = linf_specs([a for a in attacks if a in ("fgsm", "bim", "pgd", "apgd_ce")], eps, args.steps)
    if "pgd_l2" in attacks:
        specs += [Spec("pgd_l2", e, s, 2.5 * e / s) for e in eps_l2 for s in args.steps]
    if "apgd_l2" in attacks:
        specs += [Spec("apgd_l2", e, s) for e in eps_l2 for s in args.steps]
    if "cw_l2" in attacks:
        for targeted in (False, True):
            specs.append(
                Spec(
                    "cw_l2",
                    steps=args.cw_steps,
                    targeted=targeted,
                    c=args.cw_c,
                    binary_search_steps=args.cw_rounds,
                    lr=args.cw_lr,
                    abort_early=not args.cw_no_abort,
                )
            )
    order = {"fgsm": 0, "bim": 1, "pgd": 2, "pgd_l2": 3, "apgd_ce": 4, "apgd_l2": 5, "cw_l2": 6}
    return sorted(specs, key=lambda s: (order[s.attack], s.targeted, s.steps, s.eps or 0))


# ------------------------------------------------------------------------------------------------- running


def build_libraries(names: list[str], w: Workload, x_example: torch.Tensor) -> tuple[list[Library], list[str]]:
    libs, notes = [], []
    for name in names:
        try:
            libs.append(LIBRARIES[name](w.model, w.num_classes, x_example))
        except Exception as e:  # a peer that is not installed or fails to set up is reported, not fatal
            notes.append(f"{name}: not run ({type(e).__name__}: {e})")
            print(f"  ! {name}: not run ({type(e).__name__}: {e})", flush=True)
    return libs, notes


def skipped(lib: Library, spec: Spec, model_name: str, skip: list[str]) -> bool:
    for entry in skip:
        parts = entry.split(":")
        if parts[0] == lib.name and parts[1] == spec.attack and (len(parts) < 3 or parts[2] == model_name):
            return True
    return False


def run_spec(
    w: Workload,
    libs: list[Library],
    spec: Spec,
    args: argparse.Namespace,
    device: torch.device,
    batch: int,
    strength_n: int,
    model_name: str,
) -> list[dict[str, Any]]:
    model = w.model
    y_all = w.targets if spec.targeted else w.y
    x_all, true_all = w.x.to(device), w.y.to(device)
    y_all = y_all.to(device)
    n_strength = max(min(strength_n, len(x_all)), batch)
    x0, y0 = x_all[:batch], y_all[:batch]
    offered = [
        (lib, api)
        for lib in libs
        if (api := lib.api(spec)) is not None and not skipped(lib, spec, model_name, args.skip)
    ]
    rows: dict[str, dict[str, Any]] = {}
    outputs: dict[str, list[torch.Tensor]] = {}
    long_run = spec.iterations > 10  # 50-step PGD and CW: fewer timed repeats (see --long-repeats)
    repeats = args.long_repeats if long_run else args.repeats
    for lib, api in offered:
        rows[lib.name] = {
            "library": lib.name,
            "api": api,
            "version": lib.version,
            "walls": [],
            "cpus": [],
            "floor_walls": [],
            "floor_cpus": [],
            "effects": [],
            "error": None,
        }

    def call(lib: Library, s: Spec, x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> tuple[Any, torch.Tensor]:
        seed_everything(seed)
        before = model_state(model)
        model.reset()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t, x_adv = timed(lambda: lib.run(s, x, y), device)
        effects = side_effects(model, before)
        row = rows[lib.name]
        for e in effects:
            if e not in row["effects"]:
                row["effects"].append(e)
        return t, x_adv

    active = []
    for lib, _ in offered:
        try:
            call(lib, spec.warmup(), x0, y0)
            active.append(lib)
        except Exception as e:
            rows[lib.name]["error"] = f"{type(e).__name__}: {e}"
            print(f"    {lib.name}: ERROR {type(e).__name__}: {e}", flush=True)
            if args.verbose:
                traceback.print_exc()
    floor_cl = measure_floor(model, x0, true_all[:batch], 2, channels_last=True)
    # The floor runs in the rotation like one more library, as one block of as many floor steps as the attack has
    # iterations: the same position effects (allocator, caches, a load change) hit it as hit the attacks.
    floor_steps = max(spec.iterations, 1)
    floors: list[Timing] = []
    entries: list[Library | None] = [*active, None] if active else []
    for r in range(repeats):
        order = entries[r % len(entries) :] + entries[: r % len(entries)] if entries else []
        for lib in order:
            if lib is None:
                floors.append(floor_block(model, x0, true_all[:batch], floor_steps))
                continue
            row = rows[lib.name]
            if row["error"]:
                continue
            try:
                t, x_adv = call(lib, spec, x0, y0)
            except Exception as e:
                row["error"] = f"{type(e).__name__}: {e}"
                print(f"    {lib.name}: ERROR {type(e).__name__}: {e}", flush=True)
                continue
            row["walls"].append(t.wall)
            row["cpus"].append(t.cpu)
            if r == 0:
                row["calls"], row["grad_calls"], row["images_forwarded"] = model.calls, model.grad_calls, model.images
                outputs[lib.name] = [x_adv.detach()]

    def untimed(lib: Library, first: int, seed: int = 0) -> list[torch.Tensor]:
        """The attack on strength images ``first:`` in chunks of the timing batch size (not timed)."""
        chunks = []
        for start in range(first, n_strength, batch):
            stop = min(start + batch, n_strength)
            chunks.append(call(lib, spec, x_all[start:stop], y_all[start:stop], seed)[1].detach())
        return chunks

    # Strength on the further images; for random-start attacks also with further seeds over every strength
    # image (one draw decides a few samples either way), compared by the mean.
    seeds = range(1, args.strength_seeds) if spec.attack in RANDOM_START_ATTACKS else range(0)
    seeded: dict[str, list[torch.Tensor]] = {}
    for lib in active:
        if rows[lib.name]["error"]:
            continue
        try:
            outputs[lib.name] += untimed(lib, batch)
            seeded[lib.name] = [torch.cat(untimed(lib, 0, seed)) for seed in seeds]
        except Exception as e:
            rows[lib.name]["error"] = f"{type(e).__name__}: {e}"
    result = []
    for lib, _ in offered:
        row = rows[lib.name]
        row.update(
            {
                "workload": w.name,
                "attack": spec.attack,
                "name": spec.name,
                "setting": spec.setting,
                "targeted": spec.targeted,
                "eps": spec.eps,
                "steps": spec.steps,
                "alpha": spec.alpha,
                "iterations": spec.iterations,
                "n_timing": len(x0),
                "repeats": len(row["walls"]),
                "floor_cl_cpu": floor_cl.cpu,
                "floor_cl_wall": floor_cl.wall,
            }
        )
        if row["error"] or lib.name not in outputs:
            result.append(row)
            continue
        x_adv = torch.cat([o.to(device) for o in outputs[lib.name]])
        x_ref, true_ref, tgt = x_all[: len(x_adv)], true_all[: len(x_adv)], w.targets[: len(x_adv)].to(device)
        chk = check(x_adv, x_ref, spec)
        row["bug"] = chk.describe() if not chk.ok else ""
        if row["bug"]:
            print(f"    BUG in {lib.name} {spec.name} ({spec.setting}): {row['bug']}", flush=True)
        with torch.no_grad():
            row.update(strength(model, x_adv, x_ref, true_ref, tgt, spec, chk.valid))
            if seeded.get(lib.name):
                top1 = [row["top1"]]
                for xs_adv in seeded[lib.name]:
                    chk_s = check(xs_adv, x_ref, spec)
                    top1.append(strength(model, xs_adv, x_ref, true_ref, tgt, spec, chk_s.valid)["top1"])
                row["top1_seeds"] = top1
                row["top1_mean"] = float(np.mean(top1))
        row["wall"] = float(np.median(row["walls"]))
        row["cpu"] = float(np.median(row["cpus"]))
        row["floor_walls"] = [f.wall for f in floors]
        row["floor_cpus"] = [f.cpu for f in floors]
        row["floor_wall"] = float(np.median(row["floor_walls"]))
        row["floor_cpu"] = float(np.median(row["floor_cpus"]))
        iters = row["grad_calls"] if spec.attack == "cw_l2" else spec.iterations
        row["overhead_cpu"] = row["cpu"] / max(iters, 1) / row["floor_cpu"]
        row["overhead_wall"] = row["wall"] / max(iters, 1) / row["floor_wall"]
        result.append(row)
    return result


def print_row(row: dict[str, Any]) -> None:
    if row.get("error"):
        print(f"    {row['library']:<17} ERROR {row['error']}", flush=True)
        return
    l2 = f" L2 med {row['l2_median']:.4f} mean {row['l2_mean']:.4f}" if row.get("l2_median") is not None else ""
    print(
        f"    {row['library']:<17} wall {row['wall']:8.2f}s cpu {row['cpu']:8.2f}s  it/floor {row['overhead_cpu']:5.2f}"
        f"  calls {row['grad_calls']}+{row['calls'] - row['grad_calls']}  top1 {row['top1']:.3f} top5 {row['top5']:.3f}"
        f"  succ {row['success']:.3f}{l2}{'  BUG ' + row['bug'] if row.get('bug') else ''}"
        f"{'  top1 over seeds ' + ' '.join(f'{t:.3f}' for t in row['top1_seeds']) if 'top1_seeds' in row else ''}"
        f"{'  side effects: ' + '; '.join(row['effects']) if row['effects'] else ''}",
        flush=True,
    )


# -------------------------------------------------------------------------------------------------- report


def verdicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """advlab against the issue's bar, per (workload, attack, setting)."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if not r.get("error") and "cpu" in r:
            groups.setdefault((r["workload"], r["name"], r["setting"]), []).append(r)
    out = []
    for (wl, name, setting), rs in groups.items():
        mine = sorted((r for r in rs if is_advlab(r["library"])), key=lambda r: ADVLAB_ROWS.index(r["library"]))
        peers = [r for r in rs if not is_advlab(r["library"])]
        if not peers:
            continue
        for a in mine:
            out.append(verdict(a, peers, wl, name, setting))
    return out


def verdict(a: dict[str, Any], peers: list[dict[str, Any]], wl: str, name: str, setting: str) -> dict[str, Any]:
    """One advlab row against the peers of its (workload, attack, setting)."""
    v: dict[str, Any] = {"workload": wl, "attack": name, "setting": setting, "library": a["library"]}
    fastest = min(peers, key=lambda r: r["cpu"])
    v["fastest_peer"] = fastest["library"]
    v["time_ratio_cpu"] = a["cpu"] / fastest["cpu"]
    v["time_ratio_wall"] = a["wall"] / min(p["wall"] for p in peers)
    v["overhead"] = a["overhead_cpu"]
    if a["attack"] == "cw_l2":
        done = [p for p in peers if p.get("l2_median") is not None]
        best = min(done, key=lambda r: r["l2_median"]) if done else None
        v["success"] = a["success"]
        v["best_peer_l2"] = best["library"] if best else None
        v["l2_ratio"] = (
            a["l2_median"] / best["l2_median"]
            if best and a.get("l2_median") is not None and best["l2_median"] > 0
            else None
        )
        v["time_vs_best_l2_peer"] = a["cpu"] / best["cpu"] if best else None
        v["pass"] = bool(
            a["success"] == 1.0
            and v["l2_ratio"] is not None
            and v["l2_ratio"] <= 0.95
            and v["time_vs_best_l2_peer"] is not None
            and v["time_vs_best_l2_peer"] <= 1.0
        )
    else:
        # With --strength-seeds, random-start attacks are compared by their mean over the seeds.
        key = "top1_mean" if "top1_mean" in a and all("top1_mean" in p for p in peers) else "top1"
        strongest = min(peers, key=lambda r: r[key])
        v["top1"] = a[key]
        v["best_peer_top1"] = strongest[key]
        v["strongest_peer"] = strongest["library"]
        v["seeds"] = len(a["top1_seeds"]) if key == "top1_mean" else 1
        within = a[key] <= strongest[key] + 1.0 / a["n"] + 1e-12
        ok_time = v["time_ratio_cpu"] <= 0.9
        ok_overhead = a["attack"] == "fgsm" or a["overhead_cpu"] <= 1.05
        v["pass"] = bool(within and ok_time and ok_overhead)
    return v


def fmt(v: Any, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = [
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}; machine: {meta['machine']}; "
        f"torch {meta['versions']['torch']}, threads {meta['threads']} (intra-op), device {meta['device']}; "
        f"load average {meta['load_start']} at start, {meta['load_end']} at end.  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ".  ",
    ]
    for wl in meta["workloads"]:
        lines.append(
            f"Workload: **{wl['name']}** — model {wl['source']}; {wl['attacked']} of {wl['clean_total']} "
            f"images classified correctly and attacked; timing batch {wl['batch']}, strength over "
            f"{wl['strength_n']}.  "
        )
    lines += [
        "",
        "Times are medians over the repeats (`rep`); `CPU s` is process CPU time, the stable measure on a "
        "shared machine. `it/floor` = (CPU time per iteration) / (CPU time of one raw forward+backward of "
        "the same batch); CW iterations are those actually run (early abort). `evals` = forward passes with "
        "autograd + without. Accuracy/success over the strength images.",
        "",
    ]
    head = (
        "| attack | setting | library | wall s | CPU s | rep | ×fastest peer (CPU) | it/floor | evals | top-1 | top-5 "
        "| success | L2 median | L2 mean | bugs / side effects |"
    )
    for wl in meta["workloads"]:
        lines += [f"### {wl['name']}", "", head, "|" + "---|" * 15]
        wrows = [r for r in rows if r["workload"] == wl["name"]]
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in wrows:
            groups.setdefault((r["name"], r["setting"]), []).append(r)
        for (name, setting), rs in groups.items():
            ok = [r for r in rs if not r.get("error") and "cpu" in r]
            peers = [r["cpu"] for r in ok if not is_advlab(r["library"])]
            fastest = min(peers) if peers else None
            for r in rs:
                if r.get("error") or "cpu" not in r:
                    lines.append(
                        f"| {name} | {setting} | {r['library']} | - | - | - | - | - | - | - | - | - | - | - | "
                        f"error: {str(r.get('error'))[:80]} |"
                    )
                    continue
                notes = "; ".join(([f"BUG: {r['bug']}"] if r.get("bug") else []) + r["effects"])
                ratio = fmt(r["cpu"] / fastest, ".2f") if fastest else "-"
                lines.append(
                    f"| {name} | {setting} | {r['library']} | {r['wall']:.2f} | {r['cpu']:.2f} | {r['repeats']} | "
                    f"{ratio} | {r['overhead_cpu']:.2f} | {r['grad_calls']}+{r['calls'] - r['grad_calls']} | "
                    f"{r['top1']:.3f} | {r['top5']:.3f} | {r['success']:.3f} | {fmt(r.get('l2_median'), '.4f')} | "
                    f"{fmt(r.get('l2_mean'), '.4f')} | {notes} |"
                )
        lines.append("")
    vs = verdicts(rows)
    if vs:
        lines += [
            "### advlab against the bar of issue 7",
            "",
            "Both advlab rows against the peers: `advlab` attacks the model as given, like every peer; "
            "`advlab (prepared)` attacks `advlab.models.prepare`'s copy (what the CLI runs). it/floor is against "
            "the floor of the model as given for both.",
            "",
            "| workload | attack | setting | advlab row | CPU / fastest peer | wall / fastest peer | it/floor "
            "| strength | pass |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for v in vs:
            if "l2_ratio" in v:
                strength_txt = (
                    f"success {v['success']:.3f}; median L2 {fmt(v['l2_ratio'], '.2f')}x best peer "
                    f"({v['best_peer_l2']}), time {fmt(v['time_vs_best_l2_peer'], '.2f')}x it"
                )
            else:
                strength_txt = f"top-1 {v['top1']:.3f} vs best peer {v['best_peer_top1']:.3f} ({v['strongest_peer']})"
                if v.get("seeds", 1) > 1:
                    strength_txt += f", means over {v['seeds']} seeds"
            lines.append(
                f"| {v['workload'].split(' / ')[0]} | {v['attack']} | {v['setting']} | {v['library']} | "
                f"{v['time_ratio_cpu']:.2f} ({v['fastest_peer']}) | {v['time_ratio_wall']:.2f} | "
                f"{v['overhead']:.2f} | {strength_txt} | {'yes' if v['pass'] else 'NO'} |"
            )
        lines.append("")
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = f"{names[0]} x{len(names)}" if names else cpu
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} logical CPUs"


# ---------------------------------------------------------------------------------------------------- main


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="a subset that runs in minutes on 2 CPU cores")
    mode.add_argument("--full", action="store_true", help="the full grid of issue 7 (hours on CPU)")
    p.add_argument("--render", metavar="JSON", help="only re-render the markdown of an earlier run's JSON")
    p.add_argument("--threads", type=int, default=THREADS, help="torch intra-op threads (default 1; recorded)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--models", nargs="+", help="imagenet, fmnist_cnn_pgd, fmnist_cnn_standard")
    p.add_argument("--libraries", nargs="+", default=list(LIBRARIES), choices=list(LIBRARIES))
    p.add_argument("--attacks", nargs="+", choices=["fgsm", "bim", "pgd", "pgd_l2", "apgd_ce", "apgd_l2", "cw_l2"])
    p.add_argument("--eps", nargs="+", type=float, help="Linf eps for ImageNet, in pixel units (x/255)")
    p.add_argument("--eps-l2", nargs="+", type=float)
    p.add_argument("--fmnist-eps", nargs="+", type=float)
    p.add_argument("--fmnist-eps-l2", nargs="+", type=float)
    p.add_argument("--steps", nargs="+", type=int)
    p.add_argument("--cw-steps", type=int)
    p.add_argument("--cw-rounds", type=int, help="binary-search rounds over c")
    p.add_argument("--cw-c", type=float, default=1e-2, help="initial c, the same for every library")
    p.add_argument("--cw-lr", type=float, default=1e-2)
    p.add_argument(
        "--cw-no-abort",
        action="store_true",
        help="switch CW's early abort off where a library allows it (advlab, Foolbox, adv_lib): every library "
        "then runs every step, which compares the optimisers at equal work",
    )
    p.add_argument("--batch", type=int, help="images per timed run (ImageNet)")
    p.add_argument("--strength-images", type=int, help="images for accuracy/success (ImageNet; >= batch)")
    p.add_argument(
        "--strength-seeds",
        type=int,
        default=1,
        help="random seeds for the strength of random-start attacks (PGD, PGD-L2, APGD); the verdict compares "
        "mean top-1 over them (default 1: the timed run's draw only)",
    )
    p.add_argument("--fmnist-images", type=int, help="Fashion-MNIST test images (first N, correct ones kept)")
    p.add_argument("--fmnist-batch", type=int)
    p.add_argument("--repeats", type=int, help="timed repeats for runs of <= 10 iterations")
    p.add_argument("--long-repeats", type=int, help="timed repeats for longer runs (50-step PGD, CW)")
    p.add_argument(
        "--skip",
        nargs="*",
        metavar="LIB:ATTACK[:MODEL]",
        help="rows not to run, e.g. ART:cw_l2:imagenet (default in --quick: ART's CW on ImageNet, which "
        "costs ~40x the others)",
    )
    p.add_argument("--out", type=Path, help="output stem (default docs/bench/compare_peers)")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    preset = "full" if args.full else "quick" if args.quick else "default"
    defaults: dict[str, dict[str, Any]] = {
        "quick": dict(
            models=["imagenet", "fmnist_cnn_pgd"],
            attacks=["fgsm", "bim", "pgd", "pgd_l2", "apgd_ce", "cw_l2"],
            eps=[4 / 255],
            eps_l2=[0.5],
            fmnist_eps=[0.1],
            fmnist_eps_l2=[1.5],
            steps=[10],
            cw_steps=20,
            cw_rounds=5,  # 2 rounds leave c at most 0.1: targeted success stays below 1 for every library
            batch=8,
            strength_images=8,
            fmnist_images=200,
            fmnist_batch=200,
            repeats=2,
            long_repeats=1,
        ),
        "default": dict(
            models=["imagenet", "fmnist_cnn_pgd", "fmnist_cnn_standard"],
            attacks=["fgsm", "bim", "pgd", "pgd_l2", "apgd_ce", "cw_l2"],
            eps=[1 / 255, 4 / 255, 8 / 255],
            eps_l2=[0.5],
            fmnist_eps=[8 / 255, 0.1, 0.2],
            fmnist_eps_l2=[1.5],
            steps=[10],
            cw_steps=20,
            cw_rounds=5,
            batch=16,
            strength_images=16,
            fmnist_images=1000,
            fmnist_batch=1000,
            repeats=3,
            long_repeats=1,
        ),
        "full": dict(
            models=["imagenet", "fmnist_cnn_pgd", "fmnist_cnn_standard"],
            attacks=["fgsm", "bim", "pgd", "pgd_l2", "apgd_ce", "cw_l2"],
            eps=[1 / 255, 4 / 255, 8 / 255],
            eps_l2=[0.5],
            fmnist_eps=[8 / 255, 0.1, 0.2],
            fmnist_eps_l2=[1.5],
            steps=[10, 50],
            cw_steps=100,
            cw_rounds=5,
            batch=16,
            strength_images=16,
            fmnist_images=1000,
            fmnist_batch=1000,
            repeats=3,
            long_repeats=1,
        ),
    }[preset]
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.skip is None:
        args.skip = ["ART:cw_l2:imagenet"] if preset == "quick" else []
    args.preset = preset
    if args.out is None:
        args.out = OUT / "compare_peers"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.render:
        data = json.loads(Path(args.render).read_text())
        print(markdown(data["meta"], data["rows"]))
        return 0
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    for name, cls in LIBRARIES.items():
        if not any(LIBRARIES[n].dist == cls.dist for n in versions if n in LIBRARIES):  # advlab once
            versions[name] = version(cls.dist)
    meta: dict[str, Any] = {
        "command": " ".join(
            shlex.quote(a)
            for a in [".venv/bin/python", "benchmarks/compare_peers.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "device": str(device),
        "versions": versions,
        "preset": args.preset,
        "load_start": [round(v, 2) for v in os.getloadavg()],
        "workloads": [],
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    print(
        f"compare_peers ({args.preset}): {meta['machine']}, torch {torch.__version__}, threads {meta['threads']}",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        meta["load_end"] = [round(v, 2) for v in os.getloadavg()]
        Path(f"{args.out}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
        Path(f"{args.out}.md").write_text(markdown(meta, rows))

    for model_name in args.models:
        try:
            if model_name == "imagenet":
                w = imagenet_workload()
                batch, strength_n = args.batch, args.strength_images
            else:
                w = fmnist_workload(model_name, args.fmnist_images)
                batch, strength_n = args.fmnist_batch, args.fmnist_batch
        except (FileNotFoundError, ImportError, ValueError) as e:
            print(f"skipping {model_name}: {e}", flush=True)
            meta.setdefault("skipped", []).append(f"{model_name}: {e}")
            continue
        w.model.to(device)
        batch = min(batch, len(w.x))
        strength_n = min(max(strength_n, batch), len(w.x))
        meta["workloads"].append(
            {
                "name": w.name,
                "source": w.source,
                "clean_total": w.clean_total,
                "attacked": len(w.x),
                "batch": batch,
                "strength_n": strength_n,
            }
        )
        print(
            f"\n== {w.name}: {len(w.x)}/{w.clean_total} correct; batch {batch}, strength over {strength_n}", flush=True
        )
        libs, notes = build_libraries(args.libraries, w, w.x[:batch].to(device))
        meta.setdefault("notes", []).extend(notes)
        for spec in settings(args, small_images=model_name != "imagenet"):
            print(f"  {spec.name} ({spec.setting})", flush=True)
            for row in run_spec(w, libs, spec, args, device, batch, strength_n, model_name):
                print_row(row)
                rows.append(row)
            save()
    save()
    print("\n" + markdown(meta, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
