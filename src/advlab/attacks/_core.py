"""Pieces every attack shares: input checks, the model guard, objectives, norm geometry, per-sample noise.

The split follows Foolbox 3: what counts as success and what is maximised (``objective``, ``is_success``)
is kept apart from how an attack searches, and the norm-specific pieces (random start, step direction,
projection) are written once in :class:`Geometry` so that every iterative attack uses the same ones.
"""

from __future__ import annotations

import copy
import math
import numbers
import os
import sys
import warnings
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Norm = Literal["linf", "l2"]
LossName = Literal["ce", "margin"]
Forward = Callable[[Tensor], Tensor]  # the model, or what an attack calls in its place (ModelCall)
NORMS: tuple[str, ...] = ("linf", "l2")
LOSSES: tuple[str, ...] = ("ce", "margin")


@dataclass(frozen=True)
class AttackResult:
    """What an attack returns when called with ``return_info=True``.

    Attributes:
        x_adv: the adversarial batch, same shape, dtype and device as the input.
        success: bool tensor (N,): the model's top-1 at ``x_adv`` is not the true class (untargeted) or is
            the target (targeted). For CW the success test includes the confidence margin ``kappa``.
        loss: per-sample value of the attack's objective at ``x_adv`` (higher is stronger), when defined.
        extras: attack-specific per-sample tensors (e.g. CW's ``l2`` and final ``c``).
    """

    x_adv: Tensor
    success: Tensor
    loss: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------- checks


def check_images(x: object) -> Tensor:
    """``x`` detached from any graph if it is a finite float32/float64 batch in [0, 1]; never clip silently.

    Also refuses to run inside ``torch.inference_mode()``, where no input gradient can be taken.
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "advlab attacks need autograd (input gradients) and cannot run inside torch.inference_mode(); "
            "call the attack outside it (torch.no_grad() around it is fine)"
        )
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor of images in [0, 1], got {type(x).__name__}")
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(
            f"x must be a float32 or float64 tensor of images in [0, 1], got dtype {x.dtype}"
            + (
                "; attack in float32 and let the model use autocast inside its forward for half precision"
                if x.is_floating_point()
                else ""
            )
        )
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch shaped (N, C, H, W) (any N >= 1), got shape {tuple(x.shape)}")
    # One host sync for all three facts.
    lo, hi, finite = torch.stack([x.min(), x.max(), torch.isfinite(x).all().to(x.dtype)]).tolist()
    if not finite:
        raise ValueError("x contains NaN or inf; expected finite pixel values in [0, 1]")
    if lo < 0 or hi > 1:
        raise ValueError(
            f"x must lie in [0, 1] (raw pixels, before normalisation), got min {lo:.6g} and max {hi:.6g}; "
            "put the mean/std normalisation inside the model (advlab.models.ImageClassifier) instead of in x"
        )
    # A tensor made under inference_mode cannot enter autograd; a clone made here can.
    return x.clone() if x.is_inference() else x.detach()


def check_labels(y: object, n: int, device: torch.device) -> tuple[Tensor, int]:
    """Return ``y`` as int64 on ``device`` and its largest value (checked against the model's classes later)."""
    if not isinstance(y, Tensor):
        raise TypeError(f"y must be a torch.Tensor of class indices, got {type(y).__name__}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"y must hold integer class indices (e.g. torch.int64), got dtype {y.dtype}")
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"y must have shape ({n},), one class index per image in x, got shape {tuple(y.shape)}")
    lo, hi = (int(v) for v in torch.stack([y.min(), y.max()]).tolist())
    if lo < 0:
        raise ValueError(f"y holds class index {lo}; class indices must be >= 0")
    return y.to(device=device, dtype=torch.long), hi


def check_logits(logits: Tensor, n: int, y_max: int) -> None:
    """Raise unless the model output is (N, classes) and every label is a valid class. No host sync."""
    if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != n:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"the model must return logits shaped (N, classes) = ({n}, K), got {shape}")
    if logits.shape[1] < 2:
        raise ValueError(f"the model must return at least 2 class logits per image, got {logits.shape[1]}")
    if y_max >= logits.shape[1]:
        raise ValueError(
            f"y (the labels) holds class index {y_max} but the model has {logits.shape[1]} classes "
            f"(valid: 0..{logits.shape[1] - 1}); are the labels meant for another model?"
        )


