"""``advlab verify`` against an attacker who edits a run directory (review 2: F7, F9, F10, F12) and against honest
runs it must pass (chains of chains, randomized defences: F4)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from torch import nn

from advlab.evaluate import evaluate, make_spec
from advlab.evaluate.compare import load_run
from advlab.evaluate.records import RECORD_SCHEMA_VERSION, topk
from advlab.evaluate.rundir import RunDirectory
from advlab.evaluate.specs import SpecError
from advlab.evaluate.summary import build_summary
from advlab.evaluate.verify import verify_run
from advlab.evaluate.verify_predictions import PROB_TOL, clean_mismatches
from advlab.evaluate.verify_summary import specs_of
from tests.conftest import Items

pytestmark = pytest.mark.usefixtures("one_thread")


def resummarize(out: Path) -> None:
    """What an attacker does after editing records: summary.json rebuilt by advlab's own code from them."""
    run = load_run(out)
    old = run.summary
    summary = build_summary(run.records, specs_of(run.config), run.config,
                            fingerprint=RunDirectory(out, run.config).fingerprint, wall_s=old["wall_s"])  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary))


def records_file(out: Path, aid: str, batch: str = "000000000-000000016") -> Path:
    return next((out / "records").glob(f"{aid}-*/{batch}.jsonl"))


def read_lines(f: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in f.read_text().splitlines()]


def write_lines(f: Path, lines: list[dict[str, Any]]) -> None:
    f.write_text("".join(json.dumps(r) + "\n" for r in lines))


@pytest.fixture(scope="module")
def chained_run(digits_model, tmp_path_factory):
    model, x, y = digits_model
    data = Items(x[:32], y[:32])
    specs = [
        make_spec("fgsm", {"eps": 0.2}, id="fgsm"),
        make_spec("pgd", {"eps": 0.2, "steps": 3}, id="pgd", only_unbroken=("fgsm",)),
        make_spec("pgd", {"eps": 0.2, "steps": 6}, id="pgd6", only_unbroken=("pgd",)),  # a chain of a chain
    ]
    out = tmp_path_factory.mktemp("verify") / "run"
    result = evaluate(model, data, specs, out=out, batch_size=16, quiet=True, save_adversarial=True)
    return model, data, out, result


@pytest.mark.parametrize("schema", [3, RECORD_SCHEMA_VERSION - 1, None])
def test_a_run_whose_records_are_of_another_schema_is_refused_in_one_line(chained_run, tmp_path, schema):
    # Verify recomputes the summary from the records as this advlab writes them: records of another schema (an
    # older advlab's: before 5 they carry no ``l1``; before 4 a random model's draws cannot be replayed) would read
    # as mismatches of an honest run.
    model, data, out, _ = chained_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    doc = json.loads((copy / "run.json").read_text())
    doc["config"]["record_schema"] = schema
    (copy / "run.json").write_text(json.dumps(doc))
    with pytest.raises(SpecError, match=rf"holds records of schema {schema}, this advlab reads schema "
                       rf"{RECORD_SCHEMA_VERSION}; verify it with the advlab that wrote it"):  # fmt: skip
        verify_run(copy, model, data)


@pytest.mark.parametrize(("key", "factor"), [("l1", 0.5), ("l2", 1.01), ("linf", 0.9), ("l0", None)])
def test_a_record_whose_stated_size_is_not_its_examples_is_caught(chained_run, tmp_path, key, factor):
    # Records state each point's sizes, and the sweep curves and the cross-check bound a broken sample by its
    # l1/l2/linf (an L1 row by its point's l1 since record schema 5): a smaller size edited in, with summary.json
    # rebuilt by advlab's own code, would lower the curves unseen unless verify re-measures the saved example.
    # The edited records are copies (a chain of chains, pgd6 from pgd or fgsm): checked against their origin's file.
    model, data, out, _ = chained_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    f = records_file(copy, "pgd6")
    lines = read_lines(f)
    r = next(r for r in lines[:-1] if r["from"] == ("fgsm" if key == "l0" else "pgd") and r[key] > 0)
    r[key] = r[key] - 1 if factor is None else r[key] * factor
    write_lines(f, lines)
    resummarize(copy)
    v = verify_run(copy, model, data)
    assert not v.ok
    assert any(f"pgd6, sample {r['index']}: the record's {key} " in m and "is not the example's" in m
               for m in v.mismatches), v.mismatches  # fmt: skip


