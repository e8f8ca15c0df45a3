"""PlainViT: the ViT-LoRA encoders for stylising without transformers and peft compute what HF's
ViTModel + peft LoRA compute, from the same files, and `nstlab stylize` uses them."""

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import ViTConfig, ViTModel

from conftest import PARAMS, TINY, TINY_VIT
from nstlab.training.checkpoint import save_atomic, trained_state
from nstlab.config import load_config, lora_modules
from nstlab.errors import NstlabError
from nstlab.evaluation.evaluate import load_model
from nstlab.models import build_model
from nstlab.models.vit_lora import ViTLoRA
from nstlab.models.plain_vit import PlainViT, ViTSpec, load_pretrained, add_lora, pretrained_files
from nstlab.runtime import seeded

ALL_TARGETS = lora_modules(["query", "key", "value", "dense"])


def _hf_vit(layers: int = 4, seed: int = 0) -> ViTModel:
    with seeded(seed):
        return ViTModel(
            ViTConfig(**{**TINY_VIT, "num_hidden_layers": layers}), add_pooling_layer=False
        ).eval()


def _perturb_lora_b(model: torch.nn.Module) -> None:
    """peft starts B at zero (LoRA a no-op): make it count."""
    with seeded(1), torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.2)


def test_plain_vit_with_lora_equals_hf_vit_with_peft_lora():
    hf = _hf_vit()
    plain = PlainViT(ViTSpec.from_config(hf.config.to_dict(), 4))
    plain.load_state_dict(hf.state_dict())  # strict: ViTModel's own names
    with seeded(2):
        peft = get_peft_model(
            copy.deepcopy(hf), LoraConfig(r=4, lora_alpha=12, lora_dropout=0.0, target_modules=ALL_TARGETS)
        )
    _perturb_lora_b(peft)
    peft.eval()
    state = {f"content_encoder.{key}": value for key, value in peft.state_dict().items() if "lora_" in key}
    assert len(state) == 2 * 6 * 4  # A and B of six layers in four blocks
    add_lora(plain, state, ALL_TARGETS, "content_encoder.", 12 / 4)
    pixels = torch.randn(2, 3, 48, 80)  # a 3 × 5 grid, not the 2 × 2 the positions were trained for
    with torch.no_grad():
        expected = peft(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state[:, 1:]
        with_cls = torch.empty(1, 16, 32)
        expected_positions = hf.embeddings.interpolate_pos_encoding(with_cls, 48, 80)[:, 1:]
        tokens, positions = plain(pixels)
        without_lora = hf(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state[:, 1:]
    assert tokens.shape == (2, 15, 32) and positions.shape == (1, 15, 32)
    assert (tokens - expected).abs().max() <= 1e-5
    assert (positions - expected_positions).abs().max() <= 1e-5
    assert (expected - without_lora).abs().max() > 0.1  # the LoRA pairs changed the tokens


def test_the_trained_grid_keeps_its_positions():
    hf = _hf_vit(layers=1)
    plain = PlainViT(ViTSpec.from_config(hf.config.to_dict(), 1))
    plain.load_state_dict(hf.state_dict())
    assert torch.equal(plain.embeddings.positions(32, 32), hf.embeddings.position_embeddings)


@pytest.fixture(scope="module")
def saved_vit(tmp_path_factory) -> Path:
    """A four-block tiny ViTModel written by save_pretrained (transformers' on-disk names)."""
    folder = tmp_path_factory.mktemp("vit")
    _hf_vit().save_pretrained(folder)
    return folder


def test_a_save_pretrained_directory_loads_its_first_blocks(saved_vit):
    hf = _hf_vit()
    vit, total = load_pretrained(str(saved_vit), 2)
    assert total == 4 and len(vit.layers) == 2 and vit.spec.num_hidden_layers == 2
    expected = hf.state_dict()
    loaded = vit.state_dict()
    assert set(loaded) == {key for key in expected if not key.startswith(("layers.2.", "layers.3."))}
    assert all(torch.equal(loaded[key], expected[key]) for key in loaded)
    assert not any(parameter.requires_grad for parameter in vit.parameters())


def test_what_the_plain_path_cannot_read_is_none(saved_vit, tmp_path):
    assert load_pretrained(str(saved_vit), 5) is None  # more blocks than the file has
    other_act = tmp_path / "gelu_new"
    shutil.copytree(saved_vit, other_act)
    config = json.loads((other_act / "config.json").read_text())
    (other_act / "config.json").write_text(json.dumps({**config, "hidden_act": "gelu_new"}))
    assert load_pretrained(str(other_act), 2) is None
    (other_act / "model.safetensors").unlink()  # e.g. only pytorch_model.bin
    assert pretrained_files(str(other_act)) is None
    assert pretrained_files("not/a/hub/id") is None


def test_a_hub_id_is_read_from_the_local_cache_only(saved_vit, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--nstlab--tiny-vit"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs/main").write_text(commit)
    shutil.copytree(saved_vit, repo / "snapshots" / commit)
    config, weights = pretrained_files("nstlab/tiny-vit")
    assert config.parent == weights.parent == repo / "snapshots" / commit
    assert load_pretrained("nstlab/tiny-vit", 2)[1] == 4
    assert pretrained_files("nstlab/absent-vit") is None


# -- the whole model: load_for_inference against the training model ----------------------------


def _trained_checkpoint(cfg, path: Path) -> torch.nn.Module:
    """A stage-2 checkpoint as training writes it, LoRA B non-zero; returns the model, in eval mode."""
    model = build_model("vit_lora", cfg)
    with seeded(cfg.seed):
        model.enable_lora()
    _perturb_lora_b(model)
    save_atomic({"model": trained_state(model), "step": 0, "val": {}}, path)
    return model.eval()


@pytest.fixture(scope="module")
def tiny_stage2(saved_vit, tmp_path_factory):
    """(config, checkpoint, training model) of a tiny ViT-LoRA on the saved ViT, all four LoRA targets."""
    cfg = load_config(
        PARAMS,
        [*TINY, f"backbone.vit={saved_vit}", "lora.target_modules=[query, key, value, dense]", "lora.r=4"],
    )
    path = tmp_path_factory.mktemp("stage2") / "model.pt"
    return cfg, path, _trained_checkpoint(cfg, path)


def _images() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return torch.rand(1, 3, 40, 56, generator=generator), torch.rand(1, 3, 36, 36, generator=generator)


def test_the_plain_model_stylises_as_the_training_model(tiny_stage2):
    cfg, path, trained = tiny_stage2
    fast = load_model(cfg, "vit_lora", checkpoint=path)
    assert isinstance(fast.content_encoder, PlainViT) and isinstance(fast.style_encoder, PlainViT)
    assert fast.loss_network is None and not fast.training
    content_fc1, style_fc1 = (
        encoder.layers[0].mlp.fc1 for encoder in (fast.content_encoder, fast.style_encoder)
    )
    assert content_fc1.base.weight.data_ptr() == style_fc1.base.weight.data_ptr()  # one frozen ViT
    assert not torch.equal(content_fc1.up, style_fc1.up)  # two LoRA pairs
    content, style = _images()
    with torch.no_grad():
        expected, output = trained(content, style), fast(content, style)
    assert output.shape == expected.shape == (1, 3, 40, 56)
    assert (output - expected).abs().max() <= 1e-5


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ("lora.r=8", "checkpoint shapes do not fit this model"),
        ("lora.target_modules=[query, value]", "checkpoint has an unexpected tensor"),
        ("encoder.layers=3", "checkpoint lacks tensor"),
    ],
)
def test_a_checkpoint_of_another_config_is_one_line(tiny_stage2, change, words):
    cfg, path, _ = tiny_stage2
    other = load_config(
        PARAMS,
        [*TINY, f"backbone.vit={cfg.backbone.vit}", "lora.target_modules=[query, key, value, dense]", change],
    )
    with pytest.raises(NstlabError, match=words) as error:
        ViTLoRA.load_for_inference(other, path)
    assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)


