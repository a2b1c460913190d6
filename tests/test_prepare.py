"""advlab.models.prepare: an explicit copy of a model that is cheaper per pass and computes the same function;
attacks call the model they are given and nothing else."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from advlab import attacks
from advlab.models import PreparedModel, preparation_record, prepare

pytestmark = pytest.mark.usefixtures("one_thread")


def _randomise_norms(model: nn.Module, g: torch.Generator) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so that a wrong fold shows in the logits."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g))
            m.running_var.copy_(torch.rand(c, generator=g) * 3 + 0.1)
            if m.affine:
                m.weight.data.copy_(torch.randn(c, generator=g))
                m.bias.data.copy_(torch.randn(c, generator=g))
    return model.eval()


def bn_cnn(c1: int, c2: int, conv_bias: bool, affine: bool, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, c1, 3, padding=1, bias=conv_bias),
        nn.BatchNorm2d(c1, affine=affine),
        nn.ReLU(),
        nn.Conv2d(c1, c2, 3, stride=2, padding=1, groups=1, bias=conv_bias),
        nn.BatchNorm2d(c2, affine=affine),
        nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(c2, 5),
    )
    return _randomise_norms(model, g)


class ConvOutputReused(nn.Module):
    """bn(conv(x)) + conv(x): folding the norm into the conv would change the skip branch too."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.norm = nn.BatchNorm2d(6)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.conv(x)
        return self.head(self.norm(z) + z)


def _logits_and_grad(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    xg = x.clone().requires_grad_(True)
    logits = model(xg)
    (grad,) = torch.autograd.grad(logits.logsumexp(dim=1).sum(), xg)
    return logits.detach(), grad


def _assert_same_function(prepared: nn.Module, model: nn.Module, x: torch.Tensor) -> None:
    """Logits and input gradients equal up to float rounding."""
    want, want_grad = _logits_and_grad(model, x)
    got, got_grad = _logits_and_grad(prepared, x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()) + 1e-6)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-4, atol=1e-5 * float(want_grad.abs().max()) + 1e-7)


def _images(n: int, seed: int, size: int = 9) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@settings(max_examples=25, deadline=None)
@given(
    c1=st.integers(1, 6),
    c2=st.integers(1, 6),
    conv_bias=st.booleans(),
    affine=st.booleans(),
    n=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_folded_copy_computes_the_same_logits_and_input_gradients(
    c1: int, c2: int, conv_bias: bool, affine: bool, n: int, seed: int
) -> None:
    model = bn_cnn(c1, c2, conv_bias, affine, seed)
    x = _images(n, seed)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    folded = prepare(model, x)
    assert isinstance(folded, PreparedModel) and folded.module is not model
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert "2 batchnorm folded" in preparation_record(folded)["changes"]
    _assert_same_function(folded, model, x)
    # The model itself is untouched: same tensors, no hooks left behind.
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_timm_batchnorm_act_keeps_its_activation() -> None:
    timm_layers = pytest.importorskip("timm.layers")
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False),
        timm_layers.BatchNormAct2d(4, act_layer=nn.ReLU6),
        nn.Flatten(),
        nn.Linear(4 * 9 * 9, 3),
    )
    _randomise_norms(model, g)
    x = _images(3, 1)
    folded = prepare(model, x)
    assert isinstance(folded, PreparedModel) and isinstance(folded.module[1], nn.Sequential)
    assert any(isinstance(m, nn.ReLU6) for m in folded.module[1].modules())
    torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)


def test_conv_output_used_elsewhere_is_not_folded() -> None:
    torch.manual_seed(0)
    model = _randomise_norms(ConvOutputReused(), torch.Generator().manual_seed(0))
    x = _images(2, 0)
    prepared = prepare(model, x)
    assert not any("batchnorm" in c for c in preparation_record(prepared)["changes"])
    _assert_same_function(prepared, model, x)


