"""StyTr²: parameter counts (docs/methods.md#parameter-counts), any input size, losses, option checks."""

from types import SimpleNamespace

import pytest
import torch

from nstlab.errors import ConfigError
from nstlab.models.stytr2 import StyTr2

TINY_OPTIONS = {
    "d_model": 32,
    "heads": 4,
    "ffn": 64,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "dropout": 0.0,
}


def make_config(options=None, loss=None, vgg_width=0.125):
    """A stand-in for nstlab.config.Config with only what StyTr² reads."""
    block = SimpleNamespace(
        batch_size=2,
        iterations=1,
        lr=1e-3,
        lr_schedule="constant",
        lr_decay=0.0,
        warmup_iterations=0,
        grad_clip=None,
        loss=loss or {},
        options=options or {},
    )
    return SimpleNamespace(
        seed=0, backbone=SimpleNamespace(adain_vgg="random", vgg_width=vgg_width), baselines={"stytr2": block}
    )


@pytest.fixture(scope="module")
def tiny_model():
    return StyTr2(make_config(TINY_OPTIONS)).eval()


def test_paper_sizes():
    counts = StyTr2(make_config(vgg_width=0.0625)).parameter_counts()
    assert counts["patch_embedding.trainable"] == 98_816
    assert counts["cape.trainable"] == 262_656
    assert counts["content_encoder.trainable"] == counts["style_encoder.trainable"] == 9_457_152
    assert counts["transformer_decoder.trainable"] == 12_613_120
    assert counts["cnn_decoder.trainable"] == 3_505_219
    assert counts["trainable"] == 35_394_115
    assert counts["loss_network.trainable"] == 0 and counts["loss_network.frozen"] > 0


@pytest.mark.parametrize("size", [(32, 32), (40, 56), (17, 33)])
def test_output_has_the_content_shape(tiny_model, size):
    content = torch.rand(2, 3, *size)
    style = torch.rand(2, 3, 24, 40)  # the style may have another size
    with torch.no_grad():
        assert tiny_model(content, style).shape == content.shape


def test_cape_follows_the_content_grid(tiny_model):
    embedding = torch.rand(1, 32, 5, 7)
    assert tiny_model.cape(embedding).shape == embedding.shape


def test_an_adam_step_reduces_the_weighted_loss():
    torch.manual_seed(0)
    model = StyTr2(make_config(TINY_OPTIONS))
    content, style = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def weighted() -> torch.Tensor:
        terms = model.losses(content, style)
        assert set(terms) == {"content", "style", "identity1", "identity2"}
        return sum(model.loss_weights[name] * value for name, value in terms.items())

    first = weighted()
    first.backward()
    optimizer.step()
    with torch.no_grad():
        assert weighted().item() < first.item()


def test_demo_profile_block_builds(tiny_config):
    """params.yaml's baselines.stytr2 block (demo profile) passes the option checks and runs."""
    model = StyTr2(tiny_config())
    assert model.loss_weights == {"content": 7.0, "style": 10.0, "identity1": 70.0, "identity2": 1.0}
    assert model.cnn_decoder[1].in_channels == 64  # the demo's d_model narrows the CNN decoder
    with torch.no_grad():
        assert model(torch.rand(1, 3, 20, 28), torch.rand(1, 3, 32, 32)).shape == (1, 3, 20, 28)


def test_zero_weights_drop_terms():
    model = StyTr2(make_config(TINY_OPTIONS, loss={"identity1": 0.0, "identity2": 0.0, "style": 0.0}))
    assert model.loss_weights == {"content": 7.0, "style": 0.0, "identity1": 0.0, "identity2": 0.0}
    with torch.no_grad():
        assert set(model.losses(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))) == {"content"}


@pytest.mark.parametrize(
    ("options", "loss", "message"),
    [
        ({"d_modle": 64}, {}, "baselines.stytr2.options.d_modle: unknown name; allowed: d_model, heads"),
        (
            {},
            {"tv": 1.0},
            "baselines.stytr2.loss.tv: unknown name; allowed: content, style, identity1, identity2",
        ),
        ({"d_model": 30, "heads": 4}, {}, "baselines.stytr2.options.heads = 4"),
        ({"encoder_layers": 0}, {}, "baselines.stytr2.options.encoder_layers = 0"),
        (
            {"d_model": 2, "heads": 1},
            {},
            "baselines.stytr2.options.d_model = 2: expected a whole number >= 4",
        ),
        ({"dropout": 1.5}, {}, "baselines.stytr2.options.dropout = 1.5"),
    ],
)
def test_bad_options_raise_config_error(options, loss, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        StyTr2(make_config(options, loss))
