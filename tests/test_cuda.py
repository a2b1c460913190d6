"""What advlab promises about devices, checked where a CUDA device exists (skipped elsewhere).

- A seeded attack is the same computation on every device: ``attacks.noise`` draws seeded random starts on the
  CPU and moves them, Square's counter-based draws are integer arithmetic, so in float64 an attack on CUDA returns
  what it returns on the CPU up to float rounding of the model's arithmetic.
- An ``advlab eval --device cuda --save-adversarial`` run verifies with ``advlab verify`` on the CPU and on CUDA
  (issue 20: "works on another machine or device within a stated float tolerance").
- ``models.prepare`` on a CUDA model computes the model's function; mixed-precision training (CUDA only) trains.
- A randomized defence under EOT is reproducible from its seed on CUDA (under deterministic algorithms).
- A random defence is judged per sample on CUDA as on the CPU: per-sample streams and ``engine.Judge`` give a
  sample the same judgement in a batch and alone; a random-defence ``advlab eval --device cuda
  --save-adversarial`` run verifies with ``advlab verify`` on its own device (the only one that replays its draws).

Every check is a function of the device, so the same bodies can be exercised on the CPU by hand
(``python -c "from tests.test_cuda import ...; check_...('cpu')"``) before a GPU run.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from advlab import attacks

CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.skipif(not CUDA, reason="no CUDA device here; runs where a GPU exists")
FASHION = Path(os.environ.get("ADVLAB_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))

# Attacks whose float64 result on one device must match the other's: every attack of tests/test_attacks.py but
# CW (Adam's running moments amplify the last-bit differences of the two devices' reductions over 60 steps).
DEVICE_INDEPENDENT = [
    "fgsm",
    "bim",
    "pgd_linf",
    "pgd_l2",
    "pgd_l1",
    "apgd_l1",
    "fmn_l1",
    "fmn_l2",
    "fmn_linf",
    "ddn",
    "fab_linf",
    "fab_l1",
]


def check_attack_matches_cpu(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: str) -> None:
    from tests.test_attacks import ATTACKS

    model64 = copy.deepcopy(model).double()
    x64, y = x[:32].double(), y[:32]
    on_cpu = ATTACKS[name](model64, x64, y)
    on_dev = ATTACKS[name](copy.deepcopy(model64).to(device), x64.to(device), y.to(device))
    assert on_dev.device.type == torch.device(device).type
    on_dev = on_dev.cpu()
    assert float(on_dev.min()) >= 0 and float(on_dev.max()) <= 1
    with torch.no_grad():
        wrong_cpu = model64(on_cpu).argmax(1) != y
        wrong_dev = model64(on_dev).argmax(1) != y
    # The same samples broken, and the same points up to float rounding (a sign step may flip where a gradient
    # component is within rounding of zero: at most one sample in 32 may move further).
    assert torch.equal(wrong_cpu, wrong_dev), (name, wrong_cpu.sum().item(), wrong_dev.sum().item())
    far = ((on_cpu - on_dev).flatten(1).abs().amax(1) > 1e-6).sum().item()
    assert far <= 1, f"{name}: {far} of 32 samples differ between the CPU and {device} by more than 1e-6"


@pytest.mark.parametrize("name", DEVICE_INDEPENDENT)
def test_an_attack_on_cuda_returns_what_it_returns_on_the_cpu(name: str, digits_model) -> None:
    model, x, y = digits_model
    check_attack_matches_cpu(name, model, x, y, "cuda")


def check_square_matches_cpu(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: str) -> None:
    model64 = copy.deepcopy(model).double()
    x64, y = x[:16].double(), y[:16]
    kw = dict(eps=0.1, queries=200, seed=3)
    on_cpu = attacks.square(model64, x64, y, **kw)
    on_dev = attacks.square(copy.deepcopy(model64).to(device), x64.to(device), y.to(device), **kw).cpu()
    assert torch.allclose(on_cpu, on_dev, atol=1e-6, rtol=0)


def test_square_on_cuda_draws_what_it_draws_on_the_cpu(digits_model) -> None:
    model, x, y = digits_model
    check_square_matches_cpu(model, x, y, "cuda")


def check_eval_verifies_on_both_devices(tmp_path: Path, device: str) -> None:
    from advlab.cli import main

    run = tmp_path / "run"
    argv = ["eval", "--model", "fmnist_cnn_pgd", "--data", "fashion-mnist", "--sample", "128", "--batch-size", "64"]
    argv += ["--suite", "fast", "--eps", "0.1", "--device", device, "--quiet", "--save-adversarial", "--out", str(run)]
    assert main(argv) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert (
        summary["attacks"]
        and json.loads((run / "run.json").read_text())["config"]["device_type"] == torch.device(device).type
    )
    for verifier in dict.fromkeys(["cpu", device]):
        assert main(["verify", str(run), "--device", verifier]) == 0, verifier


@pytest.mark.skipif(not any(FASHION.glob("t10k-images-idx3-ubyte*")), reason="Fashion-MNIST missing")
def test_a_cuda_run_verifies_on_the_cpu_and_on_cuda(tmp_path: Path, capsys) -> None:
    check_eval_verifies_on_both_devices(tmp_path, "cuda")
    out = capsys.readouterr().out
    assert out.count("verify: OK; 128 records checked") == 2, out


def check_prepare_keeps_the_function(device: str) -> None:
    from advlab.models import load_model, prepare

    torch.manual_seed(0)
    model = load_model("efficientnet_lite0").to(device).eval()
    x = torch.rand(4, 3, 224, 224, device=device)
    prepared = prepare(model, x)
    with torch.no_grad():
        want, got = model(x), prepared(x)
    assert got.device.type == torch.device(device).type
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
    assert torch.equal(got.argmax(1), want.argmax(1))


def test_prepare_on_cuda_computes_the_models_function() -> None:
    check_prepare_keeps_the_function("cuda")


def check_training_learns(device: str, amp: bool) -> None:
    """Two epochs of plain training on a separable task lower the loss (on CUDA with ``amp``: under bfloat16
    autocast). The same body runs on the CPU without ``amp``, where it is checked to learn."""
    from advlab.train import TrainConfig, train_epoch
    from tests.test_train import linear

    gen = torch.Generator().manual_seed(1)  # not the model's seed: its initial weights would be these templates
    templates = torch.rand(10, 1, 28, 28, generator=gen)
    y = torch.arange(512) % 10
    x = (0.7 * templates[y] + 0.3 * torch.rand(512, 1, 28, 28, generator=gen)).clamp(0, 1)  # class template + noise
    loader = torch.utils.data.DataLoader([(x[i], int(y[i]), i) for i in range(512)], batch_size=64)
    torch.manual_seed(0)
    model = linear().to(device)
    cfg = TrainConfig(
        model="mnist_cnn_small", method="standard", progress=False, val_size=0, epochs=1, amp=amp, device=device
    )
    with torch.no_grad():
        untrained = float(nn.functional.cross_entropy(model(x.to(device)), y.to(device)))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    stats = [train_epoch(model, loader, opt, cfg) for _ in range(2)]
    assert all(torch.isfinite(torch.tensor(s.loss)) for s in stats)
    assert stats[-1].loss < 0.5 * untrained and stats[-1].accuracy >= 0.9, (untrained, stats)


def test_mixed_precision_training_on_cuda_learns() -> None:
    check_training_learns("cuda", amp=True)


# cuBLAS reads its workspace setting once per process, when CUDA first runs a GEMM: set here, at import, before
# any check runs (inside deterministic() it came too late for every check after the first CUDA one; review 5, F9).
# torch.use_deterministic_algorithms requires it for reproducible cuBLAS results (PyTorch's reproducibility notes).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
    """``torch.use_deterministic_algorithms`` for the block, restored after (the cuBLAS workspace setting it needs
    is made at import, above). ``warn_only``: an op with no deterministic CUDA kernel warns rather than raising;
    the checks' models use none (MaxPool2d's backward is not on PyTorch's list, and its windows here do not
    overlap, so each input gets one gradient)."""
    mode, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = torch.backends.cudnn.deterministic
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(mode, warn_only=warn)
        torch.backends.cudnn.deterministic = cudnn


def check_eot_is_reproducible(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: str) -> None:
    from advlab.defenses import GaussianNoise, defended

    def run(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)  # the model's randomness is the model's: its draws come from the global stream
        target = defended(copy.deepcopy(model), GaussianNoise(0.1)).to(device)
        return attacks.pgd(target, x[:16].to(device), y[:16].to(device), 0.1, 0.02, 5, eot_samples=4, seed=1)

    # Bit for bit only under deterministic algorithms: cuDNN may otherwise pick a convolution backward whose
    # atomic adds differ from call to call in the last bit, and PGD's sign step can turn that into a whole step.
    with deterministic():
        a, b, c = run(0), run(0), run(1)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_eot_on_a_random_defence_is_reproducible_on_cuda(digits_model) -> None:
    model, x, y = digits_model
    check_eot_is_reproducible(model, x, y, "cuda")


def check_random_judgement_is_per_sample(model: nn.Module, x: torch.Tensor, device: str) -> None:
    """Each random defence, K = 4 draws: a sample's judgement (engine.Judge, per-sample streams) in a batch of 32,
    alone, and in a subset of the batch's rows, is the same: the same draws (streams on the device), the model's
    arithmetic rounded for another batch size, and the same top-1 where the batch's top two are not within it."""
    from advlab.defenses import GaussianNoise, RandomResizePad, defended
    from advlab.evaluate.engine import Judge

    xs, indices = x[:32].to(device), list(range(500, 532))
    for transform in (GaussianNoise(0.3), RandomResizePad(0.75)):
        net = defended(copy.deepcopy(model), transform).to(device).eval()
        judge = Judge(net, xs, 7, indices, 4)
        batch = judge.logits(xs)
        assert batch.device.type == torch.device(device).type and judge.global_draws is False
        one = [Judge(net, xs[i : i + 1], 7, indices[i : i + 1], 4).logits(xs[i : i + 1]) for i in range(32)]
        alone = torch.cat(one)
        rows = torch.tensor([30, 3, 17, 8], device=device)
        subset = judge.logits(xs[rows], rows)
        for got, want in ((alone, batch), (subset, batch[rows])):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
            top2 = want.topk(2, dim=1).values
            clear = (top2[:, 0] - top2[:, 1]) > 1e-3
            assert torch.equal(got.argmax(1)[clear], want.argmax(1)[clear]), type(transform).__name__


