"""ArtFlow: parameter count (docs/methods.md#parameter-counts), exact inverse, per-sample WCT, options."""

from types import SimpleNamespace

import pytest
import torch

from nstlab.training.checkpoint import load_trained_state, trained_state
from nstlab.errors import ConfigError
from nstlab.models.artflow import ArtFlow, wct

TINY_OPTIONS = {"hidden": 16, "flows": 2}


def make_config(options=None, loss=None):
    """A stand-in for nstlab.config.Config with only what ArtFlow reads."""
    block = SimpleNamespace(
        batch_size=2,
        iterations=2,
        lr=1e-3,
        lr_schedule="constant",
        lr_decay=0.0,
        warmup_iterations=0,
        grad_clip=5.0,
        loss=loss or {},
        options=options or {},
    )
    return SimpleNamespace(
        seed=0, backbone=SimpleNamespace(adain_vgg="random", vgg_width=0.125), baselines={"artflow": block}
    )


def reconstruction_error(model, images: torch.Tensor) -> float:
    with torch.no_grad():
        return (model.glow.reverse(model.glow(images)) - images).abs().max().item()


def test_paper_size():
    counts = ArtFlow(make_config()).parameter_counts()
    assert counts["glow.trainable"] == counts["trainable"] == 6_463_616
    assert counts["loss_network.trainable"] == 0


@pytest.mark.parametrize("size", [(32, 32), (40, 56), (17, 33)])
def test_output_has_the_content_shape(size):
    model = ArtFlow(make_config(TINY_OPTIONS))
    content = torch.rand(2, 3, *size)
    with torch.no_grad():
        assert model(content, torch.rand(2, 3, 20, 28)).shape == content.shape


def test_reverse_undoes_forward_after_init_and_a_training_step():
    torch.manual_seed(0)
    model = ArtFlow(make_config({"hidden": 16}))  # the paper's depth: 2 blocks × 8 flows
    content, style = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    assert reconstruction_error(model, content) < 1e-4  # this first call initialises ActNorm
    assert all(flow.actnorm.initialized.item() for block in model.glow.blocks for flow in block.flows)
    optimizer = torch.optim.Adam(model.glow.parameters(), lr=1e-2)
    terms = model.losses(content, style)
    sum(model.loss_weights[name] * value for name, value in terms.items()).backward()
    optimizer.step()
    assert reconstruction_error(model, style) < 1e-4
    glow64 = model.glow.double()  # in float64 the only error left is round-off: the inverse is exact
    with torch.no_grad():
        assert (glow64.reverse(glow64(style.double())) - style.double()).abs().max() < 1e-10


def test_same_content_and_style_gives_the_content_back():
    """AdaIN of a latent with itself is the identity, so the flow returns its input (no content leak)."""
    model = ArtFlow(make_config(TINY_OPTIONS))
    images = torch.rand(1, 3, 24, 36)
    with torch.no_grad():
        assert torch.allclose(model(images, images), images, atol=1e-4)


def test_actnorm_init_survives_a_checkpoint(tmp_path):
    """The `initialized` buffer travels in the trainer's checkpoint: a resumed run does not re-initialise."""
    first = ArtFlow(make_config(TINY_OPTIONS))
    with torch.no_grad():
        first.glow(torch.rand(2, 3, 16, 16))
    second = ArtFlow(make_config(TINY_OPTIONS))
    load_trained_state(second, trained_state(first), tmp_path / "artflow.pt")
    actnorm = second.glow.blocks[0].flows[0].actnorm
    loc = actnorm.loc.detach().clone()
    with torch.no_grad():
        second.glow(torch.rand(2, 3, 16, 16) * 5)  # another batch must not re-initialise
    assert torch.equal(actnorm.loc, loc) and not torch.equal(loc, torch.zeros_like(loc))


