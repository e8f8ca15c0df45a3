"""The AdaIN family's shared parts (models/blocks.py, encoders.py): normalised VGG, AdaIN decoder, padding,
loss helpers and settings validation. Also holds `cnn_config`, the config stand-in the other
CNN-baseline tests import."""

import math
import types

import pytest
import torch
import torch.nn as nn

from nstlab.models.encoders import VGG_LAYERS, NormalisedVGG, pad_for_vgg
from nstlab.errors import ConfigError
from nstlab.losses import mean_std_style_loss, normalised_content_loss
from nstlab.models.blocks import AdaINDecoder, count_parameters, method_settings

CNN_METHODS = ("adain", "sanet", "mcc", "iest")


def cnn_config(
    width: float = 0.125,
    batch_size: int = 4,
    seed: int = 0,
    adain_vgg: str = "random",
    loss: dict | None = None,
    options: dict | None = None,
):
    """The slice of nstlab.config.Config the CNN baselines read, as plain namespaces; `loss` and
    `options` go to every method's block."""
    methods = {
        name: types.SimpleNamespace(
            batch_size=batch_size,
            iterations=10,
            lr=1e-4,
            lr_schedule="inverse",
            lr_decay=5e-5,
            warmup_iterations=0,
            grad_clip=None,
            loss=dict(loss or {}),
            options=dict(options or {}),
        )
        for name in CNN_METHODS
    }
    backbone = types.SimpleNamespace(adain_vgg=adain_vgg, adain_decoder=None, vgg_width=width)
    return types.SimpleNamespace(seed=seed, backbone=backbone, baselines=methods)


def weighted_loss(model, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """What the trainer minimises for a non-adversarial step: Σ weight · term."""
    terms = model.losses(content, style)
    return sum(model.loss_weights[name] * value for name, value in terms.items())


def assert_training_reduces_loss(model, steps: int = 4, lr: float = 1e-3, size: int = 32) -> None:
    """A few Adam steps on one fixed tiny batch lower the weighted loss (fixed seeds)."""
    torch.manual_seed(0)
    content, style = torch.rand(4, 3, size, size), torch.rand(4, 3, size, size)
    trainable = [
        p for name, p in model.named_parameters() if p.requires_grad and not name.startswith("discriminator.")
    ]
    optimizer = torch.optim.Adam(trainable, lr=lr)
    history = []
    for _ in range(steps):
        loss = weighted_loss(model, content, style)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert all(p.grad is None for p in model.encoder.parameters())
    assert history[-1] < history[0], history


def assert_any_size(model) -> None:
    """Output shape = content shape, for square, non-square and odd sizes (style of another size)."""
    model.eval()
    with torch.no_grad():
        for size in ((32, 32), (40, 56), (17, 33)):
            content = torch.rand(2, 3, *size)
            assert model(content, torch.rand(2, 3, 36, 28)).shape == content.shape


def test_full_width_sizes_match_methods_md():
    encoder = NormalisedVGG(width=1.0)
    assert count_parameters(encoder) == {"trainable": 0, "frozen": 12_944_972}
    assert encoder.channels == {"relu1_1": 64, "relu2_1": 128, "relu3_1": 256, "relu4_1": 512, "relu5_1": 512}
    assert count_parameters(AdaINDecoder(1.0)) == {"trainable": 3_505_219, "frozen": 0}


def test_vgg_features_shapes_ceil_mode_and_frozen():
    encoder = NormalisedVGG(width=0.25)
    encoder.train()
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())
    features = encoder(torch.rand(2, 3, 40, 56))
    assert list(features) == list(VGG_LAYERS)
    shapes = {name: tuple(value.shape) for name, value in features.items()}
    # ceil-mode pooling: 40×56 -> 20×28 -> 10×14 -> 5×7 -> 3×4
    assert shapes == {
        "relu1_1": (2, 16, 40, 56),
        "relu2_1": (2, 32, 20, 28),
        "relu3_1": (2, 64, 10, 14),
        "relu4_1": (2, 128, 5, 7),
        "relu5_1": (2, 128, 3, 4),
    }
    assert list(encoder(torch.rand(1, 3, 24, 24), last_layer="relu3_1")) == ["relu1_1", "relu2_1", "relu3_1"]


def test_random_vgg_is_seeded_not_global():
    torch.manual_seed(1)
    first = NormalisedVGG(width=0.25, seed=7)
    torch.manual_seed(2)
    second = NormalisedVGG(width=0.25, seed=7)
    other = NormalisedVGG(width=0.25, seed=8)
    pairs = list(zip(first.state_dict().values(), second.state_dict().values(), other.state_dict().values()))
    assert all(torch.equal(a, b) for a, b, _ in pairs)
    assert not all(torch.equal(a, c) for a, _, c in pairs)


