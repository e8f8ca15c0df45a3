"""SANet: "Arbitrary Style Transfer with Style-Attentional Networks" (Park & Lee, CVPR 2019).
No official release; the reference is GlebSBrykin/SANET (Train.ipynb), whose numbers IEST
reuses. Numbers: docs/methods.md#sanet.

    content, style ─VGG─► relu4_1 ─ SANet₄ ─────────────────┐
                        ─► relu5_1 ─ SANet₅ ─ ↑ to relu4_1 ─┴─ + ─ merge conv 3×3 ─ decoder ─► image

Module names (sanet4_1.f, …, merge_conv) follow the reference code, so its transformer_iter_*.pth
loads into `transform`. IEST (iest.py) reuses this whole generator.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from nstlab.functional import mvn
from nstlab.models.blocks import FeatureTransferNet


class SANetAttention(nn.Module):
    """One style-attention block (paper eq. 1–2, reference SANet.forward): four 1×1 convs f, g, h,
    out_conv; F = f(mvn Fc), G = g(mvn Fs), S = softmax over style positions of FᵀG (no 1/√d),
    O = out_conv(h(Fs)·Sᵀ) + Fc. content (B, C, h, w), style (B, C, h', w') -> (B, C, h, w)."""

    def __init__(self, channels: int):
        super().__init__()
        self.f = nn.Conv2d(channels, channels, 1)
        self.g = nn.Conv2d(channels, channels, 1)
        self.h = nn.Conv2d(channels, channels, 1)
        self.out_conv = nn.Conv2d(channels, channels, 1)

    def forward(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        queries = self.f(mvn(content)).flatten(2).transpose(1, 2)  # (B, Nc, C)
        keys = self.g(mvn(style)).flatten(2).transpose(1, 2)  # (B, Ns, C)
        values = self.h(style).flatten(2).transpose(1, 2)  # (B, Ns, C)
        # scale 1: the reference applies no 1/√d. The fused kernel never holds the (Nc × Ns)
        # attention matrix on GPU, which at relu4_1 of a 1024² image is ~1 GB (docs/methods.md#known-traps).
        attended = F.scaled_dot_product_attention(
            queries[:, None], keys[:, None], values[:, None], scale=1.0
        )[:, 0]
        return content + self.out_conv(attended.transpose(1, 2).reshape(content.shape))


class SANetTransform(nn.Module):
    """Two attention blocks, at relu4_1 and relu5_1, merged: the relu5_1 result is upsampled to
    the relu4_1 size, added, reflection-padded and convolved 3×3. -> (B, C, h4, w4)."""

    def __init__(self, channels: int):
        super().__init__()
        self.sanet4_1 = SANetAttention(channels)
        self.sanet5_1 = SANetAttention(channels)
        self.merge_conv = nn.Conv2d(channels, channels, 3)

    def forward(
        self, content_features: dict[str, torch.Tensor], style_features: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        at_4_1 = self.sanet4_1(content_features["relu4_1"], style_features["relu4_1"])
        at_5_1 = self.sanet5_1(content_features["relu5_1"], style_features["relu5_1"])
        # The reference's fixed nn.Upsample(scale_factor=2) crashes when ⌈H/8⌉ is odd; IEST's
        # code resizes to the exact relu4_1 size, which also handles any padding.
        at_5_1 = F.interpolate(at_5_1, size=at_4_1.shape[-2:], mode="nearest")
        return self.merge_conv(F.pad(at_4_1 + at_5_1, (1, 1, 1, 1), mode="reflect"))


class SANet(FeatureTransferNet):
    name = "sanet"
    # Reference Train.ipynb: loss_c·1 + loss_s·3 + l_identity1·50 + l_identity2·1 (the paper's
    # text names the identity weights the other way round; the code trained the released model).
    loss_defaults = {"content": 1.0, "style": 3.0, "identity1": 50.0, "identity2": 1.0}

    def __init__(self, cfg):
        super().__init__(cfg)
        self.transform = SANetTransform(self.encoder.channels["relu4_1"])

    def parts(self) -> dict[str, nn.Module]:
        return {
            "encoder": self.encoder,
            "sanet4_1": self.transform.sanet4_1,
            "sanet5_1": self.transform.sanet5_1,
            "merge_conv": self.transform.merge_conv,
            "decoder": self.decoder,
        }
