"""train.fast_dropout: nn.Dropout's distribution from a uniform draw, swapped in on CPU only."""

import torch
import torch.nn as nn

from nstlab.dropout import UniformDropout, swap_dropout
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
    lora_dropouts = sum("lora_dropout" in name for name, m in model.named_modules() if type(m) is nn.Dropout)
    assert lora_dropouts > 0 and before > lora_dropouts  # LoRA's and the decoders'
    assert swap_dropout(model) == before
    assert not any(type(m) is nn.Dropout and m.p > 0 for m in model.modules())
    assert sum(isinstance(m, UniformDropout) for m in model.modules()) == before
    assert set(model.state_dict()) == keys  # checkpoints load as before


def test_the_lever_is_cpu_only_and_follows_the_param(tiny_config):
    model = build_model("vit_lora", tiny_config())
    assert not use_fast_dropout(model, tiny_config("train.fast_dropout=false"), CPU)
    assert not use_fast_dropout(model, tiny_config(), torch.device("cuda"))  # torch's fused kernel there
    assert not any(isinstance(m, UniformDropout) for m in model.modules())
    assert use_fast_dropout(model, tiny_config(), CPU)
    assert any(isinstance(m, UniformDropout) for m in model.modules())