def per_sample(value: float | Tensor, n: int, name: str, like: Tensor, *, strictly_positive: bool) -> Tensor:
    """Turn a scalar or (N,) tensor parameter into a checked (N,) tensor on ``like``'s device and dtype."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real | Tensor):
        raise TypeError(f"{name} must be a number or a tensor of shape ({n},), got {type(value).__name__}")
    if isinstance(value, Tensor):
        value = value.detach()
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if t.ndim == 0:
        t = t.expand(n)
    elif t.shape != (n,):
        raise ValueError(f"{name} must be a number or a tensor of shape ({n},), got shape {tuple(t.shape)}")
    lo = float(t.min()) if t.numel() else 0.0
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite, got {value}")
    if strictly_positive and lo <= 0:
        raise ValueError(f"{name} must be > 0, got {lo:.6g}")
    if lo < 0:
        raise ValueError(f"{name} must be >= 0, got {lo:.6g}")
    return t


def _outside_advlab() -> int:
    """The ``stacklevel`` that makes a warning raised by the caller point at the first frame outside advlab."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame, level = sys._getframe(2), 2  # level 1 is the caller of this function, the one that warns
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package + os.sep):
        frame, level = frame.f_back, level + 1
    return level


def check_eps(eps: float | Tensor, n: int, like: Tensor, norm: str) -> Tensor:
    """:func:`per_sample` for the budget; an Linf eps above 1 (the whole [0, 1] box) is almost always a budget
    meant for pixels in [0, 255] (8 for 8/255), so it is warned about."""
    eps_t = per_sample(eps, n, "eps", like, strictly_positive=False)
    if norm != "linf":
        return eps_t
    largest = float(eps_t.max()) if isinstance(eps, Tensor) else float(eps)
    if largest > 1:
        warnings.warn(
            f"Linf eps {largest:.6g} > 1 allows any image in [0, 1]; eps is in pixel units of images "
            "in [0, 1] (8/255 = 0.0314, not 8)",
            UserWarning,
            stacklevel=_outside_advlab(),
        )
    return eps_t


def check_steps(steps: object, name: str = "steps") -> int:
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"{name} must be an int >= 1, got {type(steps).__name__}")
    if steps < 1:
        raise ValueError(f"{name} must be >= 1, got {steps}")
    return steps


def check_positive(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number > 0, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return float(value)


def check_choice(value: object, name: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(map(repr, choices))}")
    return str(value)


def check_model(model: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be a torch.nn.Module mapping images in [0, 1] to logits, got {type(model).__name__}"
        )
    return model


def batch_view(t: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample (N,) tensor so it broadcasts against a batch shaped like ``x``."""
    return t.view(-1, *([1] * (x.ndim - 1)))


# ------------------------------------------------------------------------------------------ model guard


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode with parameters that need no gradient, then restore both exactly.

    Freezing the parameters is what makes an attack cost one forward and one input-gradient backward:
    autograd then never computes (or stores into ``.grad``) the weight gradients. Each submodule's own
    mode is restored, so a model that mixes train and eval submodules comes back as it was.
    """
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in grads:
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            yield model
    finally:
        for m, mode in modes:
            m.training = mode
        for p, req in grads:
            p.requires_grad_(req)


# ------------------------------------------------------------------------------------ the prepared copy

# A context variable, not a module global: switching it off in one thread (or asyncio task) leaves the others alone.
_prepare_models: ContextVar[bool] = ContextVar("advlab_prepare_models", default=True)
PREPARE_MIN_PASSES = 4  # below this many passes an attack does not rebuild a stale prepared copy


@contextmanager
def prepared_models(enabled: bool) -> Iterator[None]:
    """Switch the prepared copy (see :func:`prepared_model`) on or off for the attacks run inside; on by default.

    Off, attacks call the model's own modules (only the memory layout of the batch may change, see
    :class:`ModelCall`), at 1.3-1.5x the cost per pass on EfficientNet-Lite0 and 1.4x on the Fashion-MNIST
    CNN (CPU, one thread).
    """
    token = _prepare_models.set(bool(enabled))
    try:
        yield
    finally:
        _prepare_models.reset(token)


_prepared_cache: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[object, ...], nn.Module | None]] = (
    weakref.WeakKeyDictionary()
)


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_PLAIN = (bool, int, float, str, type(None))


