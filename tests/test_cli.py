"""The command line: every stage listed, `info` counts per model at the paper's sizes."""

import json

import pytest
from typer.testing import CliRunner

from nstlab.cli import app

from conftest import PARAMS

PAPER_RANDOM = [
    "-S",
    "profile=paper",
    "-S",
    "backbone.vit=random",
    "-S",
    "backbone.vgg19=random",
    "-S",
    "backbone.adain_vgg=random",
]
runner = CliRunner()


def test_help_lists_every_stage_and_tool():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("download", "pair", "train", "evaluate", "report", "stylize", "info", "ablate", "bench"):
        assert command in result.output


@pytest.mark.parametrize(
    ("model", "trainable"),
    [
        ("vit_lora", 34_513_731),  # stage 2, r 16, q k v dense, 6 encoder and 3 decoder layers
        ("stytr2", 35_394_115),
        ("adain", 3_505_219),
        ("sanet", 7_966_275),
        ("mcc", 4_555_843),
        ("artflow", 6_463_616),
        ("iest", 16_463_366),
        ("gatys", 0),
    ],
)
def test_info_reports_the_reference_parameter_counts(model, trainable):
    result = runner.invoke(app, ["info", "--model", model, "--json", "--params", str(PARAMS), *PAPER_RANDOM])
    assert result.exit_code == 0, result.output
    counts = json.loads(result.output)
    assert counts["trainable"] == trainable and counts["profile"] == "paper"


def test_info_stage1_has_no_lora():
    result = runner.invoke(app, ["info", "--stage", "1", "--json", "--params", str(PARAMS), *PAPER_RANDOM])
    assert json.loads(result.output)["trainable"] == 31_859_523
