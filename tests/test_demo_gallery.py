"""The demo gallery shows learning: the committed demo outputs of Gatys, ArtFlow, AdaIN, SANet and
ViT-LoRA keep their content's structure, are not flat and move toward their style
(nstlab.evaluation.evaluate.gallery_scores, on the gallery pairs: the first eval.gallery_pairs test pairs).

The outputs are written by `dvc repro` (reports/outputs/<model>/, with their pairs.json and the
test images under data/cache): where they are absent, the check is skipped.
"""

import pytest

from conftest import REPO
from nstlab.config import load_config
from nstlab.evaluation.evaluate import gallery_scores_of_outputs

GALLERY_MODELS = ("gatys", "artflow", "adain", "sanet", "vit_lora")
MIN_SSIM = 0.45  # greyscale SSIM to the content: a flat colour scores about 0.3, the content blurred 8x 0.42
MIN_LUMINANCE_STD = 0.1  # a flat colour has about 0
MAX_GRAM_RATIO = 0.9  # the output's pixel Gram distance to the style, over the content's own


def gallery_outcome(outputs_dir, pairs: int) -> dict:
    scores = gallery_scores_of_outputs(outputs_dir, pairs)
    return {
        "ssim_content": sum(row["ssim_content"] for row in scores) / len(scores),
        "luminance_std": sum(row["luminance_std"] for row in scores) / len(scores),
        "toward_style": sum(row["style_gram_ratio"] <= MAX_GRAM_RATIO for row in scores),
        "pairs": len(scores),
    }


def shows_learning(outcome: dict) -> bool:
    return (
        outcome["ssim_content"] >= MIN_SSIM
        and outcome["luminance_std"] >= MIN_LUMINANCE_STD
        and 2 * outcome["toward_style"] >= outcome["pairs"]
    )


@pytest.mark.parametrize("model", GALLERY_MODELS)
def test_the_committed_demo_outputs_keep_the_content_and_move_toward_the_style(model, monkeypatch):
    outputs_dir = REPO / "reports" / "outputs" / model
    if not (outputs_dir / "pairs.json").is_file():
        pytest.skip(f"{outputs_dir.relative_to(REPO)}: no demo outputs (dvc repro writes them)")
    monkeypatch.chdir(REPO)  # pairs.json names the test images relative to the repository root
    pairs = load_config(REPO / "params.yaml").eval.gallery_pairs
    try:
        outcome = gallery_outcome(outputs_dir, pairs)
    except FileNotFoundError as missing:
        pytest.skip(f"{missing.filename}: the test images are not here (dvc repro writes them)")
    assert shows_learning(outcome), f"{model}: {outcome}"