def _plain(v: object) -> bool:
    """A setting such as ``eps``, ``momentum``, ``stride=(1, 1)`` or ``padding='same'``."""
    return isinstance(v, _PLAIN) or (isinstance(v, tuple) and all(isinstance(e, _PLAIN) for e in v))


def _has_hooks(model: nn.Module) -> bool:
    """Whether any submodule has a forward or backward hook (the module-global ones included)."""
    from torch.nn.modules import module as _module

    global_hooks = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks")
    return any(getattr(_module, name, None) for name in global_hooks) or any(
        getattr(m, name, None) for m in model.modules() for name in _HOOK_DICTS
    )


def _checksums(tensors: Sequence[Tensor]) -> list[int]:
    """Per tensor, the int64 sum of its bit patterns: any realistic write changes it (one host sync per device)."""
    sums: dict[torch.device, list[Tensor]] = {}
    for t in tensors:
        t = t.detach()
        if t.is_complex():
            t = torch.view_as_real(t)
        if t.is_floating_point():
            t = t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])
        sums.setdefault(t.device, []).append(t.sum(dtype=torch.int64))
    return [v for parts in sums.values() for v in torch.stack(parts).tolist()]


def _state_signature(model: nn.Module) -> tuple[object, ...]:
    """What the prepared copy was built from: the modules, their plain settings, and the tensors' contents.

    Contents, not ``_version`` counters: fused optimisers and writes through ``.data`` change weights without
    bumping them. The module tree (ids and types) catches a swapped submodule such as ``m.act = nn.Tanh()``,
    the plain attributes a changed setting such as ``bn.eps`` or a conv's padding.
    """
    tensors = [*model.parameters(), *model.buffers()]
    layout = tuple((id(t), t.data_ptr(), t.device, t.dtype, tuple(t.shape)) for t in tensors)
    settings = tuple(
        (id(m), type(m), tuple((k, v) for k, v in vars(m).items() if _plain(v) and k != "training"))
        for m in model.modules()
    )
    return layout, settings, tuple(_checksums(tensors))


def _foldable_norm(m: nn.Module) -> bool:
    if not isinstance(m, nn.BatchNorm2d) or m.training or m.running_mean is None or m.running_var is None:
        return False
    # timm's BatchNormAct2d is BN followed by its own ``drop`` and ``act``: those stay after folding.
    return type(m) is nn.BatchNorm2d or (
        isinstance(getattr(m, "drop", None), nn.Module) and isinstance(getattr(m, "act", None), nn.Module)
    )


