"""``--sample N``: a seeded random sample of a dataset, stratified by class, said plainly in its provenance.

``--limit N`` takes the first N items in the data's own order (for an ImageNet folder, class-folder order: the
lowest class indices), which is quick but not representative. :func:`sample_dataset` instead draws N items
with a seeded generator, allocating them to the classes in proportion to their sizes (largest remainders,
ties broken by the seeded draw) and drawing uniformly without replacement inside each class: proportional
stratified sampling (Cochran 1977, *Sampling Techniques*, ch. 5), whose class shares equal the data's (up to
one item per class) whatever the seed. Data that cannot give its labels without reading every image gets a
plain uniform sample, and its provenance says so.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from ..errors import UsageError
from .subset import SubsetDataset


def stratified_indices(labels: Sequence[int], n: int, seed: int) -> list[int]:
    """``n`` item indices drawn with ``seed``, proportionally per class (see the module docstring), sorted."""
    if not 1 <= n <= len(labels):
        raise UsageError(f"--sample takes 1..{len(labels)} (the data's size), got {n}")
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, c in enumerate(labels):
        by_class.setdefault(int(c), []).append(i)
    classes = sorted(by_class)
    total = len(labels)
    quota = {c: n * len(by_class[c]) // total for c in classes}
    rest = n - sum(quota.values())
    order = classes[:]
    rng.shuffle(order)  # ties between equal remainders go to a seeded random class, not the lowest index
    order.sort(key=lambda c: -((n * len(by_class[c])) % total))
    for c in order[:rest]:
        quota[c] += 1
    chosen: list[int] = []
    for c in classes:
        chosen += rng.sample(by_class[c], quota[c])
    return sorted(chosen)


class SampledDataset(SubsetDataset):
    """A :class:`SubsetDataset` that also says, in ``how``, exactly how its items were chosen."""

    def __init__(self, dataset: Any, indices: Sequence[int], *, classes: Sequence[int], how: str) -> None:
        super().__init__(dataset, indices, classes=classes, description=how)
        self.how = how


def sample_dataset(dataset: Any, n: int, seed: int) -> SampledDataset:
    """A seeded random sample of ``n`` items of ``dataset``, stratified by class where the dataset exposes its
    ``labels`` (advlab's ImageNet folders, label files and Fashion-MNIST do); items keep their source index."""
    labels = getattr(dataset, "labels", None)
    size = len(dataset)
    if labels is not None:
        labels = [int(v) for v in labels]
        indices = stratified_indices(labels, n, seed)
        counts = [sum(labels[i] == c for i in indices) for c in sorted(set(labels))]
        classes = sorted({labels[i] for i in indices})
        how = (
            f"a seeded random sample of {len(indices)} of {size} images (seed {seed}), stratified by class: "
            f"{min(counts)}-{max(counts)} per class from {len(classes)} of {len(set(labels))} classes (--sample)"
        )
    else:
        if not 1 <= n <= size:
            raise UsageError(f"--sample takes 1..{size} (the data's size), got {n}")
        indices = sorted(random.Random(seed).sample(range(size), n))
        classes = []
        how = (
            f"a seeded uniform random sample of {n} of {size} images (seed {seed}; not stratified: the data does "
            "not give its labels without reading every image) (--sample)"
        )
    return SampledDataset(dataset, indices, classes=classes, how=how)
