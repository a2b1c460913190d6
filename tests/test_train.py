"""advlab.train: the min-max loop on real Fashion-MNIST images, resume after SIGKILL, bad input, shipped models."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from torch import nn

from advlab import attacks
from advlab.data import fashion_mnist as fm
from advlab.models.small import build, load_builtin
from advlab.train import (
    TensorLoader,
    TrainConfig,
    TrainingDivergedError,
    default_alpha,
    evaluate,
    fgsm_rs,
    fit,
    load_checkpoint,
    method_loss,
    pgd_inner,
    run_training,
    trades_inner,
    train_epoch,
)
from advlab.train.loop import eps_at

REPO = Path(__file__).resolve().parents[1]
needs_data = pytest.mark.skipif(
    not (fm.SYSTEM_ROOT / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST is not installed: {fm.HOW_TO_GET} (scripts/install-system-deps.sh)",
)


@pytest.fixture(scope="module")
def fmnist_test() -> tuple[torch.Tensor, torch.Tensor]:
    if not (fm.SYSTEM_ROOT / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST is not installed: {fm.HOW_TO_GET}")
    x, y = fm.load_fashion_mnist("test")
    return fm.to_float_images(x), y


def linear() -> nn.Module:
    """Multinomial logistic regression on the pixels: learns in one epoch, and its Linf robustness is set by
    the l1 norm of its weight rows, which adversarial training keeps small."""
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))


def quiet(**kw: object) -> TrainConfig:
    base: dict[str, object] = {"model": "mnist_cnn_small", "progress": False, "val_size": 0, "epochs": 1}
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def run_cmd(out: Path, resume: bool) -> list[str]:
    cfg = (
        f"model='mnist_cnn_small', method='pgd', eps=0.1, steps=2, epochs=5, batch_size=32, train_subset=320, "
        f"val_size=64, threads=1, seed=3, progress=False, out={str(out)!r}, resume={resume}"
    )
    code = f"from advlab.train import TrainConfig, run_training; run_training(TrainConfig({cfg}))"
    return [sys.executable, "-c", code]


# ------------------------------------------------------------------------------------------ the loop works


def test_pgd_training_beats_standard_training_under_pgd(
    fmnist_test: tuple[torch.Tensor, torch.Tensor], tmp_path: Path
) -> None:
    """Same model, same 500 images, one epoch each: Madry's PGD training must buy PGD accuracy."""
    x, y = fmnist_test
    train = TensorLoader(x[:500], y[:500], 16, shuffle=True, seed=0)
    held_out = TensorLoader(x[5000:5500], y[5000:5500], 250)
    robust = {}
    for method in ("standard", "pgd"):
        torch.manual_seed(0)
        model = linear()
        cfg = quiet(method=method, steps=3, lr=1e-2, schedule="constant", out=str(tmp_path / method))
        fit(model, train, None, torch.optim.Adam(model.parameters(), lr=cfg.lr), cfg, log=lambda s: None)
        clean, robust[method] = evaluate(model, held_out, eps=0.1, steps=10)
        assert clean > 0.5, f"{method} training did not learn: clean accuracy {clean}"
    assert robust["pgd"] >= robust["standard"] + 0.05, robust