def _conv_norm_pairs(model: nn.Module, x: Tensor) -> list[tuple[str, str]]:
    """(conv, norm) module names where the norm's input is the conv's output, untouched in between.

    Found by running one sample with hooks; modules called more than once are left alone (weight sharing).
    The caller still checks the folded copy against the model, which catches a conv output used elsewhere.
    """
    names = {m: name for name, m in model.named_modules()}
    calls: Counter[str] = Counter()
    produced: dict[int, tuple[str, Tensor, int]] = {}
    pairs: dict[str, str] = {}

    def after_conv(m: nn.Module, _inp: object, out: Tensor) -> None:
        calls[names[m]] += 1
        produced[id(out)] = (names[m], out, out._version)

    def before_norm(m: nn.Module, inp: tuple[Tensor, ...]) -> None:
        calls[names[m]] += 1
        src = produced.get(id(inp[0])) if inp else None
        if src is not None and src[1] is inp[0] and src[2] == inp[0]._version:
            pairs[names[m]] = src[0]

    hooks = [
        m.register_forward_hook(after_conv) if isinstance(m, nn.Conv2d) else m.register_forward_pre_hook(before_norm)
        for m in model.modules()
        if isinstance(m, nn.Conv2d) or _foldable_norm(m)
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    norms_per_conv = Counter(pairs.values())
    return [
        (conv, norm)
        for norm, conv in pairs.items()
        if calls[norm] == 1 and calls[conv] == 1 and norms_per_conv[conv] == 1
    ]


def _fold_into(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> None:
    """Rewrite ``conv`` in place to compute ``norm(conv(x))`` (eval mode), in float64 then cast back."""
    # y = gamma * (W x + b - mean) / sqrt(var + eps) + beta
    scale = norm.running_var.double().add(norm.eps).rsqrt()
    if norm.weight is not None:
        scale = scale * norm.weight.double()
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    bias = (bias - norm.running_mean.double()) * scale
    if norm.bias is not None:
        bias = bias + norm.bias.double()
    w = conv.weight.double() * scale.view(-1, *([1] * (conv.weight.ndim - 1)))
    conv.weight = nn.Parameter(w.to(conv.weight.dtype), requires_grad=False)
    conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)


def _relu_pool_pairs(model: nn.Module) -> list[tuple[str, int]]:
    """(Sequential name, index) of each ``ReLU`` directly followed by a ``MaxPool2d`` in a plain Sequential.

    max-pooling commutes with ReLU (both are monotone: max_i relu(a_i) = relu(max_i a_i)), and the
    gradient agrees too (both route to the window's first maximum, and relu' is 0 there exactly when the
    whole window is <= 0), so pooling first runs the ReLU, forward and backward, on a quarter of the
    elements. Only in an ``nn.Sequential`` whose forward is the plain chain (a hooked model is never copied).
    """
    found: list[tuple[str, int]] = []
    for name, seq in model.named_modules():
        if type(seq) is not nn.Sequential:
            continue
        mods = list(seq)
        for i in range(len(mods) - 1):
            relu, pool = mods[i], mods[i + 1]
            if type(relu) is nn.ReLU and type(pool) is nn.MaxPool2d and not pool.return_indices:
                found.append((name, i))
    return found


def _channels_last_path(model: nn.Module, x: Tensor) -> bool:
    """Whether oneDNN's channels-last convolutions apply: a 4-D float32 CPU batch into a network with Conv2d."""
    return (
        x.ndim == 4
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and any(isinstance(m, nn.Conv2d) for m in model.modules())
    )


def _prepare(model: nn.Module, x: Tensor) -> nn.Module | None:
    """A frozen copy of ``model`` that is cheaper per pass, or None when nothing would change or it fails."""
    probe = x[:2].detach()
    pairs = _conv_norm_pairs(model, probe[:1]) if any(_foldable_norm(m) for m in model.modules()) else []
    # Channels-last weights: on a one-channel batch the batch's own layout cannot carry channels-last into
    # the network (both layouts are the same strides), so without them every convolution runs NCHW; with
    # three channels the batch carries it and the weights only save oneDNN's reorder of them at every call.
    relayout = _channels_last_path(model, x)
    if not pairs and not (relayout and x.shape[1] == 1):
        return None
    prepared = copy.deepcopy(model)
    modules = dict(prepared.named_modules())
    for seq_name, i in _relu_pool_pairs(prepared):
        seq = modules[seq_name]
        assert isinstance(seq, nn.Sequential)
        seq[i], seq[i + 1] = seq[i + 1], seq[i]
    with torch.no_grad():
        for conv_name, norm_name in pairs:
            conv, norm = modules[conv_name], modules[norm_name]
            assert isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d)
            _fold_into(conv, norm)
            parent_name, _, attr = norm_name.rpartition(".")
            after: nn.Module = (
                nn.Identity() if type(norm) is nn.BatchNorm2d else nn.Sequential(norm.drop, norm.act)  # type: ignore[arg-type]
            )
            setattr(modules[parent_name] if parent_name else prepared, attr, after)
        if relayout:
            prepared.to(memory_format=torch.channels_last)
        for p in prepared.parameters():
            p.requires_grad_(False)
        prepared.eval()
        want, got = model(probe), prepared(probe)
    # The rewrites change only float rounding; anything more means a conv output fed something besides its norm.
    tol = 1e-4 * float(want.abs().max()) + 1e-5
    if want.shape != got.shape or not bool(((want - got).abs() <= tol).all()):
        return None
    return prepared


