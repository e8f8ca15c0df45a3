"""The paper's loss taps: what its code really compares (docs/methods.md#loss-network-and-losses)."""

import torch
from torchvision.models.vgg import cfgs, make_layers

from nstlab.losses import PAPER_LAYERS, TorchVGG19, imagenet_normalize

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
