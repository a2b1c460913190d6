"""An explicit, optional speed step: a frozen copy of a model that computes the same function, cheaper per pass.

Attacks call the model they are given and nothing else. Whoever runs many attack passes on one fixed model (the
evaluation engine, ``advlab eval``, ``advlab reproduce``, the inner maximisation of adversarial training) may
call :func:`prepare` once and attack the result; what it did is recorded (:func:`preparation_record`). Nothing
is cached: calling it twice gives two copies, and a model changed after preparation must be prepared again.

The rewrites are the ones inference engines make:

- BN folding. An eval-mode ``BatchNorm2d`` is a per-channel affine map, so after a convolution it folds into the
  convolution's weights and bias: forward and backward skip two memory-bound passes over every activation. Only
  a ``BatchNorm2d`` whose input is a ``Conv2d``'s output, untouched in between, each module called once, is
  folded (found by running the example with hooks on the copy).
- ReLU then max-pooling becomes max-pooling then ReLU in a plain ``nn.Sequential`` (the same function and
  gradient, see :func:`_relu_pool_pairs`): the ReLU then runs on a quarter of the elements.
- Channels-last on the CPU. oneDNN runs convolutions faster in NHWC: a batch of three or more channels is
  reordered on entry (the layout then propagates through the network; the reorder is a differentiable copy, so
  input gradients reach the caller's tensor), and a copy that is made anyway, or a one-channel network (whose
  batch looks the same in both layouts and so cannot carry the layout in), gets channels-last weights.

The copy is checked against the model on two samples of the example batch (logits within 1e-4 of their scale)
and not used if it differs. Values change only by float rounding (another summation order inside the
convolutions); docs/benchmarks.md (``benchmarks/prepared_model.py``) measures what it saves.
"""

from __future__ import annotations

import copy
from collections import Counter

import torch
from torch import Tensor, nn

PROBE_SAMPLES = 2  # samples of the example batch the copy is verified on
TOLERANCE = 1e-4  # allowed |logit difference| as a fraction of the largest |logit| (float rounding only)

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


class PreparedModel(nn.Module):
    """The result of :func:`prepare`: a frozen, eval-mode inference module.

    ``module`` is the rewritten copy (never the caller's own modules); ``changes`` names what was done. Training
    it would train a copy (or a folded network), so ``train(True)`` is refused: prepare the model again after
    its weights change.
    """

    def __init__(self, module: nn.Module, changes: tuple[str, ...], input_layout: torch.memory_format | None) -> None:
        super().__init__()
        self.module = module
        self.changes = changes
        self.input_layout = input_layout
        self.training = False

    def forward(self, x: Tensor) -> Tensor:
        if self.input_layout is not None and x.ndim == 4:
            x = x.contiguous(memory_format=self.input_layout)
        return self.module(x)

    def train(self, mode: bool = True) -> PreparedModel:
        if mode:
            raise RuntimeError(
                "a prepared model is a frozen inference copy (advlab.models.prepare) and cannot be trained; "
                "train the original model and prepare it again"
            )
        return super().train(False)


def has_hooks(model: nn.Module) -> bool:
    """Whether any submodule has a forward or backward hook (the module-global ones included)."""
    from torch.nn.modules import module as torch_module

    global_hooks = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks")
    return any(getattr(torch_module, name, None) for name in global_hooks) or any(
        getattr(m, name, None) for m in model.modules() for name in _HOOK_DICTS
    )


