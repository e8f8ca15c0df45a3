"""Gatys (models/gatys.py, gatys_settings.py, models/extractors.py): the loss terms on known tensors, optimisation
reduces the loss for every optimiser and extractor, blending, any size, settings validation."""

import dataclasses
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from nstlab.errors import ConfigError, NstlabError
from nstlab.functional import gram, total_variation
from nstlab.functional import IMAGENET_STD, imagenet_normalize
from nstlab.config.gatys import SEED_LAYER_WEIGHTS, settings_from_options
from nstlab.models.gatys import GatysTransfer, style_layer_loss, working_size

VGG_WIDTH = 0.125


def transfer(**options) -> GatysTransfer:
    return GatysTransfer(settings_from_options(options), seed=0, vgg_width=VGG_WIDTH)


def images(*sizes: tuple[int, int], seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(1, 3, *size, generator=generator) for size in sizes]


def gatys_cfg(iterations: int = 3, lr: float = 0.05, **options) -> SimpleNamespace:
    """The shape of nstlab.config.Config that gatys.build reads."""
    method = SimpleNamespace(iterations=iterations, lr=lr, options=options, loss={})
    backbone = SimpleNamespace(
        vgg19="random",
        vgg_width=VGG_WIDTH,
        vit="random",
        vit_hidden=32,
        vit_heads=2,
        vit_mlp=64,
        vit_layers=2,
    )
    return SimpleNamespace(seed=0, baselines={"gatys": method}, backbone=backbone)


def test_gram_and_style_layer_loss_on_known_tensors():
    features = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, 1.0]]]])  # (1, 2, 2, 2)
    assert torch.equal(gram(features), torch.tensor([[[30.0, 6.0], [6.0, 2.0]]]))
    ones = torch.ones(1, 2, 2, 2)  # G = F·Fᵀ = 4 everywhere; G/(h·w) = 1
    zeros = torch.zeros(1, 2, 2)
    assert style_layer_loss(ones, zeros, "seed").item() == pytest.approx(16 / (2 * 2 * 2))  # mean(G²)/(C·h·w)
    assert style_layer_loss(ones, zeros, "pystiche").item() == pytest.approx(1.0)
    assert style_layer_loss(ones, gram(ones), "seed").item() == 0.0


def test_tv_of_a_constant_image_is_zero():
    constant = torch.full((1, 3, 32, 32), 0.3)
    assert total_variation(constant).item() == 0.0
    model = transfer(steps=1)
    targets = model.encode_targets(constant, [constant], [1.0])
    terms = model.terms(constant, targets)
    assert terms["tv"].item() == 0.0
    assert terms["content"].item() == terms["laplacian"].item() == terms["perceptual"].item() == 0.0
    assert terms["style"].item() == pytest.approx(0.0, abs=1e-12)  # the style is the image itself


def test_content_only_from_noise_moves_towards_the_content():
    content, style = images((32, 32), (32, 32), seed=1)  # seed 0 would make the noise equal the content
    # A random-init VGG's relu4_2 barely depends on its input (the biases dominate it), so this
    # test reconstructs from shallow layers, where even random features pin the pixels down; in
    # [0, 1] pixels, as unclamped random features leave the overshoot outside [0, 1] unpunished.
    model = transfer(
        init="noise",
        style_weight=0.0,
        content_layers=["relu1_1", "relu2_1", "relu3_1"],
        lr=0.05,
        steps=40,
        log_every=5,
        space="pixels",
    )
    output, history = model.stylize(content, [style])
    noise = torch.rand(content.shape, generator=torch.Generator().manual_seed(0))
    assert history[-1]["content"] < 0.3 * history[0]["content"]
    assert F.mse_loss(output, content) < 0.2 * F.mse_loss(noise, content)


@pytest.mark.parametrize(("optimizer", "lr"), [("lbfgs", 1.0), ("adam", 0.02), ("adamw", 0.02)])
def test_every_optimizer_reduces_the_loss(optimizer, lr):
    content, style = images((32, 40), (40, 32))
    output, history = transfer(optimizer=optimizer, lr=lr, steps=15).stylize(content, [style])
    assert history[-1]["total"] < 0.7 * history[0]["total"]
    assert history[0]["content"] == pytest.approx(0.0, abs=1e-12)  # from the content (normalised and back)
    assert output.shape == content.shape


def _first_variable(model: GatysTransfer, monkeypatch) -> list[torch.Tensor]:
    """Records the tensor each optimiser is built on (the one it moves)."""
    seen, build_optimizer = [], model._optimizer
    monkeypatch.setattr(
        model,
        "_optimizer",
        lambda variable: seen.append(variable.detach().clone()) or build_optimizer(variable),
    )
    return seen


