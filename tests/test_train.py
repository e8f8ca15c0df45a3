"""The trainer: a real (tiny) two-stage run, resume equality, MLflow records, failure modes."""

import csv
import json
from pathlib import Path

import pytest
import torch

from nstlab.training.checkpoint import load_checkpoint
from nstlab.errors import NstlabError
from nstlab.training.trainer import Trainer, train

FAST = [
    "train.batch_size=2",
    "train.stage1.epochs=2",
    "train.stage2.epochs=2",
    "train.stage2.milestones=[1]",
    "train.log_every=1",
    "train.val_every=3",
    "train.sample_every=3",
    "train.max_val_pairs=2",
]


@pytest.fixture
def run_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    monkeypatch.chdir(tmp_path)
    return {
        "models_dir": tmp_path / "models",
        "logs_dir": tmp_path / "logs",
        "checkpoints_dir": tmp_path / "ckpt",
    }


def _weights(path):
    return load_checkpoint(path)["model"]


def test_two_stages_write_weights_logs_adapter_and_an_mlflow_run(tiny_config, tiny_pairs, run_dirs):
    from nstlab.tracking.queries import search_runs

    cfg = tiny_config(*FAST)
    first = train(cfg, "vit_lora", 1, pairs_dir=tiny_pairs, progress=False, **run_dirs)
    second = train(cfg, "vit_lora", 2, pairs_dir=tiny_pairs, progress=False, **run_dirs)
    assert first["steps"] == 8 and second["steps"] == 8  # 8 pairs / batch 2 = 4 steps per epoch, 2 epochs
    assert second["parameters_trainable"] > first["parameters_trainable"]  # LoRA added
    stage2 = run_dirs["models_dir"] / "vit_lora_stage2"
    assert (stage2 / "adapter" / "content_encoder" / "adapter_config.json").is_file()
    assert any(
        name.startswith("content_encoder.") and "lora_A" in name for name in _weights(stage2 / "model.pt")
    )
    log = (run_dirs["logs_dir"] / "vit_lora_stage2" / "train_log.csv").read_text().splitlines()
    assert log[0].startswith("step,epoch,lr,total,content,style") and len(log) == 9
    lrs = [float(line.split(",")[2]) for line in log[1:]]
    lr = cfg.train.lr
    assert lrs[:4] == [lr] * 4 and lrs[4:] == pytest.approx([lr * 0.3] * 4)  # MultiStepLR at epoch 1

    runs = search_runs(cfg.mlflow).set_index("run_id", drop=False)
    assert len(runs) == 4 and set(runs["status"]) == {"FINISHED"}  # per stage: its config's parent, its run
    run = runs[runs["tags.stage"] == "2"].iloc[0]
    assert runs.loc[run["tags.mlflow.parentRunId"], "tags.seed_group_stage"] == "2"
    assert run["params.seed"] == "324"
    assert run["tags.mlflow.runName"] == "vit_lora-r16-qkvd-e2-d1"
    assert run["params.lora.r"] == "16" and run["params.encoder.layers"] == "2"
    assert int(run["params.parameters.trainable"]) == second["parameters_trainable"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cfg.mlflow.tracking_uri if False else None)
    history = client.get_metric_history(run["run_id"], "train.total")
    assert [m.step for m in history] == list(range(1, 9))
    artifacts = {a.path for a in client.list_artifacts(run["run_id"])}
    assert {"samples", "adapter", "metrics.json", "config.yaml"} <= artifacts


