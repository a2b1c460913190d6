"""Shared fixtures: small real models whose behaviour is known, trained in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
IMAGENET_30x5 = SHARED_DATA / "imagenet-30x5"


class Items:
    """A dataset of (image, label, index) items over tensors, as advlab's datasets yield them."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        return self.x[i], int(self.y[i]), i


class Linear(nn.Module):
    """logits = W flatten(x) + b: the model on which the optimal perturbations are known in closed form."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.T + self.bias


def digits_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads; on a shared 2-core machine other test processes share the cores.
    One intra-op thread for the module, restored afterwards (``pytestmark = pytest.mark.usefixtures(...)``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """sklearn's 8x8 digits as (N, 1, 8, 8) images in [0, 1] and int64 labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    return x, y


@pytest.fixture(scope="session")
def digits_model(digits: tuple[torch.Tensor, torch.Tensor]) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A small CNN trained on the first 1,500 digits (a few seconds); returns it with 200 held-out images."""
    x, y = digits
    torch.manual_seed(0)
    model = digits_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _epoch in range(15):
        perm = torch.randperm(1500, generator=gen)
        for i in range(0, 1500, 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    return model, x[1500:1700], y[1500:1700]