def test_honest_runs_in_every_norm_on_larger_images_verify(tmp_path):
    """Every size a record states and every ball hold on re-measurement for attacks in each norm, on 3 x 64 x 64
    images: CW-L2 (moves every element by ~1e-7), PGD-L1 at a large eps (its projection's float32 sum over many
    changed elements lands a few 1e-8 of eps past it), PGD-L2, PGD_0 and a chained L0 row, DDN, FGSM at eps 0."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 5, stride=4), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 15 * 15, 10)).eval()
    x = (torch.rand(32, 3, 64, 64) * 255).round() / 255
    with torch.no_grad():
        y = model(x).argmax(1)
    specs = [
        make_spec("pgd", {"eps": 20.0, "norm": "l1", "steps": 5}, id="pgd1"),
        make_spec("pgd", {"eps": 0.5, "norm": "l2", "steps": 5}, id="pgd2"),
        make_spec("pgd", {"eps": 20, "norm": "l0", "steps": 5}, id="pgd0_small"),
        make_spec("pgd", {"eps": 50, "norm": "l0", "steps": 5}, id="pgd0", only_unbroken=("pgd0_small",)),
        make_spec("cw_l2", {"steps": 10}, id="cw"),
        make_spec("ddn", {"steps": 10}, id="ddn"),
        make_spec("fgsm", {"eps": 0.0}, id="zero"),
    ]
    out = tmp_path / "run"
    result = evaluate(model, Items(x, y), specs, out=out, batch_size=16, quiet=True, save_adversarial=True)
    assert max(r["l1"] for r in result.records["pgd1"]) > 19.9  # points on the L1 sphere
    v = verify_run(out, model, Items(x, y))
    assert v.ok, v.mismatches[:5]


def test_an_l0_count_may_differ_only_by_the_elements_at_the_threshold() -> None:
    # The records count |delta| > L0_TOL on float64 differences, verify on float32 ones: an element within L0_NEAR
    # of the threshold may fall on either side, and only those are allowed for.
    from advlab.evaluate.records import L0_TOL, perturbation_norms
    from advlab.evaluate.saved import L0_NEAR, distances

    x = torch.full((1, 1, 4, 4), 0.3)
    x_adv = x.clone().flatten()
    x_adv[:3] += torch.tensor([L0_TOL + 2e-3, L0_TOL - 3e-8, L0_TOL + 5e-1 * L0_NEAR])
    x_adv = x_adv.view_as(x)
    got = distances(x, x_adv)
    assert got["l0_near"].tolist() == [2.0]
    assert abs(got["l0"].item() - perturbation_norms(x, x_adv)["l0"][0]) <= got["l0_near"].item()
    assert got["l1"].item() == pytest.approx(perturbation_norms(x, x_adv)["l1"][0], rel=1e-6)


def test_an_honest_chain_of_chains_verifies(chained_run):
    model, data, out, result = chained_run
    # pgd6's records copied from fgsm (through pgd) name fgsm and point at fgsm's file: not a mismatch.
    assert any(r["from"] == "fgsm" for r in result.records["pgd6"])
    v = verify_run(out, model, data)
    assert v.ok, v.mismatches


@pytest.mark.parametrize("evidence", ["kept", "row_removed"])
def test_a_chained_record_swapped_for_the_earlier_attacks_unbroken_one_is_caught(chained_run, tmp_path, evidence):
    # Review 2, F7: pgd broke a sample that fgsm left standing; its record replaced by fgsm's (from=fgsm) and the
    # summary rebuilt from the edited records raised pgd's robust accuracy, and verify passed.
    model, data, out, _ = chained_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    for batch in ("000000000-000000016", "000000016-000000032"):
        first, last = read_lines(records_file(copy, "fgsm", batch)), read_lines(records_file(copy, "pgd", batch))
        k = next((k for k, (a, b) in enumerate(zip(first[:-1], last[:-1], strict=True))
                  if not a["success"] and b["success"] and b["from"] is None), None)  # fmt: skip
        if k is not None:
            break
    i = last[k]["index"]
    last[k] = {**first[k], "time_s": 0.0, "from": "fgsm"}
    write_lines(records_file(copy, "pgd", batch), last)
    if evidence == "row_removed":  # and pgd's own example of the sample taken out of its file
        f = next((copy / "adversarial").glob(f"pgd-*/{batch}.safetensors"))
        t = load_file(str(f))
        keep = t["index"] != i
        save_file({key: v[keep].contiguous() for key, v in t.items()}, str(f))
        rows = {int(j): row for row, j in enumerate(t["index"][keep].tolist())}
        for r in last[:-1]:
            if r["from"] is None:
                r["adversarial"]["row"] = rows[r["index"]]
        write_lines(records_file(copy, "pgd", batch), last)
    resummarize(copy)
    assert json.loads((copy / "summary.json").read_text())["attacks"][1]["adv_top1"] > json.loads(
        (out / "summary.json").read_text())["attacks"][1]["adv_top1"]  # fmt: skip
    v = verify_run(copy, model, data)
    needle = {"kept": "the record is not broken, but its own example",
              "row_removed": "'pgd' saved no example of its own for the sample"}[evidence]  # fmt: skip
    needle = f"pgd, sample {i}: {needle}"
    assert not v.ok and any(needle in m for m in v.mismatches), v.mismatches


def test_a_from_record_that_is_not_the_predecessors_is_caught(chained_run, tmp_path):
    model, data, out, _ = chained_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    lines = read_lines(records_file(copy, "pgd"))
    k = next(k for k, r in enumerate(lines[:-1]) if r["from"] == "fgsm")
    lines[k]["adv_probs"] = [0.9, *lines[k]["adv_probs"][1:]]  # not what fgsm recorded for the sample
    write_lines(records_file(copy, "pgd"), lines)
    v = verify_run(copy, model, data)
    assert any(f"pgd, sample {lines[k]['index']}: says it is 'fgsm''s record" in m for m in v.mismatches), v.mismatches


def test_a_chained_record_from_outside_the_attacks_own_ball_is_caught(chained_run, tmp_path):
    # A run made before validate_specs refused chains onto a larger eps: pgd's row counted fgsm's breaks at eps
    # 0.2 as its own at a smaller eps. Such a run.json is this one with pgd's eps lowered; verify must see that
    # the copied examples lie outside pgd's ball, not only inside fgsm's.
    model, data, out, _ = chained_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    run_json = json.loads((copy / "run.json").read_text())
    chained = next(a for a in run_json["config"]["attacks"] if a["id"] == "pgd")
    chained["params"]["eps"] = 0.05
    (copy / "run.json").write_text(json.dumps(run_json))
    copied = [r for r in read_lines(records_file(copy, "pgd")) if r.get("from") == "fgsm" and r["adversarial"]]
    assert copied, "want records pgd copied from fgsm"
    v = verify_run(copy, model, data)
    for r in copied:
        needle = f"pgd, sample {r['index']}: the example (from 'fgsm') leaves this attack's linf ball"
        assert any(needle in m for m in v.mismatches), (needle, v.mismatches[:5])
    # An example inside the chained attack's ball is fine whoever made it: here fgsm restated as an L2 attack of a
    # huge eps (its copied points are still inside pgd's Linf ball of 0.2), which must not be flagged.
    run_json = json.loads((out / "run.json").read_text())
    dep = next(a for a in run_json["config"]["attacks"] if a["id"] == "fgsm")
    dep["params"] = {"eps": 100.0, "norm": "l2"}
    (copy / "run.json").write_text(json.dumps(run_json))
    v = verify_run(copy, model, data)
    assert not any("leaves this attack's" in m or "leaves the" in m for m in v.mismatches), v.mismatches[:5]


@pytest.mark.parametrize("tamper", ["uint8 image", "kept image", "flags"])
def test_tampered_uint8_evidence_is_caught(chained_run, tmp_path, tamper):
    # Review (session 20): verify read only the float examples; the uint8 images and the records' flags of the
    # "8-bit re-check" were taken on trust, so zeroing an image or turning a success flag off verified OK.
    from safetensors.torch import load_file, save_file

    model, data, out, _ = chained_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    f = records_file(copy, "fgsm")
    lines = read_lines(f)
    k = next(k for k, r in enumerate(lines) if r["success"] and r["adversarial"]["uint8_in_ball_success"])
    saved = copy / lines[k]["adversarial"]["file"]
    if tamper == "flags":  # and the summary's uint8 counts rebuilt to match, as an attacker would
        lines[k]["adversarial"].update(uint8_success=False, uint8_in_ball_success=False)
        write_lines(f, lines)
        resummarize(copy)
        needle = f"fgsm, sample {lines[k]['index']}: the record's uint8_in_ball_success False"
    else:
        key = "uint8" if tamper == "uint8 image" else "uint8_in_ball"
        tensors = load_file(saved)
        tensors[key][lines[k]["adversarial"]["row"]] = 0
        save_file(tensors, saved)
        needle = f"{key} of rows [{lines[k]['adversarial']['row']}] is not"
    v = verify_run(copy, model, data)
    assert any(needle in m for m in v.mismatches), v.mismatches[:5]


def edit_summary(out: Path, tmp_path: Path, edit) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    summary = json.loads((copy / "summary.json").read_text())
    edit(summary)
    (copy / "summary.json").write_text(json.dumps(summary))
    return copy


def _eps(s: dict[str, Any]) -> None:  # the report and claim would read "robust at 8/255"
    a = s["attacks"][2]
    a["params"]["eps"] = 8 / 255
    a["label"] = a["label"].replace("eps=1/5", "eps=8/255")


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (_eps, "summary.json: attack pgd6's params is"),
        (lambda s: s["attacks"][1].update(label="pgd(eps=8/255, steps=3)"), "summary.json: attack pgd's label is"),
        (lambda s: s["attacks"][0].update(only_unbroken=["pgd"]), "summary.json: attack fgsm's only_unbroken is"),
        (lambda s: s["model"].update(name="robustbench:cifar10/Linf/Wang2023"), "summary.json: its model"),
        (lambda s: s.update(fingerprint="0" * 64), "summary.json: fingerprint 000000000000 is not the run's"),
        (lambda s: s.update(seed=7), "summary.json: its seed 7 is not run.json's 0"),
    ],
)
def test_a_summary_describing_other_attacks_or_another_model_is_caught(chained_run, tmp_path, edit, needle):
    # Review 2, F12: summary.json's spec fields, label, model and fingerprint were never compared with run.json.
    model, data, out, _ = chained_run
    v = verify_run(edit_summary(out, tmp_path, edit), model, data)
    assert not v.ok and any(needle in m for m in v.mismatches), v.mismatches


@pytest.fixture(scope="module")
def curves_run(digits_model, tmp_path_factory):
    model, x, y = digits_model
    data = Items(x[:16], y[:16])
    specs = [
        make_spec("suite_fast", {"eps": 0.2}, id="suite"),
        make_spec("fmn", {"norm": "linf", "steps": 10}, id="fmn"),
        make_spec("pgd", {"eps": 0.2, "steps": 3}, id="pgd"),  # the suite's worst-case check compares the two
    ]
    out = tmp_path_factory.mktemp("verify") / "run"
    result = evaluate(model, data, specs, out=out, batch_size=16, quiet=True, save_adversarial=True)
    assert result.summary["robustness"]["linf"]["attacks"]["fmn"]["median_eps"] and result.summary["sanity"]
    return model, data, out


def _scale(d: dict[str, Any], key: str, by: float) -> None:
    d[key] = d[key] * by


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda s: _scale(s["robustness"]["linf"]["attacks"]["fmn"], "median_eps", 2),
         "summary.json: robustness.linf.attacks.fmn.median_eps is"),
        (lambda s: _scale(s["robustness"]["linf"]["ensemble"], "auc", 1.5), "robustness.linf.ensemble.auc is"),
        (lambda s: s["robustness"]["linf"]["attacks"]["fmn"]["robust_accuracy"].__setitem__(1, 1.0),
         "robustness.linf.attacks.fmn.robust_accuracy[1] is 1.0"),
        (lambda s: _scale(s["attacks"][1]["curve"], "median_eps", 2), "summary.json: attack fmn.curve.median_eps is"),
        (lambda s: _scale(s["attacks"][0]["stages"][1], "robust_after", 2), "attack suite.stages[1].robust_after is"),
        (lambda s: s["clean"].update(top1=0.5), "summary.json: clean.top1 is 0.5"),
        (lambda s: s["sanity"]["checks"][-1].update(status="pass" if s["sanity"]["checks"][-1]["status"] == "warn"
                                                    else "warn"), "summary.json: sanity.checks[0].status"),
    ],
)  # fmt: skip
def test_a_summary_whose_curves_stages_or_checks_are_not_the_records_is_caught(curves_run, tmp_path, edit, needle):
    # Review 2, F9: summary.json's robustness section (curves, median eps*, AUC), a suite's stages and the rest of
    # what it states from the records were read as written; now rebuilt from the verified records and compared.
    model, data, out = curves_run
    assert verify_run(out, model, data).ok
    v = verify_run(edit_summary(out, tmp_path, edit), model, data)
    assert not v.ok and any(needle in m for m in v.mismatches), v.mismatches


class Counting(torch.nn.Module):
    """The model as given, remembering how many images each call got (a plain attribute: not in its digest)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.shape[0])
        return self.model(x)


