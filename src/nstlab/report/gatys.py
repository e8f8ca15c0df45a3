"""The report's Gatys section: one table per grid of experiments/gatys.yaml (read from MLflow),
quality vs steps vs time, and the distance to AdaIN's outputs.

Each Gatys evaluation is one MLflow run (tags model=gatys, stage=0; GatysTransfer.log_evaluation_run). A
run fills a grid point when its effective settings equal the point's on every key the grid file
sweeps: the point's overrides, the report config's values for the other swept keys, and
GatysSettings' defaults (under the preset in force) for options a config leaves out. So a point
that `nstlab ablate` skipped because an identical run existed (optimizer: adam is params.yaml's)
still gets its row, and a steps-grid run does not leak into the optimizer table.
"""

import functools
import html
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from nstlab.tracking.ablate import read_grid
from nstlab.config import Config
from nstlab.report.tables import html_table, write_table
from nstlab.tracking.queries import metric_history, search_runs

OPTIONS = "baselines.gatys.options."
STEPS_GRID = "steps"  # its one key, baselines.gatys.iterations, is the table's `iterations` column
METRICS = {
    "content_loss": "test.paper_content_loss",
    "style_loss": "test.paper_style_loss",
    "ssim_content": "test.ssim_content",
    "seconds_per_image": "test.latency_ms",
    "mse_vs_adain": "test.mse_vs_adain",
    "ssim_vs_adain": "test.ssim_vs_adain",
}


def param_value(raw: Any) -> Any:
    """A setting as MLflow stores it (text: '1.0', '[1.0, 0.75]', 'None') or as YAML gives it ->
    one comparable value (numbers, strings, None, tuples)."""
    if isinstance(raw, str):
        if raw == "None":
            return None
        try:
            raw = yaml.safe_load(raw)
        except yaml.YAMLError:
            return raw
        if isinstance(raw, str):  # YAML 1.1 reads '1e-05' (no dot) as text
            try:
                return float(raw)
            except ValueError:
                return raw
    return tuple(param_value(item) for item in raw) if isinstance(raw, list | tuple) else raw


@functools.cache
def _preset_defaults(preset: str) -> dict[str, Any]:
    import dataclasses

    from nstlab.config.gatys import settings_from_options

    return dataclasses.asdict(settings_from_options({"preset": preset}))


def effective(settings: dict[str, Any], key: str) -> Any:
    """The value of dotted `key` under `settings`: as set, else GatysSettings' default for the
    settings' preset (options only), else None."""
    if key in settings:
        return param_value(settings[key])
    if not key.startswith(OPTIONS):
        return None
    preset = param_value(settings.get(OPTIONS + "preset", "default"))
    return param_value(_preset_defaults(preset)[key.removeprefix(OPTIONS)])


def _shown(value: Any) -> Any:
    """A setting as a table cell: lists as '1, 0.75, 0.2'; None (the preset decides) as 'default'."""
    if isinstance(value, tuple):
        return ", ".join(f"{item:g}" if isinstance(item, float) else str(item) for item in value)
    return "default" if value is None else value


