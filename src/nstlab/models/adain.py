"""AdaIN: "Arbitrary Style Transfer in Real-time with Adaptive Instance Normalization"
(Huang & Belongie, ICCV 2017; code naoto0804/pytorch-AdaIN). Numbers: docs/methods.md#adain.

    content ─VGG─► relu4_1 ─┐
                            ├─ AdaIN: σ(s)·(c − μ(c))/σ(c) + μ(s) ─► t ─ decoder ─► image
    style   ─VGG─► relu4_1 ─┘

Only the decoder trains. Test time: the content–style trade-off α (t ← α·t + (1 − α)·c) and a
weighted mix of several styles (t = Σ wₖ·AdaIN(c, sₖ)), as pytorch-AdaIN's test.py.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from nstlab.models.encoders import VGG_LAYERS, pad_for_vgg
from nstlab.errors import NstlabError
from nstlab.functional import adain, crop_to
from nstlab.losses import mean_std_style_loss
from nstlab.models.blocks import FeatureTransferNet

STYLE_LAYERS = VGG_LAYERS[:4]  # relu1_1 … relu4_1 (pytorch-AdaIN net.py encode_with_intermediate)


class AdaIN(FeatureTransferNet):
    name = "adain"
    # pytorch-AdaIN train.py: content_weight 1.0, style_weight 10.0
    loss_defaults = {"content": 1.0, "style": 10.0}
    last_layer = "relu4_1"

    def transform(
        self, content_features: dict[str, torch.Tensor], style_features: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """AdaIN at relu4_1 (paper eq. 8): (B, C, h, w) -> (B, C, h, w)."""
        return adain(content_features["relu4_1"], style_features["relu4_1"])

    def forward(
        self,
        content: torch.Tensor,
        style: torch.Tensor | Sequence[torch.Tensor],
        alpha: float = 1.0,
        style_weights: Sequence[float] | None = None,
    ) -> torch.Tensor:
        """content (B, 3, H, W) in [0, 1]; style one batch (B or 1, 3, H', W') or a list of them,
        mixed with `style_weights` (default equal, must sum to 1); alpha in [0, 1], 0 = decoded
        content features. Returns (B, 3, H, W), not clamped."""
        styles = [style] if isinstance(style, torch.Tensor) else list(style)
        weights = list(style_weights) if style_weights is not None else [1.0 / len(styles)] * len(styles)
        if not 0.0 <= alpha <= 1.0:
            raise NstlabError(f"alpha = {alpha}: the content–style trade-off must lie in [0, 1]")
        if len(weights) != len(styles) or abs(sum(weights) - 1.0) > 1e-6:
            raise NstlabError(
                f"style weights {weights}: give one weight per style ({len(styles)}), summing to 1"
            )
        content, size = pad_for_vgg(content)
        content_features = self.encoder(content, self.last_layer)
        target = 0.0
        for style_images, weight in zip(styles, weights):
            style_features = self.encoder(pad_for_vgg(style_images, multiple=1)[0], self.last_layer)
            target = target + weight * self.transform(content_features, style_features)
        # pytorch-AdaIN test.py style_transfer: feat * alpha + content_f * (1 - alpha)
        target = alpha * target + (1.0 - alpha) * content_features["relu4_1"]
        return crop_to(self.decoder(target), size)

    def losses(self, content: torch.Tensor, style: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unweighted terms (pytorch-AdaIN net.py Net.forward, α = 1 in training):
        content = MSE(φ_relu4_1(D(t)), t) against the AdaIN target t, not the content image;
        style = Σ relu1_1…relu4_1 of MSE(μ) + MSE(σ)."""
        content, style = pad_for_vgg(content)[0], pad_for_vgg(style)[0]
        style_features = self.encoder(style, self.last_layer)
        target = self.transform(self.encoder(content, self.last_layer), style_features)
        output_features = self.encoder(self.decoder(target), self.last_layer)
        terms = {}
        if self.loss_weights["content"]:
            terms["content"] = F.mse_loss(output_features["relu4_1"], target)
        if self.loss_weights["style"]:
            terms["style"] = mean_std_style_loss(output_features, style_features, STYLE_LAYERS)
        return terms
