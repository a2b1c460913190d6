"""Expensive objects shared by tests/test_models.py and tests/test_data.py, built once per test process."""

from __future__ import annotations

import functools

import pytest
import torch

from tests.conftest import IMAGENET_30x5

SHARED_SET_MISSING = (
    f"the shared ImageNet 30x5 set is absent ({IMAGENET_30x5}); put the 150 images (<wnid>/<file>.JPEG plus "
    "labels.csv, described in shared/data/README.md) there to run this test"
)


def require_shared_set() -> None:
    if not (IMAGENET_30x5 / "labels.csv").is_file():
        pytest.skip(SHARED_SET_MISSING)


@functools.cache
def default_model():
    from advlab.models import load_model

    return load_model()


@functools.cache
def shared_set():
    from advlab.data import ImageNetFolder, transform_for

    return ImageNetFolder(IMAGENET_30x5, transform=transform_for(default_model()))


@functools.cache
def shared_set_logits() -> tuple[torch.Tensor, torch.Tensor]:
    """The default model's logits on the 150 shared images (dataset order) and their labels."""
    from advlab.data import iter_batches

    model = default_model()
    outs, labels = [], []
    with torch.inference_mode():
        for x, y, _ in iter_batches(shared_set(), batch_size=50):
            outs.append(model(x))
            labels.append(y)
    return torch.cat(outs), torch.cat(labels)
