"""Report: Table 2 from a real MLflow sqlite store, Table 1 from metrics files, the HTML page."""

import json
import math
import shutil
import subprocess

import pytest

from nstlab.config import canonical_targets, run_params
from nstlab.report.build import build_report
from nstlab.report.results import table2
from nstlab.tracking.run import Tracker

CONFIGS = [  # (r, targets, encoder layers, decoder layers, test content, test style)
    (16, ["query", "value"], 6, 3, 1.5, 0.25),
    (32, ["query", "value"], 6, 3, 1.25, 0.5),
    (16, ["query", "key", "value", "dense"], 6, 3, 1.0, 0.75),
]


@pytest.fixture
def store(tmp_path, tiny_config, monkeypatch):
    """Three finished stage-2 runs (and one unrelated baseline run) in a sqlite store."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    monkeypatch.chdir(tmp_path)
    cfg = tiny_config()
    older = run_params(tiny_config("data.n_train=4"), "vit_lora", 2)  # another params.yaml: left out
    for params, (r, targets, encoder, decoder, content, style) in [
        *((run_params(cfg, "vit_lora", 2), config) for config in CONFIGS),
        (older, (64, ["query", "value"], 6, 3, 0.1, 0.1)),
    ]:
        with Tracker(cfg.mlflow, f"vit_lora-r{r}", {"model": "vit_lora", "stage": "2"}) as tracker:
            tracker.log_params(
                {
                    **params,
                    "lora.r": r,
                    "lora.target_modules": targets,
                    "encoder.layers": encoder,
                    "decoder.layers": decoder,
                    "parameters.trainable": 1000 * r,
                }
            )
            tracker.log_metrics(
                {"test.paper_content_loss": content, "test.paper_style_loss": style, "train_seconds": 12.0},
                step=1,
            )
    with Tracker(cfg.mlflow, "sanet", {"model": "sanet", "stage": "0"}) as tracker:
        tracker.log_metrics({"val.content": 1.0}, step=1)
    return cfg


def test_table2_has_one_row_per_configuration_with_its_values(store):
    frame = table2(store)
    assert len(frame) == 3 and 64 not in set(frame.r)  # the r=64 run had another n_train
    row = frame[(frame.r == 32)].iloc[0]
    assert (row.targets, row.encoder_layers, row.decoder_layers) == ("qv", 6, 3)
    assert (row.content_loss, row.style_loss, row.loss_source) == (1.25, 0.5, "test")
    assert (row.paper_reported_content, row.paper_reported_style) == (9.113, 1.544)
    best = frame[frame.targets == "qkvd"].iloc[0]
    assert best.trainable_parameters == 16000 and best.paper_reported_content == 9.100


def test_target_spellings_share_one_short_form():
    assert canonical_targets(["value", "query"]) == "qv"
    assert canonical_targets(["q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"]) == "qkvd"


def _tested_run(cfg, method: str, metrics: dict) -> str:
    """A model's run as the pipeline leaves it in MLflow: nested in its configuration's seed group,
    with the test metrics the evaluate stage adds."""
    from nstlab.registry import final_stage
    from nstlab.tracking.groups import seed_group

    stage = final_stage(method)
    tags = {"model": method, "stage": str(stage), "profile": cfg.profile}
    with Tracker(cfg.mlflow, method, tags, group=seed_group(cfg, method, stage, method)) as tracker:
        tracker.log_params(cfg.flat())
        tracker.log_metrics({f"test.{key}": value for key, value in metrics.items()}, step=0)
    return tracker.run_id


def _fake_outputs(cfg, reports, tmp_path):
    """Two evaluated models: their runs in MLflow (Table 1's source) and their output images."""
    from PIL import Image

    content, style = tmp_path / "c.png", tmp_path / "s.png"
    Image.new("RGB", (40, 30), "red").save(content)
    Image.new("RGB", (30, 30), "blue").save(style)
    for model, loss in (("sanet", 1.0), ("adain", 2.0)):
        metrics = {
            "pairs": 1,
            "paper_content_loss": loss,
            "paper_style_loss": loss / 2,
            "stytr2_content_loss": 0.1,
            "stytr2_style_loss": 0.2,
            "ssim_content": 0.5,
            "gram_distance": 0.01,
            "latency_ms": 3.0,
            "peak_memory_mb": 10.0,
        }
        _tested_run(cfg, model, metrics)
        outputs = reports / "outputs" / model
        outputs.mkdir(parents=True)
        Image.new("RGB", (40, 30), "green").save(outputs / "0000.png")
        (outputs / "pairs.json").write_text(
            json.dumps([{"pair": 0, "content": str(content), "style": str(style)}])
        )


def test_report_writes_tables_figures_and_a_page_labelled_with_the_profile(store, tmp_path):
    reports = tmp_path / "reports"
    _fake_outputs(store, reports, tmp_path)
    result = build_report(store, reports_dir=reports)
    assert result["table1"] == 2 and result["table2"] == 3
    table1 = (reports / "table1.md").read_text()
    rows = (reports / "table1.csv").read_text().splitlines()
    assert [row.split(",")[:2] for row in rows[1:]] == [["sanet", "demo"], ["adain", "demo"]]
    assert "DEMO RESULTS" in table1 and "paper_reported_content" in table1 and "9.687" in table1
    assert "source: MLflow" in table1
    gallery = (reports / "gallery.csv").read_text().splitlines()  # the gallery check, a flat green each
    assert [row.split(",")[:2] for row in gallery[1:]] == [["sanet", "1"], ["adain", "1"]]
    assert "DEMO RESULTS" in (reports / "table2.md").read_text()
    assert (reports / "figures" / "gallery_grid.png").is_file()
    page = (reports / "index.html").read_text()
    assert "DEMO RESULTS" in page and 'src="figures/gallery_grid.png"' in page


NO_CHROMIUM = pytest.mark.skipif(
    shutil.which("chromium") is None, reason="Debian's chromium is not installed (.ci/run installs it)"
)
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@NO_CHROMIUM
def test_gallery_renders_in_a_real_browser_with_every_image_loaded(store, tmp_path):
    reports = tmp_path / "reports"
    _fake_outputs(store, reports, tmp_path)
    build_report(store, reports_dir=reports)
    probe = tmp_path / "probe.html"
    # Load the page in an iframe-free way: chromium's --dump-dom after a script marks broken images.
    page = (
        (reports / "index.html")
        .read_text()
        .replace(
            "</body>",
            "<script>window.onload=()=>{document.body.dataset.broken=[...document.images]"
            ".filter(i=>!(i.complete&&i.naturalWidth>0)).length;document.body.dataset.images=document.images.length;}"
            "</script></body>",
        )
    )
    probe = reports / "probe.html"
    probe.write_text(page)
    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chrome'}"]
    dom = subprocess.run(
        ["chromium", *flags, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    body = dom[dom.find("<body") : dom.find(">", dom.find("<body")) + 1]
    assert 'data-broken="0"' in body and 'data-images="3"' in body, body  # gallery, metrics, quality vs cost
    assert 'id="table1"' in dom and "<table" in dom
    subprocess.run(
        [
            "chromium",
            *flags,
            "--window-size=1300,1600",
            f"--screenshot={tmp_path / 'gallery.png'}",
            (reports / "index.html").as_uri(),
        ],
        capture_output=True,
        timeout=120,
    )
    assert (tmp_path / "gallery.png").stat().st_size > 10_000


def test_pareto_front_keeps_the_points_nothing_beats_on_both_cost_and_loss():
    from nstlab.report.figures import pareto_front

    costs, losses = [1, 2, 3, 2, 1], [3, 1, 2, 3, 3]
    # (3, 2) loses to (2, 1); (2, 3) loses to (1, 3); the two equal (1, 3) points do not beat each other.
    assert pareto_front(costs, losses) == [True, True, False, False, True]
    assert pareto_front([], []) == []


def test_quality_vs_cost_figure_sits_next_to_table2(store, tmp_path):
    from PIL import Image

    from nstlab.report.figures import quality_vs_cost

    reports = tmp_path / "reports"
    result = build_report(store, reports_dir=reports)
    figure = reports / "figures" / "quality_vs_cost.png"
    assert str(figure) in result["figures"]
    page = (reports / "index.html").read_text()
    table2_at, figure_at = page.index('id="table2"'), page.index('src="figures/quality_vs_cost.png"')
    assert table2_at < figure_at < page.index("Figures and gallery")
    two_panels = Image.open(figure).width
    rows = table2(store).assign(pairs_per_s=[3.0, 2.0, 1.0])
    assert (
        Image.open(quality_vs_cost(rows, tmp_path / "speed.png", "demo")).width > two_panels
    )  # a pairs/s panel
    assert quality_vs_cost(rows.iloc[0:0], tmp_path / "none.png", "demo") is None


# -- the MLflow UI on a store of real runs ----------------------------------------------------

UI_FAST = [
    "train.batch_size=4",
    "train.stage1.epochs=1",
    "train.stage2.epochs=1",
    "train.stage2.milestones=[]",
    "train.val_every=2",
    "train.sample_every=2",
    "train.max_val_pairs=2",
    "eval.max_pairs=2",
    "eval.max_size=32",
    "baselines.gatys.iterations=2",
]


@pytest.fixture
def demo_like_store(tmp_path, tiny_config, tiny_pairs, monkeypatch):
    """What the demo's repro leaves in MLflow, in small: ViT-LoRA stage 1 and 2 trained and
    evaluated, and a Gatys evaluation run, logged by the project's own code."""
    from nstlab.evaluation.evaluate import evaluate_model
    from nstlab.training.trainer import train

    store = tmp_path / "mlruns.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    cfg = tiny_config(*UI_FAST)
    dirs = {
        "models_dir": tmp_path / "models",
        "logs_dir": tmp_path / "reports" / "train",
        "checkpoints_dir": tmp_path / "checkpoints",
    }
    for stage in (1, 2):
        train(cfg, "vit_lora", stage, pairs_dir=tiny_pairs, progress=False, **dirs)
    for method in ("vit_lora", "gatys"):
        evaluate_model(
            cfg,
            method,
            pairs_dir=tiny_pairs,
            models_dir=dirs["models_dir"],
            reports_dir=tmp_path / "reports",
            progress=False,
        )
    return store


@pytest.fixture
def mlflow_ui(demo_like_store, tmp_path):
    """`mlflow ui` on that store, on a free port; stopped (its process group) afterwards."""
    import os
    import signal
    import socket
    import sys
    import time
    import urllib.request
    from pathlib import Path

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = open(tmp_path / "ui.log", "wb")
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "ui",
        "--backend-store-uri",
        f"sqlite:///{demo_like_store}",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    server = subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log_text = (tmp_path / "ui.log").read_text()[-2000:]
                    raise RuntimeError(f"mlflow ui did not start: {log_text}")
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
        log.close()


def _page_text(url: str, profile, *extra: str) -> str:
    """The page's visible text after its scripts ran (chromium --dump-dom, a fresh profile)."""
    import re

    flags = [
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        "--window-size=2400,1000",
        "--virtual-time-budget=20000",
    ]
    dom = subprocess.run(
        ["chromium", *flags, *extra, "--dump-dom", url], capture_output=True, text=True, timeout=180
    ).stdout
    return " ".join(re.sub(r"<[^>]+>", " ", re.sub(r"<(script|style).*?</\1>", "", dom, flags=re.S)).split())


@pytest.mark.slow
@NO_CHROMIUM
def test_the_mlflow_ui_opens_the_experiment_on_its_training_runs_and_table2(mlflow_ui, tmp_path):
    from mlflow.tracking import MlflowClient

    from nstlab.data.version import dvc_md5
    from nstlab.tracking.view import MODEL_TRAINING_QUERY, table2_url, view_url

    client = MlflowClient(mlflow_ui)
    experiment = client.get_experiment_by_name("nstlab")
    runs = client.search_runs([experiment.experiment_id])
    trained = [run for run in runs if "model" in run.data.tags]
    parents = {run.info.run_id: run for run in runs if "seed_group" in run.data.tags}
    assert len(trained) == 3 and len(parents) == 3  # each run nests under its configuration's parent
    assert {run.data.tags["mlflow.parentRunId"] for run in trained} == set(parents)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert all(run.inputs.dataset_inputs for run in trained)
    assert not [
        key
        for run in runs
        if "vit_lora" in (run.data.tags.get("model"), run.data.tags.get("seed_group_model"))
        for key in run.data.params
        if key.startswith("baselines.")
    ]

    page = f"{mlflow_ui}/#/experiments/{experiment.experiment_id}/runs?{MODEL_TRAINING_QUERY}"
    text = _page_text(page, tmp_path / "chrome-runs")
    # three configurations, each a parent row (its seeds' runs nested under it, collapsed)
    assert "6 matching runs" in text, text[:2000]
    for name in ("vit_lora-stage1-e2-d1", "vit_lora-r16-qkvd-e2-d1", "gatys"):
        assert name in text
    screenshot = tmp_path / "mlflow_runs.png"  # for humans: what the test saw
    subprocess.run(
        [
            "chromium",
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp_path / 'chrome-shot'}",
            "--window-size=1600,900",
            "--virtual-time-budget=20000",
            f"--screenshot={screenshot}",
            page,
        ],
        capture_output=True,
        timeout=180,
    )
    assert screenshot.stat().st_size > 20_000

    # The README's link: one collapsed row per configuration with its seeds' mean test losses
    compare = _page_text(view_url(mlflow_ui, experiment.experiment_id), tmp_path / "chrome-compare")
    assert "6 matching runs" in compare and "Duration" in compare
    for column in ("seeds", "test.paper_content_loss", "test.paper_style_loss"):
        assert column in compare
    for parent in parents.values():
        parent = client.get_run(parent.info.run_id)  # its aggregate, laid on after the seeds ran
        shown = repr(parent.data.metrics.get("test.paper_content_loss"))
        if "e-" not in shown and shown != "None":  # the UI writes 1.3e-05 as 0.000013
            assert shown in compare

    table2 = _page_text(table2_url(mlflow_ui, experiment.experiment_id), tmp_path / "chrome-table2")
    assert "1 matching run" in table2 and "vit_lora-r16-qkvd-e2-d1" in table2
    assert "vit_lora-stage1" not in table2 and "gatys" not in table2
    digest = dvc_md5(tmp_path / "pairs")  # the Dataset column: what the run trained and was tested on
    assert f"pairs/train ({digest})" in table2 and f"pairs/test ({digest})" in table2
    for column in (
        "lora.r",
        "lora.target_modules",
        "encoder.layers",
        "decoder.layers",
        "test.paper_style_loss",
    ):
        assert column in table2


def _seed_run(cfg, content: float, style: float) -> str:
    """A stage-2 run as the trainer logs it (nested under its configuration, every param), with
    the test losses the evaluate stage adds."""
    from nstlab.tracking.groups import seed_group

    name = f"vit_lora-r{cfg.lora.r}"
    with Tracker(
        cfg.mlflow, name, {"model": "vit_lora", "stage": "2"}, group=seed_group(cfg, "vit_lora", 2, name)
    ) as tracker:
        tracker.log_params({**cfg.flat(), "parameters.trainable": 1000 * cfg.lora.r})
        tracker.log_metrics({"test.paper_content_loss": content, "test.paper_style_loss": style}, step=1)
    return tracker.run_id


@pytest.fixture
def seeded_store(tmp_path, tiny_config, monkeypatch):
    """r=16: an older run of another params family (left out), then seeds 1, 2, 3; r=32: seeds
    1 and 2, and seed 2 run twice (the newer counts); r=64: one seed."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)

    def cfg(r: int, seed: int, *extra: str):
        return tiny_config(f"lora.r={r}", f"seed={seed}", "lora.target_modules=[query, value]", *extra)

    _seed_run(cfg(16, 1, "lora.alpha=8"), 9.0, 9.0)
    runs = {seed: _seed_run(cfg(16, seed), content, 0.5) for seed, content in ((1, 1.0), (2, 1.2), (3, 1.4))}
    _seed_run(cfg(32, 1), 1.15, 0.9)
    _seed_run(cfg(32, 2), 7.0, 0.9)
    _seed_run(cfg(32, 2), 1.35, 1.1)
    _seed_run(cfg(64, 1), 2.0, 0.4)
    return cfg(16, 1), runs


def test_table2_gives_mean_std_and_n_over_the_seeds_of_each_configuration(seeded_store, tmp_path):
    cfg, _ = seeded_store
    frame = table2(cfg).set_index("r")
    assert frame.loc[16, "n"] == 3 and frame.loc[16, "seeds"] == "1,2,3"
    assert frame.loc[16, "content_loss"] == pytest.approx(1.2)
    assert frame.loc[16, "content_loss_std"] == pytest.approx(0.2)
    assert frame.loc[32, "n"] == 2
    assert frame.loc[32, "content_loss"] == pytest.approx(1.25)  # 1.15 and the newer 1.35
    assert frame.loc[32, "style_loss_std"] == pytest.approx(0.1414, abs=1e-4)
    assert frame.loc[64, "n"] == 1 and math.isnan(frame.loc[64, "content_loss_std"])
    # content: best r=16 (1.2 ± 0.2); r=32 is 0.05 away (< 0.2): within spread; r=64 is 0.8 away
    assert list(frame["content_loss_within_spread"]) == [False, True, False]
    # style: best r=64 (0.4, n=1, no spread); r=16 (0.5 ± 0) is 0.1 away, more than its spread 0
    assert not frame["style_loss_within_spread"].any()
    build_report(cfg, reports_dir=tmp_path / "reports")
    text = (tmp_path / "reports" / "table2.md").read_text()
    cells = {
        int(line.split("|")[1]): [cell.strip() for cell in line.split("|")[5:8]]
        for line in text.splitlines()
        if line.startswith("|") and line.split("|")[1].strip().isdigit()
    }
    assert cells == {
        16: ["1.2 ± 0.2 (best)", "0.5 ± 0", "3"],
        32: ["1.25 ± 0.14 †", "1 ± 0.14", "2"],
        64: ["2", "0.4 (best)", "1"],
    }  # n = 1: the value alone
    assert "†: differs from the best by less than the seed spread" in text
    csv_row = next(
        line
        for line in (tmp_path / "reports" / "table2.csv").read_text().splitlines()
        if line.startswith("32,")
    )
    assert ",1.25,0.141421," in csv_row  # the CSV keeps the numbers


def test_table1_reads_every_seed_of_each_models_configuration_from_mlflow_alone(
    seeded_store, tiny_config, tmp_path
):
    from nstlab.report.results import table1

    cfg, _ = seeded_store
    sanet = {"paper_content_loss": 3.0, "paper_style_loss": 0.5, "latency_ms": 4.0, "pairs": 2}
    for seed, content in ((1, 3.0), (2, 3.4)):
        _tested_run(tiny_config(f"seed={seed}"), "sanet", {**sanet, "paper_content_loss": content})
    other = tiny_config("seed=1", "baselines.sanet.lr=0.5")  # another configuration of SANet
    _tested_run(other, "sanet", {**sanet, "paper_content_loss": 9.0})
    (tmp_path / "reports" / "metrics").mkdir(parents=True)  # a metrics file is not a source of Table 1
    (tmp_path / "reports" / "metrics" / "adain.json").write_text(json.dumps({"paper_content_loss": 1.0}))
    frame = table1(cfg).set_index("model")
    assert list(frame.index) == ["vit_lora", "sanet"]  # the registry's order; adain has no tracked run
    assert frame.loc["vit_lora", "n"] == 3  # seeds 1-3 of r=16; another configuration's run is left out
    assert frame.loc["vit_lora", "paper_content_loss"] == pytest.approx(1.2)
    assert frame.loc["sanet", "n"] == 2 and frame.loc["sanet", "paper_content_loss"] == pytest.approx(3.2)
    assert frame.loc["sanet", "latency_ms"] == 4.0 and frame.loc["sanet", "pairs"] == 2


def test_quality_vs_cost_draws_the_seed_spread_as_error_bars(seeded_store, tmp_path):
    import numpy as np
    from PIL import Image

    from nstlab.report.figures import quality_vs_cost

    cfg, _ = seeded_store
    rows = table2(cfg)
    spread = np.asarray(Image.open(quality_vs_cost(rows, tmp_path / "spread.png", "demo")).convert("L"))
    flat = rows.assign(content_loss_std=float("nan"), style_loss_std=float("nan"))
    none = np.asarray(Image.open(quality_vs_cost(flat, tmp_path / "flat.png", "demo")).convert("L"))
    assert spread.shape == none.shape and (spread < 128).sum() > (none < 128).sum()  # bars and a legend entry