# Runs `nstlab stylize`, then names the heavy packages the run imported.
WRAPPER = """
import sys
from nstlab.cli import main
try:
    main(sys.argv[1:])
finally:
    heavy = ("transformers", "peft", "torchvision", "mlflow", "pandas")
    print("imported:", *sorted(name for name in heavy if name in sys.modules))
"""


def test_nstlab_stylize_imports_neither_transformers_nor_peft(tiny_stage2, tmp_path):
    from nstlab.data.images import save_image

    cfg, path, _ = tiny_stage2
    content, style = _images()
    save_image(content[0], tmp_path / "content.png")
    save_image(style[0], tmp_path / "style.png")
    overrides = [
        f"backbone.vit={cfg.backbone.vit}",
        "lora.target_modules=[query, key, value, dense]",
        "lora.r=4",
    ]
    args = ["stylize", "content.png", "style.png", "-o", "out.png", "--checkpoint", str(path)]
    args += ["--params", str(PARAMS)] + [f"-S{item}" for item in [*TINY, *overrides]]

    def run(*command: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, *command],
            cwd=tmp_path,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            capture_output=True,
            text=True,
            timeout=300,
        )

    result = run("-c", WRAPPER, *args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "imported:"
    assert (tmp_path / "out.png").is_file()
    assert f"({cfg.backbone.vit}): blocks 1-2 of 4 loaded" in result.stderr

    # `python -m nstlab` (the console entry point) writes the same image
    args[args.index("out.png")] = "console.png"
    console = run("-m", "nstlab", *args)
    assert console.returncode == 0, console.stderr
    assert console.stdout.splitlines() == ["console.png"]
    assert (tmp_path / "console.png").read_bytes() == (tmp_path / "out.png").read_bytes()


def test_a_random_init_vit_stylises_through_the_training_model(tmp_path):
    cfg = load_config(PARAMS, [*TINY, "lora.r=4"])
    assert cfg.backbone.vit == "random"
    trained = _trained_checkpoint(cfg, tmp_path / "model.pt")
    assert ViTLoRA.load_for_inference(cfg, tmp_path / "model.pt") is None
    model = load_model(cfg, "vit_lora", checkpoint=tmp_path / "model.pt")
    assert not isinstance(model.content_encoder, PlainViT)
    content, style = _images()
    with torch.no_grad():
        assert torch.equal(model(content, style), trained(content, style))