def test_verify_forwards_no_more_images_at_once_than_the_run_did(digits_model, tmp_path):
    # Review 2, F10: verify forwarded every saved file of a batch in one call (every suite stage and sweep eps):
    # up to (number of attacks) x batch size images, which ran a GPU out of memory on runs eval had finished.
    model, x, y = digits_model
    counting = Counting(model)
    data = Items(x[:32], y[:32])
    specs = [make_spec("fgsm", {"eps": 0.2}, id="fgsm"), make_spec("pgd", {"eps": 0.2, "steps": 2}, id="pgd"),
             make_spec("pgd", {"eps": 0.1, "steps": 2}, id="pgd_small")]  # fmt: skip
    out = tmp_path / "run"
    evaluate(counting, data, specs, out=out, batch_size=16, quiet=True, save_adversarial=True, prepare=False)
    assert max(counting.calls) == 16
    counting.calls.clear()
    v = verify_run(out, counting, data)
    assert v.ok, v.mismatches
    probe, calls = counting.calls[:2], counting.calls[2:]  # first: is the model random? two calls on two images
    assert probe == [2, 2] and not v.random
    # Per batch: its 16 clean images, then its 48 saved examples (three attacks) in pieces of 16, then their 48
    # kept uint8 images likewise.
    assert calls == [16, 16, 16, 16, 16, 16, 16] * 2 and v.forward_passes == len(calls) == 14
    assert v.images_forwarded == 96 and v.clean_forwarded == 32


