"""The seed paper's evaluation set: ``classes`` visually distinct classes x ``per_class`` correctly classified images.

Selection (:func:`select_subset`):

1. The model classifies every image of the dataset (top-1); only correctly classified images are kept.
2. Each class is represented by the model's final-layer weight vector for it (the row ``w_c`` of the last
   linear layer, bias ignored). Two classes are far apart when the cosine distance ``1 - cos(w_a, w_b)`` is
   large: the classifier separates them along different feature directions, which for ImageNet models tracks
   visual dissimilarity (dog breeds have near-parallel rows, a dog and a car do not).
3. Classes are chosen greedily by farthest-point selection (Gonzalez 1985, the 2-approximation of the
   k-centre problem): the first class is drawn with the seed, and each next one is the class whose smallest
   cosine distance to the classes chosen so far is largest. Classes with a full quota of ``per_class``
   correctly classified images are always preferred to classes with fewer, so on a large set (ImageNet val)
   the result is exactly ``classes x per_class``; on a set that is already the selection (the shared 30 x 5)
   every class is kept with the images the model gets right. Ties go to the lower class index.
4. Within a class, ``per_class`` of its correctly classified images are drawn with the seed (all of them
   when there are no more than ``per_class``).

The result is deterministic for a given model, dataset and seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from advlab.data.imagenet import iter_batches
from advlab.errors import UsageError


class SubsetDataset(Dataset):
    """A view of ``dataset`` restricted to ``indices``; items keep the *original* dataset index."""

    def __init__(self, dataset: Any, indices: Sequence[int], *, classes: Sequence[int], description: str) -> None:
        self.dataset = dataset
        self.indices = [int(i) for i in indices]
        self.classes = [int(c) for c in classes]
        self.class_names = list(getattr(dataset, "class_names", []))
        self.provenance = f"{getattr(dataset, 'provenance', type(dataset).__name__)}; {description}"

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        return self.dataset[self.indices[i]]

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return getattr(self.dataset, "skipped", [])

    @property
    def labels(self) -> torch.Tensor:
        all_labels = self.dataset.labels
        return all_labels[torch.tensor(self.indices, dtype=torch.int64)]

    def __repr__(self) -> str:
        return f"SubsetDataset({len(self)} images, {len(self.classes)} classes; {self.provenance})"


def class_vectors(model: nn.Module) -> torch.Tensor:
    """Per-class final-layer weight rows of an advlab model (``model.class_weight_vectors()``)."""
    fn = getattr(model, "class_weight_vectors", None)
    if fn is None:
        raise TypeError(
            f"select_subset needs an advlab ImageClassifier (advlab.models.load_model); {type(model).__name__} has "
            "no class_weight_vectors()"
        )
    return fn()


def farthest_point_classes(
    vectors: torch.Tensor, candidates: Sequence[int], priority: Sequence[int], k: int, rng: np.random.Generator
) -> list[int]:
    """Greedy farthest-point selection of ``k`` of ``candidates`` under cosine distance of ``vectors`` rows.

    ``priority[i]`` (higher first) ranks candidate ``i`` before any distance comparison; the first pick is
    drawn by ``rng`` among the candidates of top priority.
    """
    if k > len(candidates):
        raise ValueError(f"cannot pick {k} classes from {len(candidates)} candidates")
    v = vectors[list(candidates)].double()
    v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
    dist = (1.0 - v @ v.T).clamp_min(0.0).numpy()
    prio = np.asarray(priority)
    top = np.flatnonzero(prio == prio.max())
    chosen = [int(rng.choice(top))]
    min_dist = dist[chosen[0]].copy()
    taken = np.zeros(len(candidates), dtype=bool)
    taken[chosen[0]] = True
    while len(chosen) < k:
        # lexsort: last key is primary; lower position wins ties because argmax-over-sorted picks the last
        # entry, so sort by (-position) as the least significant key.
        order = np.lexsort((-np.arange(len(candidates)), min_dist, prio))
        order = order[~taken[order]]
        nxt = int(order[-1])
        chosen.append(nxt)
        taken[nxt] = True
        min_dist = np.minimum(min_dist, dist[nxt])
    return [int(candidates[i]) for i in chosen]


class _Positions(Dataset):
    """``dataset`` whose items carry their position in it as their index (an item reports its own index, which
    differs from its position in a held-out split, a sample or a subset)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Any:
        item = self.dataset[i]
        return None if item is None else (item[0], item[1], i)