def test_adam_steps_reduce_the_weighted_loss():
    torch.manual_seed(0)
    model = ArtFlow(make_config(TINY_OPTIONS))
    content, style = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    optimizer = torch.optim.Adam(model.glow.parameters(), lr=1e-3)

    def weighted() -> torch.Tensor:
        terms = model.losses(content, style)
        assert set(terms) == {"content", "style"}
        return sum(model.loss_weights[name] * value for name, value in terms.items())

    first = weighted()
    for _ in range(2):
        optimizer.zero_grad()
        weighted().backward()
        torch.nn.utils.clip_grad_norm_(model.glow.parameters(), 5.0)
        optimizer.step()
    with torch.no_grad():
        assert weighted().item() < first.item()


def test_wct_is_per_sample_and_matches_the_style_covariance():
    torch.manual_seed(0)
    content = torch.randn(2, 4, 6, 6)
    style = torch.randn(2, 4, 5, 7) * torch.tensor([1.0, 2.0, 0.5, 3.0]).view(1, 4, 1, 1) + 1.0
    batched = wct(content, style)
    one_by_one = torch.cat([wct(content[:1], style[:1]), wct(content[1:], style[1:])])
    assert torch.allclose(batched, one_by_one, atol=1e-6)
    for output, target in zip(batched, style):
        output_flat, target_flat = output.flatten(1), target.flatten(1)
        assert torch.allclose(output_flat.mean(1), target_flat.mean(1), atol=1e-4)
        assert torch.allclose(torch.cov(output_flat), torch.cov(target_flat), atol=1e-3)


def test_wct_model_treats_samples_alone():
    model = ArtFlow(make_config({**TINY_OPTIONS, "transfer": "wct"}))
    content, style = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        model.glow(content)  # initialise ActNorm once, so both runs share the same flow
        batched = model(content, style)
        one_by_one = torch.cat([model(content[:1], style[:1]), model(content[1:], style[1:])])
    assert torch.allclose(batched, one_by_one, atol=1e-5)


def test_demo_profile_block_builds(tiny_config):
    """params.yaml's baselines.artflow block (demo profile) passes the option checks and runs."""
    model = ArtFlow(tiny_config())
    assert model.options["hidden"] == 32 and model.loss_weights == {"content": 0.1, "style": 1.0}
    with torch.no_grad():
        assert model(torch.rand(1, 3, 20, 28), torch.rand(1, 3, 32, 32)).shape == (1, 3, 20, 28)


def test_zero_weight_drops_the_term():
    model = ArtFlow(make_config(TINY_OPTIONS, loss={"content": 0.0}))
    with torch.no_grad():
        assert set(model.losses(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16))) == {"style"}


@pytest.mark.parametrize(
    ("options", "loss", "message"),
    [
        (
            {"hiden": 16},
            {},
            "baselines.artflow.options.hiden: unknown name; allowed: blocks, flows, hidden, transfer, first_batch",
        ),
        ({}, {"identity1": 1.0}, "baselines.artflow.loss.identity1: unknown name; allowed: content, style"),
        (
            {"transfer": "decorator"},
            {},
            "baselines.artflow.options.transfer = 'decorator': choose one of adain, wct",
        ),
        ({"flows": 0}, {}, "baselines.artflow.options.flows = 0"),
        (
            {"first_batch": "skip"},
            {},
            "baselines.artflow.options.first_batch = 'skip': choose one of init_only, train",
        ),
    ],
)
def test_bad_options_raise_config_error(options, loss, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        ArtFlow(make_config(options, loss))


def test_one_iteration_that_only_initialises_actnorm_is_refused():
    cfg = make_config(TINY_OPTIONS)
    cfg.baselines["artflow"].iterations = 1
    with pytest.raises(ConfigError, match=r"baselines\.artflow\.iterations = 1: the first only initialises"):
        ArtFlow(cfg)
    cfg.baselines["artflow"].options = {**TINY_OPTIONS, "first_batch": "train"}
    ArtFlow(cfg)
