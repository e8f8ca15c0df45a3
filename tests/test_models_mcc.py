"""MCC (models/mcc.py): sizes, the channel-correlation formula and its guard, losses, training."""

import pytest
import torch

from nstlab.errors import ConfigError
from nstlab.functional import mvn, total_variation
from nstlab.models import build_model
from nstlab.models.blocks import count_parameters
from nstlab.models.mcc import MCCModule

from test_models_blocks_cnn import assert_any_size, assert_training_reduces_loss, cnn_config


def test_full_width_counts():
    model = build_model("mcc", cnn_config(width=1.0))
    assert count_parameters(MCCModule(512))["trainable"] == 1_050_624  # without the released code's unused h
    assert model.parameter_counts()["trainable"] == 4_555_843


def test_output_shape_any_size():
    assert_any_size(build_model("mcc", cnn_config()))


def test_channel_correlation_formula_and_guard():
    torch.manual_seed(0)
    module = MCCModule(4)
    content, style = torch.randn(2, 4, 3, 5), torch.randn(2, 4, 6, 2)
    keys = module.g(mvn(style)).flatten(2)
    correlation = (keys**2).sum(2) / keys.sum(2)  # MCCNet net.py: bmm(G, Gᵀ) / G.sum(-1)
    assert torch.allclose(keys.mean(2), module.g.bias.expand(2, 4), atol=1e-5)  # Σg = H·W·bias_g
    expected = content + module.out_conv(module.f(mvn(content)) * module.fc(correlation)[..., None, None])
    assert torch.allclose(module({"relu4_1": content}, {"relu4_1": style}), expected, atol=1e-4)
    with torch.no_grad():
        module.g.bias.zero_()  # Σg = 0: the released code divides by zero here
    assert torch.isfinite(module({"relu4_1": content}, {"relu4_1": style})).all()


def test_loss_terms():
    torch.manual_seed(0)
    model = build_model("mcc", cnn_config())
    assert model.loss_weights == {"content": 3.0, "style": 10.0, "identity1": 70.0, "identity2": 1.0,
                                  "illumination": 3000.0, "tv": 1e-4}
    content, style = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    terms = model.losses(content, style)
    assert set(terms) == set(model.loss_weights)
    assert terms["illumination"].item() > 0  # noise of σ ≥ 0.01 moves the output a little
    with torch.no_grad():
        assert terms["tv"].item() == pytest.approx(total_variation(model(content, style)).item(), rel=1e-4)
    model = build_model("mcc", cnn_config(loss={"illumination": 0, "tv": 0.0, "identity2": 0}))
    assert set(model.losses(content, style)) == {"content", "style", "identity1"}


def test_options_are_checked():
    with pytest.raises(ConfigError, match=r"baselines\.mcc\.options\.noise_std_range"):
        build_model("mcc", cnn_config(options={"noise_std_range": (0.02, 0.01)}))
    with pytest.raises(ConfigError, match=r"baselines\.mcc\.loss\.temporal"):
        build_model("mcc", cnn_config(loss={"temporal": 1.0}))


def test_training_reduces_loss():
    assert_training_reduces_loss(build_model("mcc", cnn_config()))
