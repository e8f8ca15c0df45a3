"""The shared loss helpers (losses.py) on known tensors."""

import pytest
import torch

from nstlab.losses import identity_terms


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

    terms = identity_terms({"identity1": 1.0, "identity2": 1.0}, (content, style), features, stylize_with_itself, encode)
    assert float(terms["identity1"]) == pytest.approx(0.25 + 4.0)  # MSE(0.5, 0) + MSE(3, 1)
    assert float(terms["identity2"]) == pytest.approx(1.0 + 25.0)  # MSE(1, 0) + MSE(6, 1)
    assert list(identity_terms({"identity1": 0.0, "identity2": 2.0}, (content, style), features,
                               stylize_with_itself, encode)) == ["identity2"]
    assert identity_terms({"identity1": 0, "identity2": 0}, (content, style), features, stylize_with_itself,
                          encode) == {}
    assert len(calls) == 2  # no identity pass when no identity term is on