def grid_tables(
    cfg: Config, runs: pd.DataFrame, grids: dict[str, list[tuple[str, dict]]]
) -> dict[str, pd.DataFrame]:
    """One frame per grid: a row per point that has a FINISHED run (the newest when several)."""
    swept = sorted({key for entries in grids.values() for _, overrides in entries for key in overrides})
    base = cfg.flat()
    candidates = [
        (
            run,
            {
                key.removeprefix("params."): value
                for key, value in run.items()
                if key.startswith("params.") and isinstance(value, str)
            },
        )
        for _, run in runs.sort_values("start_time", ascending=False).iterrows()
    ]
    tables = {}
    for grid, entries in grids.items():
        varied = list(dict.fromkeys(key for _, overrides in entries for key in overrides))
        rows = []
        for name, overrides in entries:
            wanted = {key: effective({**base, **overrides}, key) for key in swept}
            run = next(
                (
                    run
                    for run, settings in candidates
                    if all(effective(settings, key) == wanted[key] for key in swept)
                ),
                None,
            )
            if run is None:
                continue
            numbers = {
                column: run.get(f"metrics.{metric}", float("nan")) for column, metric in METRICS.items()
            }
            numbers["seconds_per_image"] = (
                numbers["seconds_per_image"] / 1000
            )  # latency_ms: the whole optimisation
            rows.append(
                {
                    "point": name,
                    **{key.rpartition(".")[2]: _shown(wanted[key]) for key in varied},
                    **numbers,
                    "run_id": run["run_id"],
                }
            )
        columns = ["point", *(key.rpartition(".")[2] for key in varied), *METRICS, "run_id"]
        tables[grid] = pd.DataFrame(rows, columns=columns)
    return tables


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def steps_figure(cfg: Config, steps: pd.DataFrame, path: Path) -> Path | None:
    """Left: test losses (left axis) and seconds per image (right axis) vs steps, a point per run
    of the steps grid. Right, when logged: the longest run's optimisation, style term vs time."""
    if steps.empty:
        return None
    plt = _pyplot()
    steps = steps.assign(iterations=steps["iterations"].astype(int)).sort_values("iterations")
    longest = steps.iloc[-1]
    curve = metric_history(cfg.mlflow, longest["run_id"], ["optim.style", "optim.elapsed_s"])
    figure, axes = plt.subplots(
        1, 2 if len(curve) else 1, figsize=(11 if len(curve) else 6, 4), squeeze=False
    )
    loss_axis = axes[0, 0]
    loss_axis.plot(steps["iterations"], steps["style_loss"], "o-", color="tab:red", label="style loss")
    loss_axis.plot(steps["iterations"], steps["content_loss"], "s-", color="tab:blue", label="content loss")
    loss_axis.set(xscale="log", yscale="log", xlabel="steps", ylabel="test loss (paper formulas)")
    loss_axis.set_xticks(steps["iterations"], labels=steps["iterations"].astype(str))
    loss_axis.set_xticks([], minor=True)  # the grid's step counts, not 6×10¹
    time_axis = loss_axis.twinx()
    time_axis.plot(
        steps["iterations"], steps["seconds_per_image"], "^--", color="tab:gray", label="seconds / image"
    )
    time_axis.set_ylabel("seconds per image")
    handles = loss_axis.get_legend_handles_labels()[0] + time_axis.get_legend_handles_labels()[0]
    loss_axis.legend(handles=handles, fontsize=8)
    if len(curve):  # the objective's own (unweighted) style term on the first test pair, not the test loss
        axes[0, 1].plot(curve["optim.elapsed_s"], curve["optim.style"], lw=1)
        axes[0, 1].set(
            yscale="log",
            xlabel="seconds",
            ylabel="optim.style",
            title=f"{longest['point']}: {longest['iterations']} steps, first test pair",
        )
    figure.suptitle(f"Gatys: quality vs steps vs time ({cfg.profile} profile)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def adain_figure(tables: dict[str, pd.DataFrame], path: Path, profile: str) -> Path | None:
    """MSE and SSIM against AdaIN's outputs per grid point, coloured by grid."""
    frames = [
        table.assign(grid=grid) for grid, table in tables.items() if table["mse_vs_adain"].notna().any()
    ]
    if not frames:
        return None
    plt = _pyplot()
    points = pd.concat(frames).dropna(subset=["mse_vs_adain"])
    colours = {grid: f"C{index}" for index, grid in enumerate(points["grid"].unique())}
    figure, axes = plt.subplots(1, 2, figsize=(max(8.0, 0.5 * len(points)), 4))
    for axis, metric in zip(axes, ("mse_vs_adain", "ssim_vs_adain")):
        axis.bar(points["point"], points[metric], color=points["grid"].map(colours))
        axis.set_title(metric)
        axis.tick_params(axis="x", rotation=90, labelsize=7)
    figure.suptitle(f"Gatys vs AdaIN's outputs, per grid point ({profile} profile)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def gatys_section(
    cfg: Config, reports_dir: Path, grid_path: Path = Path("experiments/gatys.yaml")
) -> tuple[str, list[Path]]:
    """Write reports/gatys/<grid>.md/.csv and the Gatys figures; return (HTML fragment, figures).
    No FINISHED gatys run of this profile: ("", []) and nothing written."""
    runs = search_runs(
        cfg.mlflow,
        f"tags.model = 'gatys' and tags.profile = '{cfg.profile}' and attributes.status = 'FINISHED'",
    )
    if runs.empty:
        return "", []
    grids: dict[str, list[tuple[str, dict]]] = {}
    for name, overrides in read_grid(
        grid_path, cfg.profile
    ).items():  # names are '<grid>-<index>', in file order
        grids.setdefault(name.rpartition("-")[0] or name, []).append((name, overrides))
    tables = grid_tables(cfg, runs, grids)
    (reports_dir / "gatys").mkdir(parents=True, exist_ok=True)
    (reports_dir / "figures").mkdir(parents=True, exist_ok=True)
    for grid, table in tables.items():
        write_table(
            table,
            reports_dir / "gatys" / grid,
            f"Gatys ablation: the {grid} grid of {grid_path.name}",
            cfg.profile,
        )
    figures = [
        steps_figure(
            cfg, tables.get(STEPS_GRID, pd.DataFrame()), reports_dir / "figures" / "gatys_steps.png"
        ),
        adain_figure(tables, reports_dir / "figures" / "gatys_vs_adain.png", cfg.profile),
    ]
    figures = [path for path in figures if path is not None]
    parts = [
        "<h2>Gatys ablations (from MLflow)</h2>",
        f"<p>One table per grid of <code>{html.escape(str(grid_path))}</code>; seconds_per_image is the whole "
        "optimisation of one image; *_vs_adain compare with AdaIN's output for the same pair.</p>",
    ]
    parts += [
        f'<h3>{html.escape(grid)}</h3><div id="gatys-{html.escape(grid)}">{html_table(table)}</div>'
        for grid, table in tables.items()
    ]
    parts += [
        f'<figure><img src="{html.escape(p.relative_to(reports_dir).as_posix())}" alt="{p.stem}">'
        f"<figcaption>{p.stem}</figcaption></figure>"
        for p in figures
    ]
    return "\n".join(parts), figures
