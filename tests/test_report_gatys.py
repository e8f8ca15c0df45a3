"""Gatys report section: per-grid tables and figures from a real sqlite MLflow store."""

from pathlib import Path

import pandas as pd
import pytest

from conftest import PARAMS
from nstlab.tracking.ablate import override_args
from nstlab.config import load_config
from nstlab.report.gatys import OPTIONS, effective, gatys_section, param_value
from nstlab.tracking.run import Tracker

REPO = Path(__file__).resolve().parents[1]
GRIDS = REPO / "experiments" / "gatys.yaml"

RUNS = [  # (overrides of params.yaml, test content loss, style loss, latency_ms, mse_vs_adain), oldest first
    ({}, 1.0, 0.5, 400.0, 0.02),  # params.yaml itself: Adam, 40 steps
    ({"baselines.gatys.iterations": 10}, 1.1, 0.4, 500.0, None),  # the demo's steps grid: 10..160
    ({"baselines.gatys.iterations": 20}, 1.2, 0.3, 1000.0, None),
    ({"baselines.gatys.iterations": 80}, 1.3, 0.2, 2000.0, None),
    ({"baselines.gatys.options.optimizer": "lbfgs", "baselines.gatys.lr": 1.0}, 0.9, 0.1, 3000.0, 0.03),
    ({"baselines.gatys.options.optimizer": "adamw"}, 2.0, 2.0, 400.0, 0.05),  # superseded by the next
    ({"baselines.gatys.options.optimizer": "adamw"}, 1.05, 0.45, 410.0, 0.04),
]


def _log_run(overrides: dict, metrics: dict, fail: bool = False) -> str:
    """A run as GatysTransfer.log_evaluation_run writes it: the config's gatys/backbone/seed keys, test metrics."""
    cfg = load_config(PARAMS, override_args(overrides))
    with Tracker(cfg.mlflow, "gatys", {"model": "gatys", "stage": "0", "profile": cfg.profile}) as tracker:
        tracker.log_params(
            {
                key: value
                for key, value in cfg.flat().items()
                if key.startswith(("baselines.gatys", "backbone", "seed"))
            }
        )
        tracker.log_metrics(
            {f"test.{name}": value for name, value in metrics.items() if value is not None}, 0
        )
        if overrides.get("baselines.gatys.iterations") == 80:
            for step in range(0, 81, 20):
                tracker.log_metrics(
                    {
                        "optim.total": 9.0 - step / 20,
                        "optim.content": 1.0,
                        "optim.style": 8.0 - step / 20,
                        "optim.elapsed_s": step / 40,
                    },
                    step,
                )
        if fail:
            raise RuntimeError("optimisation diverged")
    return tracker.run_id


@pytest.fixture(scope="module")
def section(tmp_path_factory):
    """The section built from RUNS plus a FAILED 160-step run, in a fresh store."""
    folder = tmp_path_factory.mktemp("gatys")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlruns.db'}")
        patch.chdir(folder)
        run_ids = [
            _log_run(
                overrides,
                {
                    "paper_content_loss": content,
                    "paper_style_loss": style,
                    "ssim_content": 0.5,
                    "latency_ms": latency,
                    "mse_vs_adain": mse,
                    "ssim_vs_adain": mse and 1 - mse,
                },
            )
            for overrides, content, style, latency, mse in RUNS
        ]
        with pytest.raises(RuntimeError):
            _log_run(
                {"baselines.gatys.iterations": 160}, {"paper_style_loss": 0.01, "latency_ms": 1.0}, fail=True
            )
        reports = folder / "reports"
        patch.delenv("MLFLOW_TRACKING_URI")  # the report finds the store through its config alone
        cfg = load_config(PARAMS, [f"mlflow.tracking_uri=sqlite:///{folder / 'mlruns.db'}"])
        fragment, figures = gatys_section(cfg, reports, GRIDS)
        yield reports, fragment, figures, run_ids


def _table(reports: Path, grid: str) -> pd.DataFrame:
    return pd.read_csv(reports / "gatys" / f"{grid}.csv")


def test_steps_table_has_one_row_per_finished_run_in_step_order(section):
    reports, *_ = section
    steps = _table(reports, "steps")
    # 40 steps is params.yaml's own run; 160 failed.
    assert steps["point"].tolist() == ["steps-0", "steps-1", "steps-2", "steps-3"]
    assert steps["iterations"].tolist() == [10, 20, 40, 80]
    assert steps["seconds_per_image"].tolist() == [0.5, 1.0, 0.4, 2.0]
    assert steps["style_loss"].tolist() == [0.4, 0.3, 0.5, 0.2]
    assert steps["content_loss"].tolist() == [1.1, 1.2, 1.0, 1.3]
    assert steps["mse_vs_adain"].isna().tolist() == [True, True, False, True]


def test_optimizer_table_matches_defaults_and_keeps_the_newest_run(section):
    reports, _, _, run_ids = section
    optimizer = _table(reports, "optimizer")
    assert optimizer["optimizer"].tolist() == ["lbfgs", "adam", "adamw"]
    assert optimizer["lr"].tolist() == [1.0, 0.05, 0.05]  # Adam at the demo profile's lr (its 40 steps)
    # adam is params.yaml's default: the run without the option fills the point, not a steps run.
    assert optimizer["run_id"].tolist() == [run_ids[4], run_ids[0], run_ids[6]]
    assert optimizer["content_loss"].tolist() == [0.9, 1.0, 1.05]
    assert optimizer["mse_vs_adain"].tolist() == [0.03, 0.02, 0.04]
    assert optimizer["ssim_vs_adain"].tolist() == pytest.approx([0.97, 0.98, 0.96])
    assert _table(reports, "content_weight")["run_id"].tolist() == [run_ids[0]]  # α = 1 is the default too
    assert _table(reports, "init")["point"].tolist() == ["init-0"]
    assert _table(reports, "preset")["point"].tolist() == ["preset-0"]
    markdown = (reports / "gatys" / "optimizer.md").read_text()
    assert "DEMO RESULTS" in markdown and "| optimizer-0 " in markdown
    # Layer weights spelled out differ from the preset's None: no run yet, the table says so.
    assert "_no rows yet_" in (reports / "gatys" / "layer_weights.md").read_text()


def test_figures_are_written_and_the_fragment_shows_them(section):
    reports, fragment, figures, _ = section
    assert figures == [reports / "figures" / "gatys_steps.png", reports / "figures" / "gatys_vs_adain.png"]
    assert all(path.stat().st_size > 10_000 for path in figures)
    assert 'id="gatys-steps"' in fragment and 'src="figures/gatys_steps.png"' in fragment


def test_settings_compare_across_their_spellings_and_presets():
    assert param_value("[1.0, 0.75, 0.2]") == (1.0, 0.75, 0.2) == param_value([1, 0.75, 0.2])
    assert param_value("1e-05") == 1e-5 and param_value("None") is None and param_value("lbfgs") == "lbfgs"
    assert effective({}, OPTIONS + "optimizer") == "adam"
    assert effective({OPTIONS + "preset": "reference"}, OPTIONS + "optimizer") == "lbfgs"
    assert effective({}, "baselines.gatys.iterations") is None


def test_a_store_without_gatys_runs_gives_an_empty_section(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(PARAMS)
    with Tracker(cfg.mlflow, "sanet", {"model": "sanet", "stage": "0", "profile": cfg.profile}) as tracker:
        tracker.log_metrics({"test.paper_style_loss": 1.0}, 0)
    assert gatys_section(cfg, tmp_path / "reports", GRIDS) == ("", [])
    assert not (tmp_path / "reports").exists()
