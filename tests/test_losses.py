"""The shared loss helpers (losses.py) on known tensors, and the paper's loss taps: what its code
really compares (docs/methods.md#loss-network-and-losses)."""

import pytest
import torch
from torchvision.models.vgg import cfgs, make_layers

from nstlab.models.encoders import PAPER_LAYERS, TorchVGG19
from nstlab.functional import imagenet_normalize
from nstlab.losses import identity_terms

PAPER_TAP_INDICES = (0, 5, 10, 19, 28)  # NST-Project code/lossnet.py: chosen_features


def test_paper_taps_are_the_relus_that_overwrite_them(tmp_path):
    """The paper's loop over torchvision's features[:29] (in-place ReLUs) stores conv1_1…conv5_1 by
    index; by the time the loss reads them they hold relu1_1…relu4_1 and the pre-ReLU conv5_1."""
    torch.manual_seed(0)
    features = make_layers(cfgs["E"])[:29].eval()  # what vgg19().features is built from, classifier aside
    torch.save(features.state_dict(), tmp_path / "vgg19.pth")
    images = torch.rand(2, 3, 48, 40)

    stored, hidden = [], imagenet_normalize(images)
    with torch.no_grad():
        for index, layer in enumerate(features):
            hidden = layer(hidden)
            if index in PAPER_TAP_INDICES:
                stored.append(hidden)
        conv1_1 = features[0](imagenet_normalize(images))
        ours = TorchVGG19(PAPER_LAYERS, weights=str(tmp_path / "vgg19.pth"))(images)

    assert list(ours) == ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "conv5_1"]
    for tapped, name in zip(stored, PAPER_LAYERS):
        torch.testing.assert_close(ours[name], tapped)
    assert (stored[0] >= 0).all() and (conv1_1 < 0).any()  # the conv output was rectified in place
    assert (ours["conv5_1"] < 0).any()  # the last tap is never rectified


def test_identity_terms_on_known_tensors_and_only_the_weighted_ones():
    content, style = torch.zeros(1, 3, 2, 2), torch.ones(1, 3, 2, 2)
    identities = (torch.full((1, 3, 2, 2), 0.5), torch.full((1, 3, 2, 2), 3.0))
    features = ({"a": content}, {"a": style})
    calls = []

    def stylize_with_itself():
        calls.append(1)
        return identities

    def encode(images):
        return {"a": images * 2}

    terms = identity_terms(
        {"identity1": 1.0, "identity2": 1.0}, (content, style), features, stylize_with_itself, encode
    )
    assert float(terms["identity1"]) == pytest.approx(0.25 + 4.0)  # MSE(0.5, 0) + MSE(3, 1)
    assert float(terms["identity2"]) == pytest.approx(1.0 + 25.0)  # MSE(1, 0) + MSE(6, 1)
    assert list(
        identity_terms(
            {"identity1": 0.0, "identity2": 2.0}, (content, style), features, stylize_with_itself, encode
        )
    ) == ["identity2"]
    assert (
        identity_terms(
            {"identity1": 0, "identity2": 0}, (content, style), features, stylize_with_itself, encode
        )
        == {}
    )
    assert len(calls) == 2  # no identity pass when no identity term is on
