"""A default sample of real labelled ImageNet photos: the images in the foolbox wheel.

foolbox (MIT licence; installed with ``pip install 'advlab[samples]'``) ships 20 ImageNet images as
``foolbox/data/imagenet_NN_<label>.jpg`` (512x512 RGB); ``<label>`` is the ImageNet-1k class index. They
are read from the installed package, never copied into this repository.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from pathlib import Path

from advlab.data.imagenet import ImageList, Transform, imagenet_class_names
from advlab.errors import MissingDependencyError

_FILE = re.compile(r"^imagenet_(\d+)_(\d+)\.jpg$")


def foolbox_data_dir() -> Path:
    spec = importlib.util.find_spec("foolbox")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "the default image sample comes from the foolbox wheel: pip install 'advlab[samples]' (or give --data)",
            "foolbox",
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


class DefaultSample(ImageList):
    """The foolbox wheel's ImageNet images as an ``(image, label, index)`` dataset, labels from file names."""

    def __init__(self, transform: Transform | None = None) -> None:
        folder = foolbox_data_dir()
        found = []
        for path in folder.glob("imagenet_*.jpg") if folder.is_dir() else []:
            m = _FILE.match(path.name)
            if m:
                found.append((int(m.group(1)), path, int(m.group(2))))
        if not found:
            raise FileNotFoundError(f"no imagenet_NN_<label>.jpg files in {folder}; reinstall foolbox")
        found.sort()
        bad = [p.name for _, p, y in found if not 0 <= y < 1000]
        if bad:
            raise ValueError(f"{folder}: label outside 0..999 in {', '.join(bad)}")
        try:
            version = importlib.metadata.version("foolbox")
        except importlib.metadata.PackageNotFoundError:
            version = "unknown version"
        provenance = (
            f"{len(found)} ImageNet images from the foolbox {version} wheel ({folder}/imagenet_NN_<label>.jpg, "
            "MIT licence); labels from the file names"
        )
        super().__init__([(p, y) for _, p, y in found], transform, imagenet_class_names(), provenance)
        self.root = folder


def default_sample(transform: Transform | None = None) -> DefaultSample:
    """The 20 labelled ImageNet photos that ship with the foolbox wheel (see :class:`DefaultSample`)."""
    return DefaultSample(transform)
