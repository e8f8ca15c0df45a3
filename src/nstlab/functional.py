"""Pure tensor math shared by models, losses and metrics: no state, no I/O.

Shapes: feature maps are (B, C, H, W); images are (B, 3, H, W).
"""

import torch
import torch.nn.functional as F

ADAIN_EPS = 1e-5  # pytorch-AdaIN's calc_mean_std eps, also used by StyTr², SANet, MCC, IEST
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_normalize(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] RGB -> ImageNet-normalised RGB (torchvision VGG and ViT-LoRA's convention)."""
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def imagenet_denormalize(images: torch.Tensor) -> torch.Tensor:
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return images * std + mean


def channel_mean(features: torch.Tensor) -> torch.Tensor:
    """Per-sample, per-channel mean over positions: (B, C, H, W) -> (B, C, 1, 1)."""
    return features.mean(dim=(2, 3), keepdim=True)


def channel_std(features: torch.Tensor, eps: float = ADAIN_EPS) -> torch.Tensor:
    """sqrt(unbiased variance + eps) over positions: (B, C, H, W) -> (B, C, 1, 1).

    eps = 0 gives the plain unbiased std the ViT-LoRA paper code uses (torch.std).
    """
    flat = features.flatten(2)
    return (flat.var(dim=2, unbiased=True) + eps).sqrt()[..., None, None]


def mean_std(features: torch.Tensor, eps: float = ADAIN_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    return channel_mean(features), channel_std(features, eps)


def mvn(features: torch.Tensor, eps: float = ADAIN_EPS) -> torch.Tensor:
    """Mean-variance normalisation per sample and channel: (x - mu) / sqrt(var + eps)."""
    mean, std = mean_std(features, eps)
    return (features - mean) / std


def adain(content_features: torch.Tensor, style_features: torch.Tensor) -> torch.Tensor:
    """AdaIN (Huang & Belongie 2017, eq. 8): sigma(y) * (x - mu(x)) / sigma(x) + mu(y)."""
    style_mean, style_std = mean_std(style_features)
    return mvn(content_features) * style_std + style_mean


def mean_std_loss(output_features: torch.Tensor, style_features: torch.Tensor, eps: float) -> torch.Tensor:
    """MSE of channel means + MSE of channel stds (the AdaIN-family style loss for one layer)."""
    out_mean, out_std = mean_std(output_features, eps)
    style_mean, style_std = mean_std(style_features, eps)
    return F.mse_loss(out_mean, style_mean) + F.mse_loss(out_std, style_std)


def gram(features: torch.Tensor) -> torch.Tensor:
    """Unnormalised Gram matrix F Fᵀ per sample: (B, C, H, W) -> (B, C, C)."""
    flat = features.flatten(2)
    return flat @ flat.transpose(1, 2)


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation, summed (MCCNet's TV term): 0 for a constant image."""
    horizontal = (images[..., :, 1:] - images[..., :, :-1]).abs().sum()
    vertical = (images[..., 1:, :] - images[..., :-1, :]).abs().sum()
    return horizontal + vertical


def laplacian(images: torch.Tensor) -> torch.Tensor:
    """4-neighbour Laplacian per channel with replicate padding: (B, C, H, W) -> same shape."""
    channels = images.shape[1]
    kernel = images.new_tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
    kernel = kernel.expand(channels, 1, 3, 3)
    return F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), kernel, groups=channels)


def pad_to_multiple(images: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad H and W up to a multiple; returns the padded batch and the original (H, W).

    Falls back to replicate padding when the image is too small to reflect.
    """
    height, width = images.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if pad_h == 0 and pad_w == 0:
        return images, (height, width)
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(images, (0, pad_w, 0, pad_h), mode=mode), (height, width)


def crop_to(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Undo pad_to_multiple: keep the top-left (H, W)."""
    return images[..., : size[0], : size[1]]


def luminance(images: torch.Tensor) -> torch.Tensor:
    """ITU-R BT.601 luma of RGB in [0, 1]: (B, 3, H, W) -> (B, 1, H, W)."""
    weights = images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def ssim(first: torch.Tensor, second: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM (Wang et al. 2004; Gaussian window 11, σ 1.5, K1 0.01, K2 0.03, range 1) per sample.

    Inputs (B, C, H, W) in [0, 1]; returns (B,). Valid-region windows only, as scikit-image.
    """
    c1, c2 = 0.01**2, 0.03**2
    window = min(window, first.shape[-1], first.shape[-2])
    coords = torch.arange(window, dtype=first.dtype, device=first.device) - (window - 1) / 2
    gauss = torch.exp(-(coords**2) / (2 * sigma**2))
    gauss = gauss / gauss.sum()
    kernel = (gauss[:, None] * gauss[None, :]).expand(first.shape[1], 1, window, window)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, kernel, groups=first.shape[1])

    mean_a, mean_b = blur(first), blur(second)
    var_a = blur(first * first) - mean_a**2
    var_b = blur(second * second) - mean_b**2
    covariance = blur(first * second) - mean_a * mean_b
    numerator = (2 * mean_a * mean_b + c1) * (2 * covariance + c2)
    denominator = (mean_a**2 + mean_b**2 + c1) * (var_a + var_b + c2)
    return (numerator / denominator).flatten(1).mean(dim=1)


def gram_distance(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """MSE between size-normalised Gram matrices G/(H·W): comparable across image sizes."""
    first_gram = gram(first) / (first.shape[-2] * first.shape[-1])
    second_gram = gram(second) / (second.shape[-2] * second.shape[-1])
    return F.mse_loss(first_gram, second_gram)


def _symmetric_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of symmetric positive definite matrices (..., C, C), by eigendecomposition."""
    values, vectors = torch.linalg.eigh(matrix)
    return vectors @ torch.diag_embed(values.clamp_min(0).sqrt()) @ vectors.transpose(-1, -2)


def coral(source: torch.Tensor, target: torch.Tensor, eps: float = ADAIN_EPS) -> torch.Tensor:
    """CORAL colour transfer (pytorch-AdaIN's `--preserve_color`): `source` (B, 3, H, W) recoloured
    so that its per-image channel means, stds and channel correlations are `target`'s (B or 1, 3,
    H', W'): standardise each channel, whiten with the source's correlation matrix, colour with
    the target's, restore the target's std and mean.

    pytorch-AdaIN sums the products over pixels and adds I; we average them (unbiased, like the
    std) and add eps·I, so two images of different sizes get the same result as same-sized ones.
    """

    def statistics(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        flat = images.flatten(2).double()  # (B, 3, N); fp64: the whitening inverts a 3×3 matrix
        mean = flat.mean(dim=2, keepdim=True)
        std = flat.std(dim=2, keepdim=True).clamp_min(eps)
        normalised = (flat - mean) / std
        correlation = normalised @ normalised.transpose(1, 2) / max(flat.shape[2] - 1, 1)
        correlation = correlation + eps * torch.eye(flat.shape[1], dtype=flat.dtype, device=flat.device)
        return normalised, mean, std, correlation

    normalised, _, _, source_correlation = statistics(source)
    _, target_mean, target_std, target_correlation = statistics(target)
    transform = _symmetric_sqrt(target_correlation) @ torch.linalg.inv(_symmetric_sqrt(source_correlation))
    recoloured = (transform @ normalised) * target_std + target_mean
    return recoloured.to(source.dtype).reshape(source.shape)
