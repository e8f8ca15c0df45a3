"""The frozen encoders (encoders.py): frozen in every mode, seeded, one weights loader."""

import pytest
import torch

from nstlab.models.encoders import NormalisedVGG, ResNet50Features, TorchVGG19, load_weights
from nstlab.errors import ConfigError


@pytest.mark.parametrize(
    "build",
    [
        lambda: TorchVGG19(["relu2_1"], width=0.125),
        lambda: NormalisedVGG(width=0.125),
        lambda: ResNet50Features(["stem"]),
    ],
)
def test_every_encoder_is_frozen_and_stays_in_eval_mode(build):
    encoder = build()
    encoder.train()
    assert not encoder.training and not any(module.training for module in encoder.modules())
    assert not any(parameter.requires_grad for parameter in encoder.parameters())


def test_random_weights_follow_the_seed_and_leave_the_caller_rng_alone():
    torch.manual_seed(5)
    expected = torch.rand(1)
    torch.manual_seed(5)
    first = TorchVGG19(["relu1_1"], width=0.125, seed=3)
    assert torch.equal(torch.rand(1), expected)
    second, other = TorchVGG19(["relu1_1"], width=0.125, seed=3), TorchVGG19(["relu1_1"], width=0.125, seed=4)
    assert torch.equal(first.features[0].weight, second.features[0].weight)
    assert not torch.equal(first.features[0].weight, other.features[0].weight)


def test_tapped_layers_only_and_their_shapes():
    features = TorchVGG19(["relu1_1", "relu2_1"], width=0.125)(torch.rand(2, 3, 32, 32))
    assert {name: tuple(value.shape) for name, value in features.items()} == {
        "relu1_1": (2, 8, 32, 32),
        "relu2_1": (2, 16, 16, 16),
    }


def test_load_weights_reads_a_file_and_names_the_key_when_missing(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "state.pth")
    assert torch.equal(load_weights(str(tmp_path / "state.pth"), "backbone.vgg19")["w"], torch.ones(2))
    with pytest.raises(ConfigError, match=r"^backbone\.vgg19 = '.*missing.pth': no such file; use 'random'"):
        load_weights(str(tmp_path / "missing.pth"), "backbone.vgg19")
    with pytest.raises(ConfigError, match=r"download it from https://example\.org"):
        load_weights(str(tmp_path / "missing.pth"), "backbone.adain_vgg", source="https://example.org")
