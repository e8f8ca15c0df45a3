"""Grid files: sweeps and experiments as data, per-profile replacements, one-line errors."""

from pathlib import Path

import pytest

from nstlab.tracking.ablate import methods_touched, override_args, read_grid
from nstlab.errors import ConfigError

GRID = """
grids:
  optimizer:
    - {baselines.gatys.options.optimizer: lbfgs}
    - {baselines.gatys.options.optimizer: adam}
  steps:
    - {baselines.gatys.iterations: 50}
    - {baselines.gatys.iterations: 800}
  lr:
    - {baselines.gatys.lr: 0.01}
profiles:
  demo:
    grids:
      steps:
        - {baselines.gatys.iterations: 10}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    return path


def test_sweeps_are_named_by_grid_and_index(tmp_path):
    experiments = read_grid(write(tmp_path, GRID))
    assert list(experiments) == ["optimizer-0", "optimizer-1", "steps-0", "steps-1", "lr-0"]
    assert experiments["steps-1"] == {"baselines.gatys.iterations": 800}


def test_a_profile_replaces_whole_sweeps_in_place(tmp_path):
    path = write(tmp_path, GRID)
    demo = read_grid(path, "demo")
    assert list(demo) == ["optimizer-0", "optimizer-1", "steps-0", "lr-0"]  # steps keeps its place, one point
    assert demo["steps-0"] == {"baselines.gatys.iterations": 10}
    assert read_grid(path, "paper") == read_grid(path)


def test_the_repository_grids_differ_by_profile_only_where_the_demo_budget_demands():
    from conftest import REPO

    paper, demo = (read_grid(REPO / "experiments" / "gatys.yaml", profile) for profile in ("paper", "demo"))
    assert list(paper) == list(demo)
    changed = {name.rpartition("-")[0] for name in paper if paper[name] != demo[name]}
    assert changed == {"steps", "preset"}
    assert [paper[f"steps-{i}"]["baselines.gatys.iterations"] for i in range(5)] == [50, 100, 200, 400, 800]
    assert max(demo[f"steps-{i}"]["baselines.gatys.iterations"] for i in range(5)) == 160


@pytest.mark.parametrize(
    "text, message",
    [
        ("grids: [1, 2", "not valid YAML"),
        ("lora.r: 4", "expected a top-level 'experiments:' or 'grids:'"),
        ("grids: {a: [{x: 1}]}\nsweeps: {}", "unknown top-level key"),
        ("grids: {a: {x: 1}}", "grids.a must be a list"),
        ("grids: [a, b]", "grids: must map names to lists"),
        ("grids: {a: [{}]}", "experiment a-0 must be a non-empty mapping"),
        ("grids: {a: [{x: 1}]}\nprofiles: {tiny: {}}", "profiles: must map profile names"),
        (
            "grids: {a: [{x: 1}]}\nprofiles: {demo: {grids: {b: [{x: 2}]}}}",
            "profiles.demo.grids.b replaces nothing",
        ),
        (
            "grids: {a: [{x: 1}]}\nprofiles: {demo: {grids: {a: {x: 2}}}}",
            "profiles.demo.grids.a must be a list",
        ),
        ("grids: {a: [{x: 1}]}\nprofiles: {demo: {lora: 1}}", "profiles.demo may only hold"),
    ],
)
def test_bad_grid_files_name_the_file_and_the_entry(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as error:
        read_grid(path, "demo")
    assert str(error.value).startswith(f"{path}: ") and "\n" not in str(error.value)


def test_override_args_are_dvc_set_params():
    assert override_args({"lora.r": 32, "lora.target_modules": ["query", "value"], "x": None}) == [
        "lora.r=32",
        "lora.target_modules=[query, value]",
        "x=null",
    ]


@pytest.mark.parametrize(
    "overrides, touched",
    [
        ({"lora.r": 8}, ("vit_lora", 2)),
        ({"baselines.gatys.lr": 0.1}, ("gatys", 0)),
        ({"profiles.demo.baselines.adain.iterations": 5}, ("adain", 0)),
    ],
)
def test_an_experiment_is_identified_by_the_method_it_changes(overrides, touched):
    assert methods_touched(overrides) == touched


def test_queue_workers_share_the_cores_unless_the_user_chose(monkeypatch):
    from nstlab.tracking.ablate import worker_env

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert worker_env(2)["OMP_NUM_THREADS"] == "4" and worker_env(16)["OMP_NUM_THREADS"] == "1"
    assert "OMP_NUM_THREADS" not in worker_env(1)  # one worker: torch's own default
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert worker_env(2)["OMP_NUM_THREADS"] == "3"


def test_spellings_of_one_configuration_share_a_digest(tiny_config):
    from nstlab.training.checkpoint import run_digest

    def gatys(*overrides: str) -> str:
        return run_digest(tiny_config(*overrides), "gatys", 0)

    default = gatys()
    assert (
        gatys("++baselines.gatys.options.optimizer=adam", "++baselines.gatys.options.style_weight=1000000.0")
        == default
    )
    assert gatys("++baselines.gatys.options.optimizer=adamw") != default
    assert gatys("baselines.gatys.iterations=41") != default
    lora = [
        run_digest(tiny_config(f"lora.target_modules={targets}"), "vit_lora", 2)
        for targets in ("[query, value, key, dense]", "[query, key, value, dense]", "[query, value]")
    ]
    assert lora[0] == lora[1] != lora[2]


@pytest.fixture
def empty_store(tmp_path, monkeypatch):
    """An empty sqlite MLflow store, and a working directory that is no DVC repository."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    monkeypatch.chdir(tmp_path)