def prepared_model(model: nn.Module, x: Tensor, passes: int = PREPARE_MIN_PASSES) -> nn.Module:
    """``model``, or its cached prepared copy: the same function up to float rounding, cheaper per pass.

    Three rewrites, as inference engines do them:

    - BN folding. An eval-mode BatchNorm2d is a per-channel affine map, so after a convolution it can be
      folded into the convolution's weights and bias: forward and backward then skip two memory-bound passes
      over every activation (CPU, one thread, forward + input gradient: EfficientNet-Lite0 in 0.66-0.77x the
      time, ResNet-50 in 0.86-0.95x; benchmarks/prepared_model.py). Only a BatchNorm2d whose input is a
      Conv2d's output, untouched in between, each module called once, is folded.
    - Channels-last weights (CPU, float32 batch): oneDNN runs convolutions faster in NHWC. A batch of three
      or more channels is reordered by :class:`ModelCall` and the layout propagates, but a one-channel batch
      looks the same in both layouts, so a network such as the Fashion-MNIST CNN ran NCHW throughout; its
      copy with channels-last weights runs in about 0.7x the time. In a copy that is made anyway (BN folding)
      they also save oneDNN's per-call weight reorder (EfficientNet-Lite0: a further 0.90-0.94x). A
      BN-free model fed three channels (VGG) is not copied: there it gains about 1% for a second copy of
      its weights.
    - ReLU then max-pooling becomes max-pooling then ReLU (the same function and gradient, see
      :func:`_relu_pool_pairs`): on the Fashion-MNIST CNN the ReLUs were a fifth of a step.

    The copy is checked against the model on two samples of the batch (logits within 1e-4 of their scale)
    and dropped if it differs, so a graph the hooks misread (a conv output also used elsewhere) falls back to
    the model as given. It is cached per model and rebuilt when the model changes: any parameter or buffer's
    contents (an optimiser step, fused or not, a write through ``.data``), a submodule swapped or a plain
    setting changed (:func:`_state_signature`). A model with forward or backward hooks is never copied.
    Building it costs a copy and three passes over one or two samples. The first attack on a model builds it
    (later calls reuse it); a rebuild after the weights changed happens only for an attack of at least
    ``PREPARE_MIN_PASSES`` passes (``passes``), so FGSM inside a training loop, whose model changes at every
    step, runs the model as given while PGD-10 there still gains.
    """
    if not _prepare_models.get() or _has_hooks(model):
        # A hooked model runs as given: its hooks see the user's modules (a copy would run copies of the hooks,
        # and a hook that holds the model would keep the cached copy, and so the model, alive for ever).
        return model
    signature = _state_signature(model)
    cached = _prepared_cache.get(model)
    if cached is not None and cached[0] == signature:
        return cached[1] or model
    if cached is not None and passes < PREPARE_MIN_PASSES:
        # The weights changed since the last build (a training loop): a short attack would not repay a rebuild.
        return model
    try:
        prepared = _prepare(model, x)
    except Exception:  # a model the rewrite cannot copy, hook or run is attacked as given
        prepared = None
    _prepared_cache[model] = (signature, prepared)
    return prepared or model


class ModelCall:
    """Call the model with the batch in the memory layout its convolutions run fastest in.

    On the CPU, oneDNN convolutions run 15-25% faster on channels-last (NHWC) input than on NCHW, forward
    and backward alike (EfficientNet-Lite0, batch 8-16, measured by benchmarks/compare_peers.py), and the
    layout then propagates through the network. So a 4-D float32 CPU batch fed to a model with ``nn.Conv2d``
    layers is reordered to channels-last before each call; the reorder is a differentiable copy, so the
    gradient still reaches the caller's tensor, and the model itself is not touched. Values are identical;
    logits and gradients change only by float rounding (a different summation order inside the convolutions).
    A model that cannot take a channels-last tensor (e.g. one that ``view``s its activations) raises on the
    first call; that call is then repeated in the caller's layout, which is used from then on.

    The first call also swaps in the prepared copy of the model (:func:`prepared_model`) when there is one;
    ``passes`` is about how many model passes the attack will make (it decides whether building one pays).
    """

    def __init__(self, model: nn.Module, x: Tensor, passes: int) -> None:
        self.model = model
        self.passes = passes
        # One channel: both layouts have the same strides, nothing to reorder (the prepared copy's weights carry it).
        self.layout: torch.memory_format | None = (
            torch.channels_last if _channels_last_path(model, x) and x.shape[1] > 1 else None
        )
        self._first = True

    def __call__(self, x: Tensor) -> Tensor:
        if not self._first:
            return self.model(x if self.layout is None else x.contiguous(memory_format=self.layout))
        self._first = False
        # Here, not in __init__: the attack has put the model in eval mode by now (frozen()).
        self.model = prepared_model(self.model, x, self.passes)
        try:
            return self._first_call(x)
        except RuntimeError as e:
            dtypes = sorted({str(p.dtype) for p in self.model.parameters() if p.is_floating_point()})
            if dtypes and str(x.dtype) not in dtypes:  # torch's own message names neither side's role
                raise TypeError(
                    f"x is {x.dtype} but the model's parameters are {', '.join(dtypes)}; give x in the model's "
                    f"dtype (x.to({dtypes[0]})) or convert the model"
                ) from e
            raise

    def _first_call(self, x: Tensor) -> Tensor:
        if self.layout is None:
            return self.model(x)
        try:
            return self.model(x.contiguous(memory_format=self.layout))
        except RuntimeError:
            self.layout = None
            return self.model(x)