def test_a_run_logs_its_own_params_its_data_version_and_its_source(
    tiny_config, tiny_pairs, run_dirs, tmp_path
):
    import yaml
    from mlflow.tracking import MlflowClient

    from nstlab.data.version import dvc_md5
    from nstlab.tracking.queries import search_runs

    cfg = tiny_config(*FAST, "lora.r=8")
    train(cfg, "vit_lora", 1, pairs_dir=tiny_pairs, progress=False, **run_dirs)
    client = MlflowClient()
    experiment_id = client.get_experiment_by_name(cfg.mlflow.experiment).experiment_id
    (run,) = client.search_runs([experiment_id], "tags.model = 'vit_lora'")  # not its seed group's parent
    assert run.data.params["encoder.layers"] == "2" and run.data.params["profile"] == "demo"
    assert not [key for key in run.data.params if key.startswith(("baselines.", "lora.", "mlflow."))]
    inputs = {item.dataset.name: item for item in run.inputs.dataset_inputs}
    assert set(inputs) == {"pairs/train", "pairs/val"}
    train_input = inputs["pairs/train"]
    assert train_input.dataset.digest == dvc_md5(tiny_pairs) and train_input.dataset.source_type == "dvc"
    source = json.loads(train_input.dataset.source)  # relative to the repository root (here tmp_path)
    assert (source["path"], source["dvc_out"]) == ("pairs/train.csv", "pairs")
    assert json.loads(train_input.dataset.profile) == {"num_rows": 8}
    assert [(tag.key, tag.value) for tag in train_input.tags] == [("mlflow.data.context", "training")]
    assert inputs["pairs/val"].tags[0].value == "validation"
    assert run.data.tags["mlflow.source.type"] == "LOCAL" and run.data.tags["mlflow.source.name"]
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    # The whole resolved config is an artefact: what the params leave out is not lost.
    config_file = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))
    config = yaml.safe_load(Path(config_file).read_text())
    assert config["lora"]["r"] == 8 and config["baselines"]["iest"]["loss"]["adversarial"] == 5.0
    assert len(search_runs(cfg.mlflow, "tags.model = 'vit_lora'")) == 1  # plus its seed group's parent


def test_stage1_leaves_encoders_untouched_in_the_saved_weights(tiny_config, tiny_pairs, run_dirs):
    train(tiny_config(*FAST), "vit_lora", 1, pairs_dir=tiny_pairs, progress=False, tracking=False, **run_dirs)
    saved = _weights(run_dirs["models_dir"] / "vit_lora_stage1" / "model.pt")
    assert saved and all(name.startswith(("transformer_decoder.", "cnn_decoder.")) for name in saved)


def _train_interrupted_at(step: int, monkeypatch, cfg, method: str, stage: int, **kwargs) -> None:
    """A run stopped by Ctrl-C when it reaches `step` (the trainer saves its checkpoint there)."""
    original_step = Trainer._step

    def stop(self, content, style, current):
        if current == step:
            raise KeyboardInterrupt
        return original_step(self, content, style, current)

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_step", stop)
        with pytest.raises(NstlabError, match=f"interrupted at step {step}; .*--resume"):
            train(cfg, method, stage, progress=False, tracking=False, **kwargs)


def test_resume_after_interruption_gives_the_same_weights(
    tiny_config, tiny_pairs, run_dirs, tmp_path, monkeypatch
):
    cfg = tiny_config(*FAST)
    train(cfg, "vit_lora", 1, pairs_dir=tiny_pairs, progress=False, tracking=False, **run_dirs)
    reference = _weights(run_dirs["checkpoints_dir"] / "vit_lora_stage1" / "last.pt")

    interrupted = {k: tmp_path / "b" / k for k in run_dirs}
    _train_interrupted_at(5, monkeypatch, cfg, "vit_lora", 1, pairs_dir=tiny_pairs, **interrupted)
    summary = train(
        cfg,
        "vit_lora",
        1,
        pairs_dir=tiny_pairs,
        progress=False,
        tracking=False,
        resume="require",
        **interrupted,
    )
    assert summary["steps"] == 8
    resumed = _weights(interrupted["checkpoints_dir"] / "vit_lora_stage1" / "last.pt")
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[name], reference[name]) for name in reference)


def test_resume_refuses_a_checkpoint_from_another_config(tiny_config, tiny_pairs, run_dirs):
    train(tiny_config(*FAST), "vit_lora", 1, pairs_dir=tiny_pairs, progress=False, tracking=False, **run_dirs)
    with pytest.raises(NstlabError, match="made with another config or code"):
        train(
            tiny_config(*FAST, "decoder.dropout=0.2"),
            "vit_lora",
            1,
            pairs_dir=tiny_pairs,
            progress=False,
            tracking=False,
            resume="require",
            **run_dirs,
        )


