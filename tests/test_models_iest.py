"""IEST (models/iest.py): sizes, the contrastive batch and loss, the discriminator protocol."""

import math

import pytest
import torch

from nstlab.errors import ConfigError
from nstlab.models import build_model
from nstlab.models.iest import MultiScaleDiscriminator, contrastive_batch, contrastive_loss, contrastive_masks

from test_models_blocks_cnn import assert_any_size, assert_training_reduces_loss, cnn_config

TAU = 0.2


def test_full_width_counts():
    counts = build_model("iest", cnn_config(width=1.0)).parameter_counts()
    assert counts["style_head.trainable"] == 49_408
    assert counts["content_head.trainable"] == 164_224
    assert counts["generator.trainable"] == 8_179_907
    assert counts["discriminator.trainable"] == 8_283_459
    assert counts["trainable"] == 16_463_366


def test_output_shape_any_size():
    assert_any_size(build_model("iest", cnn_config()))


def test_contrastive_batch_layout():
    content = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 3, 2, 2)
    style = 10 + content
    contents, styles, content_ids, style_ids = contrastive_batch(
        torch.cat([content, content[:1]]), torch.cat([style, style[:1]])
    )
    # n = 4 // 2 = 2 of each (IEST train.py loads batch_size / 2 contents and styles)
    assert content_ids.tolist() == [0, 1, 1, 0] and style_ids.tolist() == [0, 1, 0, 1]
    assert contents[:, 0, 0, 0].tolist() == [0, 1, 1, 0] and styles[:, 0, 0, 0].tolist() == [10, 11, 10, 11]


# net.py's hand-written comparison lists for n = 6 (up[k] = k, down[k] = 6 + k), positive first:
# (loss, anchor) -> the candidates of that anchor, transcribed from its four loops.
OFFICIAL_CANDIDATES = {
    ("style", 0): [6, 7, 8, 9, 10, 1, 2, 3, 4, 5],  # i = 0: down[0:5], up[1:]
    ("style", 3): [9, 10, 11, 6, 7, 0, 1, 2, 4, 5],  # else: down[i:], down[0:i-1], up[0:i], up[i+1:]
    ("style", 6): [0, 2, 3, 4, 5, 7, 8, 9, 10, 11],  # down i = 0: up[0:1], up[2:], down[1:]
    ("style", 9): [
        3,
        0,
        1,
        2,
        5,
        6,
        7,
        8,
        10,
        11,
    ],  # down else: up[i:i+1], up[0:i], up[i+2:], down[0:i], down[i+1:]
    ("content", 0): [11, 7, 8, 9, 10, 1, 2, 3, 4, 5],  # i = 0: down[5:], down[1:5], up[1:]
    ("content", 3): [
        8,
        6,
        7,
        10,
        11,
        0,
        1,
        2,
        4,
        5,
    ],  # else: down[i-1:i], down[0:i-1], down[i+1:], up[0:i], up[i+1:]
    ("content", 6): [1, 2, 3, 4, 5, 7, 8, 9, 10, 11],  # down i = 0: up[1:], down[1:]
    ("content", 9): [
        4,
        0,
        1,
        2,
        5,
        6,
        7,
        8,
        10,
        11,
    ],  # down else: up[i+1:i+2], up[0:i], up[i+2:], down[0:i], down[i+1:]
}


def _ids(pairs: int) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.zeros(2 * pairs, 3, 1, 1)
    _, _, content_ids, style_ids = contrastive_batch(images, images)
    return content_ids, style_ids


def test_masks_match_the_official_index_lists():
    content_ids, style_ids = _ids(6)
    masks = {
        "style": contrastive_masks(style_ids, content_ids),
        "content": contrastive_masks(content_ids, style_ids),
    }
    for (loss, anchor), candidates in OFFICIAL_CANDIDATES.items():
        positive, allowed = masks[loss]
        assert positive[anchor].nonzero().flatten().tolist() == [candidates[0]]
        assert sorted(allowed[anchor].nonzero().flatten().tolist()) == sorted(candidates)
    for positive, _ in masks.values():
        assert positive.sum(dim=1).tolist() == [1] * 12


