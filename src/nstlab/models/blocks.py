"""Building blocks shared by several methods, written once and imported.

- StyTr²'s transformer decoder (used by StyTr² at d=512 and by ViT-LoRA at d=768).
- parameter counting for `nstlab info`.
- the AdaIN family's parts: the AdaIN decoder and `FeatureTransferNet`, the encoder → transform
  → decoder skeleton that AdaIN, SANet, MCC and IEST share around the frozen normalised VGG-19
  (nstlab.models.encoders; StyTr² reuses the decoder).
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from nstlab.models.base import StyleModel
from nstlab.models.encoders import NormalisedVGG, load_weights, pad_for_vgg, reflect_conv, scaled_channels
from nstlab.errors import ConfigError
from nstlab.functional import crop_to
from nstlab.losses import identity_terms, mean_std_style_loss, normalised_content_loss


def count_parameters(module: nn.Module) -> dict[str, int]:
    """Trainable and frozen parameter counts of one part, as `nstlab info` reports them."""
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
    return {"trainable": trainable, "frozen": frozen}


def part_counts(model: nn.Module, parts: Mapping[str, nn.Module] | None = None) -> dict[str, int]:
    """{part.trainable, part.frozen} per named part (default: the model's children), then the
    model's trainable and total counts: every method's `parameter_counts()`."""
    parts = dict(model.named_children()) if parts is None else parts
    counts = {
        f"{name}.{kind}": number
        for name, module in parts.items()
        for kind, number in count_parameters(module).items()
    }
    counts["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts


class StyleDecoderLayer(nn.Module):
    """StyTr²'s decoder layer, post-norm: two cross-attentions to the style tokens, then an FFN.

    StyTr² code (models/transformer.py, forward_post): both attention blocks take
    query = target + content position, key = value = style tokens (style position is None),
    so the layer has no self-attention. Residual + LayerNorm after each of the three blocks.
    """

    def __init__(self, d_model: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        self.style_attention_1 = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.style_attention_2 = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.ffn_in = nn.Linear(d_model, ffn)
        self.ffn_out = nn.Linear(ffn, d_model)
        self.norm_1, self.norm_2, self.norm_3 = (nn.LayerNorm(d_model) for _ in range(3))
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, target: torch.Tensor, style: torch.Tensor, content_pos: torch.Tensor | None
    ) -> torch.Tensor:
        """target (B, N, d) content tokens, style (B, M, d), content_pos (B, N, d) or None."""
        for attention, norm in ((self.style_attention_1, self.norm_1), (self.style_attention_2, self.norm_2)):
            query = target if content_pos is None else target + content_pos
            attended = attention(query, style, style, need_weights=False)[0]
            target = norm(target + self.dropout(attended))
        hidden = self.ffn_out(self.dropout(F.relu(self.ffn_in(target))))
        return self.norm_3(target + self.dropout(hidden))


def xavier_uniform_weights(module: nn.Module) -> None:
    """Xavier-uniform init of every parameter with more than one dimension (weights, not biases
    or norms), as StyTr²'s and NST-Project's `_reset_parameters` do."""
    for parameter in module.parameters():
        if parameter.dim() > 1:
            nn.init.xavier_uniform_(parameter)


class StyleDecoder(nn.Module):
    """A stack of StyleDecoderLayer plus the final LayerNorm; Xavier-uniform init as StyTr²."""

    def __init__(self, d_model: int, layers: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(StyleDecoderLayer(d_model, heads, ffn, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)
        xavier_uniform_weights(self)

    def forward(
        self, content: torch.Tensor, style: torch.Tensor, content_pos: torch.Tensor | None
    ) -> torch.Tensor:
        for layer in self.layers:
            content = layer(content, style, content_pos)
        return self.norm(content)


# =============================================================================================
# The AdaIN family (AdaIN, SANet, MCC, IEST): normalised VGG-19 → a feature transform → decoder.
# Every number: docs/methods.md#shared-parts-the-adain-family and docs/methods.md#parameter-counts.
# =============================================================================================


class AdaINDecoder(nn.Sequential):
    """relu4_1 features (B, 512w, h, w) -> image (B, 3, 8h, 8w): 3×3 reflection-padded convs with
    ReLU except the last, nearest ×2 upsampling (pytorch-AdaIN net.decoder; 3,505,219 at width 1)."""

    PLAN = (512, 256, "up", 256, 256, 256, 128, "up", 128, 64, "up", 64)

    def __init__(self, width: float = 1.0):
        modules: list[nn.Module] = []
        in_channels = scaled_channels(self.PLAN[0], width)
        for step in self.PLAN[1:]:
            if step == "up":
                modules.append(nn.Upsample(scale_factor=2, mode="nearest"))
            else:
                modules += reflect_conv(in_channels, scaled_channels(step, width))
                in_channels = scaled_channels(step, width)
        modules += [nn.ReflectionPad2d(1), nn.Conv2d(in_channels, 3, 3)]  # no ReLU on the image
        super().__init__(*modules)

    def start_from(self, path: str, width: float) -> None:
        """Load `backbone.adain_decoder`: pytorch-AdaIN's decoder.pth layout, at this `width`."""
        if not Path(path).is_file():
            raise ConfigError(
                f"backbone.adain_decoder = {path!r}: no such file; give a decoder state dict or null (random init)"
            )
        state = load_weights(path, "backbone.adain_decoder")
        own = self.state_dict()
        if state.keys() != own.keys() or any(state[key].shape != own[key].shape for key in own):
            raise ConfigError(
                f"backbone.adain_decoder = {path!r}: not an AdaIN decoder at backbone.vgg_width = {width} "
                "(pytorch-AdaIN's decoder.pth layout); give one saved at this width, or null"
            )
        self.load_state_dict(state)


def method_settings(
    method: str, kind: str, given: Mapping[str, Any], defaults: Mapping[str, Any]
) -> dict[str, Any]:
    """The method's defaults overridden by `baselines.<method>.<kind>` (kind "loss" or "options");
    an unknown name raises a ConfigError naming the key and the allowed names."""
    for name, value in given.items():
        if name not in defaults:
            allowed = ", ".join(defaults) or "none"
            raise ConfigError(f"baselines.{method}.{kind}.{name}: unknown name; allowed: {allowed}")
        if kind == "loss" and not (isinstance(value, (int, float)) and value >= 0):
            raise ConfigError(
                f"baselines.{method}.loss.{name} = {value!r}: a loss weight must be a number ≥ 0"
            )
    return {**defaults, **given}


@dataclass
class TransferStep:
    """One training forward, in padded space: images (B, 3, H, W), their VGG features, the output."""

    content: torch.Tensor
    style: torch.Tensor
    output: torch.Tensor
    content_features: dict[str, torch.Tensor]
    style_features: dict[str, torch.Tensor]
    output_features: dict[str, torch.Tensor]


class FeatureTransferNet(StyleModel):
    """The skeleton AdaIN, SANet, MCC and IEST share: the frozen NormalisedVGG encodes both images,
    `transform(content_features, style_features)` makes relu4_1-sized features, AdaINDecoder
    decodes them. Subclasses set `name` (their `baselines.<name>` block), `transform`,
    `loss_defaults` (term -> default weight), `option_defaults` and `last_layer` (the deepest
    feature the transform reads), and may extend `losses`.
    """

    name: str
    loss_defaults: dict[str, float] = {}
    option_defaults: dict[str, Any] = {}
    last_layer = "relu5_1"
    transform: Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], torch.Tensor]

    def __init__(self, cfg):
        super().__init__()
        spec = cfg.baselines[self.name]
        self.loss_weights = method_settings(self.name, "loss", spec.loss, self.loss_defaults)
        self.options = method_settings(self.name, "options", spec.options, self.option_defaults)
        self.encoder = NormalisedVGG(cfg.backbone.adain_vgg, cfg.backbone.vgg_width, cfg.seed)
        self.decoder = AdaINDecoder(cfg.backbone.vgg_width)
        if cfg.backbone.adain_decoder is not None:
            self.decoder.start_from(cfg.backbone.adain_decoder, cfg.backbone.vgg_width)

    def forward(self, content: torch.Tensor, style: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
        """content (B, 3, H, W), style (B, 3, H', W') in [0, 1] -> (B, 3, H, W), not clamped.

        alpha < 1 trades style for content as the SANet paper's runtime control does: the decoder
        gets α·T(Fc, Fs) + (1 − α)·T(Fc, Fc), T(Fc, Fc) being the content-content path the
        identity losses train; alpha 0 is that reconstruction of the content.
        """
        content, size = pad_for_vgg(content)
        style, _ = pad_for_vgg(style, multiple=1)
        content_features = self.encoder(content, self.last_layer)
        style_features = self.encoder(style, self.last_layer)
        features = self.transform(content_features, style_features)
        if alpha != 1.0:
            features = alpha * features + (1.0 - alpha) * self.transform(content_features, content_features)
        return crop_to(self.decoder(features), size)

    def transfer_step(self, content: torch.Tensor, style: torch.Tensor) -> TransferStep:
        """Stylise and encode everything a loss needs, once. Losses are computed on the padded
        images (a no-op at the training sizes, all multiples of 8)."""
        content, style = pad_for_vgg(content)[0], pad_for_vgg(style)[0]
        content_features, style_features = self.encoder(content), self.encoder(style)
        output = self.decoder(self.transform(content_features, style_features))
        return TransferStep(content, style, output, content_features, style_features, self.encoder(output))

    def content_style_identity_terms(self, step: TransferStep) -> dict[str, torch.Tensor]:
        """Unweighted content, style, identity1, identity2 (SANet / StyTr² code); a term whose
        weight is 0 is left out, and the identity passes run only when one of them is on."""
        weights, terms = self.loss_weights, {}
        if weights.get("content"):
            terms["content"] = normalised_content_loss(step.output_features, step.content_features)
        if weights.get("style"):
            terms["style"] = mean_std_style_loss(step.output_features, step.style_features)
        # Icc = D(T(Fc, Fc)), Iss = D(T(Fs, Fs)): stylising an image with itself gives it back.
        features = (step.content_features, step.style_features)
        terms.update(
            identity_terms(
                weights,
                (step.content, step.style),
                features,
                lambda: [self.decoder(self.transform(f, f)) for f in features],
                self.encoder,
            )
        )
        return terms

    def losses(self, content: torch.Tensor, style: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unweighted loss terms of one step (the trainer applies `loss_weights`)."""
        return self.content_style_identity_terms(self.transfer_step(content, style))

    def parts(self) -> dict[str, nn.Module]:
        """Named parts for parameter_counts; subclasses may split a part further."""
        return dict(self.named_children())

    def parameter_counts(self) -> dict[str, int]:
        return part_counts(self, self.parts())
