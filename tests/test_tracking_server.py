"""Tracking against a real `mlflow server`, and the buffer that keeps a run's calls while the
backend is down (replayed automatically when it returns, or by `nstlab sync`)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from nstlab.config import run_params
from nstlab.tracking import buffer, source, view
from nstlab.training.checkpoint import load_checkpoint
from nstlab.cli import app, main
from nstlab.tracking.buffer import Buffer, sync_buffers
from nstlab.tracking.run import Tracker
from nstlab.training.trainer import Trainer, train

pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

FAST = [
    "train.batch_size=2",
    "train.stage1.epochs=2",
    "train.log_every=1",
    "train.val_every=3",
    "train.sample_every=3",
    "train.max_val_pairs=2",
]  # 8 steps, 4 an epoch; validation and a sample grid at step 3 of each epoch (3, 7) and the last (8)


class Server:
    """A real `mlflow server` (sqlite backend, artefacts proxied to a folder) that tests stop and restart."""

    def __init__(self, folder: Path):
        self.folder = folder
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.folder / 'mlflow.db'}",
            "--serve-artifacts",
            "--artifacts-destination",
            str(self.folder / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no background job workers
        log = open(self.folder / "server.log", "ab")
        self.process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )  # its own group: stop() ends uvicorn too
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1):
                    return
            except OSError:
                if self.process.poll() is not None:
                    break
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"mlflow server did not start: {(self.folder / 'server.log').read_text()[-2000:]}")

    def stop(self) -> None:
        """Kill it outright, as a crash or a lost machine would."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = Server(tmp_path_factory.mktemp("mlflow_server"))
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def run_dirs(tmp_path, monkeypatch):
    """Output folders in tmp_path, which is also the repository root (so mlruns-buffer/ lands there)."""
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return {
        "models_dir": tmp_path / "models",
        "logs_dir": tmp_path / "logs",
        "checkpoints_dir": tmp_path / "ckpt",
    }