def prepare(model: nn.Module, example: Tensor) -> nn.Module:
    """A module computing ``model``'s function up to float rounding, cheaper per forward and backward pass.

    ``example`` is a batch of the inputs the model will see (images in [0, 1], its device and dtype); its first
    sample is traced to find the BN layers that fold, its first two verify the copy. Returns ``model`` itself
    when no rewrite applies (nothing to fold or swap, no one-channel convolutions to relayout; or the model has
    hooks, which must see the user's own modules, or cannot be copied, or the copy disagrees with it), else a
    :class:`PreparedModel` holding a copy. ``model`` is not changed.

    Evaluation mode is part of the contract: BN folds only in eval mode, and the result is frozen in it.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example, Tensor) or example.ndim < 2 or example.shape[0] == 0:
        raise ValueError("example must be a non-empty batch of inputs shaped (N, C, H, W)")
    if isinstance(model, PreparedModel) or has_hooks(model):
        return model
    probe = example[:PROBE_SAMPLES].detach()
    training = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        return _prepare(model, probe)
    finally:
        for m, mode in training:
            m.training = mode


def preparation_record(model: nn.Module) -> dict[str, object]:
    """What :func:`prepare` did to give ``model``, JSON-ready (for run.json): ``{"enabled": True, "changes": [...]}``
    (no changes: ``prepare`` returned the model as given)."""
    changes = list(model.changes) if isinstance(model, PreparedModel) else []
    return {"enabled": True, "changes": changes}


def _prepare(model: nn.Module, probe: Tensor) -> nn.Module:
    conv_path = _channels_last_path(model, probe)
    # Channels-last weights make the activations channels-last even for a row-major input, so a model that
    # ``view``s them cannot run with them: then the copy is made again without (BN folded, layout untouched).
    for channels_last in (True, False) if conv_path else (False,):
        layout = torch.channels_last if channels_last and probe.shape[1] > 1 else None
        try:
            copied = _rewritten_copy(model, probe, channels_last)
        except Exception:  # a model the rewrite cannot copy, hook or run is used as given
            copied = None
        if copied is None:
            # Nothing to rewrite: the model as given (a wrapper around the caller's own modules would share their
            # mode and parameters, so it could not be the frozen, eval-mode module a prepared model promises).
            return model
        module, changes = copied
        if layout is not None:
            changes = (*changes, "channels-last input")
        prepared = PreparedModel(module, changes, layout)
        with torch.no_grad():
            want = model(probe)
            try:
                got = _reference_call(prepared, probe)
            except torch.OutOfMemoryError:
                raise
            except RuntimeError:  # e.g. a view of activations that channels-last weights made channels-last
                continue
        if got is None or want.shape != got.shape:
            return model
        tol = TOLERANCE * float(want.abs().max()) + 1e-5
        return prepared if bool(((want - got).abs() <= tol).all()) else model
    return model


def _reference_call(prepared: PreparedModel, probe: Tensor) -> Tensor | None:
    """The prepared model's logits on the probe, or None if it cannot take the channels-last input."""
    try:
        return prepared(probe)
    except RuntimeError:  # e.g. a model that ``view``s its activations: keep the caller's layout
        if prepared.input_layout is None:
            raise
        prepared.input_layout = None
        prepared.changes = tuple(c for c in prepared.changes if c != "channels-last input")
        return prepared(probe) if prepared.changes else None


def _rewritten_copy(model: nn.Module, probe: Tensor, channels_last: bool) -> tuple[nn.Module, tuple[str, ...]] | None:
    """A frozen copy with BN folded, ReLU/pool swapped and channels-last weights, or None when none applies."""
    has_norms = any(_foldable_norm(m) for m in model.modules())
    one_channel = channels_last and probe.shape[1] == 1
    if not has_norms and not one_channel:
        # Three channels and no BN: the input layout carries channels-last; a copy would only double the weights.
        return None
    prepared = copy.deepcopy(model)
    pairs = _conv_norm_pairs(prepared, probe[:1]) if has_norms else []
    if not pairs and not one_channel:
        return None
    changes: list[str] = []
    modules = dict(prepared.named_modules())
    swaps = _relu_pool_pairs(prepared)
    for seq_name, i in swaps:
        seq = modules[seq_name]
        assert isinstance(seq, nn.Sequential)
        seq[i], seq[i + 1] = seq[i + 1], seq[i]
    if swaps:
        changes.append(f"{len(swaps)} relu/max-pool swapped")
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
    if pairs:
        changes.append(f"{len(pairs)} batchnorm folded")
    if channels_last:
        prepared.to(memory_format=torch.channels_last)
        changes.append("channels-last weights")
    for p in prepared.parameters():
        p.requires_grad_(False)
    prepared.eval()
    return prepared, tuple(changes)


def _foldable_norm(m: nn.Module) -> bool:
    if not isinstance(m, nn.BatchNorm2d) or m.training or m.running_mean is None or m.running_var is None:
        return False
    # timm's BatchNormAct2d is BN followed by its own ``drop`` and ``act``: those stay after folding.
    return type(m) is nn.BatchNorm2d or (
        isinstance(getattr(m, "drop", None), nn.Module) and isinstance(getattr(m, "act", None), nn.Module)
    )


def _conv_norm_pairs(model: nn.Module, x: Tensor) -> list[tuple[str, str]]:
    """(conv, norm) module names where the norm's input is the conv's output, untouched in between.

    Found by running one sample with hooks (on the copy); modules called more than once are left alone (weight
    sharing). :func:`prepare` still checks the folded copy against the model, which catches a conv output that
    is also used elsewhere.
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

    max-pooling commutes with ReLU (both are monotone: max_i relu(a_i) = relu(max_i a_i)), and the gradient
    agrees too (both route to the window's first maximum, and relu' is 0 there exactly when the whole window is
    <= 0), so pooling first runs the ReLU, forward and backward, on a quarter of the elements. Only in an
    ``nn.Sequential`` whose forward is the plain chain.
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
