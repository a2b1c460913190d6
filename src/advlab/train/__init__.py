"""Adversarial training: Madry et al.'s min-max with PGD, FGSM-RS (Wong et al. 2020) or TRADES (Zhang et al. 2019).

    from advlab.train import TrainConfig, run_training
    result = run_training(TrainConfig(model="mnist_cnn", method="pgd", eps=0.1, epochs=10, out="runs/pgd"))

or, with your own model, loaders and optimiser, :func:`fit` (and its parts :func:`train_epoch`, :func:`evaluate`).
"""

from .checkpoint import load_checkpoint, save_checkpoint
from .config import METHODS, TrainConfig, default_alpha
from .inner import fgsm_rs, method_loss, pgd_inner, trades_inner
from .loop import EpochStats, FitResult, TensorLoader, TrainingDivergedError, evaluate, fit, train_epoch
from .run import run_training

__all__ = [
    "METHODS",
    "EpochStats",
    "FitResult",
    "TensorLoader",
    "TrainConfig",
    "TrainingDivergedError",
    "default_alpha",
    "evaluate",
    "fgsm_rs",
    "fit",
    "load_checkpoint",
    "method_loss",
    "pgd_inner",
    "run_training",
    "save_checkpoint",
    "trades_inner",
    "train_epoch",
]
