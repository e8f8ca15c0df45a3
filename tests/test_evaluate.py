"""Evaluation and `nstlab stylize`: the options for every model (--preserve-color, the --alpha
trade-off), and what moves with the training seed and what must not."""

import inspect

import pytest
import torch
from PIL import Image

from nstlab.evaluation import evaluate
from nstlab.training.checkpoint import save_atomic, trained_state
from nstlab.errors import NstlabError
from nstlab.evaluation.evaluate import Scorer, stylize_file
from nstlab.models import build_at_stage, build_model, model_class
from nstlab.registry import METHODS, TRAINED, get_method, method_names

MODELS = method_names()
ALPHA_MODELS = [method.name for method in METHODS if method.alpha]


@pytest.fixture
def cfg(tiny_config):
    return tiny_config("baselines.gatys.iterations=2", "eval.max_size=48")


@pytest.fixture
def images(tmp_path):
    """A warm, smooth content image (40×48) and a cold, noisy style image (36×36)."""
    rows, columns = torch.meshgrid(torch.linspace(0, 1, 40), torch.linspace(0, 1, 48), indexing="ij")
    content = torch.stack([0.6 + 0.3 * rows, 0.3 + 0.2 * columns, 0.1 + 0.1 * rows * columns])
    noise = torch.rand(3, 36, 36, generator=torch.Generator().manual_seed(0))
    style = noise * torch.tensor([0.2, 0.4, 0.3])[:, None, None]
    style[2] += 0.6
    paths = {}
    for name, image in (("content", content), ("style", style)):
        paths[name] = tmp_path / f"{name}.png"
        Image.fromarray((image.permute(1, 2, 0) * 255).round().byte().numpy()).save(paths[name])
    return paths


def _untrained_checkpoint(cfg, method, folder):
    """The weights training would start from: enough to run the model end to end."""
    if get_method(method).kind != TRAINED:
        return None
    model = build_at_stage(method, cfg, get_method(method).stages[-1])
    path = folder / f"{method}.pt"
    save_atomic({"model": trained_state(model)}, path)
    return path


def _colour_stats(image: torch.Tensor) -> torch.Tensor:
    flat = image.flatten(2)[0].double()
    return torch.cat([flat.mean(dim=1), flat.std(dim=1)])


@pytest.mark.parametrize("method", MODELS)
def test_preserve_color_gives_every_model_a_style_in_the_contents_colours(
    cfg, images, tmp_path, monkeypatch, method
):
    seen = {}
    loader = evaluate.load_model

    def spying_loader(*args, **kwargs):
        model = loader(*args, **kwargs)
        forward = model.forward

        def recording(content, style, *rest, **options):
            seen.update(content=content, style=style)
            return forward(content, style, *rest, **options)

        model.forward = recording
        return model

    monkeypatch.setattr(evaluate, "load_model", spying_loader)
    output = tmp_path / "out.png"
    written = stylize_file(
        cfg,
        method,
        images["content"],
        [images["style"]],
        output,
        preserve_color=True,
        checkpoint=_untrained_checkpoint(cfg, method, tmp_path),
    )
    assert written == [output] and Image.open(output).size == (48, 40)
    content_stats, style_stats = _colour_stats(seen["content"]), _colour_stats(seen["style"])
    assert torch.allclose(style_stats, content_stats, atol=1e-4)  # channel means and stds
    assert seen["style"].shape[-2:] == (36, 36)  # recoloured, not reshaped: the style's patterns stay


@pytest.mark.parametrize("method", ALPHA_MODELS)
def test_alpha_one_is_the_default_and_alpha_zero_the_contents_own_path(cfg, method):
    model = build_model(method, cfg).eval()
    generator = torch.Generator().manual_seed(1)
    content = torch.rand(2, 3, 32, 40, generator=generator)
    style = torch.rand(2, 3, 32, 32, generator=generator)
    with torch.no_grad():
        default = model(content, style)
        assert default.shape == content.shape
        assert torch.equal(model(content, style, alpha=1.0), default)
        reconstruction = model(content, style, alpha=0.0)
        halfway = model(content, style, alpha=0.5)
        assert reconstruction.shape == halfway.shape == content.shape
        if method == "artflow":  # an invertible flow: the content's own latents decode to the content
            assert torch.allclose(reconstruction, content, atol=1e-4)
        else:  # the content-content path the identity losses train (AdaIN: decoded content features)
            assert torch.allclose(reconstruction, model(content, content), atol=1e-5)


@pytest.mark.parametrize("method", ["vit_lora", "gatys"])
def test_alpha_for_a_model_without_a_trade_off_is_one_line_naming_those_with_one(
    cfg, images, tmp_path, method
):
    message = f"--alpha: {method} has no content–style trade-off; models with one: {', '.join(ALPHA_MODELS)}"
    with pytest.raises(NstlabError, match=message):
        stylize_file(cfg, method, images["content"], [images["style"]], tmp_path / "out.png", alpha=0.5)