@pytest.fixture(scope="module")
def random_run(digits_model, tmp_path_factory):
    from advlab.defenses import GaussianNoise, defended

    model, x, y = digits_model
    noisy = defended(model, GaussianNoise(sigma=0.5))
    data = Items(x[:32], y[:32])
    specs = [make_spec("fgsm", {"eps": 0.1}, id="fgsm"),
             make_spec("pgd", {"eps": 0.1, "steps": 3, "eot_samples": 4}, id="pgd_eot")]  # fmt: skip
    out = tmp_path_factory.mktemp("verify") / "run"
    result = evaluate(noisy, data, specs, out=out, batch_size=16, quiet=True, save_adversarial=True)
    return noisy, data, specs, out, result


def test_an_honest_run_on_a_random_defence_verifies_exactly(random_run):
    # Review 2, F4: eval judges each example by the expected prediction over the run's K draws, seeded; verify
    # forwarded one unseeded draw, so an honest run failed. Now it replays the run's own draws.
    noisy, data, _, out, _ = random_run
    v = verify_run(out, noisy, data)
    assert v.ok, v.mismatches
    assert v.random
    # K = 4 draws per call: each batch's clean images, then every saved file twice (its floats, its uint8 images).
    assert v.forward_passes == 4 * (2 * sum(1 for _ in (out / "adversarial").rglob("*.safetensors")) + 2)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("device_type", "cuda", r"the run's model is random .* verify with --device cuda, not cpu"),
    ],
)
def test_a_random_defence_is_replayed_only_where_its_draws_can_be(random_run, tmp_path, key, value, match):
    # The CPU and CUDA generators draw differently.
    noisy, data, _, out, _ = random_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    doc = json.loads((copy / "run.json").read_text())
    doc["config"][key] = value
    (copy / "run.json").write_text(json.dumps(doc))
    with pytest.raises(SpecError, match=match):
        verify_run(copy, noisy, data)