@pytest.mark.parametrize(("pairs", "negatives"), [(6, 9), (2, 1)])
def test_contrastive_loss_identical_embeddings(pairs, negatives):
    """All logits equal: each anchor's cross-entropy is log(1 + negatives); summed over 2n anchors."""
    content_ids, style_ids = _ids(pairs)
    embeddings = torch.nn.functional.normalize(torch.ones(2 * pairs, 8), dim=1)
    expected = 2 * pairs * math.log(1 + negatives)
    assert contrastive_loss(embeddings, style_ids, content_ids, TAU).item() == pytest.approx(
        expected, rel=1e-6
    )
    assert contrastive_loss(embeddings, content_ids, style_ids, TAU).item() == pytest.approx(
        expected, rel=1e-6
    )


def test_contrastive_loss_style_clusters():
    """One unit vector per style, styles orthogonal: positive logit 1/τ, negatives 0, so each
    anchor gives log(e^{1/τ} + 9) − 1/τ = log(1 + 9·e^{−5})."""
    content_ids, style_ids = _ids(6)
    embeddings = torch.eye(8)[style_ids]
    expected = 12 * math.log(1 + 9 * math.exp(-1 / TAU))
    assert contrastive_loss(embeddings, style_ids, content_ids, TAU).item() == pytest.approx(
        expected, rel=1e-5
    )


def test_loss_terms_and_zero_weights():
    torch.manual_seed(0)
    content, style = torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)
    model = build_model("iest", cnn_config())
    assert set(model.losses(content, style)) == {
        "content",
        "style",
        "identity1",
        "identity2",
        "contrastive_content",
        "contrastive_style",
    }
    assert set(model.losses(content[:2], style[:2])) == {"content", "style", "identity1", "identity2"}
    model = build_model(
        "iest", cnn_config(loss={"contrastive_content": 0, "contrastive_style": 0, "adversarial": 0})
    )
    assert model.discriminator is None and model.style_head is None and model.content_head is None
    assert set(model.losses(content, style)) == {"content", "style", "identity1", "identity2"}


def test_config_checks():
    with pytest.raises(ConfigError, match=r"baselines\.iest\.batch_size"):
        build_model("iest", cnn_config(batch_size=2))
    with pytest.raises(ConfigError, match=r"baselines\.iest\.options\.tau"):
        build_model("iest", cnn_config(options={"tau": 0.0}))
    with pytest.raises(ConfigError, match=r"baselines\.iest\.options\.betas.*d_betas, tau|tau, d_betas"):
        build_model("iest", cnn_config(options={"betas": (0.5, 0.9)}))


def test_discriminator_handles_small_images():
    scores = MultiScaleDiscriminator(width=0.125)(torch.rand(2, 3, 32, 48))
    assert [tuple(s.shape) for s in scores] == [(2, 1, 8, 12), (2, 1, 4, 6), (2, 1, 2, 3)]


def test_discriminator_protocol():
    """The trainer's order: G forward, D step, then G's adversarial term with the updated D."""
    torch.manual_seed(0)
    model = build_model("iest", cnn_config())
    generator = {
        name: p.detach().clone()
        for name, p in model.named_parameters()
        if p.requires_grad and not name.startswith("discriminator.")
    }
    critic = {name: p.detach().clone() for name, p in model.discriminator.named_parameters()}
    d_optimizer = torch.optim.Adam(model.discriminator.parameters(), lr=1e-3, betas=model.options["d_betas"])
    model.losses(torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32))
    d_optimizer.zero_grad()
    model.discriminator_loss().backward()
    d_optimizer.step()
    assert all(p.grad is None for name, p in model.named_parameters() if name in generator)
    assert all(
        not torch.equal(critic[name], p) for name, p in model.discriminator.named_parameters() if p.dim() > 1
    )
    assert all(torch.equal(generator[name], p) for name, p in model.named_parameters() if name in generator)
    adversarial = model.adversarial_losses()["adversarial"]
    adversarial.backward()
    assert model.decoder[-1].weight.grad is not None and model.decoder[-1].weight.grad.abs().sum() > 0


def test_training_reduces_loss():
    model = build_model("iest", cnn_config(loss={"adversarial": 0}))
    assert_training_reduces_loss(model)
