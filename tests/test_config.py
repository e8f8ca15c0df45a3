import subprocess
import sys

import pytest

from nstlab.config import load_config, lora_modules
from nstlab.errors import ConfigError

from conftest import PARAMS, REPO


def test_default_params_resolve_to_the_demo_profile():
    cfg = load_config(PARAMS)
    assert cfg.profile == "demo"
    assert cfg.data.content_source == "demo" and cfg.backbone.vit == "models/demo_backbones/vit"
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
    # NST-Project: decoder.py Xavier on the CNN decoder too, dataloader.py one-to-one bilinear
    # pairs, main.py no drop_last, trainer.py's in-epoch validation; ArtFlow's ActNorm-only batch
    assert (cfg.decoder.cnn_init, cfg.data.pairing, cfg.data.resample) == ("xavier", "one_to_one", "bilinear")
    assert (cfg.train.last_batch, cfg.train.val_steps, cfg.train.val_every) == ("keep", "in_epoch", 400)
    assert cfg.baselines["artflow"].options["first_batch"] == "init_only"
    assert cfg.baselines["stytr2"].warmup_iterations == 10000
    demo = load_config(PARAMS).baselines["adain"].data
    assert (demo.resize, demo.crop) == (192, 96)


def test_a_crop_larger_than_the_resize_is_refused():
    with pytest.raises(
        ConfigError,
        match=r"baselines\.sanet\.data\.crop = 300: must be at most "
        r"baselines\.sanet\.data\.resize = 192",
    ):
        load_config(PARAMS, ["baselines.sanet.data.crop=300"])


