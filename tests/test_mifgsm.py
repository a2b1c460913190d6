"""MI-FGSM (Dong et al. 2018): the momentum recursion, box and ball, independence, strength vs FGSM."""

from __future__ import annotations

import pytest
import torch

from advlab import attacks
from tests.conftest import Linear


def test_on_a_linear_model_every_step_follows_sign_w() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, generator=g, dtype=torch.float64)
    model = Linear(torch.stack([torch.zeros_like(w), w]), torch.zeros(2, dtype=torch.float64))
    x = 0.3 + 0.4 * torch.rand(4, 1, 4, 4, generator=g, dtype=torch.float64)
    y = torch.zeros(4, dtype=torch.long)
    # The CE gradient is a positive multiple of w at every step, so the momentum keeps sign(w) and
    # T steps of eps / T add up to x + eps sign(w).
    x_adv = attacks.mifgsm(model, x, y, 0.05, steps=5)
    torch.testing.assert_close(x_adv.flatten(1), x.flatten(1) + 0.05 * torch.sign(w), rtol=0, atol=1e-12)


def test_momentum_accumulates_normalised_gradients() -> None:
    """With decay 0 MI-FGSM is BIM (same alpha); with decay > 0 it differs on a non-linear model."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    model = model.double()
    x = torch.rand(6, 1, 4, 4, dtype=torch.float64)
    y = torch.arange(6) % 3
    no_momentum = attacks.mifgsm(model, x, y, 0.2, alpha=0.05, steps=8, decay=0.0, return_info=True)
    bim = attacks.bim(model, x, y, 0.2, alpha=0.05, steps=8, return_info=True)
    torch.testing.assert_close(no_momentum.x_adv, bim.x_adv, rtol=0, atol=1e-12)
    batch = attacks.mifgsm(model, x, y, 0.2, alpha=0.05, steps=8)
    for i in range(6):
        torch.testing.assert_close(
            batch[i : i + 1], attacks.mifgsm(model, x[i : i + 1], y[i : i + 1], 0.2, alpha=0.05, steps=8)
        )
    assert float((batch - x).abs().max()) <= 0.2 + 1e-12 and float(batch.min()) >= 0 and float(batch.max()) <= 1


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_mifgsm_is_at_least_as_strong_as_fgsm_on_the_digits_cnn(norm: str, digits_model) -> None:
    model, x, y = digits_model
    x, y = x[:100], y[:100]
    eps = 0.1 if norm == "linf" else 0.8
    fg = attacks.fgsm(model, x, y, eps, norm=norm, return_info=True)
    mi = attacks.mifgsm(model, x, y, eps, steps=10, norm=norm, return_info=True)
    assert float(mi.success.float().mean()) >= float(fg.success.float().mean())
    size = (mi.x_adv - x).flatten(1).norm(p=float("inf") if norm == "linf" else 2, dim=1)
    assert bool((size <= eps + 1e-5).all())


def test_bad_decay_raises() -> None:
    model = Linear(torch.randn(3, 16), torch.zeros(3))
    with pytest.raises(ValueError, match="decay"):
        attacks.mifgsm(model, torch.rand(2, 1, 4, 4), torch.tensor([0, 1]), 0.1, decay=-1.0)