def test_seeds_plan_each_configuration_under_each_seed_and_skip_the_done_points(tmp_path, empty_store):
    from conftest import PARAMS

    from nstlab.tracking.ablate import plan_grid
    from nstlab.training.checkpoint import run_digest
    from nstlab.config import load_config
    from nstlab.tracking.run import Tracker

    params = PARAMS
    finished = load_config(params, ["lora.r=8", "seed=325"])  # a, seed 325 ran already
    with Tracker(finished.mlflow, "a", {"config_digest": run_digest(finished, "vit_lora", 2)}):
        pass
    grid = write(tmp_path, "experiments:\n  a: {lora.r: 8}\n  b: {lora.r: 4}\nseeds: 2\n")
    plan = plan_grid(grid, params_path=params)
    assert [(name, point.state, point.seed) for name, point in plan.items()] == [  # configuration-major
        ("a-s324", "queued", 324),
        ("a-s325", "done", 325),
        ("b-s324", "queued", 324),
        ("b-s325", "queued", 325),
    ]
    assert plan["a-s325"].args == ["lora.r=8", "seed=325"]
    three = plan_grid(grid, params_path=params, seeds=3)
    assert [point.seed for point in three.values()][:3] == [324, 325, 326]
    assert plan_grid(grid, params_path=params, force=True)["a-s325"].state == "queued"
    listed = write(tmp_path, "experiments:\n  a: {lora.r: 8}\nseeds: [325, 7]\n")
    assert {name: point.state for name, point in plan_grid(listed, params_path=params).items()} == {
        "a-s325": "done",
        "a-s7": "queued",
    }
    single = write(tmp_path, "experiments:\n  a: {lora.r: 8}\n")
    one = plan_grid(single, params_path=params)
    assert {name: (point.args, point.seed) for name, point in one.items()} == {
        "a": (["lora.r=8"], 324)
    }  # no seeds asked for: one run at params.yaml's seed, named as before


def test_dry_run_with_seeds_prints_every_configuration_seed_pair(tmp_path, empty_store):
    from typer.testing import CliRunner

    from conftest import PARAMS
    from nstlab.cli import app

    grid = write(tmp_path, "experiments:\n  a: {lora.r: 8}\n  b: {lora.r: 4}\n")
    result = CliRunner().invoke(
        app,
        ["ablate", str(grid), "--seeds", "2", "--dry-run", "--params", str(PARAMS)],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    rows = [
        [cell.strip() for cell in line.split("│")[1:4]]
        for line in result.output.splitlines()
        if line.count("│") >= 4
    ]
    assert [row for row in rows if row[0] != "experiment"] == [
        ["a-s324", "queued", "324"],
        ["a-s325", "queued", "325"],
        ["b-s324", "queued", "324"],
        ["b-s325", "queued", "325"],
    ]
    assert "2 configurations × 2 seeds" in " ".join(result.output.split())  # the title may wrap
    assert CliRunner().invoke(app, ["ablate", str(grid), "--seeds", "0", "--dry-run"]).exit_code == 2


@pytest.mark.parametrize("seeds", ["0", "[]", "[1, 1]", "[-1]", "two", "true", "[1.5]", "[{a: 1}]"])
def test_bad_seeds_name_the_file_and_the_key(tmp_path, seeds):
    from nstlab.tracking.ablate import grid_seeds

    path = write(tmp_path, f"experiments:\n  a: {{lora.r: 8}}\nseeds: {seeds}\n")
    with pytest.raises(ConfigError, match="seeds: ") as error:
        grid_seeds(path, 324)
    assert str(error.value).startswith(f"{path}: ") and "\n" not in str(error.value)
