"""The loss functions, and the two loss networks that pair a frozen encoder with them.

Encode once, score many: a loss network (nstlab.models.encoders) runs once per batch and returns every
tapped layer; the loss functions read that dict. They return unweighted terms; weights are
applied by the caller (trainer or evaluator).
"""

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from nstlab.models.encoders import PAPER_LAYERS, VGG_LAYERS, NormalisedVGG, TorchVGG19
from nstlab.functional import ADAIN_EPS, mean_std, mean_std_loss, mvn

Features = dict[str, torch.Tensor]
STYTR2_LAYERS = VGG_LAYERS  # relu1_1 … relu5_1


def paper_content_loss(output: Features, content: Features) -> torch.Tensor:
    """ViT-LoRA paper: Σ over the tapped layers of MSE(φ(output), φ(content)), no normalisation."""
    return sum(F.mse_loss(output[name], content[name]) for name in output)


def paper_style_loss(output: Features, style: Features) -> torch.Tensor:
    """ViT-LoRA paper: Σ over layers of MSE(μ) + MSE(σ), σ the plain unbiased std (no eps)."""
    total = 0.0
    for name in output:
        out_mean, out_std = mean_std(output[name], eps=0.0)
        style_mean, style_std = mean_std(style[name], eps=0.0)
        total = total + F.mse_loss(out_mean, style_mean) + F.mse_loss(out_std, style_std)
    return total


def feature_mse(first: Features, second: Features) -> torch.Tensor:
    """Σ over layers of MSE between two feature dicts (StyTr²'s identity-2 term)."""
    return sum(F.mse_loss(first[name], second[name]) for name in first)


def normalised_content_loss(
    output_features: Features, content_features: Features, layers: tuple[str, ...] = ("relu4_1", "relu5_1")
) -> torch.Tensor:
    """Σ over layers of MSE(mvn φ(output), mvn φ(content)): the content loss of StyTr², SANet, MCC
    and IEST (SANet train.py calc_content_loss(norm=True) at relu4_1 + relu5_1)."""
    return sum(F.mse_loss(mvn(output_features[layer]), mvn(content_features[layer])) for layer in layers)


def mean_std_style_loss(
    output_features: Features, style_features: Features, layers: tuple[str, ...] = STYTR2_LAYERS
) -> torch.Tensor:
    """Σ over layers of MSE(μ) + MSE(σ), σ = sqrt(unbiased var + 1e-5) (pytorch-AdaIN calc_style_loss)."""
    return sum(mean_std_loss(output_features[layer], style_features[layer], ADAIN_EPS) for layer in layers)


def identity_terms(
    weights: Mapping[str, float],
    images: Sequence[torch.Tensor],
    features: Sequence[Features],
    stylize_with_itself: Callable[[], Sequence[torch.Tensor]],
    encode: Callable[[torch.Tensor], Features],
) -> dict[str, torch.Tensor]:
    """StyTr²'s identity losses (eq. 6), shared by ViT-LoRA, StyTr², SANet, MCC and IEST.

    images: (content, style); features: their loss-network features; `stylize_with_itself()`
    returns (Icc, Iss), each image stylised with itself, run only when a term is on.
    identity1 = Σ MSE(Iii, Ii) in pixels; identity2 = Σ feature_mse(encode(Iii), φ(Ii)).
    A term whose weight is 0 is left out.
    """
    terms: dict[str, torch.Tensor] = {}
    if not (weights.get("identity1") or weights.get("identity2")):
        return terms
    identities = stylize_with_itself()
    if weights.get("identity1"):
        terms["identity1"] = sum(F.mse_loss(identity, image) for identity, image in zip(identities, images))
    if weights.get("identity2"):
        terms["identity2"] = sum(
            feature_mse(encode(identity), image_features)
            for identity, image_features in zip(identities, features)
        )
    return terms


class PaperLossNetwork(TorchVGG19):
    """The ViT-LoRA paper's loss: VGG-19 taps PAPER_LAYERS, plain MSE content, mean/std style."""

    def __init__(self, weights: str = "random", width: float = 1.0, seed: int = 0):
        super().__init__(PAPER_LAYERS, weights, width, seed)

    content_loss = staticmethod(paper_content_loss)
    style_loss = staticmethod(paper_style_loss)


class StyTr2LossNetwork(nn.Module):
    """The StyTr² code's loss convention on the AdaIN normalised VGG-19 ([0, 1] RGB input):
    content = Σ MSE(mvn φ(o), mvn φ(c)) at relu4_1 + relu5_1; style = Σ relu1_1..relu5_1 of
    MSE(μ) + MSE(σ) with σ = sqrt(var + 1e-5); identity = Σ plain feature MSE at all 5 layers."""

    def __init__(self, weights: str = "random", width: float = 1.0, seed: int = 0):
        super().__init__()
        self.vgg = NormalisedVGG(weights, width, seed)

    def forward(self, images: torch.Tensor) -> Features:
        return self.vgg(images)

    content_loss = staticmethod(normalised_content_loss)
    style_loss = staticmethod(mean_std_style_loss)


def loss_network(convention: str, cfg) -> nn.Module:
    """The loss network of a convention ("paper" or "stytr2") with the config's backbone weights."""
    if convention == "paper":
        return PaperLossNetwork(cfg.backbone.vgg19, cfg.backbone.vgg_width, cfg.seed)
    return StyTr2LossNetwork(cfg.backbone.adain_vgg, cfg.backbone.vgg_width, cfg.seed)
