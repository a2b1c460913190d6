"""Small CNNs for 28x28 grey images (MNIST, Fashion-MNIST) and the Fashion-MNIST models shipped with advlab.

``mnist_cnn`` is the MNIST network of Madry et al. 2018 ("Towards Deep Learning Models Resistant to Adversarial
Attacks", appendix C / their ``mnist_challenge`` model): conv 32 5x5 + ReLU, 2x2 max-pool, conv 64 5x5 + ReLU,
2x2 max-pool, fully connected 1024 + ReLU, fully connected 10 ("same" padding, so 28 -> 14 -> 7). It has
3.27 M parameters (13 MB as float32).

``mnist_cnn_small`` has the same layout at a quarter of the conv channels' cost: conv 16 5x5, pool, conv 32
5x5, pool, fc 256, fc 10 (0.42 M parameters, 1.7 MB). One forward/backward costs about a quarter of
``mnist_cnn``'s (docs/benchmarks.md), which is what makes PGD adversarial training on the full Fashion-MNIST
practical on a few CPU cores. The
shipped models ``fmnist_cnn_pgd`` and ``fmnist_cnn_standard`` use it; docs/training.md gives the numbers.

Every model takes images in [0, 1] (N, 1, 28, 28) and normalises inside; as in Madry et al. the
normalisation is the identity (mean 0, std 1), kept as buffers so that the convention is explicit.
"""

from __future__ import annotations

from importlib import resources

import torch
from torch import Tensor, nn

from advlab.data.fashion_mnist import CLASSES as FASHION_MNIST_CLASSES
from advlab.errors import MissingInputError, UsageError


class SmallCNN(nn.Module):
    """conv(c1, 5x5) - ReLU - maxpool 2 - conv(c2, 5x5) - ReLU - maxpool 2 - fc(hidden) - ReLU - fc(classes)."""

    input_size: tuple[int, int, int] = (1, 28, 28)

    def __init__(
        self,
        num_classes: int = 10,
        channels: tuple[int, int] = (32, 64),
        hidden: int = 1024,
        mean: float = 0.0,
        std: float = 1.0,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise UsageError(f"num_classes must be >= 2, got {num_classes}")
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * 7 * 7, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )
        self.register_buffer("mean", torch.tensor(float(mean)).view(1, 1, 1, 1))
        self.register_buffer("std", torch.tensor(float(std)).view(1, 1, 1, 1))
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1:] != (1, 28, 28):
            raise ValueError(f"expected images shaped (N, 1, 28, 28) in [0, 1], got {tuple(x.shape)}")
        return self.classifier(self.features((x - self.mean) / self.std))


def mnist_cnn(num_classes: int = 10) -> SmallCNN:
    """The MNIST CNN of Madry et al. 2018: conv32-5x5, pool, conv64-5x5, pool, fc1024, fc10 (3.27 M params)."""
    return SmallCNN(num_classes, (32, 64), 1024)


def mnist_cnn_small(num_classes: int = 10) -> SmallCNN:
    """Madry et al.'s layout at half the width: conv16-5x5, pool, conv32-5x5, pool, fc256, fc10 (0.42 M params)."""
    return SmallCNN(num_classes, (16, 32), 256)


ARCHITECTURES = {"mnist_cnn": mnist_cnn, "mnist_cnn_small": mnist_cnn_small}

# Built-in trained weights: name -> (architecture, weight file in advlab/models/weights/).
BUILTIN: dict[str, tuple[str, str]] = {
    "fmnist_cnn_pgd": ("mnist_cnn_small", "fmnist_cnn_pgd.safetensors"),
    "fmnist_cnn_standard": ("mnist_cnn_small", "fmnist_cnn_standard.safetensors"),
}


def build(architecture: str, num_classes: int = 10) -> SmallCNN:
    """An untrained network by architecture name (``mnist_cnn`` or ``mnist_cnn_small``)."""
    if architecture not in ARCHITECTURES:
        raise UsageError(f"unknown small architecture {architecture!r}; expected one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[architecture](num_classes)


def load_builtin(name: str, device: str | torch.device = "cpu") -> SmallCNN:
    """A shipped Fashion-MNIST model (``fmnist_cnn_pgd`` or ``fmnist_cnn_standard``), in eval mode.

    The weights are a safetensors file inside the package (never a pickle). The model takes images in [0, 1]
    (N, 1, 28, 28) and has ``classes`` (the Fashion-MNIST class names), ``input_size``, ``mean`` and ``std``.
    """
    from safetensors.torch import load_file

    if name not in BUILTIN:
        raise UsageError(f"unknown built-in model {name!r}; expected one of {', '.join(BUILTIN)}")
    architecture, filename = BUILTIN[name]
    model = build(architecture)
    path = resources.files("advlab.models").joinpath("weights", filename)
    with resources.as_file(path) as p:
        if not p.is_file():
            raise MissingInputError(f"weight file {filename} of built-in model {name!r} is missing from {p.parent}")
        model.load_state_dict(load_file(str(p)))
    model.classes = FASHION_MNIST_CLASSES
    return model.to(device).eval()