def test_the_uint8_recheck_of_a_random_defence_does_not_depend_on_the_process_generator(random_run, tmp_path):
    # Review 2, F4 addendum: the uint8 re-check was one unseeded draw, so uint8_success depended on what the process
    # had drawn before (a shard, a resumption); it is now the records' rule, seeded per batch and attack.
    noisy, data, specs, _, result = random_run
    torch.manual_seed(12345)
    torch.rand(1000)
    again = evaluate(noisy, data, specs, out=tmp_path / "again", batch_size=16, quiet=True, save_adversarial=True)
    for aid in ("fgsm", "pgd_eot"):
        first = [{**r["adversarial"], "file": None} for r in result.records[aid]]
        assert first == [{**r["adversarial"], "file": None} for r in again.records[aid]]


def test_a_records_top5_is_the_models(chained_run, tmp_path):
    # Robust top-5 accuracy and "fully broken" (which decides whether a chained attack had to run on a sample)
    # are counted from the records' top-5: a label put back into a broken sample's top-5 must not pass.
    model, data, out, _ = chained_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    lines = read_lines(records_file(copy, "fgsm"))
    k = next(k for k, r in enumerate(lines[:-1]) if r["success_top5"])
    lines[k]["adv_top5"][-1], lines[k]["success_top5"] = lines[k]["label"], False
    write_lines(records_file(copy, "fgsm"), lines)
    resummarize(copy)
    v = verify_run(copy, model, data)
    assert any(f"fgsm, sample {lines[k]['index']}: the record's top-5" in m for m in v.mismatches), v.mismatches


