"""Building blocks shared by several methods, written once and imported.

- StyTr²'s transformer decoder (used by StyTr² at d=512 and by ViT-LoRA at d=768).
- parameter counting for `nstlab info`.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


def count_parameters(module: nn.Module) -> dict[str, int]:
    """Trainable and frozen parameter counts of one part, as `nstlab info` reports them."""
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
    return {"trainable": trainable, "frozen": frozen}


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

    def forward(self, target: torch.Tensor, style: torch.Tensor, content_pos: torch.Tensor | None) -> torch.Tensor:
        """target (B, N, d) content tokens, style (B, M, d), content_pos (B, N, d) or None."""
        for attention, norm in ((self.style_attention_1, self.norm_1), (self.style_attention_2, self.norm_2)):
            query = target if content_pos is None else target + content_pos
            attended = attention(query, style, style, need_weights=False)[0]
            target = norm(target + self.dropout(attended))
        hidden = self.ffn_out(self.dropout(F.relu(self.ffn_in(target))))
        return self.norm_3(target + self.dropout(hidden))


class StyleDecoder(nn.Module):
    """A stack of StyleDecoderLayer plus the final LayerNorm; Xavier-uniform init as StyTr²."""

    def __init__(self, d_model: int, layers: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(StyleDecoderLayer(d_model, heads, ffn, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)
        for parameter in self.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)

    def forward(self, content: torch.Tensor, style: torch.Tensor, content_pos: torch.Tensor | None) -> torch.Tensor:
        for layer in self.layers:
            content = layer(content, style, content_pos)
        return self.norm(content)