def test_top_level_key_wins_over_the_profile_block():
    cfg = load_config(PARAMS, ["train.batch_size=3"])
    assert cfg.train.batch_size == 3 and cfg.train.stage2.epochs == 2


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
        ("data.style_source=coco", "data.style_source = 'coco': use one of demo, wikiart, dir:PATH"),
        ("data.content_source='dir:'", "data.content_source = 'dir:': use one of demo, coco, dir:PATH"),
        ("data.content_source=imagenet", "hf:DATASET_ID (a Hugging Face dataset)"),
        ("data.max_missing=1.5", "data.max_missing = 1.5: must be in [0, 1]"),
        ("data.hub_shuffle_buffer=0", "data.hub_shuffle_buffer = 0: must be in [1, inf]"),
    ],
)
def test_bad_values_name_the_key_value_and_allowed_range(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(PARAMS, [override])
    text = str(error.value)
    assert message in text and text.startswith(str(PARAMS)) and "\n" not in text


def test_encoder_layers_bounded_by_the_vit():
    with pytest.raises(
        ConfigError, match=r"encoder.layers = 13: must be in \[1, 12\] \(ViT-B/16 has 12 blocks\)"
    ):
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
    assert lora_modules(["query", "key", "value", "dense"]) == [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "fc1",
        "fc2",
    ]
    assert lora_modules(["q_proj", "fc1"]) == ["q_proj", "fc1"]


def test_flat_params_for_mlflow():
    flat = load_config(PARAMS).flat()
    assert flat["lora.r"] == 16 and flat["lora.target_modules"] == ["query", "key", "value", "dense"]
    assert flat["baselines.mcc.loss.illumination"] == 3000.0


def test_cli_prints_one_line_and_exits_2_on_a_bad_override():
    result = subprocess.run(
        [sys.executable, "-m", "nstlab", "info", "--params", str(PARAMS), "-S", "lora.r=0"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "lora.r = 0: must be in [1, 1024]" in result.stderr and "Traceback" not in result.stderr


def test_local_folders_and_hub_datasets_are_sources_for_either_role():
    cfg = load_config(PARAMS, ["data.content_source=dir:/photos", "data.style_source=hf:huggan/wikiart"])
    assert (cfg.data.content_source, cfg.data.style_source) == ("dir:/photos", "hf:huggan/wikiart")
    assert cfg.data.max_missing == 0.02 and cfg.data.hub_shuffle_buffer == 1000


def test_run_params_hold_the_shared_keys_and_only_the_trained_models_block():
    from nstlab.config import run_params

    cfg = load_config(PARAMS)
    vit_lora = run_params(cfg, "vit_lora", 2)
    assert not any(key.startswith("baselines.") for key in vit_lora)
    assert vit_lora["lora.r"] == 16 and vit_lora["profile"] == "demo" and vit_lora["seed"] == 324
    assert vit_lora["train.stage2.epochs"] == 2 and vit_lora["data.n_train"] == 80
    assert {key.split(".")[0] for key in vit_lora} == {
        "profile",
        "seed",
        "data",
        "backbone",
        "eval",
        "encoder",
        "decoder",
        "lora",
        "loss",
        "train",
    }
    assert not any(key.startswith("lora.") for key in run_params(cfg, "vit_lora", 1))  # LoRA: stage 2 only
    sanet = run_params(cfg, "sanet")
    assert sanet["baselines.sanet.lr"] == 1e-3 and sanet["train.workers"] == 0
    assert not any(
        key.startswith(("baselines.adain", "lora.", "encoder.", "train.batch_size", "train.lr"))
        for key in sanet
    )
    gatys = run_params(cfg, "gatys")
    assert gatys["baselines.gatys.iterations"] == 40 and gatys["train.device"] == "auto"
    assert not any(key.startswith(("baselines.sanet", "train.workers")) for key in gatys)
    assert set(vit_lora) | set(sanet) < set(cfg.flat())


def test_run_params_name_an_unknown_model():
    from nstlab.config import run_params

    with pytest.raises(ConfigError, match="unknown model 'vgg'"):
        run_params(load_config(PARAMS), "vgg")


def test_config_yaml_holds_every_resolved_key():
    import yaml

    from nstlab.config import config_yaml, flatten

    cfg = load_config(PARAMS, ["lora.r=32"])
    assert flatten(yaml.safe_load(config_yaml(cfg))) == cfg.flat()


def test_the_data_split_has_its_own_seed_that_training_seeds_leave_alone(tiny_config):
    import yaml

    from conftest import REPO

    assert tiny_config().data.split_seed == 324  # the demo's pairs of before the split seed existed
    assert tiny_config("seed=1").data.split_seed == 324
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name in ("download", "pair"):  # `dvc exp run -S seed=1` retrains, it does not re-pair
        assert "data.split_seed" in stages[name]["params"] and "seed" not in stages[name]["params"]
    assert "seed" in stages["train_vit_lora_stage1"]["params"]


def test_tests_read_the_committed_params_and_a_workspace_read_is_noticed():
    import conftest

    committed = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=REPO, capture_output=True, text=True)
    assert PARAMS != REPO / "params.yaml" and PARAMS.read_text() == committed.stdout
    load_config(PARAMS)
    assert conftest.workspace_params_reads == []
    load_config(REPO / "params.yaml")  # what the autouse guard fails a test for
    assert conftest.workspace_params_reads == [str(REPO / "params.yaml")]
    conftest.workspace_params_reads.clear()


# -- a profile's value is never hidden silently --------------------------------------------------


def test_the_committed_params_set_no_key_both_at_the_top_and_in_a_profile():
    import yaml

    from nstlab.config import PROFILES, shadowed

    raw = yaml.safe_load(PARAMS.read_text())
    assert {profile: [s.line() for s in shadowed(raw, profile)] for profile in PROFILES} == {
        profile: [] for profile in PROFILES
    }


def test_the_demo_stytr2_warms_up_for_its_own_3_steps_and_resolving_says_nothing(capsys):
    from nstlab.training.schedule import baseline_spec

    demo, paper = load_config(PARAMS), load_config(PARAMS, ["profile=paper"])
    assert capsys.readouterr().err == ""
    assert (demo.baselines["stytr2"].warmup_iterations, paper.baselines["stytr2"].warmup_iterations) == (
        3,
        10000,
    )
    factor = baseline_spec(demo, "stytr2", "stytr2", "stytr2", 8).lr_factor
    assert [factor(step, 0) for step in (0, 2)] == pytest.approx(
        [1 / (1 + 3e-4 * 3), (1 + 3e-4 * 2) / (1 + 3e-4 * 3)]
    )
    assert factor(3, 0) == 1.0  # the warm-up is over: the full lr (1e-3 in the demo)


def _params_with(tmp_path, **top_level_stytr2):
    """params.yaml with extra top-level baselines.stytr2 keys, written to tmp_path."""
    import yaml

    raw = yaml.safe_load(PARAMS.read_text())
    raw["baselines"]["stytr2"].update(top_level_stytr2)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_a_top_level_key_that_hides_a_profile_value_is_named_with_both_values(tmp_path, capsys):
    path = _params_with(tmp_path, warmup_iterations=7)  # no git here: nothing says it was typed
    assert load_config(path).baselines["stytr2"].warmup_iterations == 7
    assert capsys.readouterr().err.splitlines() == [
        f"{path}: baselines.stytr2.warmup_iterations = 7 at the top level overrides "
        "profiles.demo.baselines.stytr2.warmup_iterations = 3; set it in one place"
    ]
    load_config(path, ["profile=paper"])  # the paper profile's own 10000 is hidden too
    assert "profiles.paper.baselines.stytr2.warmup_iterations = 10000" in capsys.readouterr().err


def test_a_typed_override_hides_a_profile_value_quietly(capsys):
    cfg = load_config(PARAMS, ["baselines.stytr2.warmup_iterations=7", "train={lr: 0.01}"])
    assert cfg.baselines["stytr2"].warmup_iterations == 7 and cfg.train.lr == 0.01
    assert capsys.readouterr().err == ""


def test_a_value_dvc_exp_run_wrote_is_quiet_and_a_committed_one_is_named(tmp_path, capsys):
    """`dvc exp run -S key=value` writes the value into params.yaml: a top-level value that differs
    from the committed file's (git HEAD) was typed; one that is committed was not."""

    def git(*args: str) -> None:
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
            cwd=tmp_path,
            check=True,
            capture_output=True,
        )

    (tmp_path / "params.yaml").write_text(PARAMS.read_text())
    git("init", "-q")
    git("add", "params.yaml")
    git("commit", "-qm", "params")
    path = _params_with(tmp_path, warmup_iterations=7)
    load_config(path)
    assert capsys.readouterr().err == ""
    git("commit", "-qam", "a shadowing key, committed")
    load_config(path)
    assert "warmup_iterations = 7 at the top level overrides" in capsys.readouterr().err


def test_gatys_learning_rate_fits_each_profiles_step_count():
    # a top-level baselines.gatys.lr would win over both profiles' values
    demo, paper = (
        load_config(PARAMS).baselines["gatys"],
        load_config(PARAMS, ["profile=paper"]).baselines["gatys"],
    )
    assert (demo.lr, demo.iterations) == (0.05, 40) and (paper.lr, paper.iterations) == (0.003, 2000)
