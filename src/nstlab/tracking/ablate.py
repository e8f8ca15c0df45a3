"""`nstlab ablate GRID.yaml`: an ablation grid as data -> queued DVC experiments -> the report.

A grid file lists configurations as overrides of params.yaml keys:

    experiments:
      exp1: {lora.r: 16, lora.target_modules: [query, value]}
      exp2: {lora.r: 32, lora.target_modules: [query, value]}

or, for several one-dimensional sweeps, `grids: {sweep_name: [{key: value}, ...]}` (each entry
named `<sweep>-<index>`). A `profiles: {demo: {grids: {sweep_name: [...]}}}` block replaces
whole sweeps (or experiments) under that profile, e.g. a step sweep scaled to the demo's
budget. A top-level `seeds:` (K, or a list of seeds; `--seeds K` wins) runs every configuration
under each seed, config × seed. Every point becomes `dvc exp run --queue -S key=value ...`;
the queue runs with N workers; configurations whose result already exists (same resolved
config digest in a FINISHED MLflow run, or a DVC experiment holding its results) are skipped
unless --force. DVC's run cache makes every
experiment reuse the stages its overrides do not touch.
"""

import json
import os
import subprocess
import time
from pathlib import Path
from typing import NamedTuple

import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from nstlab.training.checkpoint import run_digest
from nstlab.config import PROFILES, Config, load_config, resolve
from nstlab.errors import ConfigError, NstlabError


def read_grid(path: Path, profile: str | None = None) -> dict[str, dict]:
    """Grid file -> {experiment name: {dotted key: value}}, with `profile`'s replacements laid
    over; errors name the file and the entry."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ConfigError(f"{path}: cannot read ({error.strerror})") from None
    except yaml.YAMLError:
        raise ConfigError(f"{path}: not valid YAML") from None
    if not isinstance(raw, dict) or not ({"experiments", "grids"} & set(raw)):
        raise ConfigError(f"{path}: expected a top-level 'experiments:' or 'grids:' mapping")
    unknown = set(raw) - {"experiments", "grids", "profiles", "seeds"}
    if unknown:
        raise ConfigError(
            f"{path}: unknown top-level key(s) {', '.join(sorted(map(str, unknown)))}; "
            "use experiments:, grids:, profiles: or seeds:"
        )
    _experiments(path, raw, "")
    replacements = raw.get("profiles") or {}
    if not isinstance(replacements, dict) or set(replacements) - set(PROFILES):
        raise ConfigError(f"{path}: profiles: must map profile names ({', '.join(PROFILES)}) to grids")
    for name, block in replacements.items():
        if not isinstance(block, dict) or set(block) - {"experiments", "grids"}:
            raise ConfigError(f"{path}: profiles.{name} may only hold experiments: and grids:")
        for kind in ("experiments", "grids"):
            extra = set(block.get(kind) or {}) - set(raw.get(kind) or {})
            if extra:
                raise ConfigError(
                    f"{path}: profiles.{name}.{kind}.{sorted(extra)[0]} replaces nothing; "
                    f"name one of the file's {kind}"
                )
        _experiments(path, block, f"profiles.{name}.")
    chosen = replacements.get(profile) or {}
    # dict merge keeps each replaced sweep where the file lists it, so report tables keep file order
    merged = {
        kind: {**(raw.get(kind) or {}), **(chosen.get(kind) or {})} for kind in ("experiments", "grids")
    }
    return _experiments(path, merged, "")


def _experiments(path: Path, raw: dict, where: str) -> dict[str, dict]:
    """The experiments: and grids: of one block -> {name: overrides}, validated."""
    for kind in ("experiments", "grids"):
        if not isinstance(raw.get(kind) or {}, dict):
            raise ConfigError(
                f"{path}: {where}{kind}: must map names to {'overrides' if kind == 'experiments' else 'lists'}"
            )
    experiments: dict[str, dict] = {}
    for name, overrides in (raw.get("experiments") or {}).items():
        experiments[str(name)] = overrides
    for sweep, entries in (raw.get("grids") or {}).items():
        if not isinstance(entries, list):
            raise ConfigError(f"{path}: {where}grids.{sweep} must be a list of overrides")
        for index, overrides in enumerate(entries):
            experiments[f"{sweep}-{index}"] = overrides
    for name, overrides in experiments.items():
        if not isinstance(overrides, dict) or not overrides:
            raise ConfigError(f"{path}: {where}experiment {name} must be a non-empty mapping of key: value")
    return experiments


def grid_seeds(path: Path, base_seed: int, count: int | None = None) -> list[int] | None:
    """The training seeds to run each configuration under: `count` (--seeds K) or the file's
    `seeds:` (K, or an explicit list); K seeds are params.yaml's seed and the K-1 after it, so
    the runs `dvc repro` made count. None when neither is given: one run at params.yaml's seed."""
    if count is None:
        try:
            count = (yaml.safe_load(path.read_text()) or {}).get("seeds")
        except (OSError, yaml.YAMLError, AttributeError):
            return None  # read_grid reports an unreadable or malformed file
        if count is None:
            return None
        if isinstance(count, list):
            distinct = all(_whole(seed) and seed >= 0 for seed in count) and len(set(count)) == len(count)
            if not count or not distinct:
                raise ConfigError(f"{path}: seeds: {count!r} must list distinct whole numbers >= 0")
            return list(count)
    if not _whole(count) or count < 1:
        raise ConfigError(f"{path}: seeds: {count!r} must be a number of seeds >= 1 or a list of seeds")
    return [base_seed + index for index in range(count)]


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def override_args(overrides: dict) -> list[str]:
    """{lora.r: 32, lora.target_modules: [query, value]} -> ['lora.r=32', 'lora.target_modules=[query, value]']."""
    return [
        f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
        for key, value in overrides.items()
    ]


