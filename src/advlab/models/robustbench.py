"""RobustBench models (Croce et al., 2021, "RobustBench: a standardized adversarial robustness benchmark"):
``robustbench:cifar10/Linf/Carmon2019Unlabeled`` (dataset / threat model / name).

The architecture comes from the ``robustbench`` package's model zoo (an optional extra; its models take
[0, 1] images and normalise inside, so advlab's mean/std stay 0 and 1). The checkpoint comes from
RobustBench's model directory layout ``MODEL_DIR/<dataset>/<threat model>/<name>.pt`` (``model_dir=``,
``--model-dir``, default ``./models`` as RobustBench uses), or ``weights=FILE``, or is downloaded with
robustbench's own downloader where the network allows. Checkpoints are read weights-only (never
unpickled), with the key clean-up RobustBench applies (``module.``/``model.`` removed; ImageNet models get
a ``model.`` prefix for their normalisation wrapper).

RobustBench's published clean and AutoAttack accuracies are kept as data in ``robustbench_results.json``
(each row with the file it was copied from); :func:`published_result` returns a model's row for the report.

Installing: ``pip install 'advlab[robustbench]'`` (the model zoo's and the downloader's own dependencies) and
``pip install --no-deps robustbench``. Without ``--no-deps`` robustbench 1.1 pins ``timm==1.0.9`` (a downgrade
that changes timm models' preprocessing) and ``gdown==5.1.0``. Its ``robustbench/__init__.py`` imports the
evaluation code, which imports ``autoattack`` (a module no PyPI distribution provides: PyPI's ``pyautoattack``
installs ``pyautoattack``) and ``pkg_resources`` (gone from setuptools 81); the model zoo and the downloader need
neither, so :func:`robustbench_module` imports them without running that file when it fails (see there).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import json
import os
import sys
import warnings
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any

from advlab.errors import UsageError
from advlab.models.classifier import ImageClassifier
from advlab.models.weights import WeightsNotFoundError, load_state_dict_file, load_state_dict_strict, may_download

PREFIX = "robustbench:"
DATASETS = {"cifar10": (3, 32, 32), "cifar100": (3, 32, 32), "imagenet": (3, 224, 224)}
THREATS = ("Linf", "L2", "corruptions")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
INSTALL = "pip install 'advlab[robustbench]' && pip install --no-deps robustbench"


def robustbench_module(name: str, package: str = "robustbench") -> ModuleType:
    """``robustbench.<name>`` (``model_zoo.models``, ``utils``), imported even where ``import robustbench`` fails.

    The plain import comes first. When it fails on a missing module that is not the package's own (robustbench
    1.1's ``__init__.py`` imports ``autoattack`` and ``pkg_resources``, which the model zoo never uses), the
    package is entered once more as a bare package object built from its import spec (its ``__path__``, its
    ``__init__.py`` not executed) just while ``robustbench.<name>`` is imported, then taken out of
    ``sys.modules`` again: ``import robustbench`` elsewhere fails as it did before, and the submodules stay
    imported, as Python leaves them after any failed package import. A module the submodule itself needs
    (``geotorch``, ``gdown``) still raises ``ModuleNotFoundError`` naming it; so does the package not installed.
    ``package`` is the package's name (another only in tests).
    """
    full = f"{package}.{name}"
    with warnings.catch_warnings():  # robustbench's architectures import timm's deprecated module paths
        warnings.filterwarnings("ignore", message="Importing from timm.models", category=FutureWarning)
        try:
            return importlib.import_module(full)
        except ModuleNotFoundError as err:
            if err.name is None or err.name == package or err.name.startswith(f"{package}."):
                raise
        spec = importlib.util.find_spec(package)
        if spec is None or spec.submodule_search_locations is None:
            raise ModuleNotFoundError(f"No module named {package!r}", name=package)
        bare = importlib.util.module_from_spec(spec)
        sys.modules[package] = bare
        try:
            return importlib.import_module(full)
        finally:
            if sys.modules.get(package) is bare:
                del sys.modules[package]


def parse(spec: str) -> tuple[str, str, str]:
    """``cifar10/Linf/NAME`` as (dataset, threat model, name); a UsageError naming the expected form."""
    parts = spec.split("/")
    if len(parts) != 3 or parts[0] not in DATASETS or parts[1] not in THREATS or not parts[2]:
        raise UsageError(
            f"robustbench model {spec!r} must be DATASET/THREAT/NAME with DATASET one of {', '.join(DATASETS)} and "
            f"THREAT one of {', '.join(THREATS)}, e.g. robustbench:cifar10/Linf/Carmon2019Unlabeled"
        )
    return parts[0], parts[1], parts[2]


def zoo_entry(dataset: str, threat: str, name: str) -> dict[str, Any]:
    """The robustbench package's model-zoo entry (``model`` builder, ``gdrive_id``)."""
    try:
        zoo = robustbench_module("model_zoo.models")
    except ImportError as err:
        raise UsageError(f"robustbench models need the robustbench package ({err}); install it: {INSTALL}") from err
    table = zoo.model_dicts[zoo.BenchmarkDataset(dataset)][zoo.ThreatModel(threat)]
    if name not in table:
        close = difflib.get_close_matches(name, list(table), n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UsageError(
            f"{name!r} is not in RobustBench's {dataset}/{threat} table{hint}; it has {len(table)} models "
            "(robustbench.model_zoo.models.model_dicts)"
        )
    return dict(table[name])


def load_robustbench(
    spec: str, user_file: Path | None, model_dir: str | Path | None, download: bool | None
) -> ImageClassifier:
    """``robustbench:DATASET/THREAT/NAME`` as an ImageClassifier (see the module docstring)."""
    dataset, threat, name = parse(spec[len(PREFIX) :] if spec.startswith(PREFIX) else spec)
    entry = zoo_entry(dataset, threat, name)
    if isinstance(entry.get("gdrive_id"), list):
        raise UsageError(f"{name} is an ensemble of {len(entry['gdrive_id'])} checkpoints; advlab loads single models")
    path = user_file or Path(model_dir or "models").expanduser() / dataset / threat / f"{name}.pt"
    if user_file is None and not path.is_file():
        if not entry.get("gdrive_id") or not may_download(download, "https://drive.google.com"):
            raise WeightsNotFoundError(
                f"RobustBench checkpoint {path} not found; put {name}.pt there (RobustBench's model directory "
                "layout), pass --weights FILE, or allow downloads"
            )
        download_checkpoint(entry["gdrive_id"], path)
    backbone = entry["model"]()
    state = load_state_dict_file(path)
    state = {k.replace("module.", "", 1) if k.startswith("module.") else k: v for k, v in state.items()}
    state = {k[len("model.") :] if k.startswith("model.") else k: v for k, v in state.items()}
    if dataset == "imagenet":
        state = {f"model.{k}": v for k, v in state.items()}
    load_state_dict_strict(backbone, state, source=f"{path} (RobustBench {dataset}/{threat}/{name})")
    size = DATASETS[dataset]
    n = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}[dataset]
    if dataset == "imagenet":
        from advlab.data.imagenet import imagenet_class_names

        classes: list[str] = imagenet_class_names()
    else:
        classes = list(CIFAR10_CLASSES) if n == 10 else [str(i) for i in range(n)]
    return ImageClassifier(
        backbone.eval(),
        mean=(0.0,) * 3,
        std=(1.0,) * 3,
        input_size=size,
        class_names=classes,
        resize_size=256 if dataset == "imagenet" else 32,
        crop_size=size[1],
        interpolation="bilinear",
        name=f"{PREFIX}{dataset}/{threat}/{name}",
        source=f"robustbench {dataset}/{threat}/{name} ({path})",
    )


