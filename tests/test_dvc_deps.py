"""dvc.yaml's deps follow the code: every stage depends on each project file its command imports or reads.

Each stage's command, exactly as DVC resolves it (foreach items included), runs for real on the
shrunk demo profile in a scratch folder, in dvc.yaml's order; the project modules it imported
(sys.modules at exit: lazy imports included) must each be a dep of that stage, or lie in a folder
that is. And a source file a stage lists must still be imported by it, so deps stay precise.
Editing a module then reruns exactly the stages that run its code.

Every file the command opens for reading is recorded too (an audit hook on "open" in the process
that runs it, failed opens included: looking for a file is depending on it). A read of a project
file, one git tracks or one a stage writes, must be covered by the stage's deps, unless the stage
writes it itself or it is params.yaml (the `params:` lists cover that). Files outside the project
(libraries, caches, MLflow's store) are not DVC's to watch. What the hook cannot see: files opened
by native code (safetensors, sqlite) and existence checks that open nothing (`Path.is_file`), so a
stage that only reads what another produced when that one happened to run first is caught only
where DVC's order runs that producer first.
"""

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

from conftest import PARAMS, REPO, write_shrunk_params

# Third-party libraries the stage runner imports once, before it forks a child per stage.
LIBRARIES = [
    *("torch", "numpy", "PIL.Image", "pandas", "typer", "rich.progress", "yaml"),
    *("transformers", "peft", "mlflow"),
]

# One process imports the heavy third-party libraries once, then forks a child per stage that runs
# the stage's script as `python script args` would and lists the nstlab modules it imported at exit.
# The parent imports no project code, so each child's list is what its command alone imported.
# The child lists each file it opened for reading (or tried to) in <name>.reads, as absolute paths.
RUN_STAGES = """
import importlib, json, os, runpy, sys, traceback

for library in json.loads(sys.argv[2]):
    try:
        importlib.import_module(library)
    except ImportError:
        pass


def note_reads(reads):
    def hook(event, args):
        if event != "open" or not isinstance(args[0], (str, bytes, os.PathLike)):
            return  # an fd, or another event
        flags = args[2]
        if flags & os.O_ACCMODE != os.O_WRONLY and not flags & (os.O_TRUNC | os.O_EXCL):
            reads.add(os.path.abspath(os.fsdecode(args[0])))

    sys.addaudithook(hook)


for name, script, args in json.loads(sys.argv[1]):
    pid = os.fork()
    if pid == 0:
        log = os.open(f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(log, 1)
        os.dup2(log, 2)
        reads = set()
        note_reads(reads)
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
        with open(f"{name}.reads", "w") as handle:
            handle.write("\\n".join(sorted(reads.copy())))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]):
        sys.exit(f"{name}: failed")
"""


class Stage(NamedTuple):
    command: str
    deps: list[str]
    outs: list[str]  # metrics and plots included


def pipeline_stages() -> dict[str, Stage]:
    """{address: stage} of dvc.yaml's stages, each after the stages it depends on, as DVC's own
    parser and graph resolve them."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        ordered = [stage for stage in reversed(list(nx.topological_sort(graph))) if stage.cmd]
        return {
            stage.name: Stage(
                stage.cmd, [dep.def_path for dep in stage.deps], [out.def_path for out in stage.outs]
            )
            for stage in ordered
        }


STAGES = pipeline_stages()
ALL_OUTS = [out for stage in STAGES.values() for out in stage.outs]


def run_stages(workdir: Path, plan: list[tuple[str, str, list[str]]], libraries: list[str]) -> None:
    """Run each (name, script, args) of `plan` in `workdir` (see RUN_STAGES); fail the test with the
    log of the first stage that fails."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlruns.db'}",
    }
    env.pop("DVC_ROOT", None)
    result = subprocess.run(
        [sys.executable, "-c", RUN_STAGES, json.dumps(plan), json.dumps(libraries)],
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
        command = STAGES[failed].command if failed in STAGES else failed
        pytest.fail(f"{failed}: `{command}` failed:\n{detail[-3000:]}")


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory) -> Path:
    """The scratch folder where every stage ran once, on the shrunk demo profile, in DVC's order;
    it holds each stage's `.imports` and `.reads`."""
    workdir = tmp_path_factory.mktemp("stages")
    shutil.copy(PARAMS, workdir / "params.yaml")
    write_shrunk_params(workdir / "params.yaml")
    for folder in ("pipeline", "experiments"):
        (workdir / folder).symlink_to(REPO / folder)
    plan = []
    for name, stage in STAGES.items():
        program, script, *args = shlex.split(stage.command)
        assert program == "python", f"{name}: expected a `python pipeline/...` command, got {stage.command!r}"
        plan.append((name, script, args))
    run_stages(workdir, plan, LIBRARIES)
    return workdir


@pytest.fixture(scope="module")
def stage_imports(pipeline_run) -> dict[str, set[str]]:
    """{stage: project files its command imported}, its script included."""
    imported = {}
    for name, stage in STAGES.items():
        files = {shlex.split(stage.command)[1]}
        for line in (pipeline_run / f"{name}.imports").read_text().splitlines():
            path = Path(line).resolve()
            assert path.is_relative_to(REPO / "src"), f"{name} imported nstlab from {path}, not this tree"
            files.add(path.relative_to(REPO).as_posix())
        imported[name] = files
    return imported