def methods_touched(overrides: dict) -> tuple[str, int]:
    """Which training run identifies an experiment: a baseline's block, else ViT-LoRA stage 2."""
    for key in overrides:
        parts = key.split(".")
        if parts[0] == "baselines" or (parts[0] == "profiles" and len(parts) > 2 and parts[2] == "baselines"):
            method = parts[1] if parts[0] == "baselines" else parts[3]
            return method, 0
    return "vit_lora", 2


def finished_digests(cfg: Config) -> set[str]:
    from nstlab.tracking.queries import search_runs

    runs = search_runs(cfg.mlflow, "attributes.status = 'FINISHED'")
    if runs.empty or "tags.config_digest" not in runs:
        return set()
    return set(runs["tags.config_digest"].dropna())


def dvc_experiment_digests(methods: set[tuple[str, int]]) -> set[str]:
    """Digests of the configurations a DVC experiment (or commit) already holds results for:
    `dvc exp show` lists their params.yaml, and a completed revision carries the metrics files
    (a grid run on another machine and pulled with `dvc exp pull` counts as done here).
    Only `methods` (method, stage) are digested: an experiment's result names its config."""
    try:
        shown = json.loads(_dvc("exp", "show", "--json").stdout or "[]")  # HEAD and its experiments
    except (NstlabError, OSError, json.JSONDecodeError):
        return set()  # no DVC repository or no dvc: MLflow alone decides
    digests = set()
    for baseline in shown:
        revisions = [baseline] + [
            rev
            for group in baseline.get("experiments") or []
            if ((group.get("executor") or {}).get("state") or "success") == "success"
            for rev in group.get("revs", [])
        ]
        for revision in revisions:
            data = revision.get("data") or {}
            params = ((data.get("params") or {}).get("params.yaml") or {}).get("data")
            if (
                revision.get("rev") == "workspace"
                or not params
                or not data.get("metrics")
                or revision.get("error")
            ):
                continue
            try:
                cfg = resolve(params)
                digests.update(run_digest(cfg, method, stage) for method, stage in methods)
            except ConfigError:
                continue  # an experiment from an older params schema
    return digests