def test_the_default_optimises_the_normalised_image_unclamped(monkeypatch):
    """The seed set-up's Adam moves the ImageNet-normalised tensor: one step of lr changes a pixel
    by lr·std (Adam's first step is lr·sign(g)), and nothing clamps it to [0, 1]."""
    content, style = images((32, 32), (32, 32))
    content = 0.4 + 0.2 * content  # mid-grey: no pixel near a bound
    model = transfer(steps=1, lr=0.01)
    seen = _first_variable(model, monkeypatch)
    output, _ = model.stylize(content, [style])
    assert torch.allclose(seen[0], imagenet_normalize(content), atol=1e-6)
    step = (output - content).abs().amax(dim=(0, 2, 3))
    assert step.tolist() == pytest.approx([0.01 * std for std in IMAGENET_STD], rel=1e-3)
    saturated = torch.ones(1, 3, 32, 32)  # white: any darkening or brightening gradient leaves [0, 1]
    output, _ = transfer(steps=5, lr=0.5).stylize(saturated, [style])
    assert output.max() > 1.0 or output.min() < 0.0


def test_space_pixels_optimises_pixels_clamped_each_step(monkeypatch):
    content, style = images((32, 32), (32, 32))
    content = 0.4 + 0.2 * content
    model = transfer(steps=1, lr=0.01, space="pixels")
    seen = _first_variable(model, monkeypatch)
    output, _ = model.stylize(content, [style])
    assert torch.equal(seen[0], content)
    assert (output - content).abs().max().item() == pytest.approx(0.01, rel=1e-3)
    output, _ = transfer(steps=5, lr=0.5, space="pixels").stylize(torch.ones(1, 3, 32, 32), [style])
    assert 0.0 <= output.min() and output.max() <= 1.0


def test_lbfgs_takes_a_channels_last_content_image():
    """Decoded images arrive as permuted HWC tensors; L-BFGS must not choke on their strides."""
    content, style = images((32, 40), (40, 32))
    channels_last = content[0].permute(1, 2, 0).contiguous().permute(2, 0, 1)[None]
    assert not channels_last.is_contiguous()
    output, history = transfer(optimizer="lbfgs", lr=1.0, steps=3).stylize(channels_last, [style])
    assert output.shape == content.shape and history[-1]["total"] < history[0]["total"]


def test_history_and_progress():
    content, style = images((32, 32), (32, 32))
    seen = []
    _, history = transfer(steps=7, log_every=3).stylize(content, [style], progress_callback=seen.append)
    assert [record["step"] for record in history] == [0, 3, 6, 7]
    assert seen == history
    assert set(history[0]) == {
        "step",
        "total",
        "content",
        "style",
        "tv",
        "laplacian",
        "perceptual",
        "elapsed_s",
    }
    assert history[0]["total"] == pytest.approx(1e6 * history[0]["style"])  # α·0 + β·style
    assert all(a["elapsed_s"] <= b["elapsed_s"] for a, b in zip(history, history[1:]))


def test_blending_one_zero_equals_the_single_style():
    content, first, second = images((32, 32), (32, 32), (48, 40))
    model = transfer(steps=5, lr=0.02)
    single, _ = model.stylize(content, [first])
    blended, _ = model.stylize(content, [first, second], style_weights=[1.0, 0.0])
    assert torch.allclose(blended, single, atol=1e-6)
    half, _ = model.stylize(content, [first, second], style_weights=[0.5, 0.5])
    assert not torch.allclose(half, single, atol=1e-4)
    with pytest.raises(NstlabError, match="summing to 1"):
        model.stylize(content, [first, second], style_weights=[0.7, 0.7])


def test_any_size_through_build():
    model = GatysTransfer.build(gatys_cfg(iterations=2))
    content, style = torch.cat(images((17, 33), (17, 33))), images((40, 24))[0]
    output = model(content, style)
    assert output.shape == (2, 3, 17, 33)
    assert len(model.last_histories) == 2 and model.last_histories[0][-1]["step"] == 2
    with torch.no_grad():  # evaluation calls models under no_grad: the pixels still get gradients
        assert model(content[:1], style).shape == (1, 3, 17, 33)
    with torch.inference_mode():
        assert model(content[:1] + 0, style + 0).shape == (1, 3, 17, 33)  # inference tensors in


def test_the_default_preset_optimises_at_long_side_400_and_reference_at_short_edge_512():
    """The seed report loads its images at max side 400 (docs/methods.md#gatys); pystiche caps
    the short edge at 512."""
    default, reference = settings_from_options({}), settings_from_options({"preset": "reference"})
    assert (default.max_size, default.max_size_edge) == (400, "long")
    assert (reference.max_size, reference.max_size_edge) == (512, "short")
    assert working_size((600, 800), default) == (300, 400)
    assert working_size((800, 600), default) == (400, 300)
    assert working_size((600, 800), reference) == (512, 683)
    assert working_size((300, 400), default) == (300, 400)  # never enlarged
    assert working_size((300, 400), dataclasses.replace(default, max_size=None)) == (300, 400)
    assert working_size((20, 200), dataclasses.replace(default, max_size=32)) == (16, 160)  # short ≥ 16