@torch.no_grad()
def predict_top1(model: nn.Module, dataset: Dataset, batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-1 predictions over the dataset: (positions in the dataset, predicted classes); unreadable images are
    absent. Positions, not the indices items report: ``dataset.labels`` and a subset of it are read by position."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    idx_all, pred_all = [], []
    try:
        for x, _, idx in iter_batches(_Positions(dataset), batch_size):
            pred_all.append(model(x.to(device)).argmax(dim=1).cpu())
            idx_all.append(idx)
    finally:
        model.train(was_training)
    if not idx_all:
        raise UsageError("the dataset yielded no readable images")
    return torch.cat(idx_all), torch.cat(pred_all)


def select_subset(
    model: nn.Module,
    dataset: Any,
    classes: int = 30,
    per_class: int = 5,
    seed: int = 0,
    batch_size: int = 32,
    predictions: torch.Tensor | None = None,
) -> SubsetDataset:
    """Pick ``classes`` visually distinct classes and up to ``per_class`` correctly classified images of each.

    See the module docstring for the method. ``dataset`` yields ``(image, label, index)`` with images already
    transformed for ``model`` (build it with ``transform=advlab.data.transform_for(model)``).
    ``predictions`` (optional) reuses an earlier pass: the model's top-1 class for every position in the dataset
    (shape ``(len(dataset),)``), negative for images to leave out; without it the model is run here. The subset
    holds positions in ``dataset`` (its items keep the index they report).

    Raises:
        ValueError: bad counts, or fewer than ``classes`` classes with at least one correctly classified image.
    """
    if classes < 1 or per_class < 1:
        raise UsageError(f"classes and per_class must be >= 1, got {classes} and {per_class}")
    vectors = class_vectors(model)
    if predictions is None:
        idx, pred = predict_top1(model, dataset, batch_size)
    else:
        predictions = torch.as_tensor(predictions).flatten().long().cpu()
        if len(predictions) != len(dataset):
            raise ValueError(f"predictions has {len(predictions)} entries, expected one per image ({len(dataset)})")
        idx = torch.nonzero(predictions >= 0).flatten()
        pred = predictions[idx]
    labels = dataset.labels[idx]
    correct = idx[pred == labels]
    correct_labels = labels[pred == labels]
    by_class: dict[int, list[int]] = {}
    for i, y in zip(correct.tolist(), correct_labels.tolist(), strict=True):
        by_class.setdefault(int(y), []).append(int(i))
    if len(by_class) < classes:
        raise UsageError(
            f"only {len(by_class)} classes have a correctly classified image ({len(correct)} of {len(idx)} images "
            f"correct); cannot select {classes} classes"
        )
    candidates = sorted(by_class)
    priority = [min(len(by_class[c]), per_class) for c in candidates]
    rng = np.random.default_rng(seed)
    chosen = farthest_point_classes(vectors, candidates, priority, classes, rng)
    indices: list[int] = []
    for c in chosen:
        pool = sorted(by_class[c])
        if len(pool) > per_class:
            pool = sorted(int(i) for i in rng.choice(pool, size=per_class, replace=False))
        indices.extend(pool)
    indices.sort()
    description = (
        f"select_subset(classes={classes}, per_class={per_class}, seed={seed}): {len(indices)} correctly classified "
        f"images of {len(chosen)} classes chosen by farthest-point selection over cosine distances of "
        f"{getattr(model, 'name', type(model).__name__)}'s class weight vectors"
    )
    return SubsetDataset(dataset, indices, classes=chosen, description=description)


class LimitedDataset:
    """The first ``n`` items of a dataset (``--limit``: quick looks and tests), keeping its class names and
    saying in its provenance that it was cut."""

    def __init__(self, dataset: Any, n: int) -> None:
        self.dataset, self.n = dataset, min(n, len(dataset))
        self.class_names = getattr(dataset, "class_names", [])
        self.provenance = f"{getattr(dataset, 'provenance', '')}; first {self.n} only (--limit)"

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.dataset[i]
