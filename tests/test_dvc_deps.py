"""dvc.yaml's code deps follow the code: every stage depends on each project file its command imports.

Each stage's command, exactly as DVC resolves it (foreach items included), runs for real on the
shrunk demo profile in a scratch folder, in dvc.yaml's order; the project modules it imported
(sys.modules at exit: lazy imports included) must each be a dep of that stage, or lie in a folder
that is. And a source file a stage lists must still be imported by it, so deps stay precise.
Editing a module then reruns exactly the stages that run its code.
"""

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, write_shrunk_params

# One process imports the heavy third-party libraries once, then forks a child per stage that runs
# the stage's script as `python script args` would and lists the nstlab modules it imported at exit.
# The parent imports no project code, so each child's list is what its command alone imported.
RUN_STAGES = """
import importlib, json, os, runpy, sys, traceback

LIBRARIES = ("torch", "numpy", "PIL.Image", "pandas", "typer", "rich.progress", "yaml", "transformers",
             "peft", "mlflow")
for library in LIBRARIES:
    try:
        importlib.import_module(library)
    except ImportError:
        pass
for name, script, args in json.loads(sys.argv[1]):
    pid = os.fork()
    if pid == 0:
        log = os.open(f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(log, 1)
        os.dup2(log, 2)
        code = 0
        try:
            sys.argv = [script, *args]
            runpy.run_path(script, run_name="__main__")
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
        except BaseException:
            traceback.print_exc()
            code = 1
        files = {getattr(module, "__file__", None) for module_name, module in list(sys.modules.items())
                 if module_name == "nstlab" or module_name.startswith("nstlab.")}
        with open(f"{name}.imports", "w") as handle:
            handle.write("\\n".join(sorted(f for f in files if f)))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]):
        sys.exit(f"{name}: failed")
"""


def pipeline_stages() -> dict[str, tuple[str, list[str]]]:
    """{address: (command, deps)} of dvc.yaml's stages, each after the stages it depends on, as
    DVC's own parser and graph resolve them."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        ordered = [stage for stage in reversed(list(nx.topological_sort(graph))) if stage.cmd]
        return {stage.name: (stage.cmd, [dep.def_path for dep in stage.deps]) for stage in ordered}


STAGES = pipeline_stages()


@pytest.fixture(scope="module")
def stage_imports(tmp_path_factory) -> dict[str, set[str]]:
    """{stage: project files its command imported}, from one run of the whole pipeline on the
    shrunk demo profile, in a scratch folder."""
    workdir = tmp_path_factory.mktemp("stages")
    shutil.copy(REPO / "params.yaml", workdir / "params.yaml")
    write_shrunk_params(workdir / "params.yaml")
    for folder in ("pipeline", "experiments"):
        (workdir / folder).symlink_to(REPO / folder)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlruns.db'}",
    }
    env.pop("DVC_ROOT", None)
    plan = []
    for name, (command, _) in STAGES.items():
        program, script, *args = shlex.split(command)
        assert program == "python", f"{name}: expected a `python pipeline/...` command, got {command!r}"
        plan.append((name, script, args))
    result = subprocess.run(
        [sys.executable, "-c", RUN_STAGES, json.dumps(plan)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if result.returncode:
        failed = result.stderr.strip().splitlines()[-1].split(":")[0]
        log = workdir / f"{failed}.log"
        detail = log.read_text() if log.is_file() else result.stderr
        pytest.fail(f"{failed}: `{STAGES[failed][0]}` failed:\n{detail[-3000:]}")
    imported = {}
    for name, script, _ in plan:
        files = {script}
        for line in (workdir / f"{name}.imports").read_text().splitlines():
            path = Path(line).resolve()
            assert path.is_relative_to(REPO / "src"), f"{name} imported nstlab from {path}, not this tree"
            files.add(path.relative_to(REPO).as_posix())
        imported[name] = files
    return imported


def _covered(path: str, deps: list[str]) -> bool:
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


@pytest.mark.parametrize("address", STAGES)
def test_every_imported_project_file_is_a_dep_of_the_stage(stage_imports, address):
    deps = STAGES[address][1]
    missing = sorted(path for path in stage_imports[address] if not _covered(path, deps))
    name, _, item = address.partition("@")
    where = f"stage {name!r}"
    if item:
        where += f" (its `do:` deps, or item {item!r}'s entry if only that item imports it)"
    assert not missing, (
        f"dvc.yaml: {address} runs code DVC does not watch, so editing it would not rerun "
        f"the stage; add to the deps of {where}: " + ", ".join(missing)
    )


@pytest.mark.parametrize("address", STAGES)
def test_every_source_file_dep_is_still_imported(stage_imports, address):
    deps = STAGES[address][1]
    stale = sorted(dep for dep in deps if dep.endswith(".py") and dep not in stage_imports[address])
    assert not stale, (
        f"dvc.yaml: {address} depends on {', '.join(stale)}, which its command no longer "
        "imports (moved or renamed?): replace it with the module that holds that code now, "
        "or remove it"
    )


def test_a_folder_dep_covers_the_files_under_it_only():
    assert _covered("src/nstlab/data/images.py", ["pipeline/pair.py", "src/nstlab/data"])
    assert not _covered("src/nstlab/data_tools.py", ["src/nstlab/data"])
    assert not _covered("src/nstlab/models/sanet.py", ["src/nstlab/models/iest.py"])