def test_the_profiles_resolve_gatys_to_long_side_400():
    from nstlab.config import load_config
    from nstlab.config.gatys import settings_from_config

    from conftest import PARAMS

    paper = settings_from_config(load_config(PARAMS, ["profile=paper"]))
    assert (paper.preset, paper.max_size, paper.max_size_edge) == ("default", 400, "long")
    demo = settings_from_config(load_config(PARAMS))
    assert demo.max_size_edge == "long"


@pytest.mark.parametrize("edge", ["long", "short"])
def test_max_size_caps_the_chosen_edge_and_returns_the_input_size(edge, monkeypatch):
    from nstlab.models import gatys

    content, style = images((24, 40), (32, 32))
    model = transfer(preset="reference", steps=2, max_size=32 if edge == "long" else 20, max_size_edge=edge)
    optimised, encode = [], model.encode_targets

    def record_size(image, *rest):
        optimised.append(image.shape[-2:])
        return encode(image, *rest)

    monkeypatch.setattr(model, "encode_targets", record_size)
    output, _ = model.stylize(content, [style])
    assert output.shape == content.shape
    assert tuple(optimised[0]) == ((19, 32) if edge == "long" else (20, 33))
    assert gatys.working_size((24, 40), model.settings) == tuple(optimised[0])


def test_presets():
    default = settings_from_options({})
    assert (default.optimizer, default.lr, default.steps, default.style_weight, default.init) == (
        "adam",
        0.003,
        2000,
        1e6,
        "content",
    )
    assert default.space == "normalised"
    model = GatysTransfer(default, vgg_width=VGG_WIDTH)
    assert model.content_layers == ("relu4_2",)
    assert model.style_layers == ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
    assert model.style_layer_weights == SEED_LAYER_WEIGHTS
    reference = settings_from_options({"preset": "reference", "steps": 9})
    assert (reference.optimizer, reference.lr, reference.steps, reference.style_weight) == (
        "lbfgs",
        1.0,
        9,
        1e3,
    )
    assert (reference.style_loss, reference.max_size, reference.style_layer_weights) == (
        "pystiche",
        512,
        "1/C^2",
    )
    assert reference.space == "normalised"  # pystiche optimises its preprocessed image, unclamped
    targets = GatysTransfer(reference, vgg_width=VGG_WIDTH).encode_targets(*images((32, 32), (32, 32)), [1.0])
    assert targets.layer_weights["relu1_1"] == 1.0 / 8**2  # 64 channels × width 0.125


def test_parameter_counts():
    counts = GatysTransfer(settings_from_options({})).parameter_counts()
    assert counts["extractor.frozen"] == counts["total"] == 12_944_960  # VGG-19 features up to relu5_1
    assert counts["trainable"] == 0


def test_settings_errors_name_the_key():
    with pytest.raises(
        ConfigError, match=r"^baselines\.gatys\.optimizer = 'sgd': choose lbfgs, adam or adamw$"
    ):
        settings_from_options({"optimizer": "sgd"})
    with pytest.raises(
        ConfigError, match=r"unknown key baselines\.gatys\.optimiser: allowed keys are preset, "
    ):
        settings_from_options({"optimiser": "adam"})
    with pytest.raises(ConfigError, match=r"baselines\.gatys\.style_layers: unknown vgg19 layer 'layer3'"):
        settings_from_options({"style_layers": ["relu1_1", "layer3"]})
    with pytest.raises(
        ConfigError, match=r"baselines\.gatys\.style_layer_weights: 2 weights for 5 style layers"
    ):
        settings_from_options({"style_layer_weights": [1.0, 1.0]})
    with pytest.raises(ConfigError, match=r"baselines\.gatys\.steps = 0: expected a whole number ≥ 1"):
        settings_from_options({"steps": 0})
    with pytest.raises(ConfigError, match=r"baselines\.gatys\.lr = -1: expected a number > 0"):
        settings_from_options({"lr": -1})
    with pytest.raises(ConfigError, match=r"style_weight = '1e6': expected a number ≥ 0; write 1\.0e\+6"):
        settings_from_options({"style_weight": "1e6"})
    with pytest.raises(ConfigError, match="every loss weight is 0"):
        settings_from_options({"content_weight": 0, "style_weight": 0})
    with pytest.raises(
        ConfigError, match=r"baselines\.gatys\.options\.steps: set baselines\.gatys\.iterations"
    ):
        GatysTransfer.build(gatys_cfg(steps=10))
    with pytest.raises(ConfigError, match=r"baselines\.gatys\.options\.init = 'white'"):
        GatysTransfer.build(gatys_cfg(init="white"))