def test_vgg_loads_pytorch_adain_file_by_position(tmp_path):
    source = NormalisedVGG(width=1.0, seed=3)
    convs = [m for m in source.modules() if isinstance(m, nn.Conv2d)]
    # Conv indices of pytorch-AdaIN's nn.Sequential `vgg` up to relu5_1, then relu5_2's conv.
    official_indices = [0, 2, 5, 9, 12, 16, 19, 22, 25, 29, 32, 35, 38, 42]
    state = {}
    for index, conv in zip(official_indices, convs):
        state[f"{index}.weight"], state[f"{index}.bias"] = conv.weight, conv.bias
    state["45.weight"], state["45.bias"] = torch.zeros(512, 512, 3, 3), torch.zeros(512)
    path = tmp_path / "vgg_normalised.pth"
    torch.save(state, path)
    loaded = NormalisedVGG(str(path), width=1.0)
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), loaded.state_dict().values()))


def test_vgg_weight_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"backbone\.adain_vgg.*pytorch-AdaIN/releases"):
        NormalisedVGG(str(tmp_path / "missing.pth"))
    saved = NormalisedVGG(width=0.125)  # a file at another width: its shapes tell
    torch.save(
        torch.nn.Sequential(*(m for block in saved.slices for m in block)).state_dict(), tmp_path / "w.pth"
    )
    with pytest.raises(ConfigError, match=r"backbone\.adain_vgg = .*w\.pth.*backbone\.vgg_width = 0\.25"):
        NormalisedVGG(str(tmp_path / "w.pth"), width=0.25)


@pytest.mark.parametrize(("size", "padded"), [((32, 48), (32, 48)), ((17, 33), (24, 40)), ((5, 9), (24, 24))])
def test_pad_for_vgg(size, padded):
    images = torch.rand(1, 3, *size)
    out, original = pad_for_vgg(images)
    assert tuple(out.shape[-2:]) == padded and original == size
    assert torch.equal(out[..., : size[0], : size[1]], images)
    minimum_only, _ = pad_for_vgg(images, multiple=1)  # style images: only the 24 px minimum
    assert tuple(minimum_only.shape[-2:]) == (max(24, size[0]), max(24, size[1]))


def test_decoder_upsamples_by_eight():
    assert AdaINDecoder(0.25)(torch.rand(1, 128, 3, 5)).shape == (1, 3, 24, 40)


def test_content_loss_on_hand_computed_features():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 2, 2)
    features = {"relu4_1": x, "relu5_1": x}
    # mvn is invariant to a positive affine map: no content loss
    affine = {name: 2 * value + 5 for name, value in features.items()}
    assert normalised_content_loss(features, affine).item() == pytest.approx(0, abs=1e-6)
    # mvn(−x) = −mvn(x): MSE = 4·mean(mvn(x)²) = 4·(n−1)/n·var/(var+eps), var = 5/3, n = 4; two layers
    expected = 2 * 4 * 0.75 * (5 / 3) / (5 / 3 + 1e-5)
    negated = {name: -value for name, value in features.items()}
    assert normalised_content_loss(features, negated).item() == pytest.approx(expected, rel=1e-6)


def test_style_loss_on_hand_computed_features():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 2, 2)
    output = {name: x for name in VGG_LAYERS}
    style = {name: 2 * x for name in VGG_LAYERS}
    # μ: 2.5 vs 5; σ = sqrt(unbiased var + 1e-5): var 5/3 vs 20/3; five layers
    per_layer = 2.5**2 + (math.sqrt(5 / 3 + 1e-5) - math.sqrt(20 / 3 + 1e-5)) ** 2
    assert mean_std_style_loss(output, style).item() == pytest.approx(5 * per_layer, rel=1e-6)
    assert mean_std_style_loss(output, style, VGG_LAYERS[:4]).item() == pytest.approx(4 * per_layer, rel=1e-6)


def test_method_settings_validation():
    defaults = {"content": 1.0, "style": 3.0}
    assert method_settings("sanet", "loss", {"style": 0.0}, defaults) == {"content": 1.0, "style": 0.0}
    with pytest.raises(ConfigError, match=r"baselines\.sanet\.loss\.stlye.*allowed: content, style"):
        method_settings("sanet", "loss", {"stlye": 1.0}, defaults)
    with pytest.raises(ConfigError, match=r"baselines\.sanet\.loss\.style"):
        method_settings("sanet", "loss", {"style": -1.0}, defaults)
    with pytest.raises(ConfigError, match=r"baselines\.adain\.options\.tau.*allowed: none"):
        method_settings("adain", "options", {"tau": 0.2}, {})
