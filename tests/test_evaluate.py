"""Evaluation: what moves with the training seed and what must not."""

import torch

from nstlab.evaluate import Scorer


def test_random_init_scoring_networks_do_not_move_with_the_training_seed(tiny_config):
    one, other = Scorer(tiny_config("seed=1")), Scorer(tiny_config("seed=2"))
    moved = Scorer(tiny_config("seed=1", "++data.split_seed=5"))
    for name, tensor in one.state_dict().items():
        assert torch.equal(tensor, other.state_dict()[name]), name
    assert any(not torch.equal(tensor, moved.state_dict()[name]) for name, tensor in one.state_dict().items())
