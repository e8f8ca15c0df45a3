"""ViT-LoRA: the paper's parameter counts (docs/methods.md#parameter-counts), any size, what trains when."""

import json
import os
import warnings

import pytest
import torch
from transformers import ViTConfig, ViTModel

from nstlab.models.vit_lora import CNNDecoder, ViTLoRA, load_vit

PAPER = ["profile=paper", "backbone.vit=random", "backbone.vgg19=random", "backbone.adain_vgg=random"]


def _lora_count(model) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if "lora_" in name)


@pytest.fixture(scope="module")
def paper_model():
    from nstlab.config import load_config

    from conftest import PARAMS

    return ViTLoRA(load_config(PARAMS, PAPER))


def test_paper_sizes_stage1(paper_model):
    counts = paper_model.parameter_counts()
    assert counts["cnn_decoder.trainable"] == 8_224_323
    assert counts["transformer_decoder.trainable"] == 23_635_200
    assert counts["trainable"] == 31_859_523  # stage 1: both decoders only
    assert counts["content_encoder.frozen"] == counts["style_encoder.frozen"] == 43_271_424
    assert counts["loss_network.frozen"] == 12_944_960  # VGG-19 features[:29]


@pytest.mark.parametrize(
    ("overrides", "lora"),
    [
        (["lora.target_modules=[query, value]"], 589_824),
        (["lora.target_modules=[query, key, value]"], 884_736),
        (["lora.target_modules=[query, key, value, dense]"], 2_654_208),
        (["lora.target_modules=[query, value]", "lora.r=32"], 1_179_648),
        (["lora.target_modules=[query, value]", "lora.r=64"], 2_359_296),
        (["lora.target_modules=[query, value]", "encoder.layers=8"], 786_432),
        (["lora.target_modules=[query, value]", "encoder.layers=4"], 393_216),
        (["lora.target_modules=[q_proj, v_proj]"], 589_824),
    ],
)
def test_lora_counts_match_the_paper(tiny_config, overrides, lora):
    """Both encoders of ViT-B/16, built alone (the decoders do not change LoRA counts)."""
    from peft import LoraConfig, get_peft_model

    from nstlab.config import load_config, lora_modules

    from conftest import PARAMS

    cfg = load_config(PARAMS, PAPER + overrides)
    total = 0
    for _ in range(2):
        encoder = get_peft_model(
            load_vit(cfg),
            LoraConfig(
                r=cfg.lora.r, lora_alpha=cfg.lora.alpha, target_modules=lora_modules(cfg.lora.target_modules)
            ),
        )
        total += _lora_count(encoder)
    assert total == lora


def test_stage2_best_config_total(paper_model):
    paper_model.enable_lora()
    counts = paper_model.parameter_counts()
    assert counts["lora"] == 2_654_208
    assert counts["trainable"] == 34_513_731


def test_four_layer_decoder_counts(tiny_config):
    from nstlab.models.blocks import StyleDecoder

    decoder = StyleDecoder(768, 4, 8, 2048, 0.1)
    assert sum(p.numel() for p in decoder.parameters()) == 31_513_088
    assert sum(p.numel() for p in decoder.parameters()) + 8_224_323 == 39_737_411
    assert sum(p.numel() for p in CNNDecoder(768).parameters()) == 8_224_323


def _convs(model):
    return [module for module in model.cnn_decoder if isinstance(module, torch.nn.Conv2d)]


def test_cnn_decoder_weights_are_xavier_uniform_and_biases_torch_default(tiny_config):
    """NST-Project decoder.py: Xavier-uniform on every weight of its Decoder, CNN decoder included,
    bound sqrt(6 / (fan_in + fan_out)); biases keep torch's U(±1/sqrt(fan_in))."""
    model = ViTLoRA(tiny_config("decoder.cnn_width=0.25"))
    for conv in _convs(model):
        fan_in, fan_out = conv.in_channels * 9, conv.out_channels * 9
        bound = (6 / (fan_in + fan_out)) ** 0.5
        weight = conv.weight.detach()
        assert weight.abs().max() <= bound
        assert weight.std().item() == pytest.approx(bound / 3**0.5, rel=0.1)  # uniform over ±bound
        bias = conv.bias.detach()
        assert 0 < bias.abs().max() <= 1 / fan_in**0.5


def test_cnn_decoder_init_pytorch_keeps_torch_default(tiny_config):
    model = ViTLoRA(tiny_config("decoder.cnn_width=0.25", "decoder.cnn_init=pytorch"))
    for conv in _convs(model):
        fan_in, fan_out = conv.in_channels * 9, conv.out_channels * 9
        default_bound = 1 / fan_in**0.5  # kaiming_uniform_(a=sqrt(5))
        assert conv.weight.detach().abs().max() <= default_bound
        assert conv.weight.detach().std().item() == pytest.approx(default_bound / 3**0.5, rel=0.1)
        assert default_bound < 0.95 * (6 / (fan_in + fan_out)) ** 0.5  # the two inits differ here


@pytest.fixture
def pretrained_tiny(tmp_path, tiny_config):
    """A tiny ViT saved with save_pretrained, so the real from_pretrained path is exercised."""
    from conftest import TINY_VIT

    vit = ViTModel(ViTConfig(**TINY_VIT), add_pooling_layer=False)
    vit.save_pretrained(tmp_path / "tiny-vit")
    return tiny_config(f"backbone.vit={tmp_path / 'tiny-vit'}", "encoder.layers=2")