def test_a_train_mode_model_is_prepared_for_evaluation_and_left_in_train_mode() -> None:
    model = bn_cnn(4, 4, True, True, 0).train()
    x = _images(2, 0)
    prepared = prepare(model, x)
    assert model.training and all(m.training for m in model.modules())
    assert not prepared.training
    _assert_same_function(prepared, model.eval(), x)


def test_prepare_is_uncached_and_sees_the_model_as_it_is_when_called() -> None:
    model = bn_cnn(4, 5, True, True, 1)
    x = _images(3, 2)
    first = prepare(model, x)
    second = prepare(model, x)
    assert first is not second and first.module is not second.module  # nothing is cached
    with torch.no_grad():
        model[0].weight.mul_(-2.0)
        model[4].running_mean.add_(1.0)
    # A prepared copy is a snapshot: it keeps computing the old function; preparing again sees the new one.
    assert not torch.allclose(first(x), model(x), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(prepare(model, x)(x), model(x), rtol=1e-5, atol=1e-5)


def test_a_prepared_model_refuses_to_be_trained() -> None:
    prepared = prepare(bn_cnn(2, 2, True, True, 0), _images(2, 0))
    with pytest.raises(RuntimeError, match="prepare it again"):
        prepared.train()
    assert prepared.eval() is prepared


def test_attacks_agree_on_the_model_and_on_its_prepared_copy() -> None:
    model = bn_cnn(6, 8, False, True, 3)
    x = _images(24, 4)
    y = model(x).argmax(dim=1)
    plain = attacks.pgd(model, x, y, eps=0.05, steps=10, seed=0, return_info=True)
    folded = attacks.pgd(prepare(model, x), x, y, eps=0.05, steps=10, seed=0, return_info=True)
    assert torch.equal(plain.success, folded.success)
    torch.testing.assert_close(folded.loss, plain.loss, rtol=1e-3, atol=1e-4)
    # Rounding can flip the sign of a near-zero gradient entry; all but a sliver of the pixels agree.
    assert (folded.x_adv - plain.x_adv).abs().le(1e-6).float().mean() > 0.99


def test_attacks_on_the_model_as_given_do_not_depend_on_the_batch() -> None:
    # The per-sample independence the attacks document: BIM on a batch equals BIM on each image alone, bit for
    # bit (with nothing rewritten behind the caller's back, no rounding difference can creep in).
    model = bn_cnn(6, 8, True, True, 12)
    x = _images(4, 13, size=16)
    y = model(x).argmax(dim=1)
    together = attacks.bim(model, x, y, eps=4 / 255, alpha=1 / 255, steps=5)
    alone = torch.cat(
        [attacks.bim(model, x[i : i + 1], y[i : i + 1], eps=4 / 255, alpha=1 / 255, steps=5) for i in range(4)]
    )
    assert torch.equal(together, alone)


def test_a_model_that_cannot_be_copied_is_prepared_without_a_copy() -> None:
    class Uncopyable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = bn_cnn(3, 3, True, True, 6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def __deepcopy__(self, memo: dict) -> None:
            raise RuntimeError("holds a handle that cannot be copied")

    model = Uncopyable().eval()
    x = _images(4, 7)
    prepared = prepare(model, x)
    assert prepared is model  # nothing could be copied, so nothing was rewritten
    _assert_same_function(prepared, model, x)
    y = model(x).argmax(dim=1)
    res = attacks.pgd(prepared, x, y, eps=0.1, steps=5, seed=0, return_info=True)
    with torch.no_grad():
        assert torch.equal(res.success, model(res.x_adv).argmax(dim=1) != y)


def gray_cnn(c1: int, c2: int, pool: bool, seed: int, inplace: bool = False) -> nn.Module:
    """A BN-free CNN on one-channel images, the layout of the Fashion-MNIST models."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1),
        nn.ReLU(inplace=inplace),
        nn.MaxPool2d(2) if pool else nn.Identity(),
        nn.Conv2d(c1, c2, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.LazyLinear(4),
    ).eval()


@settings(max_examples=15, deadline=None)
@given(
    c1=st.integers(1, 6),
    c2=st.integers(1, 6),
    pool=st.booleans(),
    inplace=st.booleans(),
    n=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_one_channel_copy_has_channels_last_weights_and_the_same_function(
    c1: int, c2: int, pool: bool, inplace: bool, n: int, seed: int
) -> None:
    model = gray_cnn(c1, c2, pool, seed, inplace)
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) - 0.3  # some windows all < 0
    model(x)  # materialise the lazy layer
    prepared = prepare(model, x)
    assert isinstance(prepared, PreparedModel)
    net = prepared.module
    # ReLU then max-pool runs as max-pool then ReLU; the model keeps its own order.
    order = [type(m) for m in net[:3]]
    assert order == ([nn.Conv2d, nn.MaxPool2d, nn.ReLU] if pool else [nn.Conv2d, nn.ReLU, nn.Identity])
    assert [type(m) for m in model[:3]][1] is nn.ReLU
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert all(m.weight.is_contiguous() for m in model.modules() if isinstance(m, nn.Conv2d))  # model untouched
    # The layout reaches the activations: the second convolution's output is channels-last.
    out = net[:4](x.clone())
    assert c1 == 1 or c2 == 1 or out.is_contiguous(memory_format=torch.channels_last)
    _assert_same_function(prepared, model, x)


def test_relu_and_pool_in_a_custom_forward_keep_their_order() -> None:
    class Chain(nn.Sequential):  # its own forward: positions in the list need not be the call order
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self[1](self[0](x))

    model = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(3, 3, 3), Chain(nn.ReLU(), nn.MaxPool2d(2)),
        nn.Flatten(), nn.LazyLinear(2),
    ).eval()  # fmt: skip
    x = torch.rand(2, 1, 16, 16) - 0.5
    model(x)
    prepared = prepare(model, x)
    assert isinstance(prepared, PreparedModel)
    assert [type(m) for m in prepared.module[:3]] == [nn.Conv2d, nn.MaxPool2d, nn.ReLU]  # the plain chain is swapped
    assert [type(m) for m in prepared.module[4]] == [nn.ReLU, nn.MaxPool2d]
    _assert_same_function(prepared, model, x)


def _fused_adam_step(model: nn.Module, x: torch.Tensor) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=0.3, fused=True)
    model(x).logsumexp(dim=1).sum().backward()
    opt.step()


def _data_write(model: nn.Module, x: torch.Tensor) -> None:
    model[0].weight.data.mul_(-1.0)  # an EMA or a manual edit through .data: no version bump


def _swap_activation(model: nn.Module, x: torch.Tensor) -> None:
    model[5] = nn.Tanh()  # a parameter-free module swapped (a gradient-masking check does this)


def _norm_setting(model: nn.Module, x: torch.Tensor) -> None:
    model[1].eps = 3.0


def _conv_setting(model: nn.Module, x: torch.Tensor) -> None:
    model[3].padding = (0, 0)


@pytest.mark.parametrize("change", [_fused_adam_step, _data_write, _swap_activation, _norm_setting, _conv_setting])
def test_attacks_see_the_model_as_it_is_after_any_change(change) -> None:
    model = bn_cnn(4, 5, True, True, 8)
    x = _images(16, 9)
    y = model(x).argmax(dim=1)
    attacks.pgd(model, x, y, eps=0.05, steps=5, seed=0)
    change(model, x)
    model.eval().zero_grad(set_to_none=True)
    res = attacks.pgd(model, x, y, eps=0.05, steps=5, seed=0, return_info=True)
    with torch.no_grad():
        assert torch.equal(res.success, model(res.x_adv).argmax(dim=1) != y)
    torch.testing.assert_close(prepare(model, x)(x), model(x), rtol=1e-4, atol=1e-4)


def test_a_hooked_model_is_not_prepared_and_can_be_freed() -> None:
    import gc
    import weakref

    model = bn_cnn(3, 4, True, True, 10)
    x = _images(4, 11)
    y = model(x).argmax(dim=1)
    assert prepare(model, x) is not model
    seen: list[nn.Module] = []
    # A feature-recording hook that holds the model (a common pattern): it must see the user's modules.
    model.features = {}

    def record(m: nn.Module, _inp: object, out: torch.Tensor, owner: nn.Module = model, log: list = seen) -> None:
        log.append(m)
        owner.features["relu"] = out  # the hook holds the model: a reference cycle through the model's hooks

    model[2].register_forward_hook(record)
    assert prepare(model, x) is model
    attacks.pgd(model, x, y, eps=0.05, steps=3, seed=0)
    assert len(seen) >= 4 and all(m is model[2] for m in seen)
    ref = weakref.ref(model)
    del model, seen, record
    gc.collect()
    assert ref() is None


def test_no_copy_where_it_would_only_cost_memory() -> None:
    # Three channels, no BN: nothing to rewrite; a copy would only double the weights, and a wrapper around the
    # model's own modules would share their mode (dropout active in train mode) and trainable parameters.
    torch.manual_seed(0)
    rgb = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(), nn.LazyLinear(3)).train()
    x = _images(2, 0)
    rgb(x)
    assert prepare(rgb, x) is rgb
    assert rgb.training and all(m.training for m in rgb.modules())
    assert preparation_record(rgb) == {"enabled": True, "changes": []}
    # float64 and non-4-D batches do not take oneDNN's channels-last path at all.
    gray = gray_cnn(3, 3, True, 0)
    g = torch.rand(2, 1, 8, 8)
    gray(g)
    assert prepare(gray, g.double()) is gray
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()
    assert prepare(mlp, g) is mlp
    assert preparation_record(mlp) == {"enabled": True, "changes": []}


def test_attacks_on_a_one_channel_model_agree_with_the_model_as_given() -> None:
    from advlab.models import load_model

    model = load_model("fmnist_cnn_pgd")
    x = torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    y = model(x).argmax(dim=1)
    plain = attacks.pgd(model, x, y, eps=0.1, steps=5, seed=0, return_info=True)
    prepared_model = prepare(model, x)
    assert isinstance(prepared_model, PreparedModel)
    prepared = attacks.pgd(prepared_model, x, y, eps=0.1, steps=5, seed=0, return_info=True)
    assert torch.equal(plain.success, prepared.success)
    torch.testing.assert_close(prepared.loss, plain.loss, rtol=1e-4, atol=1e-5)
    assert (prepared.x_adv - plain.x_adv).abs().le(1e-6).float().mean() > 0.99


class _Flattened(nn.Module):
    """The tutorial CNN: ``x.view(N, -1)`` after the convolutions (a view needs row-major activations)."""

    def __init__(self, channels: int, norm: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 6, 5)
        self.norm = nn.BatchNorm2d(6) if norm else nn.Identity()
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(nn.functional.relu(self.norm(self.conv1(x))), 2)
        x = nn.functional.max_pool2d(nn.functional.relu(self.conv2(x)), 2)
        return self.fc(x.view(x.size(0), -1))


@pytest.mark.parametrize(("channels", "norm"), [(1, False), (3, False), (1, True), (3, True)])
def test_a_model_that_views_its_activations_is_prepared_without_channels_last(channels: int, norm: bool) -> None:
    # Review (session 20): channels-last weights make the activations channels-last even for a row-major input, so
    # `view` raised inside prepare (advlab eval's default) on every one-channel CNN of this kind.
    torch.manual_seed(0)
    model = _Flattened(channels, norm).eval()
    if norm:  # statistics that make folding change the numbers
        model.norm.running_mean.uniform_(-1, 1)
        model.norm.running_var.uniform_(0.5, 2)
    x = torch.rand(8, channels, 28, 28)
    prepared = prepare(model, x)
    changes = getattr(prepared, "changes", ())
    assert not any("channels-last" in c for c in changes), changes
    assert ("1 batchnorm folded" in changes) == norm  # BN is still folded, only the layout is left alone
    with torch.no_grad():
        torch.testing.assert_close(prepared(x), model(x), rtol=1e-5, atol=1e-5)