# ------------------------------------------------------------------------------------------- objectives


def margin(logits: Tensor, labels: Tensor) -> Tensor:
    """max_{i != label} Z_i - Z_label per sample: positive exactly when ``label`` is not the top-1 class.

    This is the margin of Carlini & Wagner (2017), objective f_6, with the sign that makes it grow as the
    sample moves away from ``label``.
    """
    z_label = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return others.amax(dim=1) - z_label


# Float rounding differs between equal computations (batch size, memory layout, thread count, the prepared copy
# against the model as given) by about 1e-6 of the logits' scale. A point whose margin clears the boundary by
# less than this fraction of the largest |logit| could flip back when the caller re-evaluates it.
ROUNDING_SLACK = 1e-4


def rounding_slack(logits: Tensor) -> Tensor:
    """Per-sample margin (logit units) a point must clear the boundary by to count as past it for sure."""
    return ROUNDING_SLACK * logits.detach().abs().amax(dim=1)


def objective(logits: Tensor, labels: Tensor, loss: str, targeted: bool) -> Tensor:
    """Per-sample value the attack ascends: the loss of the true class, or minus the loss of the target.

    Per-sample (no batch mean) so that the gradient of ``objective(...).sum()`` w.r.t. sample i depends on
    sample i alone.
    """
    value = F.cross_entropy(logits, labels, reduction="none") if loss == "ce" else margin(logits, labels)
    return -value if targeted else value


def is_success(logits: Tensor, labels: Tensor, targeted: bool) -> Tensor:
    pred = logits.argmax(dim=1)
    return pred == labels if targeted else pred != labels


# ------------------------------------------------------------------------------------- per-sample noise


class Noise:
    """Random numbers drawn per sample, so that a sample's random start depends on its seed, not its batch.

    With ``seed=None`` the global torch generator is used (fast, not batch-independent). With an int, sample i
    of the batch gets seed ``seed + i``; with an int64 tensor of shape (N,) (e.g. dataset indices), sample i
    gets ``seed[i]``. Seeded draws are made on the CPU and then moved, so a seeded start is the same on
    every device.
    """

    def __init__(self, seed: int | Tensor | None, n: int) -> None:
        self.generators: list[torch.Generator] | None
        if seed is None:
            self.generators = None
            return
        if isinstance(seed, bool) or not isinstance(seed, int | Tensor):
            raise TypeError(f"seed must be None, an int, or an int64 tensor of shape ({n},), got {type(seed).__name__}")
        if isinstance(seed, int):
            seeds = [seed + i for i in range(n)]
        else:
            if seed.is_floating_point() or seed.shape != (n,):
                raise ValueError(
                    f"a seed tensor must hold {n} integers (one per sample), got {seed.dtype} {tuple(seed.shape)}"
                )
            seeds = [int(s) for s in seed.tolist()]
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]

    def subset(self, index: Tensor) -> Noise:
        """The generators of the samples at ``index`` (their streams continue where they were)."""
        sub = Noise(None, 0)
        if self.generators is not None:
            sub.generators = [self.generators[i] for i in index.tolist()]
        return sub

    def _draw(self, like: Tensor, kind: str) -> Tensor:
        if self.generators is None:
            return torch.rand_like(like) if kind == "uniform" else torch.randn_like(like)
        fn = torch.rand if kind == "uniform" else torch.randn
        shape = like.shape[1:]
        cpu = torch.stack([fn(shape, generator=g, dtype=torch.float64) for g in self.generators])
        return cpu.to(device=like.device, dtype=like.dtype)

    def uniform(self, like: Tensor) -> Tensor:
        return self._draw(like, "uniform")

    def normal(self, like: Tensor) -> Tensor:
        return self._draw(like, "normal")


# ------------------------------------------------------------------------------------------ geometries