def test_a_random_defence_is_judged_per_sample_on_cuda(digits_model) -> None:
    model, x, _ = digits_model
    check_random_judgement_is_per_sample(model, x, "cuda")


def check_random_eval_verifies_on_its_device(tmp_path: Path, device: str) -> None:
    """``advlab eval --device DEVICE --defense random_resize_pad --save-adversarial`` with EOT (K = 4, so the run's
    judgement is 4 seeded draws per sample) verifies with ``advlab verify --device DEVICE``: verify replays the
    run's draws on the device type that made them."""
    from advlab.cli import main

    run = tmp_path / "run"
    argv = ["eval", "--model", "fmnist_cnn_pgd", "--data", "fashion-mnist", "--sample", "64", "--batch-size", "32"]
    argv += ["--defense", "random_resize_pad(min_ratio=0.9)", "--attack", "pgd", "--eps", "0.1", "--steps", "5"]
    argv += ["-p", "eot_samples=4", "--device", device, "--quiet", "--save-adversarial", "--out", str(run)]
    assert main(argv) == 0
    config = json.loads((run / "run.json").read_text())["config"]
    assert config["device_type"] == torch.device(device).type
    assert main(["verify", str(run), "--device", device]) == 0


@pytest.mark.skipif(not any(FASHION.glob("t10k-images-idx3-ubyte*")), reason="Fashion-MNIST missing")
def test_a_random_defence_run_on_cuda_verifies_on_cuda(tmp_path: Path, capsys) -> None:
    check_random_eval_verifies_on_its_device(tmp_path, "cuda")
    out = capsys.readouterr().out
    assert "verify: OK; 64 records checked" in out and "a random model" in out, out
