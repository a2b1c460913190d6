"""Saved adversarial examples (--save-adversarial) and ``advlab verify``: the uint8 re-check on an analytic model,
resuming a run killed while saving, and tampered runs caught with forward passes only."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from advlab.evaluate import evaluate, make_spec
from advlab.evaluate.saved import load_examples, nearest_uint8_in_ball, to_uint8
from advlab.evaluate.specs import SpecError
from advlab.evaluate.verify import verify_run
from tests.conftest import Items

pytestmark = pytest.mark.usefixtures("one_thread")


class Threshold(nn.Module):
    """Two classes on one pixel: class 1 iff the pixel exceeds ``t`` (logits [0, 100 (x - t)])."""

    def __init__(self, t: float) -> None:
        super().__init__()
        self.register_buffer("t", torch.tensor(t))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = 100 * (x.flatten(1)[:, :1] - self.t)
        return torch.cat([torch.zeros_like(z), z], dim=1)


def test_uint8_recheck_where_rounding_provably_crosses_the_boundary(tmp_path):
    # x = 100/255, boundary at 101.3/255. FGSM moves the pixel by exactly eps towards class 1:
    # eps 1.4/255 -> 101.4/255 fools; its uint8 image 101 does not (rounding crosses back), and is in the ball.
    # eps 1.6/255 -> 101.6/255 fools; uint8 102 is 2/255 away, outside the ball (so not re-checked: no example
    # of the threat model); the nearest uint8 point inside the ball is 101, which no longer fools.
    model = Threshold(101.3 / 255)
    data = Items(torch.full((1, 1, 1, 1), 100 / 255), torch.zeros(1, dtype=torch.long))
    specs = [make_spec("fgsm", {"eps": 1.4 / 255}, id="small"), make_spec("fgsm", {"eps": 1.6 / 255}, id="large")]
    result = evaluate(model, data, specs, out=tmp_path / "run", quiet=True, prepare=False, save_adversarial=True)
    small, large = result.records["small"][0], result.records["large"][0]
    assert small["success"] and large["success"]
    assert small["adversarial"] | {"file": None} == {
        "file": None, "row": 0, "uint8_success": False, "uint8_in_ball": True, "uint8_in_ball_changed": False,
        "uint8_in_ball_success": False, "uint8_in_ball_inside": True,
    }  # fmt: skip
    assert large["adversarial"] | {"file": None} == {
        "file": None, "row": 0, "uint8_success": None, "uint8_in_ball": False, "uint8_in_ball_changed": True,
        "uint8_in_ball_success": False, "uint8_in_ball_inside": True,
    }  # fmt: skip
    saved = load_examples(tmp_path / "run" / large["adversarial"]["file"])
    assert saved["x_adv"].item() == pytest.approx(101.6 / 255, abs=1e-7)
    assert saved["uint8"].item() == 102 and saved["uint8_in_ball"].item() == 101
    assert verify_run(tmp_path / "run", model, data).ok


def test_nearest_uint8_point_is_inside_every_ball():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 4, 4)).float() / 255
    from advlab.evaluate.saved import in_ball

    for norm, eps in [("linf", 3.3 / 255), ("l2", 0.05), ("l1", 0.2)]:
        d = torch.randn_like(x)
        scale = {"linf": d.abs().flatten(1).amax(1), "l2": d.flatten(1).norm(dim=1), "l1": d.abs().flatten(1).sum(1)}
        x_adv = (x + eps * d / scale[norm].view(-1, 1, 1, 1)).clamp(0, 1)
        u = nearest_uint8_in_ball(x, x_adv, (norm, eps))
        assert in_ball(x, u.double() / 255, (norm, eps)).all()
        if norm == "linf":  # exact: no uint8 point of the ball is nearer, pixel by pixel
            assert (
                (u.double() - x_adv.double() * 255).abs() <= (to_uint8(x_adv).double() - x_adv * 255).abs() + 1
            ).all()


@pytest.fixture(scope="module")
def saved_run(digits_model, tmp_path_factory):
    model, x, y = digits_model
    data = Items(x[:40], y[:40])
    specs = [
        make_spec("fgsm", {"eps": 0.1}, id="fgsm"),
        make_spec("pgd", {"eps": 0.1, "steps": 3}, id="pgd", only_unbroken=("fgsm",)),
    ]
    out = tmp_path_factory.mktemp("saved") / "run"
    result = evaluate(model, data, specs, out=out, batch_size=16, quiet=True, save_adversarial=True)
    return model, data, specs, out, result


def test_every_record_points_at_its_own_saved_example_and_verify_passes(saved_run):
    model, data, _, out, result = saved_run
    for aid, recs in result.records.items():
        for r in recs:
            tensors = load_examples(out / r["adversarial"]["file"])
            assert int(tensors["index"][r["adversarial"]["row"]]) == r["index"]
            assert (r.get("from") or aid) in r["adversarial"]["file"]
    v = verify_run(out, model, data)
    assert v.ok, v.mismatches
    # One image forwarded per distinct saved example (fgsm's 40, pgd's own for those fgsm left), nothing else,
    # both attacks' files of a batch together, in calls of at most the run's batch size (40 samples in batches of 16).
    per_batch = [0, 0, 0]
    for f in (out / "adversarial").rglob("*.safetensors"):
        per_batch[int(f.name[:9]) // 16] += len(load_examples(f)["index"])
    assert v.checked == 80 and v.images_forwarded == sum(per_batch) <= 80
    # ... and each batch's clean images once (40 in batches of 16: 3 calls).
    # Per batch one clean pass, and the saved examples twice (floats, then the kept uint8 images) in pieces of 16.
    assert v.clean_forwarded == 40 and v.forward_passes == 3 + 2 * sum(-(-k // 16) for k in per_batch)


def test_a_run_killed_while_saving_resumes_without_duplicate_or_missing_examples(saved_run, tmp_path):
    model, data, specs, out, result = saved_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    # Killed after the examples of (pgd, batch 16-32) were written and before its records: a stale temp file too.
    lost = next((copy / "records").glob("pgd-*/000000016-000000032.jsonl"))
    lost.unlink()
    (copy / "adversarial" / lost.parent.name / ".000000016-000000032.safetensors.tmp-1").write_bytes(b"half")
    again = evaluate(model, data, specs, out=copy, batch_size=16, quiet=True, save_adversarial=True)
    untimed = lambda rs: [{k: v for k, v in r.items() if k != "time_s"} for r in rs]  # noqa: E731
    assert untimed(again.records["pgd"]) == untimed(result.records["pgd"])
    saved_rows = sum(len(load_file(str(f))["index"]) for f in (copy / "adversarial").rglob("*.safetensors"))
    own = sum(r.get("from") is None for rs in again.records.values() for r in rs)
    assert saved_rows == own  # one saved row per record an attack computed itself
    assert verify_run(copy, model, data).ok


def tamper(out, tmp_path, how: str):
    copy = tmp_path / how
    shutil.copytree(out, copy)
    if how == "pixel":
        f = sorted((copy / "adversarial").glob("fgsm-*/*.safetensors"))[0]
        t = load_file(str(f))
        t["x_adv"][0, 0, 0, 0] = 1.0 if t["x_adv"][0, 0, 0, 0] < 0.5 else 0.0  # 1 away: far outside eps 0.1
        save_file(t, str(f))
    elif how == "label":
        f = sorted((copy / "records").glob("fgsm-*/*.jsonl"))[0]
        rows = [json.loads(line) for line in f.read_text().splitlines()]
        rows[2]["label"] = (rows[2]["label"] + 1) % 10
        f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif how in ("summary", "n", "eligible", "dropped"):
        summary = json.loads((copy / "summary.json").read_text())
        if how == "eligible":  # review 2, F3 (b): a success rate with a forged denominator, consistent with it
            a = summary["attacks"][0]
            a["n_eligible"] *= 10
            a["success_rate"] = a["ci95"]["success_rate"]["k"] / a["n_eligible"]
        elif how == "dropped":  # review 2, F3 (a): an inconvenient attack left out of the summary (and its report)
            summary["attacks"] = summary["attacks"][:1]
        elif how == "summary":
            summary["attacks"][1]["ci95"]["adv_top1"]["k"] -= 1  # a robust accuracy made to look lower
        else:  # review F3 (b): one more sample than the records hold, which once switched the comparison off
            summary["attacks"][1]["n"] += 1
            summary["attacks"][1]["adv_top1"] = 1.0
        (copy / "summary.json").write_text(json.dumps(summary))
    elif how in ("top1", "probs", "drop"):  # edits that keep each record consistent with itself
        summary = json.loads((copy / "summary.json").read_text())
        for f in sorted((copy / "records").glob("fgsm-*/*.jsonl")):
            lines = [json.loads(line) for line in f.read_text().splitlines()]
            rows, end = lines[:-1], lines[-1]
            for r in rows:
                if how == "top1":  # the claim's robust top-1 counts adv_top5[0] == label: make every sample robust
                    r["adv_top5"][0] = r["label"]
                elif how == "probs" and r["success"]:  # "borderline" by the record's own numbers, then unbroken
                    r["adv_probs"] = [0.5, 0.5, *r["adv_probs"][2:]]
                    r["success"] = False
            if how == "drop":  # the broken samples' records removed, the trailer and summary made to agree
                rows = [r for r in rows if not r["success"]]
                end["end_of_batch"]["n_records"] = len(rows)
            f.write_text("".join(json.dumps(r) + "\n" for r in [*rows, end]))
        if how == "drop":
            a = summary["attacks"][0]
            a["n"] = a["n_eligible"] = sum(1 for f in (copy / "records").glob("fgsm-*/*.jsonl") for _ in
                                           f.read_text().splitlines()[:-1])  # fmt: skip
            a["adv_top1"], a["ci95"]["adv_top1"]["k"] = 1.0, a["n"]
            (copy / "summary.json").write_text(json.dumps(summary))
    elif how in ("file", "from"):  # review F3 (f, g): a record points outside the run, or claims another owner
        f = sorted((copy / "records").glob("fgsm-*/*.jsonl"))[0]
        lines = [json.loads(line) for line in f.read_text().splitlines()]
        if how == "file":
            lines[0]["adversarial"]["file"] = str(tmp_path / "elsewhere.safetensors")
        else:
            lines[0]["from"] = "pgd"  # pgd's file would set the ball (and pgd is not what fgsm was chained on)
        f.write_text("".join(json.dumps(r) + "\n" for r in lines))
    else:
        f = sorted((copy / "adversarial").glob("pgd-*/*.safetensors"))[0]
        f.write_bytes(f.read_bytes()[:100])
    return copy


@pytest.mark.parametrize(
    "how, needle",
    [
        ("pixel", "fgsm, sample 0: the example leaves the linf ball: 1 > eps 0.1"),
        ("label", "fgsm, sample 2: the record's label"),
        ("truncated", "unreadable"),
        ("summary", "summary.json: pgd adv_top1 counts"),
        # Found by review (F3): each edit below passed verify before.
        ("top1", "fgsm, sample 0: the record's top-1"),
        ("probs", "the record says not broken, the model's top-1 on the example is"),
        ("drop", "fgsm, batch 0-15: records for samples"),
        ("n", "summary.json: pgd counts n=41 samples, 40 were checked"),
        ("eligible", "summary.json: fgsm counts 400 eligible samples, the records 40"),
        ("dropped", "summary.json: lists attack pgd 0 times, the run ran it once"),
        ("file", "fgsm, sample 0: points at"),
        ("from", "fgsm, sample 0: says its example comes from 'pgd', which 'fgsm' was not chained on"),
    ],
)
def test_verify_catches_a_tampered_run(saved_run, tmp_path, capsys, how, needle):
    model, data, _, out, _ = saved_run
    v = verify_run(tamper(out, tmp_path, how), model, data)
    assert not v.ok and any(needle in m for m in v.mismatches), v.mismatches


def test_verify_refuses_runs_it_cannot_check(saved_run, digits_model, tmp_path):
    model, data, _, out, _ = saved_run
    plain = tmp_path / "plain"
    evaluate(model, data, [make_spec("fgsm", {"eps": 0.1})], out=plain, batch_size=16, quiet=True)
    with pytest.raises(SpecError, match=r"holds no saved adversarial examples; rerun .* with --save-adversarial"):
        verify_run(plain, model, data)
    other = Threshold(0.5)
    with pytest.raises(SpecError, match=r"the model's weights \(sha256 \w+\) are not the run's"):
        verify_run(out, other, data)
    with pytest.raises(SpecError, match="the data has 39 samples, the run attacked 40"):
        verify_run(out, model, Items(data.x[:39], data.y[:39]))
    half = tmp_path / "half"
    shutil.copytree(out, half)
    (half / "summary.json").unlink()
    with pytest.raises(SpecError, match="is not a finished advlab run"):
        verify_run(half, model, data)


FASHION = Path(os.environ.get("ADVLAB_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))


@pytest.mark.skipif(not any(FASHION.glob("t10k-images-idx3-ubyte*")), reason="Fashion-MNIST missing")
def test_cli_suite_prints_its_stages_and_verify_exits_by_what_it_found(tmp_path, capsys):
    from advlab.cli import main
    from advlab.models import load_model

    torch.manual_seed(0)
    weights = tmp_path / "w.safetensors"
    model = load_model("mnist_cnn_small", pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    run = tmp_path / "run"
    argv = ["eval", "--model", "mnist_cnn_small", "--weights", str(weights), "--data", "fashion-mnist"]
    argv += ["--sample", "16", "--batch-size", "8", "--suite", "fast", "--eps", "0.1", "--quiet"]
    claim = tmp_path / "claim.json"
    assert main([*argv, "--out", str(run), "--save-adversarial", "--report", "--claim", str(claim)]) == 0
    out, err = capsys.readouterr()
    summary = json.loads((run / "summary.json").read_text())
    for st in summary["attacks"][0]["stages"]:  # AutoAttack-style: robust accuracy after each stage
        assert f"  after {st['name']}: robust top-1 {100 * st['robust_after']:.1f}% [" in out
    from tests.test_report import assert_renders_cleanly

    md = (run / "tables.md").read_text()
    assert "Saved adversarial examples as 8-bit images" in md
    panels = sorted(run.glob("example-*.png"))
    assert 1 <= len(panels) <= 4  # the least and most perturbed successful examples
    page = assert_renders_cleanly(run / "report.html", tables=md.count("\n|---|"), images=len(panels))
    assert "most perturbed" in page.text and "how the samples were chosen" in page.text.lower()
    assert main(["verify", str(run), "--claim", str(claim)]) == 0
    out, err = capsys.readouterr()
    assert "verify: OK; 16 records checked" in out and "claim: OK" in out, err
    stated = json.loads(claim.read_text())
    assert (
        stated["data"]["sample_indices"] == summary["data"]["sample_indices"] and stated["model"]["state_dict_sha256"]
    )
    # advlab report --claim writes the same claim from the finished run (no attack runs), and it verifies.
    again = tmp_path / "again.json"
    assert main(["report", str(run), "--claim", str(again)]) == 0
    capsys.readouterr()
    assert {k: v for k, v in json.loads(again.read_text()).items() if k != "date"} == {
        k: v for k, v in stated.items() if k != "date"
    }
    # A claim of the older schema is named as such, with the way to write it again.
    old_claim = tmp_path / "old.json"
    old_claim.write_text(json.dumps({**stated, "schema": "advlab.claim/1"}))
    assert main(["verify", str(run), "--claim", str(old_claim)]) == 2
    err = capsys.readouterr().err
    assert "a claim of an older advlab (schema advlab.claim/1" in err and "advlab report RUN_DIR --claim" in err, err
    stated["threat_models"][0]["robust_top1"]["k"] += 1  # a claim of one more robust sample than the run shows
    claim.write_text(json.dumps(stated))
    assert main(["verify", str(run), "--claim", str(claim)]) == 1
    out, _ = capsys.readouterr()
    assert "claim mismatch: threat_models[0].robust_top1.k: the claim says" in out
    # A run verify refuses (records of an older schema) still has its claim checked and printed first.
    older = tmp_path / "older"
    shutil.copytree(run, older)
    doc = json.loads((older / "run.json").read_text())
    doc["config"]["record_schema"] -= 1
    (older / "run.json").write_text(json.dumps(doc))
    assert main(["verify", str(older), "--claim", str(claim)]) == 2
    out, err = capsys.readouterr()
    assert "claim mismatch: threat_models[0].robust_top1.k: the claim says" in out
    assert "holds records of schema" in err and len(err.strip().splitlines()) == 1, err
    f = sorted((run / "adversarial").rglob("*.safetensors"))[0]
    f.write_bytes(f.read_bytes()[:64])
    assert main(["verify", str(run)]) == 1
    out, _ = capsys.readouterr()
    assert "mismatch: " in out and "unreadable" in out and "verify: 1 mismatches" in out
    plain = tmp_path / "plain"
    assert main([*argv, "--out", str(plain)]) == 0
    capsys.readouterr()
    assert main(["verify", str(plain)]) == 2
    _, err = capsys.readouterr()
    assert "holds no saved adversarial examples" in err and err.count("\n") == 1


def test_claim_robust_accuracy_is_the_per_sample_worst_case(saved_run):
    from advlab.evaluate.claim import check_claim, make_claim
    from advlab.evaluate.compare import load_run

    _, _, _, out, result = saved_run
    run = load_run(out)
    claim = make_claim(run)
    (tm,) = claim["threat_models"]
    assert (tm["norm"], tm["eps"]) == ("linf", 0.1) and [a["id"] for a in tm["attacks"]] == ["fgsm", "pgd"]
    robust = {r["index"] for r in result.records["fgsm"] if r["adv_top5"][0] == r["label"]}
    robust &= {r["index"] for r in result.records["pgd"] if r["adv_top5"][0] == r["label"]}
    assert tm["robust_top1"]["k"] == len(robust) and tm["robust_top1"]["n"] == 40
    assert tm["robust_top1"]["rate"] <= min(a["adv_top1"] for a in result.summary["attacks"])
    assert check_claim(claim, run) == []
    assert check_claim({**claim, "seed": 7}, run) == ["seed: the claim says 7, the run gives 0"]


def test_a_claims_threat_model_takes_smaller_eps_and_minimal_norm_evidence(digits_model, tmp_path):
    # A sample broken at eps 0.1, or by a minimal-norm point within 0.2, is not robust at eps 0.2: the claim at
    # (linf, 0.2) must not be that of the eps-0.2 attack alone.
    from advlab.evaluate.claim import check_claim, make_claim
    from advlab.evaluate.compare import load_run
    from advlab.evaluate.robustness import record_distance

    model, x, y = digits_model
    specs = [make_spec("fgsm", {"eps": 0.2}, id="big"), make_spec("pgd", {"eps": 0.1, "steps": 5}, id="small"),
             make_spec("minimal", {"norm": "linf", "steps": 10}, id="m")]  # fmt: skip
    out = tmp_path / "run"
    result = evaluate(model, Items(x[:40], y[:40]), specs, out=out, batch_size=20, quiet=True)
    claim = make_claim(load_run(out))
    by_eps = {tm["eps"]: tm for tm in claim["threat_models"]}
    assert sorted(by_eps) == [0.1, 0.2] and all(tm["norm"] == "linf" for tm in by_eps.values())
    assert [a["id"] for a in by_eps[0.1]["attacks"]] == ["small", "m"]
    assert [a["id"] for a in by_eps[0.2]["attacks"]] == ["big", "small", "m"]
    for eps, ids in ((0.1, ["small"]), (0.2, ["big", "small"])):
        robust = {r["index"] for r in result.records["m"] if r["clean_top5"][0] == r["label"]
                  and record_distance(r) > eps}  # fmt: skip
        for aid in ids:
            robust &= {r["index"] for r in result.records[aid] if r["adv_top5"][0] == r["label"]}
        assert by_eps[eps]["robust_top1"]["k"] == len(robust), eps
    fgsm_alone = next(a["adv_top1"] for a in result.summary["attacks"] if a["id"] == "big")
    assert by_eps[0.2]["robust_top1"]["rate"] < fgsm_alone  # the evidence it ignored before
    assert check_claim(claim, load_run(out)) == []


def test_cli_verify_reopens_data_other_than_fashion_mnist(tmp_path, capsys):
    # Review F8 (a): verify reopened every dataset but Fashion-MNIST without the --data-root that the data
    # loader reads, an AttributeError traceback; here the default ImageNet sample images.
    from advlab.cli import main

    argv = ["eval", "--data", "default", "--attack", "fgsm", "--eps", "1/255", "--limit", "2", "--quiet"]
    # F8 (b): a defended run and one with its own normalisation are verified against the function they attacked.
    for name, more in (("plain", []), ("defended", ["--defense", "bit_depth(bits=3)"]), ("normalised", [
        "--mean", "0.9,0.9,0.9", "--std", "0.05,0.05,0.05"])):  # fmt: skip
        run = tmp_path / name
        assert main([*argv, *more, "--save-adversarial", "--out", str(run)]) == 0
        capsys.readouterr()
        assert main(["verify", str(run)]) == 0, capsys.readouterr()
        assert "verify: OK; 2 records checked" in capsys.readouterr().out, name


def test_a_run_json_naming_model_code_is_not_run_by_verify_or_report_unless_named(tmp_path, capsys):
    # Review F13: run.json comes with a run directory someone else made; reopening a FILE.py:FACTORY model runs that
    # file. verify asks for --model before running it; report goes without its panel of examples.
    from advlab.cli import main

    factory = tmp_path / "net.py"
    marker = tmp_path / "factory_ran"
    factory.write_text(
        "import pathlib\nimport torch\nfrom torch import nn\n\n"
        "def make():\n"
        f"    pathlib.Path({str(marker)!r}).touch()\n"
        "    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, 1000))\n"
    )
    run = tmp_path / "run"
    argv = ["eval", "--model", f"{factory}:make", "--data", "default", "--attack", "fgsm", "--eps", "1/255"]
    assert main([*argv, "--limit", "2", "--save-adversarial", "--out", str(run), "--quiet"]) == 0
    marker.unlink()
    capsys.readouterr()
    assert main(["verify", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"names the model '{factory}:make', code or a program file" in err and "pass --model yourself" in err, err
    assert not marker.exists()
    # A TorchScript file named by run.json is a program too: refused the same way (review, session 20).
    doc = json.loads((run / "run.json").read_text())
    scripted = tmp_path / "net.ts"
    doc["config"]["model"]["name"] = str(scripted)
    other = tmp_path / "other"
    shutil.copytree(run, other)
    (other / "run.json").write_text(json.dumps(doc))
    assert main(["verify", str(other)]) == 2
    assert f"names the model {str(scripted)!r}, code or a program file" in capsys.readouterr().err
    assert main(["report", str(run)]) == 0
    assert "no panel of examples" in capsys.readouterr().err and not marker.exists()
    assert (run / "report.html").exists()
    assert main(["verify", str(run), "--model", f"{factory}:make"]) == 0, capsys.readouterr()
    assert marker.exists() and "verify: OK" in capsys.readouterr().out


@pytest.mark.parametrize(("norm", "edit"), [("l2", "quarter"), ("l0", "quarter"), ("l0", "times100"),
                                            ("l2", "null")])  # fmt: skip
def test_verify_recomputes_a_minimal_norm_records_distance(digits_model, tmp_path, norm, edit):
    # Review F3 (e): the robustness curve, median eps* and AUC of a --minimal run are computed from the records'
    # distance; an edited distance must not pass.
    model, x, y = digits_model
    data = Items(x[:12], y[:12])
    out = tmp_path / "run"
    spec = make_spec("fmn", {"norm": norm, "steps": 10}, id="fmn")
    result = evaluate(model, data, [spec], out=out, batch_size=12, quiet=True, save_adversarial=True)
    assert verify_run(out, model, data).ok
    f = next((out / "records").glob("fmn*/*.jsonl"))
    lines = [json.loads(line) for line in f.read_text().splitlines()]
    k = next(i for i, r in enumerate(lines[:-1]) if r["distance"])  # a sample broken at a positive distance
    # Smaller, larger, or null (never broken, at every eps): each moves the curve, each is caught.
    lines[k]["distance"] = {"quarter": lines[k]["distance"] / 4, "times100": lines[k]["distance"] * 100,
                            "null": None}[edit]  # fmt: skip
    f.write_text("".join(json.dumps(r) + "\n" for r in lines))
    v = verify_run(out, model, data)
    assert not v.ok and any("the record's distance" in m for m in v.mismatches), v.mismatches
    assert result.records["fmn"][k]["distance"] > 0


def test_linf_examples_on_the_uint8_grid_keep_their_plain_rounding(digits_model, tmp_path):
    # Review 2, F5: PGD-Linf puts pixels exactly at x +- eps; on uint8 images the plain rounding of such an example
    # is inside the ball, and it is the point to keep and re-check (the clamp moved it a level inwards, so every
    # example counted as "changed" and its uint8_success was null: a 0 % row in the report).
    model, x, y = digits_model
    x = (x[:16] * 255).round() / 255
    spec = make_spec("pgd", {"eps": 8 / 255, "steps": 5}, id="pgd")
    result = evaluate(model, Items(x, y[:16]), [spec], out=tmp_path / "run", batch_size=16, quiet=True,
                      save_adversarial=True)  # fmt: skip
    saved = [r["adversarial"] for r in result.records["pgd"] if r["success"]]
    assert saved and all(a["uint8_in_ball"] and not a["uint8_in_ball_changed"] for a in saved)
    assert all(a["uint8_success"] is not None for a in saved)
