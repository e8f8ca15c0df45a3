"""Dropout drawn from one uniform sample per element: torch's distribution, about twice as fast on CPU.

torch's CPU dropout draws its mask with `bernoulli_`; a uniform draw turned into the scaled mask in
place, then one multiply, does the same job in about half the time (4×197×3072 floats on the
2-core EPYC: 14.7 → 7.7 ms). A paper-size ViT-LoRA step runs peft's LoRA dropout 72 times (each
target of both encoders) and the decoders' 18 times: 10 % of a bf16 training step was
`bernoulli_`. Each element is kept with probability 1 − p and scaled by 1 / (1 − p), exactly as
`nn.Dropout`; only the random stream differs. On CUDA torch's fused kernel is already fast, so
`train.fast_dropout` swaps modules on CPU only (nstlab.runtime.use_fast_dropout).

Attention dropout costs more still: with dropout > 0 in training, torch's CPU attention leaves its
fused kernel for the math path and draws a bernoulli mask over the (B, heads, L, S) weights. StyTr²'s
demo attention (4×4×256×256, head size 16, bf16 autocast) takes 12.1 ms forward and backward so,
against 6.8 ms for the same softmax(q kᵀ / √d), uniform mask and product with v written out here.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


def uniform_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Each element kept with probability 1 − p and scaled by 1 / (1 − p), from one uniform draw."""
    mask = torch.rand(x.shape, device=x.device)
    mask.ge_(p).mul_(1.0 / (1.0 - p))  # 1 / (1 − p) where kept, 0 where dropped
    return x * mask.to(x.dtype)


class UniformDropout(nn.Module):
    """`nn.Dropout(p)` with its mask from `torch.rand` (training mode only; identity in eval)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        return uniform_dropout(x, self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class UniformDropoutAttention(nn.MultiheadAttention):
    """`nn.MultiheadAttention` whose attention dropout is `uniform_dropout`, in training.

    Only for the calls nstlab's layers make (batch_first, no masks, no weights returned, packed
    projections, no bias_k/v); any other call, and eval mode, is nn.MultiheadAttention's own. It
    adds no weights: `swap_dropout` changes the class of an existing module in place."""

    def forward(
        self,
        query,
        key,
        value,
        key_padding_mask=None,
        need_weights=True,
        attn_mask=None,
        average_attn_weights=True,
        is_causal=False,
    ):
        plain = (
            self.training
            and self.dropout > 0
            and self.batch_first
            and self._qkv_same_embed_dim
            and not need_weights
            and key_padding_mask is None
            and attn_mask is None
            and not is_causal
            and self.bias_k is None
            and not self.add_zero_attn
        )
        if not plain:
            return super().forward(
                query,
                key,
                value,
                key_padding_mask=key_padding_mask,
                need_weights=need_weights,
                attn_mask=attn_mask,
                average_attn_weights=average_attn_weights,
                is_causal=is_causal,
            )
        batch, length, width = query.shape
        heads, head_width = self.num_heads, self.head_dim
        biases = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)
        q, k, v = (
            F.linear(x, weight, bias).view(batch, -1, heads, head_width).transpose(1, 2)
            for x, weight, bias in zip((query, key, value), self.in_proj_weight.chunk(3), biases)
        )
        weights = (q @ k.transpose(-2, -1) * head_width**-0.5).softmax(-1)
        attended = uniform_dropout(weights, self.dropout) @ v
        return self.out_proj(attended.transpose(1, 2).reshape(batch, length, width)), None


def swap_dropout(model: nn.Module) -> int:
    """Replace every `nn.Dropout` with p > 0 in `model` (peft's LoRA dropout included) by a
    `UniformDropout` of the same p, and turn every `nn.MultiheadAttention` with dropout into a
    `UniformDropoutAttention`; returns how many were swapped. Neither holds weights of its own,
    so state dicts and checkpoints are unchanged."""
    swapped = 0
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is nn.Dropout and child.p > 0:
                setattr(parent, name, UniformDropout(child.p))
                swapped += 1
            elif type(child) is nn.MultiheadAttention and child.dropout > 0:
                child.__class__ = UniformDropoutAttention
                swapped += 1
    return swapped