def test_build_reads_the_method_block_and_the_profile():
    model = GatysTransfer.build(gatys_cfg(iterations=7, lr=0.5, optimizer="adamw", tv_weight=2.0))
    assert (model.settings.steps, model.settings.lr, model.settings.optimizer) == (7, 0.5, "adamw")
    assert model.settings.weights == "random" and model.loss_weights["tv"] == 2.0
    assert GatysTransfer.build(gatys_cfg(extractor="resnet50")).settings.weights == "random"


def test_build_from_the_real_params(tiny_config):
    cfg = tiny_config(
        "baselines.gatys.iterations=2", "baselines.gatys.options={tv_weight: 1.0, laplacian_weight: 1.0}"
    )
    model = GatysTransfer.build(cfg)
    assert model.settings.steps == 2 and model.loss_weights["laplacian"] == 1.0
    assert model(*images((32, 32), (32, 32))).shape == (1, 3, 32, 32)


def test_resnet50_extractor():
    content, style = images((32, 48), (40, 40))
    model = transfer(extractor="resnet50")
    with torch.no_grad():
        features = model.extractor(content)
    assert {name: tuple(features[name].shape) for name in features} == {
        "layer1": (1, 256, 8, 12),
        "layer2": (1, 512, 4, 6),
        "layer3": (1, 1024, 2, 3),
        "layer4": (1, 2048, 1, 2),
    }
    assert model.parameter_counts()["extractor.frozen"] == 23_508_032  # ResNet-50 without fc
    # The optimisation runs through the first two stages only, to keep CPU time down.
    shallow = transfer(
        extractor="resnet50",
        content_layers=["layer2"],
        style_layers=["layer1", "layer2"],
        perceptual_layers=["layer1"],
        lr=0.02,
        steps=4,
    )
    _, history = shallow.stylize(content, [style])
    assert history[-1]["total"] < history[0]["total"]


def test_vit_extractor_from_pretrained(tmp_path):
    from transformers import ViTConfig, ViTModel

    tiny = ViTConfig(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
    )
    ViTModel(tiny, add_pooling_layer=False).save_pretrained(tmp_path)
    settings = settings_from_options(
        {"extractor": "vit", "weights": str(tmp_path), "lr": 0.02, "steps": 8, "perceptual_weight": 1.0}
    )
    model = GatysTransfer(settings)
    assert model.style_layers == ("block1", "block2", "block3", "block4") and model.content_layers == (
        "block3",
    )
    content, style = images((33, 40), (24, 24))  # 33 px: padded to 40, 5×5 tokens
    assert tuple(model.extractor(content)["block3"].shape) == (1, 32, 5, 5)
    output, history = model.stylize(content, [style])
    assert output.shape == content.shape
    assert history[-1]["total"] < history[0]["total"]
    with pytest.raises(ConfigError, match="this ViT has 4 blocks"):
        GatysTransfer(dataclasses.replace(settings, style_layers=("block5",)))


def test_every_ablation_in_the_grid_file_resolves(tiny_config):
    from nstlab.tracking.ablate import override_args, read_grid
    from nstlab.config.gatys import settings_from_config

    from conftest import REPO

    for profile, reference_steps in (("paper", 500), ("demo", 40)):
        experiments = read_grid(REPO / "experiments" / "gatys.yaml", profile)
        assert {name.rsplit("-", 1)[0] for name in experiments} >= {
            "optimizer",
            "extractor",
            "extra_losses",
            "steps",
            "style_weight",
            "lr",
        }
        for name, overrides in experiments.items():
            settings = settings_from_config(tiny_config(*override_args(overrides)))
            assert settings.weights is not None, name
        reference = settings_from_config(tiny_config(*override_args(experiments["preset-1"])))
        assert (reference.optimizer, reference.lr, reference.steps) == ("lbfgs", 1.0, reference_steps)


def test_resnet50_weights_from_a_file(tmp_path):
    from torchvision.models import resnet50

    from nstlab.models.encoders import ResNet50Features

    state = {key: value for key, value in resnet50().state_dict().items() if not key.startswith("fc.")}
    torch.save(state, tmp_path / "resnet50.pth")
    loaded = ResNet50Features(["layer1"], str(tmp_path / "resnet50.pth"))
    assert torch.equal(loaded.stages["layer1"][0].conv1.weight, state["layer1.0.conv1.weight"])
    torch.save({"conv1.weight": state["conv1.weight"], "head.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ConfigError, match="not a torchvision ResNet-50 state dict"):
        ResNet50Features(["layer1"], str(tmp_path / "other.pth"))