@pytest.fixture(scope="module")
def mixed_run(digits_model, tmp_path_factory):
    """A run on held-out images 40-55, three of which (51-53) the model misclassifies without attack."""
    model, x, y = digits_model
    data = Items(x[40:56], y[40:56])
    with torch.no_grad():
        wrong = (model(data.x).argmax(dim=1) != data.y).nonzero().flatten().tolist()
    assert wrong, "the run needs a clean-misclassified sample"
    specs = [make_spec("fgsm", {"eps": 0.1}, id="fgsm"),
             make_spec("pgd", {"eps": 0.1, "steps": 2}, id="pgd", only_unbroken=("fgsm",))]  # fmt: skip
    out = tmp_path_factory.mktemp("verify") / "run"
    evaluate(model, data, specs, out=out, batch_size=16, quiet=True, save_adversarial=True)
    return model, data, out, wrong


def edit_clean(out: Path, tmp_path: Path, index: int, top5: list[int]) -> Path:
    """Every attack's record of sample ``index`` given the clean top-5 ``top5``; summary.json rebuilt from them."""
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    for aid in ("fgsm", "pgd"):
        f = records_file(copy, aid, "000000000-000000016")
        lines = read_lines(f)
        for r in lines[:-1]:
            if r["index"] == index:
                r["clean_top5"] = top5
        write_lines(f, lines)
    resummarize(copy)
    return copy


