"""StyTr² (Deng et al., "StyTr²: Image Style Transfer with Transformers", CVPR 2022).

Both images are cut into 8×8 patches; a content and a style transformer encoder read them
(the content one with the content-aware positional encoding, CAPE, on its queries and keys);
a transformer decoder lets every content token attend to the style tokens; the AdaIN CNN
decoder turns the token grid back into pixels. Every number: docs/methods.md#stytr2
(diyiiyiii/StyTR-2: models/StyTR.py, models/transformer.py, train.py).

    content ─patch 8×8─► (B, d, H/8, W/8) ─┬─ CAPE ─► positions (B, N, d)
                                           └─ content encoder (pos on q, k) ─► (B, N, d) ─┐
    style   ─patch 8×8─► (B, d, H'/8, W'/8) ── style encoder ─► (B, M, d) ────────────────┤
                               StyleDecoder (queries + positions) ─► (B, d, H/8, W/8) ─ CNN ─► image
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from nstlab.models.base import StyleModel
from nstlab.models.encoders import pad_for_vgg
from nstlab.errors import ConfigError
from nstlab.functional import crop_to, pad_to_multiple
from nstlab.losses import identity_terms, loss_network
from nstlab.models.blocks import AdaINDecoder, StyleDecoder, method_settings, part_counts

PATCH = 8  # PatchEmbed(patch_size=8); the AdaIN decoder's three ×2 upsamplings undo it exactly
CAPE_GRID = 18  # transformer.py: nn.AdaptiveAvgPool2d(18)
FULL_WIDTH = 512  # the AdaIN decoder's input channels at width 1.0
# transformer.py Transformer(d_model=512, nhead=8, num_encoder_layers=3, num_decoder_layers=3,
# dim_feedforward=2048, dropout=0.1).
DEFAULT_OPTIONS = {
    "d_model": 512,
    "heads": 8,
    "ffn": 2048,
    "encoder_layers": 3,
    "decoder_layers": 3,
    "dropout": 0.1,
}
# train.py: --content_weight 7, --style_weight 10; loss = ... + l_identity1 * 70 + l_identity2 * 1.
PAPER_LOSS_WEIGHTS = {"content": 7.0, "style": 10.0, "identity1": 70.0, "identity2": 1.0}


class EncoderLayer(nn.Module):
    """Post-norm self-attention layer: positions are added to queries and keys, never to values.

    transformer.py TransformerEncoderLayer.forward_post: q = k = src + pos, v = src; residual +
    LayerNorm after the attention and after the ReLU FFN. tokens (B, N, d), pos (B, N, d) or None.
    """

    def __init__(self, d_model: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        self.attention = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.ffn_in = nn.Linear(d_model, ffn)
        self.ffn_out = nn.Linear(ffn, d_model)
        self.norm_1, self.norm_2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
        query = key = tokens if pos is None else tokens + pos
        attended = self.attention(query, key, tokens, need_weights=False)[0]
        tokens = self.norm_1(tokens + self.dropout(attended))
        hidden = self.ffn_out(self.dropout(F.relu(self.ffn_in(tokens))))
        return self.norm_2(tokens + self.dropout(hidden))


class Encoder(nn.Module):
    """A stack of EncoderLayer with no final norm (normalize_before=False -> encoder_norm None)."""

    def __init__(self, d_model: int, layers: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(d_model, heads, ffn, dropout) for _ in range(layers))
        for parameter in self.parameters():  # Transformer._reset_parameters: Xavier for dim > 1
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)

    def forward(self, tokens: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
        for layer in self.layers:
            tokens = layer(tokens, pos)
        return tokens


class ContentAwarePositionalEncoding(nn.Module):
    """CAPE (StyTr² §3.2, eq. 4): positions computed from the content itself, at any grid size.

    (B, d, h, w) patch embedding -> average-pool to 18×18 -> 1×1 conv -> bilinear resize to (h, w).
    The official code resizes to the *style* grid (`size=style.shape[-2:]`), equal to the content
    grid in its training; we resize to the content grid, which the positions belong to.
    The conv keeps PyTorch's default init: it is created after Transformer._reset_parameters.
    """

    def __init__(self, d_model: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(CAPE_GRID)
        self.project = nn.Conv2d(d_model, d_model, 1)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.project(self.pool(embedding)), size=embedding.shape[-2:], mode="bilinear")


def _check_options(options: dict) -> None:
    # d_model >= 4: the CNN decoder never narrows a layer below 4 channels (encoders.scaled_channels).
    minimums = {"d_model": 4, "heads": 1, "ffn": 1, "encoder_layers": 1, "decoder_layers": 1}
    for name, minimum in minimums.items():
        value = options[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(
                f"baselines.stytr2.options.{name} = {value!r}: expected a whole number >= {minimum}"
            )
    dropout = options["dropout"]
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise ConfigError(f"baselines.stytr2.options.dropout = {dropout!r}: must be in [0, 1)")
    if options["d_model"] % options["heads"]:
        raise ConfigError(
            f"baselines.stytr2.options.heads = {options['heads']}: "
            f"must divide options.d_model = {options['d_model']}"
        )


class StyTr2(StyleModel):
    """StyTr² under the model contract of nstlab.models; d_model < 512 narrows the CNN decoder too."""

    name = "stytr2"

    def __init__(self, cfg):
        super().__init__()
        block = cfg.baselines["stytr2"]
        self.loss_weights = method_settings("stytr2", "loss", block.loss, PAPER_LOSS_WEIGHTS)
        options = method_settings("stytr2", "options", block.options, DEFAULT_OPTIONS)
        _check_options(options)
        d_model, heads, ffn, dropout = (
            options["d_model"],
            options["heads"],
            options["ffn"],
            float(options["dropout"]),
        )
        self.patch_embedding = nn.Conv2d(3, d_model, PATCH, stride=PATCH)  # StyTR.py PatchEmbed.proj
        self.cape = ContentAwarePositionalEncoding(d_model)
        self.content_encoder = Encoder(d_model, options["encoder_layers"], heads, ffn, dropout)
        self.style_encoder = Encoder(d_model, options["encoder_layers"], heads, ffn, dropout)
        self.transformer_decoder = StyleDecoder(d_model, options["decoder_layers"], heads, ffn, dropout)
        self.cnn_decoder = AdaINDecoder(d_model / FULL_WIDTH)  # StyTR.py `decoder`: input d channels
        # models/StyTR.py StyTrans: normalised VGG to relu5_1, frozen; mvn content, mean/std style.
        self.loss_network = loss_network("stytr2", cfg)

    def forward(self, content: torch.Tensor, style: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
        """content, style (B, 3, H, W) in [0, 1] (sizes may differ) -> (B, 3, H, W) like content.

        H, W are reflect-padded to a multiple of 8 and the output cropped back. alpha < 1 (not in
        StyTr²'s code) trades style for content as SANet does: the CNN decoder gets α·D(c, s) +
        (1 − α)·D(c, c), D(c, c) being the content-content path the identity losses train (Icc).
        """
        content, content_size = pad_to_multiple(content, PATCH)
        style, _ = pad_to_multiple(style, PATCH)
        content_embedding = self.patch_embedding(content)  # (B, d, h, w)
        grid = content_embedding.shape[-2:]
        content_pos = self.cape(content_embedding).flatten(2).transpose(1, 2)  # (B, N, d), N = h·w
        content_tokens = content_embedding.flatten(2).transpose(1, 2)
        style_tokens = self.patch_embedding(style).flatten(2).transpose(1, 2)  # (B, M, d)
        style_tokens = self.style_encoder(style_tokens, pos=None)  # the style gets no positions
        content_tokens = self.content_encoder(content_tokens, pos=content_pos)
        mixed = self.transformer_decoder(content_tokens, style_tokens, content_pos)  # (B, N, d)
        if alpha != 1.0:  # the content as its own style: what self(content, content) decodes
            content_as_style = self.style_encoder(content_embedding.flatten(2).transpose(1, 2), pos=None)
            reconstruction = self.transformer_decoder(content_tokens, content_as_style, content_pos)
            mixed = alpha * mixed + (1.0 - alpha) * reconstruction
        feature_map = mixed.transpose(1, 2).reshape(mixed.shape[0], -1, *grid)
        return crop_to(self.cnn_decoder(feature_map), content_size)

    def losses(self, content: torch.Tensor, style: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unweighted terms of StyTR.py StyTrans.forward; terms weighted 0 are not computed.

        content: Σ relu4_1, relu5_1 of MSE(mvn φ(Ics), mvn φ(Ic)); style: Σ relu1_1…relu5_1 of
        MSE(μ) + MSE(σ); identity1: MSE(Icc, Ic) + MSE(Iss, Is) in pixels; identity2: Σ over the
        five layers of MSE(φ(Icc), φ(Ic)) + MSE(φ(Iss), φ(Is)). Icc = self(Ic, Ic), Iss = self(Is, Is).
        Computed on images padded for the VGG (multiple of 8, ≥ 24 px: a no-op at training sizes),
        as the AdaIN family does, so relu5_1 exists for any input.
        """
        content, style = pad_for_vgg(content)[0], pad_for_vgg(style)[0]
        net, weights = self.loss_network, self.loss_weights
        content_features, style_features = net(content), net(style)
        terms = {}
        if weights["content"] or weights["style"]:
            output_features = net(self(content, style))
            if weights["content"]:
                terms["content"] = net.content_loss(output_features, content_features)
            if weights["style"]:
                terms["style"] = net.style_loss(output_features, style_features)
        terms.update(
            identity_terms(
                weights,
                (content, style),
                (content_features, style_features),
                lambda: (self(content, content), self(style, style)),
                net,
            )
        )
        return terms

    def parameter_counts(self) -> dict[str, int]:
        return part_counts(self)