def test_several_styles_are_refused_by_a_model_that_takes_one(cfg, images, tmp_path):
    with pytest.raises(
        NstlabError, match="several style images: sanet takes one; models that mix several: adain"
    ):
        stylize_file(cfg, "sanet", images["content"], [images["style"]] * 2, tmp_path / "out.png")


@pytest.mark.parametrize("method", MODELS)
def test_the_registry_says_what_each_forward_takes(method):
    """stylize passes alpha and style_weights where the registry says so: the forward must take them."""
    takes = inspect.signature(model_class(method).forward).parameters
    assert ("alpha" in takes) == get_method(method).alpha
    assert ("style_weights" in takes) == get_method(method).several_styles


def test_the_command_line_passes_both_options_and_refuses_alpha_in_one_line(
    cfg, images, tmp_path, capsys, tiny_overrides
):
    from conftest import PARAMS

    from nstlab.cli import main

    settings = [item for override in tiny_overrides for item in ("-S", override)]
    common = [str(images["content"]), str(images["style"]), "--params", str(PARAMS), *settings]
    checkpoint = _untrained_checkpoint(cfg, "sanet", tmp_path)
    with pytest.raises(SystemExit) as done:
        main(
            [
                "stylize",
                *common,
                "--model",
                "sanet",
                "--checkpoint",
                str(checkpoint),
                "--alpha",
                "0.5",
                "--preserve-color",
                "-o",
                str(tmp_path / "sanet.png"),
            ]
        )
    assert done.value.code == 0 and Image.open(tmp_path / "sanet.png").size == (48, 40)
    with pytest.raises(SystemExit) as refused:
        main(["stylize", *common, "--model", "gatys", "--alpha", "0.5", "-o", str(tmp_path / "gatys.png")])
    error = capsys.readouterr().err
    assert refused.value.code == 2 and error.count("\n") == 1
    assert "gatys has no content–style trade-off" in error


def test_random_init_scoring_networks_do_not_move_with_the_training_seed(tiny_config):
    one, other = Scorer(tiny_config("seed=1")), Scorer(tiny_config("seed=2"))
    moved = Scorer(tiny_config("seed=1", "++data.split_seed=5"))
    for name, tensor in one.state_dict().items():
        assert torch.equal(tensor, other.state_dict()[name]), name
    assert any(not torch.equal(tensor, moved.state_dict()[name]) for name, tensor in one.state_dict().items())


def _textured(seed: int, colour: tuple[float, float, float], size=(48, 40)) -> torch.Tensor:
    """A smooth gradient in `colour` with a seeded texture on top: (1, 3, H, W) in [0, 1]."""
    rows = torch.linspace(0, 1, size[0])[:, None].expand(size)
    texture = torch.rand(size, generator=torch.Generator().manual_seed(seed))
    grey = 0.5 * rows + 0.3 * texture
    return (grey[None] * torch.tensor(colour)[:, None, None] + 0.1).clamp(0, 1)[None]


def test_gallery_scores_tell_the_content_a_flat_colour_and_a_move_toward_the_style():
    from nstlab.evaluation.gallery import gallery_scores

    content = _textured(0, (1.0, 0.8, 0.6))
    style = _textured(1, (0.3, 0.5, 1.0), size=(36, 36))
    unchanged = gallery_scores(content, content, style)
    assert unchanged["ssim_content"] == pytest.approx(1.0) and unchanged["luminance_std"] > 0.1
    assert unchanged["style_gram_ratio"] == pytest.approx(1.0)
    flat = gallery_scores(torch.full_like(content, 0.4), content, style)
    assert flat["luminance_std"] == pytest.approx(0.0, abs=1e-6) and flat["ssim_content"] < 0.3
    recoloured = content * torch.tensor([0.3, 0.6, 1.6])[:, None, None]  # the style's blue, same structure
    moved = gallery_scores(recoloured.clamp(0, 1), content, style)
    assert moved["style_gram_ratio"] < 0.9 and moved["ssim_content"] > 0.5


def test_gallery_scores_of_outputs_reads_what_the_evaluation_wrote(tmp_path, images):
    import json

    from nstlab.data.images import save_image
    from nstlab.evaluation.gallery import gallery_scores_of_outputs

    output = Image.open(images["content"])
    output.save(tmp_path / "0000.png")
    rows = [{"pair": 0, "content": str(images["content"]), "style": str(images["style"])}]
    (tmp_path / "pairs.json").write_text(json.dumps(rows))
    [scores] = gallery_scores_of_outputs(tmp_path, pairs=4)
    assert scores["ssim_content"] == pytest.approx(1.0) and scores["style_gram_ratio"] == pytest.approx(1.0)
    save_image(torch.zeros(3, 30, 20), tmp_path / "0000.png")  # not the evaluation's shape
    with pytest.raises(NstlabError, match=r"0000\.png: \(30, 20\) px, its content .* \(25, 30\) px; rerun"):
        gallery_scores_of_outputs(tmp_path, pairs=1)