def flat_norm(t: Tensor, p: float) -> Tensor:
    return t.flatten(1).norm(p=p, dim=1)


# Fixed-point iterations of the L2 projection onto ball ∩ box (Geometry.project_); each costs about four
# elementwise passes over the batch, far below a forward pass.
L2_PROJECTION_ITERATIONS = 3


@dataclass(frozen=True)
class Geometry:
    """The norm-specific pieces of a first-order attack, written once (the Foolbox 3 split)."""

    name: str

    def norm(self, delta: Tensor) -> Tensor:
        return flat_norm(delta, math.inf if self.name == "linf" else 2.0)

    def random_start(self, x: Tensor, eps: Tensor, noise: Noise) -> Tensor:
        """A point drawn uniformly from the eps-ball around x, then put back in the [0, 1] box."""
        e = batch_view(eps, x)
        if self.name == "linf":
            delta = (2 * noise.uniform(x) - 1) * e
        else:
            # Uniform in the L2 ball: a Gaussian direction, radius eps * u^(1/d).
            direction = noise.normal(x)
            direction = direction / batch_view(flat_norm(direction, 2.0).clamp_min(1e-12), x)
            d = x[0].numel()
            radius = noise.uniform(x[:, :1].flatten(1)[:, :1]).view(-1) ** (1.0 / d)
            delta = direction * batch_view(radius, x) * e
        return (x + delta).clamp_(0, 1)

    def ascent_step_(self, grad: Tensor, alpha: Tensor) -> Tensor:
        """Turn ``grad`` in place into the steepest-ascent step of size alpha for this norm.

        Linf: alpha * sign(grad) (Goodfellow et al. 2014, eq. (2)); L2: alpha * grad / ||grad||_2.
        """
        a = batch_view(alpha, grad)
        if self.name == "linf":
            return grad.sign_().mul_(a)
        return grad.mul_(a / batch_view(flat_norm(grad, 2.0).clamp_min(1e-12), grad))

    def project_(self, x_adv: Tensor, x: Tensor, eps: Tensor, box: tuple[Tensor, Tensor] | None) -> Tensor:
        """Project ``x_adv`` in place onto the eps-ball around x intersected with [0, 1].

        Linf: the two constraints are one clamp to precomputed bounds (``box``), which is exact.

        L2: the Euclidean projection of p = x + d onto {||z - x||_2 <= eps} ∩ [0, 1]^n is, from the KKT
        conditions of min ||z - p||^2 (one multiplier for the ball, and the box separable per coordinate),
        z(t) = clip(x + t d, 0, 1) with t in [0, 1] the largest such that ||z(t) - x||_2 <= eps. Scaling d to
        the ball and then clipping (t = eps / ||d||, the usual shortcut, AutoAttack's and Foolbox's) leaves the
        point inside the ball whenever a coordinate is clipped, wasting budget on images with saturated pixels.
        t is found by the fixed point t <- t * eps / ||z(t) - x||_2 from the shortcut's t: ||z(t) - x|| / t
        does not increase with t, so every iterate stays feasible and grows monotonically towards the root.
        On the Fashion-MNIST CNNs two iterations already gave PGD-L2 the same per-seed robust accuracy as a
        bisection to 2^-30; against the shortcut, PGD-L2 leaves about 2 fewer of ~900 samples standing and
        APGD-L2 up to 15 fewer (docs/benchmarks.md, benchmarks/l2_projection.py).
        """
        if self.name == "linf":
            assert box is not None
            return torch.clamp(x_adv, box[0], box[1], out=x_adv)
        d = x_adv.sub_(x)
        t = (eps / flat_norm(d, 2.0).clamp_min(1e-30)).clamp_(max=1.0)
        for _ in range(L2_PROJECTION_ITERATIONS):
            reached = flat_norm(torch.addcmul(x, batch_view(t, d), d).clamp_(0, 1).sub_(x), 2.0)
            t = (t * eps / reached.clamp_min(1e-30)).clamp_(max=1.0)
        return d.mul_(batch_view(t, d)).add_(x).clamp_(0, 1)

    def box(self, x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor] | None:
        if self.name != "linf":
            return None
        e = batch_view(eps, x)
        return (x - e).clamp_(0, 1), (x + e).clamp_(0, 1)


GEOMETRIES: dict[str, Geometry] = {name: Geometry(name) for name in NORMS}