def download_checkpoint(gdrive_id: str, path: Path) -> None:
    """Fetch a checkpoint with robustbench's own downloader (``robustbench.utils.download_gdrive_new``, gdown, as
    ``robustbench.utils.load_model`` does) into ``path.part``, renamed to ``path`` only when complete, so an
    interrupted download never leaves a truncated checkpoint where the next run would read it."""
    try:
        utils = robustbench_module("utils")
    except ImportError as err:
        raise UsageError(f"downloading RobustBench checkpoints needs {err.name} ({err}); install: {INSTALL}") from err
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    try:
        utils.download_gdrive_new(gdrive_id, part)
        if not part.is_file():
            raise WeightsNotFoundError(f"robustbench's downloader wrote no {path.name} (gdrive id {gdrive_id})")
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)


def published_result(model: str) -> dict[str, Any] | None:
    """RobustBench's published row (architecture, eps, clean_acc, autoattack_acc in %, source) for a model name
    ``robustbench:DATASET/THREAT/NAME``, or ``None`` when it is not a RobustBench model or not in the table."""
    if not model.startswith(PREFIX):
        return None
    text = resources.files("advlab.models").joinpath("robustbench_results.json").read_text()
    row = json.loads(text)["models"].get(model[len(PREFIX) :])
    return None if row is None else dict(row)