def test_a_nan_loss_stops_with_a_message_keeps_the_checkpoint_and_fails_the_run(
    tiny_config, tiny_pairs, run_dirs, monkeypatch
):
    from nstlab.models.vit_lora import ViTLoRA
    from nstlab.tracking.queries import search_runs

    cfg = tiny_config(*FAST)
    original = ViTLoRA.losses
    calls = {"n": 0}

    def nan_after_four(self, content, style):
        terms = original(self, content, style)
        calls["n"] += 1
        if self.training and calls["n"] > 4:
            terms["content"] = terms["content"] * float("nan")
        return terms

    monkeypatch.setattr(ViTLoRA, "losses", nan_after_four)
    with pytest.raises(NstlabError, match="training diverged at step"):
        train(cfg, "vit_lora", 1, pairs_dir=tiny_pairs, progress=False, **run_dirs)
    checkpoint = load_checkpoint(run_dirs["checkpoints_dir"] / "vit_lora_stage1" / "last.pt")
    assert checkpoint["step"] == 3 and all(torch.isfinite(t).all() for t in checkpoint["model"].values())
    assert list(search_runs(cfg.mlflow, "tags.model = 'vit_lora'")["status"]) == ["FAILED"]


def test_a_pickled_checkpoint_with_code_is_refused(tmp_path):
    import pickle

    class Payload:
        def __reduce__(self):
            return (print, ("owned",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"model": Payload()}))
    with pytest.raises(NstlabError, match="refused to load"):
        load_checkpoint(path)


def test_training_metrics_json_is_what_dvc_reads(tiny_config, tiny_pairs, run_dirs):
    train(tiny_config(*FAST), "vit_lora", 1, pairs_dir=tiny_pairs, progress=False, tracking=False, **run_dirs)
    metrics = json.loads((run_dirs["logs_dir"] / "vit_lora_stage1" / "metrics.json").read_text())
    assert metrics["steps"] == 8 and metrics["val_score"] > 0
    assert all(isinstance(value, int | float) and not isinstance(value, bool) for value in metrics.values())
    run = json.loads((run_dirs["logs_dir"] / "vit_lora_stage1" / "run.json").read_text())
    assert run == {
        "model": "vit_lora",
        "stage": 1,
        "run_name": "vit_lora-stage1-e2-d1",
        "profile": "demo",
        "keep": "best",
    }