def test_from_pretrained_keeps_only_the_first_blocks(pretrained_tiny):
    model = ViTLoRA(pretrained_tiny)
    assert len(model.content_encoder.layers) == 2
    assert not hasattr(model.content_encoder, "pooler") or model.content_encoder.pooler is None


@pytest.mark.parametrize("size", [(224, 224), (96, 160), (17, 33)])
def test_output_shape_equals_input_shape(pretrained_tiny, size):
    model = ViTLoRA(pretrained_tiny).eval()
    content = torch.rand(1, 3, *size)
    style = torch.rand(1, 3, 40, 24)
    with torch.no_grad():
        assert model(content, style).shape == content.shape


def test_missing_pretrained_weights_is_a_clear_error(tiny_config, tmp_path):
    from nstlab.errors import ConfigError

    with pytest.raises(ConfigError, match="backbone.vit = .*cannot load it"):
        ViTLoRA(tiny_config(f"backbone.vit={tmp_path / 'absent'}"))


def test_stage1_trains_decoders_only_and_leaves_encoders_bit_identical(tiny_config):
    torch.manual_seed(0)
    model = ViTLoRA(tiny_config())
    encoders = {k: v.clone() for k, v in model.content_encoder.state_dict().items()}
    decoder_before = model.cnn_decoder[1].weight.clone()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=1e-3)
    terms = model.losses(torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32))
    (terms["content"] + 7 * terms["style"]).backward()
    optimizer.step()
    assert all(torch.equal(v, model.content_encoder.state_dict()[k]) for k, v in encoders.items())
    assert not torch.equal(decoder_before, model.cnn_decoder[1].weight)


def test_stage2_trains_only_lora_and_decoders(tiny_config):
    model = ViTLoRA(tiny_config("lora.target_modules=[query, value]"))
    model.enable_lora()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    encoder_trainable = {n for n in trainable if n.startswith(("content_encoder", "style_encoder"))}
    assert encoder_trainable and all("lora_A" in n or "lora_B" in n for n in encoder_trainable)
    assert all(("q_proj" in n or "v_proj" in n) for n in encoder_trainable)
    assert {n.split(".")[0] for n in trainable} == {
        "content_encoder",
        "style_encoder",
        "transformer_decoder",
        "cnn_decoder",
    }


def test_identity_terms_only_when_weighted(tiny_config):
    content, style = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    assert set(ViTLoRA(tiny_config()).losses(content, style)) == {"content", "style"}
    terms = ViTLoRA(tiny_config("loss.identity1=1", "loss.identity2=1")).losses(content, style)
    assert set(terms) == {"content", "style", "identity1", "identity2"}


def test_adapters_round_trip_with_save_pretrained(tiny_config, tmp_path):
    from peft import PeftModel

    model = ViTLoRA(tiny_config())
    model.enable_lora()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    model.save_adapters(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(load_vit(tiny_config()), tmp_path / "adapter" / "content_encoder")
    pixels = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        expected = model.content_encoder.eval()(pixel_values=pixels).last_hidden_state
        actual = reloaded.eval()(pixel_values=pixels).last_hidden_state
    assert torch.allclose(expected, actual, atol=1e-5)


SAVE_ADAPTERS = """
import sys
from pathlib import Path
from conftest import PARAMS, TINY
from nstlab.config import load_config
from nstlab.models.vit_lora import ViTLoRA
model = ViTLoRA(load_config(PARAMS, TINY))
model.enable_lora()
model.save_adapters(Path(sys.argv[1]))
"""


def test_saved_adapter_configs_do_not_depend_on_the_process_hash_seed(tmp_path):
    """peft lists target_modules from a set; unsorted, two identical trainings wrote different
    adapter_config.json files (string hash order) and DVC saw a changed models/vit_lora_stage2."""
    import subprocess
    import sys

    from conftest import REPO

    configs = []
    for seed in ("1", "2"):
        env = {
            **os.environ,
            "PYTHONHASHSEED": seed,
            "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO / 'tests'}",
        }
        subprocess.run(
            [sys.executable, "-c", SAVE_ADAPTERS, str(tmp_path / seed)],
            env=env,
            check=True,
            capture_output=True,
            timeout=300,
        )
        configs.append((tmp_path / seed / "content_encoder" / "adapter_config.json").read_bytes())
    assert configs[0] == configs[1]
    modules = json.loads(configs[0])["target_modules"]
    assert modules == sorted(modules) and len(modules) > 1


def test_truncated_load_prints_one_line_and_no_load_report(pretrained_tiny, capsys, caplog):
    from nstlab.models.vit_lora import load_truncated_vit

    with caplog.at_level("WARNING"), warnings.catch_warnings():
        warnings.simplefilter("error")  # the dropped blocks must not warn
        load_truncated_vit(pretrained_tiny.backbone.vit, 2)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if "loaded" in line or "REPORT" in line]
    assert lines == [f"ViT (hidden 32, patch 16) ({pretrained_tiny.backbone.vit}): blocks 1-2 of 4 loaded"]
    assert "REPORT" not in captured.out + captured.err + caplog.text and "UNEXPECTED" not in caplog.text


def test_unexpected_keys_other_than_the_dropped_blocks_still_warn(tmp_path):
    from safetensors.torch import load_file, save_file

    from nstlab.models.vit_lora import load_truncated_vit

    vit = ViTModel(
        ViTConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=32,
            patch_size=16,
        ),
        add_pooling_layer=False,
    )
    vit.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights["stray.weight"] = torch.zeros(3)
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.warns(UserWarning, match=r"1 unexpected weight\(s\) in the ViT checkpoint \(stray.weight\)"):
        load_truncated_vit(str(tmp_path), 1)
