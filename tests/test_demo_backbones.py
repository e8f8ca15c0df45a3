"""The demo's backbones (demo_backbones.py): fitted to images, no layer fades, the decoder draws
the image back, and each file loads where the demo profile's backbone params point."""

import json

import pytest
import torch

from conftest import PARAMS, REPO
from nstlab.config import load_config
from nstlab.data.images import load_rgb, resize_exact, to_tensor
from nstlab.training.demo_backbones import (
    ADAIN_DECODER_FILE,
    ADAIN_VGG_FILE,
    SUMMARY_FILE,
    VGG19_FILE,
    VIT_DIR,
    VIT_PATCH,
    adain_vgg_sequential,
    build_demo_backbones,
    fit_adain_decoder,
    fit_vgg19,
    loss_vgg_state,
)
from nstlab.models.blocks import AdaINDecoder
from nstlab.models.encoders import PAPER_LAYERS, VGG_LAYERS, NormalisedVGG, TorchVGG19
from nstlab.errors import ConfigError
from nstlab.functional import luminance, ssim
from nstlab.runtime import seeded

DEMO_IMAGES = REPO / "src" / "nstlab" / "data" / "demo"
# every layer a demo loss network taps: the paper's loss, the StyTr² convention's and Gatys' (+ relu4_2)
LOSS_TAPS = tuple(dict.fromkeys((*PAPER_LAYERS, *VGG_LAYERS, "relu4_2")))


def demo_images(role: str, size: int) -> torch.Tensor:
    """The embedded demo images of `role`, squashed to size² (B, 3, size, size)."""
    paths = sorted((DEMO_IMAGES / role).glob("*.jpg"))
    return torch.stack([to_tensor(resize_exact(load_rgb(path), size)) for path in paths])


@pytest.fixture(scope="module")
def fitted():
    """The demo-width VGG-19 fitted to the demo's content photos (half of them: the rest measure it)."""
    cfg = load_config(PARAMS)
    photos = demo_images("content", 128)
    return cfg, fit_vgg19(photos[::2], cfg.backbone.vgg_width, seed=0), photos[1::2]


def test_the_demo_profile_loads_the_backbones_the_stage_writes():
    import yaml

    backbone = load_config(PARAMS).backbone
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["demo_backbones"]
    [out] = stage["outs"]
    assert (backbone.vgg19, backbone.adain_vgg, backbone.adain_decoder, backbone.vit) == (
        f"{out}/{VGG19_FILE}",
        f"{out}/{ADAIN_VGG_FILE}",
        f"{out}/{ADAIN_DECODER_FILE}",
        f"{out}/{VIT_DIR}",
    )
    paper = load_config(PARAMS, ["profile=paper"]).backbone
    assert paper.vgg19 == "imagenet" and paper.vit == "google/vit-base-patch16-224-in21k"
    assert paper.adain_decoder is None  # the paper's decoders train from random init


def test_no_tapped_layer_of_the_demo_loss_network_fades(fitted, tmp_path):
    cfg, vgg, unseen = fitted
    torch.save(loss_vgg_state(vgg), tmp_path / VGG19_FILE)
    loss_network = TorchVGG19(LOSS_TAPS, str(tmp_path / VGG19_FILE), cfg.backbone.vgg_width)
    with torch.no_grad():
        features = loss_network(unseen)
    spatial_std = {name: float(value.flatten(2).std(dim=2).mean()) for name, value in features.items()}
    faded = {name: std for name, std in spatial_std.items() if std < spatial_std["relu1_1"] / 10}
    assert not faded, spatial_std


def test_the_fitted_features_tell_images_apart(fitted):
    _, vgg, unseen = fitted
    with torch.no_grad():
        deepest = vgg(unseen)["relu4_1"].flatten(1)
    unit = deepest / deepest.norm(dim=1, keepdim=True)
    cosine = unit @ unit.T
    assert cosine[~torch.eye(len(unit), dtype=torch.bool)].mean() < 0.6  # random init: about 0.94
    dead = deepest.view(len(unseen), vgg.channels["relu4_1"], -1).amax(dim=(0, 2)) <= 0
    assert dead.float().mean() < 0.05


def test_the_fitted_decoder_draws_unseen_images_back(fitted):
    cfg, vgg, unseen = fitted
    width = cfg.backbone.vgg_width
    decoder = fit_adain_decoder(vgg, width, demo_images("content", 128)[::2], seed=0)
    with seeded(0):
        random_init = AdaINDecoder(width)
    with torch.no_grad():
        features = vgg(unseen, "relu4_1")["relu4_1"]
        similarity, random_similarity = (
            float(ssim(luminance(decode(features).clamp(0, 1)), luminance(unseen)).mean())
            for decode in (decoder, random_init)
        )
    assert similarity > 0.5, similarity  # the content is there (measured 0.64)
    # a random decoder draws a near-flat image (0.28; a flat colour scores about 0.3)
    assert similarity > random_similarity + 0.2, random_similarity