def test_a_clean_misclassified_sample_recorded_as_correct_is_caught(mixed_run, tmp_path):
    # Verify forwarded the saved examples only and took each record's clean prediction as written: a sample the
    # model misclassifies, marked correctly classified in its records (summary rebuilt by advlab's own code),
    # raised the run's clean accuracy and verify passed. It now forwards the clean images too.
    model, data, out, wrong = mixed_run
    assert verify_run(out, model, data).ok
    k = wrong[0]
    said = read_lines(records_file(out, "fgsm", "000000000-000000016"))[k]["clean_top5"]
    label = int(data.y[k])
    copy = edit_clean(out, tmp_path, k, [label, *[c for c in said if c != label][:4]])
    clean = json.loads((copy / "summary.json").read_text())["clean"]
    assert clean["top1"] > json.loads((out / "summary.json").read_text())["clean"]["top1"]
    v = verify_run(copy, model, data)
    for aid in ("fgsm", "pgd"):
        needle = f"{aid}, sample {k}: the record's clean top-1 {label} (correctly classified) is not the model's"
        assert any(needle in m for m in v.mismatches), v.mismatches


def test_a_records_clean_top5_is_the_models(mixed_run, tmp_path):
    # The clean top-1 untouched, a class of the clean top-5 replaced by the model's 6th (here the label of a
    # misclassified sample, lowering the clean top-5 accuracy), where the 5th and 6th are clearly apart.
    model, data, out, wrong = mixed_run
    with torch.no_grad():
        logp = torch.log_softmax(model(data.x).double(), dim=1)
    values, classes = logp.topk(6, dim=1)
    k = next(k for k in wrong if values[k, 4] - values[k, 5] > 0.1 and int(data.y[k]) in classes[k, 1:5].tolist())
    top5 = [c if c != int(data.y[k]) else int(classes[k, 5]) for c in classes[k, :5].tolist()]
    copy = edit_clean(out, tmp_path, k, top5)
    assert json.loads((copy / "summary.json").read_text())["clean"]["top5"] < 1.0
    v = verify_run(copy, model, data)
    assert any(f"fgsm, sample {k}: the record's clean top-5 {top5} is not the model's" in m for m in v.mismatches)


def test_a_clean_prediction_within_float_tolerance_is_not_a_mismatch():
    # Row 0: classes 0 and 1 within tol of each other (another device may rank them either way); row 1: clearly
    # apart. A record naming class 0 as top-1 is a mismatch only on row 1.
    logits = torch.tensor([[0.0, 1e-4, -5.0, -6.0, -7.0, -8.0, -9.0], [0.0, 1.0, -5.0, -6.0, -7.0, -8.0, -9.0]])
    records = [{"index": j, "label": 0, "clean_top5": [0, 1, 2, 3, 4]} for j in (10, 11)]
    found = clean_mismatches("a", records, {10: 0, 11: 1}, logits, PROB_TOL)
    assert found == ["a, sample 11: the record's clean top-1 0 (correctly classified) is not the model's 1 on the "
                     "clean image (label 0)"]  # fmt: skip
    record = [{"index": 0, "label": 0, "clean_top5": [0, 1, 2, 3, 5]}]  # its 5th class is the model's 6th
    near = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0, -1.0 - 1e-3, -9.0]])  # 5th and 6th within 10 tol
    assert clean_mismatches("a", record, {0: 0}, near, PROB_TOL) == []
    far = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0, -2.0, -9.0]])
    assert clean_mismatches("a", record, {0: 0}, far, PROB_TOL) == [
        "a, sample 0: the record's clean top-5 [0, 1, 2, 3, 5] is not the model's [0, 1, 2, 3, 4] on the clean image"
    ]


