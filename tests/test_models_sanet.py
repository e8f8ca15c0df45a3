"""SANet (models/sanet.py): sizes, odd input sizes, the attention formula, losses, training."""

import pytest
import torch
import torch.nn.functional as F

from nstlab.models.encoders import VGG_LAYERS
from nstlab.errors import ConfigError
from nstlab.functional import mvn
from nstlab.models import build_model
from nstlab.models.sanet import SANetAttention

from test_models_blocks_cnn import assert_any_size, assert_training_reduces_loss, cnn_config


def test_full_width_counts():
    counts = build_model("sanet", cnn_config(width=1.0)).parameter_counts()
    assert counts["sanet4_1.trainable"] == counts["sanet5_1.trainable"] == 1_050_624
    assert counts["merge_conv.trainable"] == 2_359_808
    assert counts["decoder.trainable"] == 3_505_219
    assert counts["trainable"] == 7_966_275
    assert counts["encoder.frozen"] == 12_944_972


def test_output_shape_any_size():
    # 17×33 pads to 24×40: relu4_1 3×5, relu5_1 2×3 — the reference's fixed ×2 upsampling crashes
    assert_any_size(build_model("sanet", cnn_config()))


def test_attention_is_the_papers_formula():
    torch.manual_seed(0)
    block = SANetAttention(8)
    content, style = torch.randn(2, 8, 3, 5), torch.randn(2, 8, 4, 2)
    queries = block.f(mvn(content)).flatten(2)  # (B, C, Nc)
    keys = block.g(mvn(style)).flatten(2)
    values = block.h(style).flatten(2)
    attention = torch.softmax(queries.transpose(1, 2) @ keys, dim=-1)  # (B, Nc, Ns), no 1/√d
    expected = content + block.out_conv((values @ attention.transpose(1, 2)).view_as(content))
    assert torch.allclose(block(content, style), expected, atol=1e-5)


def _decoder_calls(model) -> list[int]:
    calls = []
    model.decoder.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_loss_terms_and_zero_weights_skip_passes():
    content, style = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    model = build_model("sanet", cnn_config())
    assert model.loss_weights == {"content": 1.0, "style": 3.0, "identity1": 50.0, "identity2": 1.0}
    calls = _decoder_calls(model)
    assert set(model.losses(content, style)) == {"content", "style", "identity1", "identity2"}
    assert len(calls) == 3  # output, Icc, Iss
    model = build_model("sanet", cnn_config(loss={"identity1": 0.0, "identity2": 0}))
    calls = _decoder_calls(model)
    assert set(model.losses(content, style)) == {"content", "style"}
    assert len(calls) == 1


def test_identity_terms_match_the_definition():
    torch.manual_seed(0)
    model = build_model("sanet", cnn_config())
    content, style = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        terms = model.losses(content, style)
        content_features, style_features = model.encoder(content), model.encoder(style)
        content_identity = model.decoder(model.transform(content_features, content_features))
        style_identity = model.decoder(model.transform(style_features, style_features))
        identity1 = F.mse_loss(content_identity, content) + F.mse_loss(style_identity, style)
        identity2 = sum(
            F.mse_loss(model.encoder(content_identity)[layer], content_features[layer])
            + F.mse_loss(model.encoder(style_identity)[layer], style_features[layer])
            for layer in VGG_LAYERS
        )
    assert terms["identity1"].item() == pytest.approx(identity1.item(), rel=1e-5)
    assert terms["identity2"].item() == pytest.approx(identity2.item(), rel=1e-5)


def test_unknown_loss_name():
    with pytest.raises(
        ConfigError, match=r"baselines\.sanet\.loss\.stlye.*content, style, identity1, identity2"
    ):
        build_model("sanet", cnn_config(loss={"stlye": 3.0}))


def test_training_reduces_loss():
    assert_training_reduces_loss(build_model("sanet", cnn_config()))
