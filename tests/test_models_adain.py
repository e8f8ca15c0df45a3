"""AdaIN (models/adain.py): sizes, any input size, α trade-off, style interpolation, losses."""

import pytest
import torch
import torch.nn.functional as F

from nstlab.errors import ConfigError, NstlabError
from nstlab.functional import adain
from nstlab.losses import mean_std_style_loss
from nstlab.models import build_model
from nstlab.models.adain import STYLE_LAYERS

from test_models_blocks_cnn import assert_any_size, assert_training_reduces_loss, cnn_config


@pytest.fixture(scope="module")
def model():
    return build_model("adain", cnn_config()).eval()


def test_full_width_counts():
    counts = build_model("adain", cnn_config(width=1.0)).parameter_counts()
    assert counts["decoder.trainable"] == counts["trainable"] == 3_505_219
    assert counts["encoder.frozen"] == 12_944_972


def test_output_shape_any_size(model):
    assert_any_size(model)


def test_alpha_zero_decodes_the_content_features(model):
    torch.manual_seed(0)
    content, style = torch.rand(1, 3, 32, 40), torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        expected = model.decoder(model.encoder(content, "relu4_1")["relu4_1"])
        assert torch.allclose(model(content, style, alpha=0.0), expected, atol=1e-6)
        half = model.decoder(
            0.5 * adain(model.encoder(content)["relu4_1"], model.encoder(style)["relu4_1"])
            + 0.5 * model.encoder(content)["relu4_1"]
        )
        assert torch.allclose(model(content, style, alpha=0.5), half, atol=1e-5)


def test_style_interpolation(model):
    torch.manual_seed(0)
    content, first, second = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32), torch.rand(1, 3, 40, 24)
    with torch.no_grad():
        single = model(content, first)
        assert torch.allclose(model(content, [first, second], style_weights=(1.0, 0.0)), single, atol=1e-6)
        mixed = model(content, [first, second], style_weights=(0.5, 0.5))
        assert torch.allclose(model(content, [first, second]), mixed)  # default weights are equal
        assert not torch.allclose(mixed, single)
    with pytest.raises(NstlabError, match="summing to 1"):
        model(content, [first, second], style_weights=(0.7, 0.7))
    with pytest.raises(NstlabError, match="alpha"):
        model(content, first, alpha=1.5)


def test_losses_match_the_definition(model):
    torch.manual_seed(0)
    content, style = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    terms = model.losses(content, style)
    assert set(terms) == {"content", "style"}
    with torch.no_grad():
        style_features = model.encoder(style, "relu4_1")
        target = adain(model.encoder(content)["relu4_1"], style_features["relu4_1"])
        output_features = model.encoder(model.decoder(target), "relu4_1")
        assert terms["content"].item() == pytest.approx(
            F.mse_loss(output_features["relu4_1"], target).item(), rel=1e-5
        )
        expected_style = mean_std_style_loss(output_features, style_features, STYLE_LAYERS)
        assert terms["style"].item() == pytest.approx(expected_style.item(), rel=1e-5)


def test_zero_weight_terms_are_absent_and_names_checked():
    assert set(
        build_model("adain", cnn_config(loss={"style": 0.0})).losses(
            torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
        )
    ) == {"content"}
    with pytest.raises(ConfigError, match=r"baselines\.adain\.loss\.identity1.*allowed: content, style"):
        build_model("adain", cnn_config(loss={"identity1": 1.0}))


def test_training_reduces_loss():
    assert_training_reduces_loss(build_model("adain", cnn_config()))
