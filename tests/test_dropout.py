"""train.fast_dropout: nn.Dropout's distribution from a uniform draw, swapped in on CPU only."""

import torch
import torch.nn as nn

from nstlab import dropout
from nstlab.dropout import UniformDropout, UniformDropoutAttention, swap_dropout
from nstlab.models import build_model
from nstlab.runtime import use_fast_dropout

CPU = torch.device("cpu")


def test_keeps_one_minus_p_of_the_elements_scaled_by_its_inverse():
    torch.manual_seed(0)
    x = torch.full((1_000_000,), 2.0)
    y = UniformDropout(0.1).train()(x)
    kept = y != 0
    # binomial std of the kept fraction at n = 1e6: sqrt(0.09 / 1e6) = 3e-4; 5e-3 is 16 sigma
    assert abs(kept.float().mean().item() - 0.9) < 5e-3
    assert torch.allclose(y[kept], torch.tensor(2.0 / 0.9))
    assert abs(y.mean().item() - 2.0) < 0.02  # unbiased, as nn.Dropout


def test_is_the_identity_in_eval_mode_and_at_p_zero():
    x = torch.randn(4, 7)
    assert torch.equal(UniformDropout(0.5).eval()(x), x)
    assert torch.equal(UniformDropout(0.0).train()(x), x)


def test_keeps_the_input_dtype():
    x = torch.randn(8, 8, dtype=torch.bfloat16)
    assert UniformDropout(0.3).train()(x).dtype == torch.bfloat16


def test_swap_reaches_peft_lora_dropout_and_the_decoder_and_keeps_the_state_dict(tiny_config):
    model = build_model("vit_lora", tiny_config())
    model.enable_lora()
    keys = set(model.state_dict())
    before = sum(type(m) is nn.Dropout and m.p > 0 for m in model.modules())
    attentions = sum(type(m) is nn.MultiheadAttention and m.dropout > 0 for m in model.modules())
    lora_dropouts = sum("lora_dropout" in name for name, m in model.named_modules() if type(m) is nn.Dropout)
    assert lora_dropouts > 0 and before > lora_dropouts and attentions > 0  # LoRA's and the decoders'
    assert swap_dropout(model) == before + attentions
    assert not any(
        type(m) in (nn.Dropout, nn.MultiheadAttention) for m in model.modules() if getattr(m, "p", 0)
    )
    assert sum(isinstance(m, UniformDropout) for m in model.modules()) == before
    assert sum(isinstance(m, UniformDropoutAttention) for m in model.modules()) == attentions
    assert set(model.state_dict()) == keys  # checkpoints load as before


def test_the_lever_is_cpu_only_and_follows_the_param(tiny_config):
    model = build_model("vit_lora", tiny_config())
    assert not use_fast_dropout(model, tiny_config("train.fast_dropout=false"), CPU)
    assert not use_fast_dropout(model, tiny_config(), torch.device("cuda"))  # torch's fused kernel there
    assert not any(isinstance(m, UniformDropout) for m in model.modules())
    assert use_fast_dropout(model, tiny_config(), CPU)
    assert any(isinstance(m, UniformDropout) for m in model.modules())


def _attention_pair(p: float = 0.1):
    """An nn.MultiheadAttention with biases and its UniformDropoutAttention twin, same weights."""
    torch.manual_seed(0)
    reference = nn.MultiheadAttention(16, 4, dropout=p, batch_first=True)
    nn.init.normal_(reference.in_proj_bias)
    fast = nn.MultiheadAttention(16, 4, dropout=p, batch_first=True)
    fast.load_state_dict(reference.state_dict())
    assert swap_dropout(nn.Sequential(fast)) == 1  # a module's children are swapped
    query, key = torch.randn(3, 7, 16), torch.randn(3, 5, 16)
    return reference, fast, query, key


def test_attention_without_its_dropout_is_torchs_attention(monkeypatch):
    reference, fast, query, key = _attention_pair()
    assert type(fast) is UniformDropoutAttention
    expected = reference.eval()(query, key, key, need_weights=False)[0]
    assert torch.allclose(fast.eval()(query, key, key, need_weights=False)[0], expected, atol=1e-6)
    monkeypatch.setattr(dropout, "uniform_dropout", lambda weights, p: weights)  # the written-out path
    assert torch.allclose(fast.train()(query, key, key, need_weights=False)[0], expected, atol=1e-6)


def test_attention_dropout_drops_weights_unbiased_and_trains():
    reference, fast, query, key = _attention_pair(p=0.3)
    expected = reference.eval()(query, key, key, need_weights=False)[0]
    fast.train()
    first, second = (fast(query, key, key, need_weights=False)[0] for _ in range(2))
    assert not torch.allclose(first, second)  # masks are drawn in training
    with torch.no_grad():
        mean = torch.stack([fast(query, key, key, need_weights=False)[0] for _ in range(2000)]).mean(0)
    assert (mean - expected).abs().max() < 0.05  # E[mask] = 1: the mean output is the eval output
    fast(query, key, key, need_weights=False)[0].sum().backward()
    assert fast.in_proj_weight.grad is not None and fast.out_proj.weight.grad is not None


def test_attention_calls_it_does_not_write_out_are_torchs():
    reference, fast, query, key = _attention_pair()
    torch.manual_seed(1)
    expected = reference.train()(query, key, key, need_weights=True)
    torch.manual_seed(1)
    actual = fast.train()(query, key, key, need_weights=True)
    assert torch.equal(actual[0], expected[0]) and torch.equal(actual[1], expected[1])