def _dvc(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(["dvc", *args], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
        reason = next((line for line in lines if line.startswith("ERROR")), lines[-1])
        raise NstlabError(f"dvc {' '.join(args)} failed: {reason}")
    return result


def worker_env(jobs: int) -> dict[str, str]:
    """The environment the queue workers (and so every stage they run) inherit: each gets its
    share of the cores. torch's default, every core in each of `jobs` processes, oversubscribes
    the CPU: two Gatys runs side by side on 2 cores each optimised twice as long with 2 threads
    as with 1 (reports/benchmarks/README.md). A thread count the user exported is kept."""
    env = dict(os.environ)
    if jobs > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    return env


def _wait_for_queue(poll_s: float = 5.0) -> dict[str, str]:
    """Poll `dvc queue status` until nothing is queued or running; returns name -> final status."""
    while True:
        lines = _dvc("queue", "status").stdout.splitlines()[1:]
        statuses = {}
        for line in lines:
            fields = line.split()
            if len(fields) >= 3:
                statuses[fields[1]] = (
                    fields[-1] if fields[-1] in ("Queued", "Running", "Success", "Failed") else fields[2]
                )
        if not any(state in ("Queued", "Running") for state in statuses.values()):
            return statuses
        time.sleep(poll_s)


class Point(NamedTuple):
    """One (configuration, seed) of a grid: its state and the -S overrides that run it."""

    state: str  # done | queued | failed
    args: list[str]
    seed: int


def plan_grid(
    grid: Path, *, force: bool = False, params_path: Path = Path("params.yaml"), seeds: int | None = None
) -> dict[str, Point]:
    """{point name: Point}, configuration-major: `exp1` with one seed, `exp1-s325` with several
    (so two queue workers start on two seeds of one configuration, not on the stage 1 and
    baselines of one new seed twice). A point is done when its digest, seed included, is;
    a bad key fails here, before anything is queued."""
    base = load_config(params_path)
    experiments = read_grid(grid, base.profile)
    chosen = grid_seeds(grid, base.seed, seeds)
    done = set()
    if not force:  # finished in MLflow, or a DVC experiment holds the result
        done = finished_digests(base) | dvc_experiment_digests(
            {methods_touched(o) for o in experiments.values()}
        )
    plan = {}
    for name, overrides in experiments.items():
        for seed in chosen or [base.seed]:
            args = override_args(overrides) + ([f"seed={seed}"] if chosen else [])
            digest = run_digest(load_config(params_path, args), *methods_touched(overrides))
            state = "done" if digest in done else "queued"
            plan[f"{name}-s{seed}" if chosen else name] = Point(state, args, seed)
    return plan


def print_plan(grid: Path, plan: dict[str, Point]) -> None:
    seeds = sorted({point.seed for point in plan.values()})
    table = Table(
        title=f"{grid}: {len(plan)} runs ({len(plan) // len(seeds) if plan else 0} configurations "
        f"× {len(seeds)} seed{'s' if len(seeds) > 1 else ''})"
    )
    for column in ("experiment", "state", "seed", "overrides"):
        table.add_column(column)
    for name, point in plan.items():
        # escape: [query, value] is not rich markup
        table.add_row(name, point.state, str(point.seed), escape(" ".join(point.args)))
    Console().print(table)


def run_grid(
    grid: Path,
    *,
    jobs: int = 1,
    force: bool = False,
    dry_run: bool = False,
    params_path: Path = Path("params.yaml"),
    seeds: int | None = None,
) -> dict:
    """Queue, run and report one grid; prints a done / queued / failed table (with dry_run:
    the plan, and nothing runs)."""
    plan = plan_grid(grid, force=force, params_path=params_path, seeds=seeds)
    if dry_run:
        print_plan(grid, plan)
        return {name: point.state for name, point in plan.items()}
    prefix = grid.stem
    for name, (state, args, _) in plan.items():
        if state == "queued":
            # `++key=value`: add or override (Hydra grammar), as a grid may set a key params.yaml only
            # has under a profile block (baselines.gatys.options.*); plain `key=value` must exist.
            _dvc(
                "exp",
                "run",
                "--queue",
                "--name",
                f"{prefix}-{name}",
                *[part for arg in args for part in ("-S", f"++{arg}")],
            )
    if any(point.state == "queued" for point in plan.values()):
        _dvc("queue", "start", "--jobs", str(jobs), env=worker_env(jobs))
        statuses = _wait_for_queue()
        for name, point in plan.items():
            if point.state == "queued":
                final = statuses.get(f"{prefix}-{name}", "Failed")
                plan[name] = point._replace(state="done" if final == "Success" else "failed")
    subprocess.run(["nstlab", "report", "--params", str(params_path)], check=False)
    print_plan(grid, plan)
    result = {name: point.state for name, point in plan.items()}
    Path("reports").mkdir(exist_ok=True)
    (Path("reports") / f"ablate_{prefix}.json").write_text(json.dumps(result, indent=2) + "\n")
    if any(state == "failed" for state in result.values()):
        raise NstlabError(f"{grid}: some experiments failed; see `dvc queue logs <name>`")
    return result
