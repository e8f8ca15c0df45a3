"""MCC (models/mcc.py): sizes, the channel-correlation formula (unguarded, as the official code),
losses and their DataParallel weighting, training."""

import pytest
import torch

from nstlab.errors import ConfigError
from nstlab.functional import mvn, total_variation
from nstlab.models import build_model
from nstlab.models.blocks import count_parameters
from nstlab.models.mcc import MCCModule

from test_models_blocks_cnn import assert_any_size, assert_training_reduces_loss, cnn_config, weighted_loss


def test_full_width_counts():
    model = build_model("mcc", cnn_config(width=1.0))
    assert count_parameters(MCCModule(512))["trainable"] == 1_050_624  # without the released code's unused h
    assert model.parameter_counts()["trainable"] == 4_555_843


def test_output_shape_any_size():
    assert_any_size(build_model("mcc", cnn_config()))


def _expected_output(module, content, style):
    keys = module.g(mvn(style)).flatten(2)
    correlation = (keys**2).sum(2) / keys.sum(2)  # MCCNet net.py: bmm(G, Gᵀ) / G.sum(-1)
    return content + module.out_conv(module.f(mvn(content)) * module.fc(correlation)[..., None, None])


def test_channel_correlation_formula():
    torch.manual_seed(0)
    module = MCCModule(4)
    content, style = torch.randn(2, 4, 3, 5), torch.randn(2, 4, 6, 2)
    keys = module.g(mvn(style)).flatten(2)
    assert torch.allclose(keys.mean(2), module.g.bias.expand(2, 4), atol=1e-5)  # Σg = H·W·bias_g
    output = module({"relu4_1": content}, {"relu4_1": style})
    assert torch.allclose(output, _expected_output(module, content, style), atol=1e-4)


def test_a_near_zero_key_mean_is_not_guarded():
    """|mean g| = 2e-4 on channel 0, where the former |mean g| ≥ 1e-3 guard clamped the divisor:
    the output is the official formula's, five times the guarded correlation there."""
    torch.manual_seed(0)
    module = MCCModule(4).double()
    content = torch.randn(2, 4, 3, 5, dtype=torch.float64)
    style = torch.randn(2, 4, 6, 2, dtype=torch.float64)
    with torch.no_grad():
        module.g.bias[0] = 2e-4
    keys = module.g(mvn(style)).flatten(2)
    assert keys.mean(2)[:, 0].abs().max() < 1e-3  # the guard would have fired
    output = module({"relu4_1": content}, {"relu4_1": style})
    assert torch.allclose(output, _expected_output(module, content, style), rtol=1e-9, atol=1e-9)
    guarded = keys.square().mean(2) / keys.mean(2).abs().clamp_min(1e-3).copysign(keys.mean(2))
    unguarded = keys.square().mean(2) / keys.mean(2)
    assert torch.allclose(unguarded[:, 0], 5 * guarded[:, 0], rtol=1e-6)


def test_loss_terms():
    torch.manual_seed(0)
    model = build_model("mcc", cnn_config())
    # the code's weights, mean-based ones doubled: its loss.sum() over 2 DataParallel replicas
    assert model.loss_weights == {
        "content": 6.0,
        "style": 20.0,
        "identity1": 140.0,
        "identity2": 2.0,
        "illumination": 6000.0,
        "tv": 1e-4,
    }
    content, style = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    terms = model.losses(content, style)
    assert set(terms) == set(model.loss_weights)
    assert terms["illumination"].item() > 0  # noise of σ ≥ 0.01 moves the output a little
    with torch.no_grad():
        assert terms["tv"].item() == pytest.approx(total_variation(model(content, style)).item(), rel=1e-4)
    model = build_model("mcc", cnn_config(loss={"illumination": 0, "tv": 0.0, "identity2": 0}))
    assert set(model.losses(content, style)) == {"content", "style", "identity1"}


def test_the_loss_is_the_sum_over_dataparallel_replicas_of_their_half_batch_losses():
    """One process with dataparallel_replicas 2 minimises what MCCNet's train.py did: loss.sum()
    over two replicas, each weighting its half-batch's terms with the code's weights. The
    illumination term draws noise, so it is off here; TV (a sum) then counts once, means twice."""
    torch.manual_seed(0)
    content, style = torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)
    loss = {"illumination": 0.0, "tv": 1.0}  # TV weighted up so its share shows
    doubled = build_model("mcc", cnn_config(loss=loss))
    single = build_model("mcc", cnn_config(loss=loss, options={"dataparallel_replicas": 1}))
    halves = (slice(0, 2), slice(2, 4))
    replica_sum = sum(weighted_loss(single, content[half], style[half]) for half in halves)
    assert weighted_loss(doubled, content, style).item() == pytest.approx(replica_sum.item(), rel=1e-5)
    full_batch = weighted_loss(single, content, style)  # what an unscaled loss would give: TV over-weighted
    assert full_batch.item() != pytest.approx(replica_sum.item(), rel=1e-3)


def test_options_are_checked():
    with pytest.raises(ConfigError, match=r"baselines\.mcc\.options\.noise_std_range"):
        build_model("mcc", cnn_config(options={"noise_std_range": (0.02, 0.01)}))
    with pytest.raises(ConfigError, match=r"baselines\.mcc\.loss\.temporal"):
        build_model("mcc", cnn_config(loss={"temporal": 1.0}))
    with pytest.raises(ConfigError, match=r"replicas = 3: .* divides baselines\.mcc\.batch_size = 4"):
        build_model("mcc", cnn_config(options={"dataparallel_replicas": 3}))


def test_training_reduces_loss():
    assert_training_reduces_loss(build_model("mcc", cnn_config()))