def test_a_decoder_of_another_width_or_no_file_is_a_one_line_error(fitted, tmp_path):
    cfg, vgg, _ = fitted
    width = cfg.backbone.vgg_width
    torch.save(AdaINDecoder(width).state_dict(), tmp_path / ADAIN_DECODER_FILE)
    with pytest.raises(
        ConfigError, match=r"^backbone\.adain_decoder = .*: not an AdaIN decoder at backbone\.vgg_width"
    ):
        AdaINDecoder(width / 2).start_from(str(tmp_path / ADAIN_DECODER_FILE), width / 2)
    with pytest.raises(ConfigError, match=r"^backbone\.adain_decoder = .*: no such file; .* or null"):
        AdaINDecoder(width).start_from(str(tmp_path / "missing.pth"), width)


def test_both_vgg_files_hold_the_same_convolutions_and_refuse_another_width(fitted, tmp_path):
    cfg, vgg, _ = fitted
    width = cfg.backbone.vgg_width
    torch.save(loss_vgg_state(vgg), tmp_path / VGG19_FILE)
    torch.save(adain_vgg_sequential(vgg).state_dict(), tmp_path / ADAIN_VGG_FILE)
    loaded = NormalisedVGG(str(tmp_path / ADAIN_VGG_FILE), width)
    for mine, theirs in zip(loaded.state_dict().values(), vgg.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs)
    loss_vgg = TorchVGG19(("relu5_1",), str(tmp_path / VGG19_FILE), width)
    loss_convs = [m for m in loss_vgg.features if isinstance(m, torch.nn.Conv2d)]
    # the normalised VGG's convs after its 1×1 input conv
    adain_convs = [m for m in loaded.modules() if isinstance(m, torch.nn.Conv2d)][1:]
    assert all(torch.equal(a.weight, b.weight) for a, b in zip(loss_convs, adain_convs, strict=True))
    with pytest.raises(ConfigError, match=r"^backbone\.vgg19 = .*: features\.0\.weight is of shape .* needs"):
        TorchVGG19(("relu1_1",), str(tmp_path / VGG19_FILE), width / 2)
    with pytest.raises(
        ConfigError, match=r"^backbone\.adain_vgg = .*: layer 2 has shape .*backbone\.vgg_width"
    ):
        NormalisedVGG(str(tmp_path / ADAIN_VGG_FILE), width / 2)
    with pytest.raises(ConfigError, match=r"features\.30\.weight is missing"):  # fitted up to relu5_1
        TorchVGG19(("relu5_2",), str(tmp_path / VGG19_FILE), width)


def test_the_stage_writes_the_same_backbones_every_model_loads_and_the_paper_profile_skips(
    tiny_config, tiny_pairs, tmp_path
):
    from nstlab.evaluation.evaluate import Scorer
    from nstlab.models import build_model
    from nstlab.models.vit_lora import PATCH

    assert VIT_PATCH == PATCH
    out = tmp_path / "backbones"
    summary = build_demo_backbones(tiny_config(), tiny_pairs, out)
    assert summary["fitted"] and json.loads((out / SUMMARY_FILE).read_text()) == summary
    # The output is a function of config and images only (no timing), so rerunning the stage
    # leaves its DVC hash, and so every training downstream of it, untouched.
    again = tmp_path / "again"
    build_demo_backbones(tiny_config(), tiny_pairs, again)
    files = sorted(path.relative_to(out) for path in out.rglob("*") if path.is_file())
    assert files == sorted(path.relative_to(again) for path in again.rglob("*") if path.is_file())
    assert all((out / name).read_bytes() == (again / name).read_bytes() for name in files)
    cfg = tiny_config(
        f"backbone.vgg19={out / VGG19_FILE}",
        f"backbone.adain_vgg={out / ADAIN_VGG_FILE}",
        f"backbone.adain_decoder={out / ADAIN_DECODER_FILE}",
        f"backbone.vit={out / VIT_DIR}",
        "baselines.gatys.iterations=2",
    )
    content, style = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    for method in ("vit_lora", "adain", "gatys"):
        assert build_model(method, cfg)(content, style).shape == content.shape
    adain = build_model("adain", cfg)
    saved = torch.load(out / ADAIN_DECODER_FILE, weights_only=True)
    assert all(torch.equal(saved[key], value) for key, value in adain.decoder.state_dict().items())
    assert set(Scorer(cfg)(content, content, style)) >= {"paper_content_loss", "stytr2_style_loss"}
    paper_out = tmp_path / "paper"
    skipped = build_demo_backbones(tiny_config("profile=paper"), tiny_pairs, paper_out)
    assert not skipped["fitted"] and sorted(path.name for path in paper_out.iterdir()) == [SUMMARY_FILE]