def test_a_training_logs_params_metrics_and_artefacts_over_http(
    server, tiny_config, tiny_pairs, run_dirs, monkeypatch, tmp_path
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    summary = train(tiny_config(*FAST), "vit_lora", 1, pairs_dir=tiny_pairs, progress=False, **run_dirs)

    client = MlflowClient(server.url)
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == summary["run_name"]
    assert run.data.params["encoder.layers"] == "2" and run.data.tags["tracking_uri"] == server.url
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train.total")] == list(range(1, 9))
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val.score")] == [3, 7, 8]
    record = json.loads((run_dirs["logs_dir"] / "vit_lora_stage1" / "run.json").read_text())
    assert (
        record["mlflow_run_url"]
        == f"{server.url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    )
    # Artefacts went through the server into its --artifacts-destination, not into a local folder.
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    grid = client.download_artifacts(run.info.run_id, "samples/step_000008.png", str(tmp_path / "download"))
    local = run_dirs["models_dir"] / "vit_lora_stage1" / "samples" / "step_000008.png"
    assert Path(grid).read_bytes() == local.read_bytes()
    assert list((server.folder / "artifacts").rglob("step_000008.png"))
    assert not (tmp_path / "mlartifacts").exists() and not (tmp_path / "mlruns-buffer").exists()


def test_the_server_dying_mid_run_costs_no_step_and_sync_delivers_the_rest(
    server, tiny_config, tiny_pairs, run_dirs, monkeypatch, capsys
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    original_step = Trainer._step

    def kill_server_after_step_3(self, content, style, step):
        if step == 3:  # steps 1-3 and the validation at 3 reached the server
            server.stop()
        return original_step(self, content, style, step)

    monkeypatch.setattr(Trainer, "_step", kill_server_after_step_3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        started = time.perf_counter()
        summary = train(tiny_config(*FAST), "vit_lora", 1, pairs_dir=tiny_pairs, progress=False, **run_dirs)
        seconds = time.perf_counter() - started
    mlflow_warnings = [str(w.message) for w in caught if "MLflow" in str(w.message)]
    assert len(mlflow_warnings) == 1 and "training goes on" in mlflow_warnings[0]
    assert summary["steps"] == 8 and seconds < 60  # fail-fast HTTP settings: no minutes of retries
    checkpoint = load_checkpoint(run_dirs["checkpoints_dir"] / "vit_lora_stage1" / "last.pt")
    assert checkpoint["step"] == 8 and checkpoint["finished"]
    assert all(torch.isfinite(weights).all() for weights in checkpoint["model"].values())
    assert "nstlab sync" in capsys.readouterr().err
    buffers = list((run_dirs["logs_dir"].parent / "mlruns-buffer").glob("*.jsonl"))
    assert len(buffers) == 1 and summary["mlflow_run_id"] in buffers[0].name

    server.start()  # same port, same backend store and artefact folder
    result = CliRunner().invoke(app, ["sync"])
    assert result.exit_code == 0 and f"delivered to run {summary['mlflow_run_id']}" in result.output
    client = MlflowClient(server.url)
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train.total")] == list(range(1, 9))
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val.score")] == [3, 7, 8]
    assert {a.path for a in client.list_artifacts(run.info.run_id, "samples")} == {
        f"samples/step_00000{step}.png" for step in (3, 7, 8)
    }
    assert not buffers[0].exists()
    again = CliRunner().invoke(app, ["sync"])
    assert again.exit_code == 0 and again.output.strip() == "nothing to sync"


# -- the buffer and its replay, against a local sqlite store whose outages we switch on and off --


@pytest.fixture
def store(tmp_path, monkeypatch, tiny_config):
    """A sqlite store in tmp_path and a switch: while `outage["on"]`, every MLflow call fails."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    outage = {"on": False, "attempts": 0, "fail_after": None}
    deliver, create_run = buffer.deliver, buffer.create_run

    def failing(function):
        def call(*args):
            if outage["on"]:
                outage["attempts"] += 1
                raise ConnectionError("connection refused")
            if outage["fail_after"] is not None:
                if outage["fail_after"] == 0:
                    outage["on"] = True
                    raise ConnectionError("connection reset")
                outage["fail_after"] -= 1
            return function(*args)

        return call

    monkeypatch.setattr(buffer, "deliver", failing(deliver))
    monkeypatch.setattr(buffer, "create_run", failing(create_run))
    return tiny_config().mlflow, outage


def _steps(run_id: str, key: str = "loss") -> list[int]:
    return [m.step for m in MlflowClient().get_metric_history(run_id, key)]


def test_an_outage_is_buffered_retried_at_most_every_n_seconds_and_replayed_in_order(
    store, monkeypatch, tmp_path
):
    cfg, outage = store
    monkeypatch.setattr(buffer, "RETRY_SECONDS", 3600.0)  # no retry while steps 2-4 log, however slow
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Tracker(cfg, "outage", {"model": "test"}) as tracker:
            tracker.log_metrics({"loss": 1.0}, step=1)
            outage["on"] = True
            for step in (2, 3, 4):
                tracker.log_metrics({"loss": float(step)}, step)
            assert outage["attempts"] == 1  # the failed call itself; no retry within RETRY_SECONDS
            assert len(list((tmp_path / "mlruns-buffer").glob("*.jsonl"))) == 1
            outage["on"] = False
            now = time.monotonic
            monkeypatch.setattr(buffer.time, "monotonic", lambda: now() + 3600.0)  # the retry time has come
            tracker.log_metrics({"loss": 5.0}, step=5)  # replays 2-4 first, then goes straight through
            assert not list((tmp_path / "mlruns-buffer").glob("*.jsonl"))
            tracker.log_metrics({"loss": 6.0}, step=6)
    assert len([w for w in caught if "MLflow" in str(w.message)]) == 1
    assert _steps(tracker.run_id) == [1, 2, 3, 4, 5, 6]
    assert [m.value for m in MlflowClient().get_metric_history(tracker.run_id, "loss")] == [1, 2, 3, 4, 5, 6]
    assert MlflowClient().get_run(tracker.run_id).info.status == "FINISHED"


def test_a_run_that_could_not_start_is_created_by_sync_with_all_it_logged(
    store, tmp_path, capsys, tiny_pairs
):
    from nstlab.data.version import pairs_tables

    cfg, outage = store
    outage["on"] = True
    artefact = tmp_path / "grid.png"
    artefact.write_bytes(b"not really a png")
    with pytest.warns(UserWarning, match="MLflow start failed"):
        with Tracker(cfg, "offline-run", {"model": "test"}) as tracker:
            tracker.log_params({"lora.r": 16})
            tracker.log_datasets(pairs_tables(tiny_pairs, ("train", "val")))
            for step in (1, 2, 3):
                tracker.log_metrics({"loss": 1.0 / step}, step)
            tracker.log_artifact(artefact, "samples")
    assert tracker.run_id is None and tracker.run_url is None
    assert "nstlab sync" in capsys.readouterr().err
    assert MlflowClient().get_experiment_by_name(cfg.experiment) is None  # nothing reached the store

    outage["on"] = False
    lines, left = sync_buffers()
    assert left == 0 and len(lines) == 1
    (run,) = MlflowClient().search_runs([MlflowClient().get_experiment_by_name(cfg.experiment).experiment_id])
    assert run.info.run_name == "offline-run" and run.data.tags["model"] == "test"
    assert run.info.start_time == tracker._start_time_ms and run.info.status == "FINISHED"
    assert run.data.params == {"lora.r": "16"} and _steps(run.info.run_id) == [1, 2, 3]
    assert [a.path for a in MlflowClient().list_artifacts(run.info.run_id, "samples")] == ["samples/grid.png"]
    datasets = {
        (item.dataset.name, item.dataset.digest, item.tags[0].value) for item in run.inputs.dataset_inputs
    }
    digest = pairs_tables(tiny_pairs, ("train",))[0].digest
    assert datasets == {("pairs/train", digest, "training"), ("pairs/val", digest, "validation")}
    experiment = MlflowClient().get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert sync_buffers() == ([], 0)  # idempotent: nothing left, nothing sent twice
    assert len(MlflowClient().search_runs([run.info.experiment_id])) == 1


def test_an_interrupted_sync_resumes_where_it_stopped(store, capsys):
    cfg, outage = store
    outage["on"] = True
    with pytest.warns(UserWarning):
        with Tracker(cfg, "twice", {}) as tracker:
            for step in (1, 2, 3, 4):
                tracker.log_metrics({"loss": float(step)}, step)
    outage.update(on=False, fail_after=2)  # the run is created, step 1 delivered, then the backend drops
    with pytest.raises(SystemExit) as stopped:
        main(["sync"])
    output = capsys.readouterr()
    assert stopped.value.code == 2 and "kept (ConnectionError" in output.out and "not delivered" in output.err
    outage.update(on=False, fail_after=None)
    lines, left = sync_buffers()
    assert left == 0
    (run,) = MlflowClient().search_runs([MlflowClient().get_experiment_by_name(cfg.experiment).experiment_id])
    assert _steps(run.info.run_id) == [1, 2, 3, 4]  # one run, every step once
    assert run.info.status == "FINISHED"


def test_sync_leaves_the_buffer_of_a_running_training_alone(store, tmp_path):
    cfg, _ = store
    running = Buffer.create(
        {
            "tracking_uri": "sqlite:///x.db",
            "run_id": "abc",
            "experiment_id": "1",
            "experiment": cfg.experiment,
            "run_name": "r",
            "tags": {},
            "start_time": 0,
        }
    )
    try:
        lines, left = sync_buffers()
        assert left == 1 and "in use by a running training" in lines[0] and running.path.exists()
    finally:
        running.close()


def test_http_settings_fail_fast_only_where_the_user_set_none(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "300")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    with buffer.fail_fast(0):
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "300"
    assert (
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ
        and os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "300"
    )


def test_table2_rows_link_to_their_run_page_on_the_server(server, tiny_config, run_dirs, monkeypatch):
    from nstlab.report.results import table2
    from nstlab.report.tables import html_table

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    cfg = tiny_config()
    with Tracker(cfg.mlflow, "vit_lora-linked", {"model": "vit_lora", "stage": "2"}) as tracker:
        tracker.log_params(
            {
                **run_params(cfg, "vit_lora", 2),
                "lora.r": 4,
                "lora.target_modules": ["query", "value"],
                "encoder.layers": 2,
                "decoder.layers": 1,
                "parameters.trainable": 100,
            }
        )
        tracker.log_metrics({"test.paper_content_loss": 1.0, "test.paper_style_loss": 2.0}, step=1)
    row = table2(cfg).set_index("run_id").loc[tracker.run_id]
    assert row.mlflow_run_url == tracker.run_url and row.mlflow_run_url.startswith(
        f"{server.url}/#/experiments/"
    )
    assert f'<a href="{tracker.run_url}"' in html_table(table2(cfg))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{run_dirs['logs_dir'].parent / 'local.db'}")
    assert "mlflow_run_url" not in table2(cfg).columns  # a local store has no page to link


def test_an_existing_experiment_is_marked_for_training_unless_its_kind_was_set(store):
    cfg, _ = store
    client = MlflowClient()
    experiment_id = client.create_experiment(cfg.experiment)  # made before nstlab tagged experiments
    with Tracker(cfg, "first", {}):
        pass
    tags = client.get_experiment(experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(json.loads(tags["mlflow.sharedViewState.table2"])["state"])
    assert view["searchFilter"] == "tags.model = 'vit_lora' and tags.stage = '2'"
    client.set_experiment_tag(experiment_id, "mlflow.experimentKind", "genai_development")  # a user's choice
    with Tracker(cfg, "second", {}):
        pass
    assert client.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "genai_development"


def test_the_table2_view_shows_the_params_the_table2_grid_ablates():
    import yaml
    from conftest import REPO

    from nstlab.registry import TABLE2_AXES

    grid = yaml.safe_load((REPO / "experiments" / "table2.yaml").read_text())["experiments"]
    ablated = {key for point in grid.values() for key in point}
    assert set(TABLE2_AXES) == ablated
    assert {f"params.`{key}`" for key in ablated} <= set(view.TABLE2_VIEW["selectedColumns"])
    assert view.TABLE2_VIEW["searchFilter"] == "tags.model = 'vit_lora' and tags.stage = '2'"
    assert view.table2_url("http://127.0.0.1:5000/", "1") == (
        "http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning&viewStateShareKey=table2"
    )


def test_source_tags_name_the_entry_point_as_the_repository_does(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a queued DVC experiment runs in a temp copy below DVC_ROOT
    monkeypatch.setenv("DVC_ROOT", str(tmp_path.parent))
    monkeypatch.setattr(sys, "argv", ["pipeline/train.py", "vit_lora"])
    tags = source.source_tags()
    assert tags["mlflow.source.name"] == "pipeline/train.py" and tags["mlflow.source.type"] == "LOCAL"
    monkeypatch.setattr(sys, "argv", [str(tmp_path / ".venv" / "bin" / "nstlab"), "train"])
    assert source.source_tags()["mlflow.source.name"] == "nstlab"
    assert source.repo_path(tmp_path / "data" / "pairs") == "data/pairs"
    assert source.repo_path(Path("/elsewhere/pairs")) == "/elsewhere/pairs"


def test_a_buffered_seed_run_nests_under_its_configuration_when_synced(store, tiny_config):
    from nstlab.tracking.groups import seed_group

    cfg, outage = store
    outage["on"] = True
    with pytest.warns(UserWarning, match="MLflow start failed"):
        with Tracker(
            cfg,
            "offline-seed",
            {"model": "test"},
            group=seed_group(tiny_config("seed=7"), "vit_lora", 2, "offline-seed"),
        ) as tracker:
            tracker.log_params({"seed": 7})
    outage["on"] = False
    assert sync_buffers()[1] == 0
    client = MlflowClient()
    runs = {
        run.info.run_id: run
        for run in client.search_runs([client.get_experiment_by_name(cfg.experiment).experiment_id])
    }
    (child,) = [run for run in runs.values() if run.data.tags.get("model") == "test"]
    parent = runs[child.data.tags["mlflow.parentRunId"]]
    assert parent.data.tags["seed_group"] == child.data.tags["config_family"]
    assert child.data.params["seed"] == "7"
