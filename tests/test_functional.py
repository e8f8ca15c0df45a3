"""The pure math, on tensors whose answers are known by hand."""

import pytest
import torch

from nstlab.functional import (
    adain,
    channel_std,
    crop_to,
    gram,
    gram_distance,
    laplacian,
    luminance,
    mean_std,
    mvn,
    pad_to_multiple,
    ssim,
    total_variation,
)
from nstlab.losses import paper_content_loss, paper_style_loss


def test_mean_std_of_a_known_channel():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 2, 2)
    mean, std = mean_std(x, eps=0.0)
    assert mean.item() == pytest.approx(2.5)
    assert std.item() == pytest.approx((5 / 3) ** 0.5)  # unbiased variance of 1..4 is 5/3


def test_mvn_and_adain_move_statistics():
    torch.manual_seed(0)
    content, style = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8) * 3 + 5
    normalised = mvn(content)
    assert torch.allclose(normalised.mean(dim=(2, 3)), torch.zeros(2, 3), atol=1e-5)
    out_mean, out_std = mean_std(adain(content, style))
    style_mean, style_std = mean_std(style)
    assert torch.allclose(out_mean, style_mean, atol=1e-4) and torch.allclose(out_std, style_std, atol=1e-3)


def test_gram_of_a_known_tensor():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 2, 1, 2)  # channel rows (1, 2) and (3, 4)
    assert torch.equal(gram(x), torch.tensor([[[5.0, 11.0], [11.0, 25.0]]]))


def test_total_variation_and_laplacian_vanish_on_a_constant_image():
    constant = torch.full((1, 3, 9, 7), 0.4)
    assert total_variation(constant).item() == 0.0
    assert torch.allclose(laplacian(constant), torch.zeros_like(constant))
    ramp = torch.arange(4.0).view(1, 1, 1, 4)
    assert total_variation(ramp).item() == 3.0


def test_ssim_is_one_for_identical_images_and_lower_for_noise():
    torch.manual_seed(0)
    image = torch.rand(2, 1, 32, 32)
    assert torch.allclose(ssim(image, image), torch.ones(2), atol=1e-5)
    assert (ssim(image, (image + 0.3 * torch.randn_like(image)).clamp(0, 1)) < 0.9).all()


def test_luminance_of_pure_colours():
    rgb = torch.eye(3).view(3, 3, 1, 1)
    assert torch.allclose(luminance(rgb).flatten(), torch.tensor([0.299, 0.587, 0.114]))


def test_gram_distance_of_a_constant_image_against_zero_features():
    features = torch.full((1, 2, 4, 4), 2.0)
    # G/(HW) = 4 everywhere for the constant map, 0 for zeros -> MSE = 16
    assert gram_distance(features, torch.zeros_like(features)).item() == pytest.approx(16.0)


def test_paper_losses_are_zero_for_identical_features_and_known_otherwise():
    features = {"relu1_1": torch.rand(1, 4, 6, 6), "conv5_1": torch.rand(1, 4, 2, 2)}
    assert paper_content_loss(features, features).item() == 0.0
    assert paper_style_loss(features, features).item() == 0.0
    shifted = {name: value + 1.0 for name, value in features.items()}
    assert paper_content_loss(shifted, features).item() == pytest.approx(2.0)  # MSE 1 per layer
    assert paper_style_loss(shifted, features).item() == pytest.approx(2.0, abs=1e-5)  # mean shift only


@pytest.mark.parametrize("size", [(17, 33), (32, 32), (3, 5)])
def test_pad_and_crop_round_trip(size):
    image = torch.rand(1, 3, *size)
    padded, original = pad_to_multiple(image, 16)
    assert padded.shape[-2] % 16 == 0 and padded.shape[-1] % 16 == 0
    assert torch.equal(crop_to(padded, original), image)


def test_plain_std_has_no_eps():
    assert channel_std(torch.zeros(1, 1, 2, 2), eps=0.0).item() == 0.0


def test_coral_gives_uncorrelated_channels_the_targets_means_and_stds_by_hand():
    from nstlab.functional import coral

    # Four pixels; the centred channels (±0.5 patterns) are orthogonal: no correlation to whiten.
    pattern = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 1.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    source = pattern.reshape(1, 3, 2, 2)
    # Each target channel is a·pattern + b, so the recoloured source must be the target itself:
    # (x − 0.5)/σ·(a·σ) + (a/2 + b) = a·x + b.
    scale, shift = torch.tensor([[2.0], [0.5], [0.25]]), torch.tensor([[1.0], [0.25], [0.5]])
    target = (pattern * scale + shift).reshape(1, 3, 2, 2)
    assert torch.allclose(coral(source, target), target, atol=1e-4)
    assert torch.allclose(coral(target, source), source, atol=1e-4)


def test_coral_copies_the_targets_colour_statistics_at_any_size():
    from nstlab.functional import coral

    generator = torch.Generator().manual_seed(0)
    mixing = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.3, -0.5, 0.8]])  # correlated channels
    source = torch.rand(2, 3, 20, 30, generator=generator)
    target = (mixing @ torch.rand(1, 3, 12 * 16, generator=generator) * 0.3 + 0.2).reshape(1, 3, 12, 16)
    result = coral(source, target)
    assert result.shape == source.shape and result.dtype == source.dtype

    def stats(images):
        flat = images.flatten(2).double()
        centred = flat - flat.mean(dim=2, keepdim=True)
        return flat.mean(dim=2), centred @ centred.transpose(1, 2) / (flat.shape[2] - 1)

    for image in result:
        mean, covariance = stats(image[None])
        target_mean, target_covariance = stats(target)
        assert torch.allclose(mean, target_mean, atol=1e-5)
        assert torch.allclose(covariance, target_covariance, atol=1e-4)
    assert torch.allclose(coral(source, source), source, atol=1e-4)  # its own colours: unchanged
