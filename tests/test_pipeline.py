"""End-to-end (slow): the real DVC pipeline in a temp copy of the repo, shrunk to seconds per stage.

`dvc repro` runs every stage; the results travel to another clone through a DVC remote;
`dvc exp run -S lora.r=32` reruns only what the change touches; `nstlab ablate` runs a grid
from the DVC queue (two workers) into MLflow and Table 2, skipping the configuration already done.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PARAMS, REPO, write_shrunk_params

pytestmark = pytest.mark.slow


def _run(args, cwd, env):
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, (
        f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A git + DVC copy of this working tree with a shrunk demo profile, committed."""
    root = tmp_path_factory.mktemp("repo")
    keep = [
        "dvc.yaml",
        "pyproject.toml",
        "README.md",
        "pipeline",
        "src",
        "experiments",
        ".dvc",
        ".dvcignore",
        ".gitignore",
    ]
    for name in keep:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(
                source,
                root / name,
                ignore=shutil.ignore_patterns("cache", "tmp", "__pycache__", "config.local"),
            )
        elif source.exists():
            shutil.copy(source, root / name)
    shutil.copy(PARAMS, root / "params.yaml")  # the committed defaults, not the workspace's
    write_shrunk_params(root / "params.yaml")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "OMP_NUM_THREADS": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("DVC_ROOT", None)
    _run(["git", "init", "-q"], root, env)
    _run(["git", "add", "-A"], root, env)
    _run(["git", "commit", "-qm", "baseline"], root, env)
    return root, env


def _ran_stages(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


def test_dvc_repro_runs_the_whole_study(repo):
    root, env = repo
    output = _run(["dvc", "repro"], root, env)
    ran = _ran_stages(output)
    assert {
        "download",
        "pair",
        "demo_backbones",
        "train_vit_lora_stage1",
        "train_vit_lora_stage2",
        "evaluate_gatys",
        "report",
    } <= ran
    assert {f"train_baseline@{m}" for m in ("stytr2", "adain", "sanet", "mcc", "artflow", "iest")} <= ran
    table1 = (root / "reports" / "table1.csv").read_text().splitlines()
    assert len(table1) == 1 + 8  # header + ViT-LoRA, six baselines and Gatys
    assert "DEMO RESULTS" in (root / "reports" / "index.html").read_text()
    assert (root / "reports" / "figures" / "gallery_grid.png").is_file()
    assert (root / "mlruns.db").is_file()
    _run(["git", "add", "-A"], root, env)
    _run(["git", "commit", "-qm", "results"], root, env)
    status = _run(["dvc", "status"], root, env)
    assert (
        "train_" not in status and "evaluate" not in status and "pair" not in status
    )  # only report: always_changed


def test_results_travel_through_a_dvc_remote(repo, tmp_path):
    """Another machine: git clone + dvc pull gets every output; its report is byte-identical when
    it reads the same MLflow store (a team's tracking server; here the first clone's sqlite file)."""
    root, env = repo
    _run(["dvc", "remote", "add", "-d", "store", str(tmp_path / "dvc-store")], root, env)
    _run(["dvc", "push"], root, env)
    _run(["git", "add", "-A"], root, env)
    _run(["git", "commit", "-qm", "remote"], root, env)
    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(root), str(clone)], tmp_path, env)
    _run(["dvc", "pull"], clone, env)
    assert (clone / "models" / "vit_lora_stage2" / "model.pt").read_bytes() == (
        root / "models" / "vit_lora_stage2" / "model.pt"
    ).read_bytes()
    shared_store = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlruns.db'}"}
    assert _ran_stages(_run(["dvc", "repro"], clone, shared_store)) == {"report"}
    for name in ("table1.csv", "table1.md", "table2.csv", "table2.md"):
        assert (clone / "reports" / name).read_bytes() == (root / "reports" / name).read_bytes(), name


def test_exp_run_with_a_new_lora_rank_reruns_only_what_it_touches(repo):
    root, env = repo
    ran = _ran_stages(_run(["dvc", "exp", "run", "-S", "lora.r=32"], root, env))
    assert ran == {"train_vit_lora_stage2", "evaluate@vit_lora", "report"}
    table2 = (root / "reports" / "table2.csv").read_text().splitlines()
    assert len(table2) == 1 + 2  # r=16 from repro, r=32 from the experiment
    _run(["git", "checkout", "--", "params.yaml"], root, env)


def test_ablate_runs_a_grid_from_the_dvc_queue_and_skips_done_configs(repo):
    """A grid half done (r=32 finished by the experiment above, as if a grid run was killed
    after it): ablate runs only the other two, two at a time; a rerun queues nothing."""
    from nstlab.config import MlflowConfig
    from nstlab.tracking.queries import search_runs

    root, env = repo
    store = MlflowConfig(tracking_uri=f"sqlite:///{root / 'mlruns.db'}", experiment="nstlab")

    def stage2_runs() -> int:
        runs = search_runs(store)
        return int(((runs["tags.model"] == "vit_lora") & (runs["tags.stage"] == "2")).sum())

    grid = root / "experiments" / "small.yaml"
    grid.write_text(
        "experiments:\n  a: {lora.r: 32}\n  b: {lora.r: 4}\n"
        "  c: {lora.r: 8, lora.target_modules: [query, value]}\n"
    )
    _run(["git", "add", "-A"], root, env)
    _run(["git", "commit", "-qm", "grid"], root, env)
    before = stage2_runs()
    output = _run(["nstlab", "ablate", "experiments/small.yaml", "--jobs", "2"], root, env)
    assert "done" in output
    assert stage2_runs() == before + 2
    table2 = (root / "reports" / "table2.csv").read_text()
    rows = table2.splitlines()[1:]
    assert {row.split(",")[0] for row in rows} >= {"4", "8", "16", "32"}
    again = _run(["nstlab", "ablate", "experiments/small.yaml"], root, env)
    assert "queued" not in again.split("overrides")[-1]
    assert stage2_runs() == before + 2
    # With an empty MLflow store (say, another machine's), `dvc exp show` still knows b and c;
    # a ran as an experiment of the commit before, so it is not counted.
    elsewhere = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'empty.db'}"}
    plan = _run(["nstlab", "ablate", "experiments/small.yaml", "--dry-run"], root, elsewhere)
    rows = [
        [cell.strip() for cell in line.split("│")[1:3]] for line in plan.splitlines() if line.count("│") >= 3
    ]
    assert {name: state for name, state in rows if name} == {"a": "queued", "b": "done", "c": "done"}