def test_the_run_json_records_the_tracking_uri_as_written_not_a_machine_path(
    tiny_config, tiny_pairs, run_dirs, monkeypatch
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # params' relative sqlite:///mlruns.db, in the cwd (tmp_path)
    summary = train(tiny_config(*FAST), "vit_lora", 1, pairs_dir=tiny_pairs, progress=False, **run_dirs)
    run = json.loads((run_dirs["logs_dir"] / "vit_lora_stage1" / "run.json").read_text())
    assert run["tracking_uri"] == "sqlite:///mlruns.db" and run["mlflow_run_id"] == summary["mlflow_run_id"]
    assert (run_dirs["models_dir"].parent / "mlruns.db").is_file()


def test_a_finished_run_whose_outputs_dvc_deleted_trains_again_to_the_same_weights(
    tiny_config, tiny_pairs, run_dirs
):
    """`dvc repro -f` deletes models/<key> but not checkpoints/<key>/last.pt (finished, same
    config and code): the trainer trains again instead of "resuming" past the end."""
    import shutil

    cfg = tiny_config(*FAST)
    train(cfg, "vit_lora", 1, pairs_dir=tiny_pairs, progress=False, tracking=False, **run_dirs)
    out = run_dirs["models_dir"] / "vit_lora_stage1"
    first = _weights(out / "model.pt")
    shutil.rmtree(out)
    (run_dirs["logs_dir"] / "vit_lora_stage1" / "metrics.json").unlink()
    with pytest.raises(NstlabError, match=r"that run finished and .*model.pt is gone.*--resume require"):
        train(
            cfg,
            "vit_lora",
            1,
            pairs_dir=tiny_pairs,
            progress=False,
            tracking=False,
            resume="require",
            **run_dirs,
        )
    summary = train(cfg, "vit_lora", 1, pairs_dir=tiny_pairs, progress=False, tracking=False, **run_dirs)
    assert summary["steps"] == 8 and summary["train_seconds"] > 0
    again = _weights(out / "model.pt")
    assert again.keys() == first.keys() and all(torch.equal(again[name], first[name]) for name in first)
    log = (run_dirs["logs_dir"] / "vit_lora_stage1" / "train_log.csv").read_text().splitlines()
    assert len(log) == 1 + 8  # logged afresh, not appended to the first run's rows


def test_cli_resume_require_after_a_finished_run_lost_its_outputs_is_one_line(
    tiny_overrides, tiny_pairs, tmp_path, monkeypatch, capsys
):
    """`nstlab train` as the DVC stage runs it (default folders), twice, the outputs deleted in between."""
    import shutil

    from conftest import PARAMS

    from nstlab.cli import main

    monkeypatch.chdir(tmp_path)
    overrides = [flag for override in [*tiny_overrides, *FAST] for flag in ("-S", override)]
    args = [
        "train",
        "vit_lora",
        "--stage",
        "1",
        "--no-tracking",
        "--no-progress",
        "--params",
        str(PARAMS),
        *overrides,
        "--pairs",
        str(tiny_pairs),
    ]

    def exit_code(argv) -> int:
        with pytest.raises(SystemExit) as done:
            main(argv)
        return done.value.code

    assert exit_code(args) == 0
    shutil.rmtree("models")
    capsys.readouterr()
    assert exit_code([*args, "--resume", "require"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        (
            "nstlab: error: checkpoints/vit_lora_stage1/last.pt: that run finished and "
            "models/vit_lora_stage1/model.pt is gone, so there is nothing to resume; "
            "run without --resume require to train it again"
        )
    ]
    assert exit_code(args) == 0 and (tmp_path / "models" / "vit_lora_stage1" / "model.pt").is_file()


# -- each method's own protocol: keep last|best, stage 2's start, IEST's D schedule, precision -----


def _baseline(tiny_config, method: str, *extra: str):
    return tiny_config(
        "train.log_every=1",
        "train.val_every=2",
        "train.sample_every=2",
        "train.max_val_pairs=2",
        f"baselines.{method}.batch_size=4",
        f"baselines.{method}.iterations=5",
        f"baselines.{method}.data.resize=32",
        f"baselines.{method}.data.crop=16",
        *extra,
    )


def test_a_baseline_keeps_its_final_step_and_resumes_to_the_same_weights(
    tiny_config, tiny_pairs, run_dirs, tmp_path, monkeypatch
):
    cfg = _baseline(tiny_config, "adain")
    assert cfg.baselines["adain"].keep == "last"
    summary = train(cfg, "adain", pairs_dir=tiny_pairs, progress=False, tracking=False, **run_dirs)
    kept = load_checkpoint(run_dirs["models_dir"] / "adain" / "model.pt")
    final = load_checkpoint(run_dirs["checkpoints_dir"] / "adain" / "last.pt")
    assert (kept["kept"], kept["step"], summary["keep"], summary["kept_step"]) == ("last", 5, "last", 5)
    assert all(torch.equal(kept["model"][name], final["model"][name]) for name in final["model"])
    assert not (run_dirs["models_dir"] / "adain" / "last.pt").exists()

    interrupted = {k: tmp_path / "b" / k for k in run_dirs}
    _train_interrupted_at(3, monkeypatch, cfg, "adain", 0, pairs_dir=tiny_pairs, **interrupted)
    train(cfg, "adain", pairs_dir=tiny_pairs, progress=False, tracking=False, resume="require", **interrupted)
    resumed = _weights(interrupted["models_dir"] / "adain" / "model.pt")
    assert all(torch.equal(resumed[name], kept["model"][name]) for name in kept["model"])


def test_keep_best_keeps_the_best_validation_step_and_the_final_weights_beside_it(
    tiny_config, tiny_pairs, run_dirs
):
    cfg = _baseline(tiny_config, "adain", "baselines.adain.keep=best")
    summary = train(cfg, "adain", pairs_dir=tiny_pairs, progress=False, tracking=False, **run_dirs)
    kept = load_checkpoint(run_dirs["models_dir"] / "adain" / "model.pt")
    final = load_checkpoint(run_dirs["models_dir"] / "adain" / "last.pt")
    val_log = (run_dirs["logs_dir"] / "adain" / "val_log.csv").read_text().splitlines()[1:]
    scores = {int(row.split(",")[0]): float(row.split(",")[-1]) for row in val_log}
    assert kept["kept"] == "best" and kept["step"] == min(scores, key=scores.get) == summary["kept_step"]
    assert (final["kept"], final["step"]) == ("last", 5)


def test_stage2_starts_from_the_final_stage1_weights(tiny_config, tiny_pairs, run_dirs):
    from nstlab.models.vit_lora import stage1_weights

    cfg = tiny_config(*FAST)
    assert (cfg.train.keep, cfg.train.stage2_from) == ("best", "last")
    train(cfg, "vit_lora", 1, pairs_dir=tiny_pairs, progress=False, tracking=False, **run_dirs)
    folder = run_dirs["models_dir"] / "vit_lora_stage1"
    assert load_checkpoint(folder / "last.pt")["step"] == 8
    assert load_checkpoint(folder / "model.pt")["kept"] == "best"
    assert stage1_weights(run_dirs["models_dir"], "last") == folder / "last.pt"
    assert stage1_weights(run_dirs["models_dir"], "best") == folder / "model.pt"
    stage2 = Trainer(cfg, "vit_lora", 2, tiny_pairs, progress=False, tracking=False, **run_dirs)
    final = _weights(folder / "last.pt")
    state = stage2.model.state_dict()
    assert all(torch.equal(state[name], final[name]) for name in final if name.startswith("cnn_decoder."))

    train(
        tiny_config(*FAST, "train.keep=last"),
        "vit_lora",
        1,
        pairs_dir=tiny_pairs,
        progress=False,
        tracking=False,
        **run_dirs,
    )
    assert stage1_weights(run_dirs["models_dir"], "last") == folder / "model.pt"
    with pytest.raises(NstlabError, match="stage 1 kept no best weights"):
        stage1_weights(run_dirs["models_dir"], "best")


@pytest.mark.parametrize("decays", [True, False])
def test_the_iest_discriminator_lr_follows_the_generator_schedule(tiny_config, tiny_pairs, run_dirs, decays):
    cfg = _baseline(
        tiny_config,
        "iest",
        "baselines.iest.iterations=4",
        "baselines.iest.lr_decay=0.1",
        f"baselines.iest.options.d_lr_decay={str(decays).lower()}",
    )
    train(cfg, "iest", pairs_dir=tiny_pairs, progress=False, tracking=False, **run_dirs)
    with open(run_dirs["logs_dir"] / "iest" / "train_log.csv") as handle:
        rows = list(csv.DictReader(handle))
    lr = cfg.baselines["iest"].lr
    expected = [lr / (1 + 0.1 * i) for i in range(4)]  # IEContraAST: lr / (1 + decay · iteration)
    assert [float(row["lr"]) for row in rows] == pytest.approx(expected, rel=1e-12)
    assert [float(row["d_lr"]) for row in rows] == pytest.approx(expected if decays else [lr] * 4, rel=1e-12)


def test_the_paper_profile_trains_and_validates_in_fp32(tiny_config):
    from nstlab.runtime import autocast_dtype

    cuda = torch.device("cuda")  # the dtype is decided from the device type alone
    paper = tiny_config("profile=paper")
    assert paper.train.precision == "fp32" and autocast_dtype(paper, cuda) is None
    assert autocast_dtype(tiny_config("profile=paper", "train.precision=bf16"), cuda) is torch.bfloat16
    assert tiny_config().train.precision == "auto"  # the demo: bf16 where native (tests/test_precision.py)


# -- ViT-LoRA's epochs as NST-Project: the last partial batch trains, validation counts in epochs ------


def test_a_paper_epoch_is_3529_steps_with_its_last_partial_batch(tiny_config):
    """NST-Project main.py: DataLoader(batch_size=16, shuffle=True), no drop_last: 56,462 pairs
    make ceil(56462 / 16) = 3,529 steps, the last of 14 pairs."""
    from nstlab.models.vit_lora import ViTLoRA

    train_spec = ViTLoRA.train_spec

    paper = train_spec(tiny_config("profile=paper"), 2, 56_462)
    assert (paper.steps_per_epoch, paper.total_steps, paper.drop_last) == (3529, 9 * 3529, False)
    dropped = train_spec(tiny_config("profile=paper", "train.last_batch=drop"), 2, 56_462)
    assert (dropped.steps_per_epoch, dropped.drop_last) == (3528, True)


def test_paper_validation_steps_are_nst_projects():
    """NST-Project trainer.py validates when (i + 1) % 400 == 0, i the batch index within the epoch."""
    from nstlab.training.schedule import TrainSpec, scheduled

    def spec(in_epoch: bool) -> TrainSpec:
        return TrainSpec(
            "vit_lora", 1, "k", "r", 16, 2 * 3529, 3529, 1e-4, None, lambda s, e: 1.0, "", "best", in_epoch
        )

    official = [epoch * 3529 + i + 1 for epoch in range(2) for i in range(3529) if (i + 1) % 400 == 0]
    assert official[8:10] == [3929, 4329]  # epoch 2 restarts the count
    assert [step for step in range(1, 2 * 3529 + 1) if scheduled(step, 400, spec(True))] == official
    assert [step for step in range(1, 2 * 3529 + 1) if scheduled(step, 400, spec(False))] == list(
        range(400, 2 * 3529 + 1, 400)
    )


def test_an_epoch_ends_with_its_partial_batch_and_validation_counts_in_epochs(
    tiny_config, tiny_pairs, run_dirs, monkeypatch
):
    """8 pairs, batch 3: epochs of 3, 3 and 2 pairs; val_every 2 validates at step 2 of each epoch
    (run steps 2 and 5) and describes the final step 6 without letting it be kept as best."""
    sizes = []
    original_step = Trainer._step

    def record(self, content, style, step):
        sizes.append(len(content))
        return original_step(self, content, style, step)

    monkeypatch.setattr(Trainer, "_step", record)
    cfg = tiny_config(*FAST, "train.batch_size=3", "train.val_every=2", "train.sample_every=2")
    summary = train(cfg, "vit_lora", 1, pairs_dir=tiny_pairs, progress=False, tracking=False, **run_dirs)
    assert sizes == [3, 3, 2, 3, 3, 2] and summary["steps"] == 6
    with open(run_dirs["logs_dir"] / "vit_lora_stage1" / "val_log.csv") as handle:
        assert [int(row["step"]) for row in csv.DictReader(handle)] == [2, 5, 6]
    assert summary["kept_step"] in (2, 5)
    assert load_checkpoint(run_dirs["models_dir"] / "vit_lora_stage1" / "last.pt")["step"] == 6
    samples = sorted(path.name for path in (run_dirs["models_dir"] / "vit_lora_stage1" / "samples").iterdir())
    assert samples == ["step_000002.png", "step_000005.png", "step_000006.png"]


def test_in_epoch_validation_that_never_comes_is_refused(tiny_config):
    from nstlab.errors import ConfigError
    from nstlab.models.vit_lora import ViTLoRA

    train_spec = ViTLoRA.train_spec

    with pytest.raises(
        ConfigError, match=r"train.val_every = 5: an epoch has 4 steps .* train.val_steps: global"
    ):
        train_spec(tiny_config(*FAST, "train.val_every=5"), 1, 8)
    assert (
        train_spec(tiny_config(*FAST, "train.val_every=5", "train.val_steps=global"), 1, 8).total_steps == 8
    )


def test_a_resumed_run_with_partial_batches_ends_with_the_same_weights(
    tiny_config, tiny_pairs, run_dirs, tmp_path, monkeypatch
):
    cfg = tiny_config(*FAST, "train.batch_size=3", "train.val_every=2", "train.sample_every=2")
    train(cfg, "vit_lora", 1, pairs_dir=tiny_pairs, progress=False, tracking=False, **run_dirs)
    reference = _weights(run_dirs["checkpoints_dir"] / "vit_lora_stage1" / "last.pt")
    interrupted = {k: tmp_path / "b" / k for k in run_dirs}
    _train_interrupted_at(4, monkeypatch, cfg, "vit_lora", 1, pairs_dir=tiny_pairs, **interrupted)
    train(
        cfg,
        "vit_lora",
        1,
        pairs_dir=tiny_pairs,
        progress=False,
        tracking=False,
        resume="require",
        **interrupted,
    )
    resumed = _weights(interrupted["checkpoints_dir"] / "vit_lora_stage1" / "last.pt")
    assert all(torch.equal(resumed[name], reference[name]) for name in reference)


# -- ArtFlow's first batch: an ActNorm init pass, no update (its train.py) ------------------------


def _artflow(tiny_config, iterations: int, *extra: str):
    return _baseline(tiny_config, "artflow", f"baselines.artflow.iterations={iterations}", *extra)


def test_the_first_artflow_step_initialises_actnorm_and_updates_nothing(
    tiny_config, tiny_pairs, run_dirs, tmp_path, monkeypatch
):
    """ArtFlow train.py, at i == start_iter: glow(content) under no_grad, then `continue`."""
    from nstlab.models import build_model

    cfg = _artflow(tiny_config, 3)
    assert cfg.baselines["artflow"].options["first_batch"] == "init_only"
    fresh = build_model("artflow", cfg).state_dict()
    _train_interrupted_at(1, monkeypatch, cfg, "artflow", 0, pairs_dir=tiny_pairs, **run_dirs)
    state = load_checkpoint(run_dirs["checkpoints_dir"] / "artflow" / "last.pt")  # after step 0
    weights = state["model"]
    actnorm = {name for name in weights if ".actnorm." in name}
    assert actnorm and all(weights[name].item() == 1 for name in actnorm if name.endswith("initialized"))
    assert all(torch.equal(weights[name], fresh[name]) for name in weights if name not in actnorm)
    assert state["step"] == 1 and state["optimizer"]["state"] == {}  # Adam never stepped
    first_loc = "glow.blocks.0.flows.0.actnorm.loc"
    loader = Trainer(cfg, "artflow", 0, tiny_pairs, progress=False, tracking=False, **run_dirs).train_loader
    loader.sampler.set_epoch(0)
    content = next(iter(loader))[0]  # step 0's content batch: the first flow sees it squeezed
    squeezed_mean = torch.nn.functional.pixel_unshuffle(content, 2).mean(dim=(0, 2, 3))
    torch.testing.assert_close(weights[first_loc].flatten(), -squeezed_mean)

    other = {key: tmp_path / "first_batch_trains" / key for key in run_dirs}
    cfg = _artflow(tiny_config, 3, "baselines.artflow.options.first_batch=train")
    _train_interrupted_at(1, monkeypatch, cfg, "artflow", 0, pairs_dir=tiny_pairs, **other)
    updated = _weights(other["checkpoints_dir"] / "artflow" / "last.pt")
    name = "glow.blocks.0.flows.0.invconv.w_s"
    assert not torch.equal(updated[name], fresh[name])


def test_a_resumed_artflow_run_does_not_repeat_the_init_pass(
    tiny_config, tiny_pairs, run_dirs, tmp_path, monkeypatch
):
    cfg = _artflow(tiny_config, 4)
    train(cfg, "artflow", pairs_dir=tiny_pairs, progress=False, tracking=False, **run_dirs)
    reference = _weights(run_dirs["checkpoints_dir"] / "artflow" / "last.pt")
    with open(run_dirs["logs_dir"] / "artflow" / "train_log.csv") as handle:
        assert [row["step"] for row in csv.DictReader(handle)] == ["2", "3", "4"]  # step 1: the init pass

    interrupted = {k: tmp_path / "b" / k for k in run_dirs}
    _train_interrupted_at(1, monkeypatch, cfg, "artflow", 0, pairs_dir=tiny_pairs, **interrupted)
    calls = []
    monkeypatch.setattr("nstlab.models.artflow.ArtFlow.first_batch", lambda self, *batch: calls.append(1))
    train(
        cfg, "artflow", pairs_dir=tiny_pairs, progress=False, tracking=False, resume="require", **interrupted
    )
    assert calls == []
    resumed = _weights(interrupted["checkpoints_dir"] / "artflow" / "last.pt")
    assert all(torch.equal(resumed[name], reference[name]) for name in reference)