@settings(max_examples=60, deadline=None)
@given(
    st.integers(2, 12).flatmap(
        lambda c: st.lists(st.lists(st.floats(-10, 10), min_size=c, max_size=c), min_size=1, max_size=6)
    ),
    st.integers(0, 2**31 - 1),
)
def test_honest_clean_records_are_never_flagged_under_float_noise(rows, seed):
    # Another device's logits: the record's own logits moved by at most tol/8 per class (ties included). Its clean
    # top-1 can then differ only where the top two probabilities are within tol, its top-5 set only where the 5th
    # and 6th log-probabilities are within 10 tol: never a mismatch.
    logits = torch.tensor(rows, dtype=torch.float64)
    noise = torch.rand(logits.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1
    classes, _ = topk(logits)
    records = [{"index": j, "label": 0, "clean_top5": c} for j, c in enumerate(classes)]
    pos = {j: j for j in range(len(rows))}
    assert clean_mismatches("a", records, pos, logits + noise * PROB_TOL / 8, PROB_TOL) == []


@pytest.mark.parametrize("mode", ["random", "least-likely"])
def test_a_records_target_is_the_one_eval_chose(digits_model, tmp_path, mode):
    # Verify took each record's target on trust: an unbroken targeted record given as target the class the attack
    # did reach, and marked successful (summary rebuilt by advlab's own code), raised the targeted success rate and
    # verify passed. It now recomputes the targets from the verified clean logits (random: from the run's seed).
    model, x, y = digits_model
    data = Items(x[60:76], y[60:76])
    spec = make_spec("pgd", {"eps": 0.05, "alpha": 0.02, "steps": 3, "targeted": True}, id="pgd_t", target=mode)
    out = tmp_path / "run"
    evaluate(model, data, [spec], out=out, batch_size=16, quiet=True, save_adversarial=True)
    assert verify_run(out, model, data).ok
    f = records_file(out, "pgd_t")
    lines = read_lines(f)
    r = next(r for r in lines[:-1] if not r["success"] and r["adv_top5"][0] != r["label"])
    r.update(target=r["adv_top5"][0], success=True, success_top5=True)
    write_lines(f, lines)
    resummarize(out)
    v = verify_run(out, model, data)
    assert any(f"pgd_t, sample {r['index']}: the record's target {r['target']} is not the one eval chose" in m
               for m in v.mismatches), v.mismatches  # fmt: skip


@pytest.mark.parametrize("how", ["a sample twice", "more indices than images"])
def test_a_saved_file_eval_could_not_have_written_is_reported_in_one_line(random_run, tmp_path, how):
    # Review 3, F1: a random model's files are judged row by row inside the batch; a file holding a sample twice
    # had its second example (out of the ball, another class) judged in the first one's place while no record
    # pointed at it, and verify passed; a file with more indices than images was a traceback.
    noisy, data, _, out, _ = random_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    f = next((copy / "adversarial").rglob("*.safetensors"))
    t = load_file(str(f))
    if how == "a sample twice":
        t = {k: torch.cat([v, v[:1]]) for k, v in t.items()}
        t["x_adv"][-1] = data.x[5]
    else:
        t["index"] = torch.cat([t["index"], t["index"][:1]])
    save_file(t, str(f))
    v = verify_run(copy, noisy, data)
    assert any("not one example per sample of this batch in the batch's order" in m for m in v.mismatches)


def test_judge_gives_each_point_its_own_samples_draws_in_any_row_order(digits_model):
    # Review 3, F2: a full-size but reordered set of rows was judged in batch order, each point on another
    # sample's draws of a random defence.
    from advlab.defenses import GaussianNoise, defended
    from advlab.evaluate.engine import Judge

    model, x, _ = digits_model
    noisy = defended(model, GaussianNoise(sigma=0.5))
    judge = Judge(noisy, x[:8], 0, list(range(8)), 4)
    perm = torch.tensor([3, 1, 7, 0, 2, 6, 5, 4])
    torch.testing.assert_close(judge.logits(x[:8][perm], perm), judge.logits(x[:8])[perm])
    assert torch.equal(judge.logits(x[:3], torch.tensor([0, 1, 2])), judge.logits(x[:8])[:3])
    with pytest.raises(ValueError, match="one point per distinct row"):
        judge.logits(x[:2], torch.tensor([1, 1]))