@pytest.fixture(scope="module")
def stage_reads(pipeline_run) -> dict[str, set[str]]:
    """{stage: project files its command opened for reading, or tried to}, repository-relative."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True)
    tracked = set(listed.stdout.split("\0"))
    return {name: project_files(pipeline_run, name, tracked) for name in STAGES}


def project_files(workdir: Path, name: str, tracked: set[str]) -> set[str]:
    """The files of <name>.reads that belong to the project: tracked by git or written by a stage,
    relative to the scratch folder or the checkout, whichever holds them. Folders are skipped."""
    files = set()
    for line in (workdir / f"{name}.reads").read_text().splitlines():
        relative = repo_relative(Path(line), (workdir, REPO))
        if relative is None or Path(line).is_dir():
            continue
        if relative in tracked or _covered(relative, ALL_OUTS):
            files.add(relative)
    return files


def repo_relative(path: Path, roots: tuple[Path, ...]) -> str | None:
    """`path` relative to the first of `roots` that holds it; None when none does."""
    for root in roots:
        if path.is_relative_to(root):
            return path.relative_to(root).as_posix()
    return None


def undeclared_reads(reads: set[str], stage: Stage) -> list[str]:
    """The project files read that neither a dep covers nor the stage writes. params.yaml is
    covered by the stage's `params:`; the package's Python source is the import check's (training
    also reads every module to fingerprint the code a checkpoint came from, checkpoint.source_digest,
    which decides a resume, not a result)."""
    return sorted(
        path
        for path in reads
        if path != "params.yaml"
        and not (path.startswith("src/") and path.endswith(".py"))
        and not _covered(path, stage.outs)
        and not _covered(path, stage.deps)
    )


def _covered(path: str, deps: list[str]) -> bool:
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


def where_to_add(address: str) -> str:
    """Where in dvc.yaml a dep of `address` goes: the stage, or for a foreach item its `do:` or entry."""
    name, _, item = address.partition("@")
    where = f"stage {name!r}"
    if item:
        where += f" (its `do:` deps, or item {item!r}'s entry if only that item needs it)"
    return where


@pytest.mark.parametrize("address", STAGES)
def test_every_imported_project_file_is_a_dep_of_the_stage(stage_imports, address):
    deps = STAGES[address].deps
    missing = sorted(path for path in stage_imports[address] if not _covered(path, deps))
    assert not missing, (
        f"dvc.yaml: {address} runs code DVC does not watch, so editing it would not rerun "
        f"the stage; add to the deps of {where_to_add(address)}: " + ", ".join(missing)
    )


@pytest.mark.parametrize("address", STAGES)
def test_every_project_file_read_is_a_dep_of_the_stage(stage_reads, address):
    missing = undeclared_reads(stage_reads[address], STAGES[address])
    assert not missing, undeclared_message(address, missing)


def undeclared_message(address: str, missing: list[str]) -> str:
    return (
        f"dvc.yaml: {address} reads files DVC does not watch, so its result depends on whether "
        f"they exist and what they hold when it runs; add to the deps of {where_to_add(address)} "
        "(a folder covers the files under it): " + ", ".join(missing)
    )


def test_a_read_of_another_stages_output_fails_without_its_dep(stage_reads):
    """The check can fail: evaluate_gatys compares against AdaIN's outputs, so without that dep
    (issue 26 item 7) it names the stage and each image."""
    gatys = STAGES["evaluate_gatys"]
    adain_images = sorted(
        path for path in stage_reads["evaluate_gatys"] if path.startswith("reports/outputs/adain/")
    )
    assert adain_images and all(path.endswith(".png") for path in adain_images)
    without = gatys._replace(deps=[dep for dep in gatys.deps if dep != "reports/outputs/adain"])
    missing = undeclared_reads(stage_reads["evaluate_gatys"], without)
    assert missing == adain_images
    message = undeclared_message("evaluate_gatys", missing)
    assert "evaluate_gatys" in message and adain_images[0] in message


def test_reads_are_recorded_in_the_stage_process_and_writes_are_not(tmp_path):
    """The recorder on a stub stage: a read, a failed read and an `os.open` read count; a write,
    an append and a folder's scan do not."""
    script = tmp_path / "stub.py"
    script.write_text(
        "import os, pathlib\n"
        "pathlib.Path('input.txt').read_text()\n"
        "try:\n    open('absent.txt')\nexcept FileNotFoundError:\n    pass\n"
        "os.close(os.open('raw.bin', os.O_RDONLY))\n"
        "pathlib.Path('output.txt').write_text('x')\n"
        "open('log.txt', 'a').close()\n"
        "list(pathlib.Path('.').iterdir())\n"
    )
    for name in ("input.txt", "raw.bin"):
        (tmp_path / name).write_text("x")
    run_stages(tmp_path, [("stub", str(script), [])], [])
    reads = {Path(line).name for line in (tmp_path / "stub.reads").read_text().splitlines()}
    assert {"input.txt", "absent.txt", "raw.bin"} <= reads
    assert not reads & {"output.txt", "log.txt"}


def test_only_project_files_outside_the_stages_outs_and_params_need_a_dep():
    stage = Stage(
        "python pipeline/evaluate.py gatys", ["data/pairs", "pipeline/evaluate.py"], ["reports/outputs/gatys"]
    )
    reads = {
        "data/pairs/test.csv",
        "params.yaml",
        "reports/outputs/gatys/0000.png",
        "reports/outputs/adain/0000.png",
    }
    assert undeclared_reads(reads, stage) == ["reports/outputs/adain/0000.png"]
    assert repo_relative(REPO / "src/nstlab/cli.py", (Path("/elsewhere"), REPO)) == "src/nstlab/cli.py"
    assert repo_relative(Path("/usr/lib/python3/os.py"), (REPO,)) is None


@pytest.mark.parametrize("address", STAGES)
def test_every_source_file_dep_is_still_imported(stage_imports, address):
    deps = STAGES[address].deps
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