@needs_data
def test_resume_after_sigkill_gives_bit_identical_weights(tmp_path: Path) -> None:
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(run_cmd(killed, False), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ckpt = killed / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.communicate()[0].decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = load_checkpoint(ckpt)["epoch"]
    assert 1 <= done < 5
    resumed = subprocess.run(run_cmd(killed, True), env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed {ckpt} after epoch" in resumed.stdout

    threads = torch.get_num_threads()
    try:
        ns: dict[str, object] = {}
        exec(run_cmd(tmp_path / "straight", False)[2], ns)  # same code path, this process, one thread
    finally:
        torch.set_num_threads(threads)
    a, b = load_file(killed / "final.safetensors"), load_file(tmp_path / "straight" / "final.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    # The logs of the resumed run are those of the straight run (up to wall-clock seconds).
    ha, hb = (json.loads((d / "history.json").read_text()) for d in (killed, tmp_path / "straight"))
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in ha] == [
        {k: v for k, v in r.items() if k != "seconds"} for r in hb
    ]
    assert len(ha) == 5 and (killed / "history.csv").read_text().count("\n") == 6
    assert (killed / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(killed.glob(".*.tmp-*")), "a temporary file was left behind"


# ------------------------------------------------------------------------------------------ inner maxima


@settings(max_examples=8, deadline=None)
@given(eps=st.floats(0.01, 0.5), seed=st.integers(0, 1000))
def test_inner_maximisations_stay_in_the_ball_and_the_box(eps: float, seed: int) -> None:
    torch.manual_seed(seed)
    model = build("mnist_cnn_small")
    x = torch.rand(6, 1, 28, 28)
    x[:, :, :4] = 0.0  # pixels on the box's edges, where the ball is cut by [0, 1]
    x[:, :, -4:] = 1.0
    y = torch.randint(0, 10, (6,))
    for x_adv in (
        fgsm_rs(model, x, y, eps, 1.25 * eps),
        trades_inner(model, x, eps, eps / 4, 3),
        pgd_inner(model, x, y, eps, 2.5 * eps / 3, 3),
    ):
        assert x_adv.shape == x.shape
        assert float((x_adv - x).abs().max()) <= eps + 1e-6
        assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_inner_maximisations_increase_their_objectives(fmnist_test: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = fmnist_test[0][:64], fmnist_test[1][:64]
    torch.manual_seed(0)
    model = linear()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for i in range(0, 2000, 50):  # a quickly trained model, so that losses mean something
        opt.zero_grad()
        nn.functional.cross_entropy(model(fmnist_test[0][i : i + 50]), fmnist_test[1][i : i + 50]).backward()
        opt.step()
    eps = 0.05
    ce = nn.functional.cross_entropy
    random_point = (x + (2 * torch.rand_like(x) - 1) * eps).clamp(0, 1)
    with torch.no_grad():
        assert ce(model(fgsm_rs(model, x, y, eps, 1.25 * eps)), y) > ce(model(random_point), y) + 0.1
        p = model(x).softmax(1)

        def kl(z: torch.Tensor) -> torch.Tensor:
            return nn.functional.kl_div(model(z).log_softmax(1), p, reduction="none").sum(1)

        assert float(kl(trades_inner(model, x, eps, eps / 4, 5)).mean()) > 5 * float(kl(random_point).mean())
        last = pgd_inner(model, x, y, eps, eps / 4, 7)  # Madry's inner max: the last iterate, not the best
        assert ce(model(last), y) > ce(model(random_point), y) + 0.1
        assert float((last - x).abs().amax()) == pytest.approx(eps, abs=1e-6)  # sign steps end on the ball
    # TRADES' loss is CE on clean plus beta * KL; at eps = 0 it is the clean CE exactly.
    loss0, _ = method_loss("trades", model, x, y, eps=0.0, alpha=0.01, steps=3, beta=6.0)
    assert torch.allclose(loss0, ce(model(x), y))
    loss, _ = method_loss("trades", model, x, y, eps=eps, alpha=eps / 4, steps=5, beta=6.0)
    assert float(loss.detach()) > float(loss0.detach())


def test_inner_attacks_depend_on_their_settings_alone() -> None:
    """What ran before in the process (a held-out PGD check, or nothing, as after a resume) must not change an
    inner maximisation's result: that is what bit-identical resume rests on. Preparing the model is a setting:
    on or off, the losses agree up to float rounding, and FGSM-RS (too short to repay a copy) is identical."""
    import copy

    torch.manual_seed(0)
    model = build("mnist_cnn_small").train()
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))

    def loss_of(m: nn.Module, method: str, steps: int, prepare: bool = True) -> torch.Tensor:
        torch.manual_seed(1)
        return method_loss(method, m, x, y, eps=0.1, alpha=0.025, steps=steps, beta=6.0, prepare=prepare)[0].detach()

    fresh = copy.deepcopy(model)
    short, long = loss_of(fresh, "fgsm-rs", 1), loss_of(fresh, "pgd", 5)
    warm = copy.deepcopy(model)
    attacks.pgd(warm, x, y, 0.1, steps=10)  # an evaluation attack on these very weights ran first
    assert torch.equal(loss_of(warm, "fgsm-rs", 1), short)
    assert torch.equal(loss_of(warm, "pgd", 5), long)
    assert torch.equal(loss_of(warm, "fgsm-rs", 1, prepare=False), short)
    torch.testing.assert_close(loss_of(warm, "pgd", 5, prepare=False), long, rtol=1e-4, atol=1e-5)
    trades = loss_of(warm, "trades", 5)
    torch.testing.assert_close(loss_of(warm, "trades", 5, prepare=False), trades, rtol=1e-4, atol=1e-5)
    assert all(m.training for m in warm.modules())  # the inner maximisation left the model in train mode


def test_fit_takes_batches_with_an_index_and_checks_amp_against_the_model(
    fmnist_test: tuple[torch.Tensor, torch.Tensor], tmp_path: Path
) -> None:
    x, y = fmnist_test
    triples = [(x[i], y[i], i) for i in range(64)]  # what a DataLoader over advlab.data.FashionMNIST yields
    loader = torch.utils.data.DataLoader(triples, batch_size=32)
    model = linear()
    stats = train_epoch(model, loader, torch.optim.SGD(model.parameters(), lr=0.1), quiet(method="fgsm-rs"))
    assert stats.loss > 0 and 0 <= stats.accuracy <= 1
    if not torch.cuda.is_available():
        cfg = quiet(amp=True, device="cuda", out=str(tmp_path))  # the config alone cannot know the model's device
        with pytest.raises(ValueError, match=r"CUDA only, but the model is on cpu"):
            train_epoch(model, loader, torch.optim.SGD(model.parameters(), lr=0.1), cfg)


def test_defaults_follow_the_papers() -> None:
    assert default_alpha("fgsm-rs", 0.1, 1) == pytest.approx(0.125)  # Wong et al.: 1.25 eps
    assert default_alpha("pgd", 0.1, 10) == pytest.approx(0.025)  # Madry et al.: 2.5 eps / steps
    cfg = quiet(eps=0.1, eps_ramp_epochs=2)
    assert eps_at(cfg, 0, 9, 10) == pytest.approx(0.05)
    assert eps_at(cfg, 1, 4, 10) == pytest.approx(0.075)
    assert eps_at(cfg, 2, 0, 10) == pytest.approx(0.1)
    assert eps_at(quiet(eps=0.1), 0, 0, 10) == 0.1
    # A loader without len(): the ramp moves per epoch (a batch's share of the epoch is unknown).
    assert [eps_at(cfg, e, b, None) for e, b in [(0, 0), (0, 7), (1, 3), (3, 0)]] == pytest.approx(
        [0.05, 0.05, 0.1, 0.1]
    )


# ------------------------------------------------------------------------------------------ bad input


def test_bad_settings_are_clear_errors() -> None:
    for eps in (1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match="eps"):
            quiet(eps=eps)
    with pytest.raises(ValueError, match=r"unknown method 'madry'.*'pgd'"):
        quiet(method="madry")
    with pytest.raises(ValueError, match="CUDA only"):
        quiet(amp=True)
    with pytest.raises(TypeError, match="steps must be an int"):
        quiet(steps=2.5)


def test_images_outside_unit_range_are_refused(fmnist_test: tuple[torch.Tensor, torch.Tensor], tmp_path: Path) -> None:
    x, y = fmnist_test
    model = linear()
    cfg = quiet(method="standard", out=str(tmp_path))
    normalised = TensorLoader((x[:64] - 0.286) / 0.353, y[:64], 32)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\] after the dataset's transform"):
        fit(model, normalised, None, torch.optim.SGD(model.parameters(), lr=0.1), cfg, log=lambda s: None)
    assert not (tmp_path / "checkpoint.pt").exists()


class _NaNGradient(nn.Module):
    """A linear model plus ||z||, z a feature that is exactly 0 on images with a black first pixel: a finite loss
    whose gradient is NaN on those images."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x.flatten(1))
        z = h[:, :1] * (x.flatten(1)[:, :1] != 0)
        return h + (z * z).sum(1, keepdim=True).sqrt()


def test_nan_gradient_with_a_finite_loss_never_reaches_a_checkpoint(tmp_path: Path) -> None:
    # Review (session 20): divergence was found only from the next batch's loss, so NaN weights from an epoch's
    # last step were evaluated, marked best and saved, while the error said the last good checkpoint was kept.
    torch.manual_seed(0)
    x = torch.rand(128, 1, 28, 28) * 0.5 + 0.25
    y = torch.randint(0, 10, (128,))
    x[64:, 0, 0, 0] = 0.0  # half the images: epoch 1's batch that holds them gives NaN weights
    model = _NaNGradient()
    model.register_buffer("limit", torch.tensor(float("inf")))  # non-finite on purpose: never the culprit
    cfg = quiet(method="standard", epochs=2, batch_size=64, out=str(tmp_path))
    with pytest.raises(TrainingDivergedError, match=r"non-finite during epoch 1 \(fc.bias, fc.weight: .*No checkpoint"):
        fit(model, TensorLoader(x, y, 64), TensorLoader(x[:32], y[:32], 32), torch.optim.SGD(model.parameters(),
            lr=0.1), cfg, log=lambda s: None)  # fmt: skip
    assert not (tmp_path / "checkpoint.pt").exists() and not (tmp_path / "best.safetensors").exists()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(
    fmnist_test: tuple[torch.Tensor, torch.Tensor], tmp_path: Path
) -> None:
    x, y = fmnist_test
    loader = TensorLoader(x[:128], y[:128], 32, shuffle=True)
    model = linear()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    # A real divergence: from epoch 2 on the learning rate is infinite, so the weights become inf/NaN.
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 if t < len(loader) else float("inf"))
    cfg = quiet(method="fgsm-rs", epochs=3, out=str(tmp_path))
    with pytest.raises(TrainingDivergedError, match=r"became nan at epoch 2.*last good checkpoint"):
        fit(model, loader, None, opt, cfg, scheduler=scheduler, log=lambda s: None)
    payload = load_checkpoint(tmp_path / "checkpoint.pt")
    assert payload["epoch"] == 1 and len(payload["history"]) == 1
    assert all(bool(torch.isfinite(v).all()) for v in payload["model"].values())
    assert (tmp_path / "history.csv").read_text().count("\n") == 2


@needs_data
def test_resume_refuses_another_architecture_or_other_settings(tmp_path: Path) -> None:
    kw = {"method": "standard", "train_subset": 64, "batch_size": 32, "out": str(tmp_path)}
    run_training(quiet(**kw), log=lambda s: None)
    with pytest.raises(FileExistsError, match="already exists"):
        run_training(quiet(**kw), log=lambda s: None)
    # Resumed without the original flags: the differing settings are named, and where to find them.
    with pytest.raises(ValueError, match=r"model: checkpoint 'mnist_cnn_small' vs now 'mnist_cnn'.*config\.json"):
        run_training(quiet(**{**kw, "model": "mnist_cnn"}, resume=True), log=lambda s: None)
    # The same settings with another network (fit with a model of one's own): the architecture check speaks.
    other = build("mnist_cnn")
    loader = TensorLoader(torch.rand(2, 1, 28, 28), torch.zeros(2, dtype=torch.long), 2)
    with pytest.raises(ValueError, match=r"another architecture \('mnist_cnn_small'\).*shapes differ"):
        fit(other, loader, None, torch.optim.Adam(other.parameters()), quiet(**kw, resume=True), log=lambda s: None)
    with pytest.raises(ValueError, match=r"different settings: lr: checkpoint 0.001 vs now 0.002"):
        run_training(quiet(**kw, lr=2e-3, resume=True), log=lambda s: None)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run_training(quiet(**{**kw, "out": str(tmp_path / "new")}, resume=True), log=lambda s: None)
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable advlab training checkpoint"):
        run_training(quiet(**kw, resume=True), log=lambda s: None)


# ------------------------------------------------------------------------------------------ shipped models


@pytest.mark.parametrize(
    ("name", "min_clean", "min_pgd", "max_pgd"),
    [("fmnist_cnn_pgd", 0.82, 0.70, 1.0), ("fmnist_cnn_standard", 0.88, 0.0, 0.07)],
)
def test_shipped_models_reach_their_numbers(
    fmnist_test: tuple[torch.Tensor, torch.Tensor], name: str, min_clean: float, min_pgd: float, max_pgd: float
) -> None:
    """On a fixed 1,000-image test subset (every 10th image), PGD-40 alpha 0.01 eps 0.1 (one start here; the
    full 10k with 5 restarts is in docs/benchmarks.md). Targets on the full set: robust clean >= 0.84 and
    PGD >= 0.72; standard clean >= 0.90 and PGD <= 0.05. The tolerance covers the subset's sampling error."""
    x, y = fmnist_test[0][::10], fmnist_test[1][::10]
    model = load_builtin(name)
    assert not model.training
    weights = REPO / "src" / "advlab" / "models" / "weights" / f"{name}.safetensors"
    assert weights.stat().st_size < 4_000_000
    clean, robust = evaluate(model, TensorLoader(x, y, 500), eps=0.1, steps=40, alpha=0.01, seed=0)
    assert clean >= min_clean, f"{name}: clean accuracy {clean:.3f} < {min_clean}"
    assert min_pgd <= robust <= max_pgd, f"{name}: PGD accuracy {robust:.3f} outside [{min_pgd}, {max_pgd}]"
