import subprocess
import sys

import pytest

from nstlab.config import load_config, lora_modules
from nstlab.errors import ConfigError

from conftest import REPO

PARAMS = REPO / "params.yaml"


def test_default_params_resolve_to_the_demo_profile():
    cfg = load_config(PARAMS)
    assert cfg.profile == "demo"
    assert cfg.data.content_source == "demo" and cfg.backbone.vit == "random"
    assert cfg.lora.target_modules == ("query", "key", "value", "dense")
    assert cfg.baselines["sanet"].loss == {"content": 1.0, "style": 3.0, "identity1": 50.0, "identity2": 1.0}


def test_paper_profile_is_one_switch_away():
    cfg = load_config(PARAMS, ["profile=paper"])
    assert cfg.backbone.vit == "google/vit-base-patch16-224-in21k"
    assert (cfg.data.n_train, cfg.data.n_val, cfg.data.n_test) == (56462, 4000, 352)
    assert cfg.train.stage2.milestones == (4, 6, 8) and cfg.train.stage2.gamma == 0.3
    assert cfg.baselines["sanet"].batch_size == 5 and cfg.baselines["sanet"].iterations == 160000


def test_each_method_trains_by_its_official_protocol_in_the_paper_profile():
    cfg = load_config(PARAMS, ["profile=paper"])
    for method in ("stytr2", "adain", "sanet", "mcc", "artflow", "iest"):
        block = cfg.baselines[method]
        assert (block.data.sampling, block.data.resize, block.data.crop) == ("independent", 512, 256)
        assert block.keep == "last"
    assert (cfg.train.precision, cfg.train.keep, cfg.train.stage2_from) == ("fp32", "best", "last")
    demo = load_config(PARAMS).baselines["adain"].data
    assert (demo.resize, demo.crop) == (256, 128)


def test_a_crop_larger_than_the_resize_is_refused():
    with pytest.raises(ConfigError, match=r"baselines\.sanet\.data\.crop = 300: must be at most "
                                          r"baselines\.sanet\.data\.resize = 256"):
        load_config(PARAMS, ["baselines.sanet.data.crop=300"])


def test_top_level_key_wins_over_the_profile_block():
    cfg = load_config(PARAMS, ["train.batch_size=3"])
    assert cfg.train.batch_size == 3 and cfg.train.stage2.epochs == 3


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("lora.rank=3", "unknown key lora.rank: allowed keys are r, alpha, dropout, target_modules"),
        ("lora.r=0", "lora.r = 0: must be in [1, 1024]"),
        ("lora.r=abc", "lora.r = 'abc': expected a whole number"),
        ("lora.r=1.5", "lora.r = 1.5: expected a whole number"),
        ("train.lr=-1", "train.lr = -1.0: must be in (0, inf]"),
        ("lora.target_modules=[]", "lora.target_modules = []: name at least one of query, key, value, dense"),
        ("lora.target_modules=[query, mlp]", "lora.target_modules: unknown module 'mlp'"),
        ("lora.target_modules=query", "lora.target_modules = 'query': expected a list"),
        ("loss.convention=mine", "loss.convention = 'mine': choose one of paper, stytr2"),
        ("baselines.foo.lr=1", "unknown key baselines.foo"),
        ("train.stage2.milestones=[6, 4]", "train.stage2.milestones = [6, 4]: must be strictly increasing"),
        ("profile=both", "profile = 'both': choose one of demo, paper"),
    ],
)
def test_bad_values_name_the_key_value_and_allowed_range(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(PARAMS, [override])
    text = str(error.value)
    assert message in text and text.startswith(str(PARAMS)) and "\n" not in text


def test_encoder_layers_bounded_by_the_vit():
    with pytest.raises(ConfigError, match=r"encoder.layers = 13: must be in \[1, 12\] \(ViT-B/16 has 12 blocks\)"):
        load_config(PARAMS, ["profile=paper", "encoder.layers=13"])


def test_a_typo_in_the_inactive_profile_is_still_caught():
    with pytest.raises(ConfigError, match="unknown key train.batchsize"):
        load_config(PARAMS, ["profiles.paper.train.batchsize=4"])


def test_malformed_yaml_names_the_line(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("profile: demo\nlora: {r: 16\n")
    with pytest.raises(ConfigError, match=r"params.yaml: not valid YAML at line \d+"):
        load_config(bad)


def test_missing_file_says_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")


def test_paper_target_names_map_to_transformers_5_modules_by_role():
    assert lora_modules(["query", "value"]) == ["q_proj", "v_proj"]
    assert lora_modules(["query", "key", "value", "dense"]) == ["q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"]
    assert lora_modules(["q_proj", "fc1"]) == ["q_proj", "fc1"]


def test_flat_params_for_mlflow():
    flat = load_config(PARAMS).flat()
    assert flat["lora.r"] == 16 and flat["lora.target_modules"] == ["query", "key", "value", "dense"]
    assert flat["baselines.mcc.loss.illumination"] == 3000.0


def test_cli_prints_one_line_and_exits_2_on_a_bad_override():
    result = subprocess.run([sys.executable, "-m", "nstlab", "info", "--params", str(PARAMS), "-S", "lora.r=0"],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "lora.r = 0: must be in [1, 1024]" in result.stderr and "Traceback" not in result.stderr
