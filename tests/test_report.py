"""Report: Table 2 from a real MLflow sqlite store, Table 1 from metrics files, the HTML page."""

import json
import shutil
import subprocess

import pytest

from nstlab.records import evaluation_record_paths, write_record
from nstlab.report import build_report, canonical_targets, table2
from nstlab.tracking import Tracker

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
    for r, targets, encoder, decoder, content, style in CONFIGS:
        with Tracker(cfg.mlflow, f"vit_lora-r{r}", {"model": "vit_lora", "stage": "2"}) as tracker:
            tracker.log_params({"lora.r": r, "lora.target_modules": targets, "encoder.layers": encoder,
                                "decoder.layers": decoder, "parameters.trainable": 1000 * r})
            tracker.log_metrics({"test.paper_content_loss": content, "test.paper_style_loss": style,
                                 "train_seconds": 12.0}, step=1)
    with Tracker(cfg.mlflow, "sanet", {"model": "sanet", "stage": "0"}) as tracker:
        tracker.log_metrics({"val.content": 1.0}, step=1)
    return cfg


def test_table2_has_one_row_per_configuration_with_its_values(store):
    frame = table2(store)
    assert len(frame) == 3
    row = frame[(frame.r == 32)].iloc[0]
    assert (row.targets, row.encoder_layers, row.decoder_layers) == ("qv", 6, 3)
    assert (row.content_loss, row.style_loss, row.loss_source) == (1.25, 0.5, "test")
    assert (row.paper_reported_content, row.paper_reported_style) == (9.113, 1.544)
    best = frame[frame.targets == "qkvd"].iloc[0]
    assert best.trainable_parameters == 16000 and best.paper_reported_content == 9.100


def test_target_spellings_share_one_short_form():
    assert canonical_targets(["value", "query"]) == "qv"
    assert canonical_targets(["q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"]) == "qkvd"


def _fake_outputs(reports, tmp_path):
    from PIL import Image

    content, style = tmp_path / "c.png", tmp_path / "s.png"
    Image.new("RGB", (40, 30), "red").save(content)
    Image.new("RGB", (30, 30), "blue").save(style)
    for model, loss in (("vit_lora", 1.0), ("sanet", 2.0)):
        write_record({  # as evaluate writes it: numbers in reports/metrics, names in reports/runs
            "model": model, "profile": "demo", "pairs": 1, "paper_content_loss": loss, "paper_style_loss": loss / 2,
            "stytr2_content_loss": 0.1, "stytr2_style_loss": 0.2, "ssim_content": 0.5, "gram_distance": 0.01,
            "latency_ms": 3.0, "peak_memory_mb": 10.0, "device": "cpu"},
            *evaluation_record_paths(reports, model))
        outputs = reports / "outputs" / model
        outputs.mkdir(parents=True)
        Image.new("RGB", (40, 30), "green").save(outputs / "0000.png")
        (outputs / "pairs.json").write_text(json.dumps([{"pair": 0, "content": str(content), "style": str(style)}]))


def test_report_writes_tables_figures_and_a_page_labelled_with_the_profile(store, tmp_path):
    reports = tmp_path / "reports"
    _fake_outputs(reports, tmp_path)
    result = build_report(store, reports_dir=reports)
    assert result["table1"] == 2 and result["table2"] == 3
    table1 = (reports / "table1.md").read_text()
    rows = (reports / "table1.csv").read_text().splitlines()
    assert [row.split(",")[:2] for row in rows[1:]] == [["vit_lora", "demo"], ["sanet", "demo"]]
    assert "DEMO RESULTS" in table1 and "paper_reported_content" in table1 and "9.097" in table1
    assert "DEMO RESULTS" in (reports / "table2.md").read_text()
    assert (reports / "figures" / "gallery_grid.png").is_file()
    page = (reports / "index.html").read_text()
    assert "DEMO RESULTS" in page and 'src="figures/gallery_grid.png"' in page


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_gallery_renders_in_a_real_browser_with_every_image_loaded(store, tmp_path):
    reports = tmp_path / "reports"
    _fake_outputs(reports, tmp_path)
    build_report(store, reports_dir=reports)
    probe = tmp_path / "probe.html"
    # Load the page in an iframe-free way: chromium's --dump-dom after a script marks broken images.
    page = (reports / "index.html").read_text().replace(
        "</body>", "<script>window.onload=()=>{document.body.dataset.broken=[...document.images]"
        ".filter(i=>!(i.complete&&i.naturalWidth>0)).length;document.body.dataset.images=document.images.length;}"
        "</script></body>")
    probe = reports / "probe.html"
    probe.write_text(page)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'chrome'}"]
    dom = subprocess.run(["chromium", *flags, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    body = dom[dom.find("<body"):dom.find(">", dom.find("<body")) + 1]
    assert 'data-broken="0"' in body and 'data-images="3"' in body, body  # gallery, metrics, quality vs cost
    assert 'id="table1"' in dom and "<table" in dom
    subprocess.run(["chromium", *flags, "--window-size=1300,1600", f"--screenshot={tmp_path / 'gallery.png'}",
                    (reports / "index.html").as_uri()], capture_output=True, timeout=120)
    assert (tmp_path / "gallery.png").stat().st_size > 10_000


def test_pareto_front_keeps_the_points_nothing_beats_on_both_cost_and_loss():
    from nstlab.report import pareto_front

    costs, losses = [1, 2, 3, 2, 1], [3, 1, 2, 3, 3]
    # (3, 2) loses to (2, 1); (2, 3) loses to (1, 3); the two equal (1, 3) points do not beat each other.
    assert pareto_front(costs, losses) == [True, True, False, False, True]
    assert pareto_front([], []) == []


def test_quality_vs_cost_figure_sits_next_to_table2(store, tmp_path):
    from PIL import Image

    from nstlab.report import quality_vs_cost

    reports = tmp_path / "reports"
    result = build_report(store, reports_dir=reports)
    figure = reports / "figures" / "quality_vs_cost.png"
    assert str(figure) in result["figures"]
    page = (reports / "index.html").read_text()
    table2_at, figure_at = page.index('id="table2"'), page.index('src="figures/quality_vs_cost.png"')
    assert table2_at < figure_at < page.index("Figures and gallery")
    two_panels = Image.open(figure).width
    rows = table2(store).assign(pairs_per_s=[3.0, 2.0, 1.0])
    assert Image.open(quality_vs_cost(rows, tmp_path / "speed.png", "demo")).width > two_panels  # a pairs/s panel
    assert quality_vs_cost(rows.iloc[0:0], tmp_path / "none.png", "demo") is None
