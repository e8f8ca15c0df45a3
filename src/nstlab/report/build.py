"""The report stage: Table 1 (all models on the test pairs), Table 2 (the ViT-LoRA ablation grid
from MLflow), figures, and reports/index.html, a gallery that opens from disk.

Every table and page states the profile; demo numbers are never shown as the paper's: the
paper's own values sit in their own, labelled columns for reference.
"""

import html
import json
from pathlib import Path

import pandas as pd

from nstlab.config import Config, canonical_targets
from nstlab.registry import TABLE2_AXES, method_names
from nstlab.report.gatys import gatys_section
from nstlab.report.tables import figure_html, html_table, profile_note, write_table

# docs/methods.md#paper-results, the paper's Table 1 (content / style loss on its 352 test pairs).
PAPER_TABLE1 = {
    "vit_lora": (9.097, 1.514),
    "artflow": (9.200, 2.745),
    "iest": (9.206, 2.805),
    "mcc": (9.204, 2.945),
    "sanet": (9.687, 2.535),
}

# The paper's Table 2: its configurations, by the values of TABLE2_AXES in order -> (content, style).
PAPER_TABLE2 = {
    (16, "qv", 6, 3): (9.134, 1.533),
    (32, "qv", 6, 3): (9.113, 1.544),
    (16, "qkv", 6, 3): (9.128, 1.480),
    (16, "qv", 6, 4): (9.192, 1.473),
    (16, "qv", 8, 3): (9.171, 1.559),
    (16, "qv", 4, 3): (9.119, 1.548),
    (16, "qkvd", 6, 3): (9.100, 1.514),
    (64, "qv", 6, 3): (9.183, 1.555),
}

TABLE1_COLUMNS = [
    "model",
    "profile",
    "pairs",
    "paper_content_loss",
    "paper_style_loss",
    "stytr2_content_loss",
    "stytr2_style_loss",
    "ssim_content",
    "gram_distance",
    "latency_ms",
    "peak_memory_mb",
    "paper_reported_content",
    "paper_reported_style",
]


# Table 1's loss columns (lower is better) get the best / within-spread marks; all six get mean ± std.
TABLE1_MARKED = ["paper_content_loss", "paper_style_loss", "stytr2_content_loss", "stytr2_style_loss"]
TABLE1_SPREAD = [*TABLE1_MARKED, "ssim_content", "gram_distance"]


def table1(cfg: Config) -> pd.DataFrame:
    """One row per model, from MLflow alone: the runs of this params.yaml's configuration of each
    model (its seed-group digest) that carry test metrics, as mean, std and n over their seeds
    (the newest run of each seed counts). The pipeline's one run per model is n = 1; `nstlab
    ablate --seeds K` adds seeds. A model with no tracked test run has no row."""
    from nstlab.registry import final_stage
    from nstlab.tracking.queries import search_runs
    from nstlab.training.checkpoint import run_digest

    spread = [column for metric in TABLE1_SPREAD for column in (metric, f"{metric}_std")]
    columns = [
        *TABLE1_COLUMNS[:3],
        *spread,
        *TABLE1_COLUMNS[9:],
        "n",
        "seeds",
        *[f"{metric}_within_spread" for metric in TABLE1_MARKED],
    ]
    runs = search_runs(cfg.mlflow, "attributes.status = 'FINISHED'")
    if runs.empty or not {"tags.config_family", "metrics.test.paper_content_loss"} <= set(runs):
        return pd.DataFrame(columns=columns)
    rows = []
    for method in method_names():
        family = run_digest(cfg, method, final_stage(method), with_seed=False)
        tested = runs[
            (runs["tags.config_family"] == family) & runs["metrics.test.paper_content_loss"].notna()
        ]
        reference = PAPER_TABLE1.get(method, (None, None))
        for _, run in tested.iterrows():
            rows.append(
                {
                    "model": method,
                    "profile": run.get("tags.profile"),
                    "pairs": run.get("metrics.test.pairs"),
                    **{metric: run.get(f"metrics.test.{metric}") for metric in TABLE1_SPREAD},
                    "latency_ms": run.get("metrics.test.latency_ms"),
                    "peak_memory_mb": run.get("metrics.test.peak_memory_mb"),
                    "paper_reported_content": reference[0],
                    "paper_reported_style": reference[1],
                    "_start": run["start_time"],
                    **_seed_columns(run),
                }
            )
    if not rows:
        return pd.DataFrame(columns=columns)
    frame = seed_summary(pd.DataFrame(rows), ["model"], TABLE1_SPREAD, TABLE1_MARKED)
    numbers = ["pairs", "latency_ms", "peak_memory_mb"]
    frame[numbers] = frame[numbers].apply(pd.to_numeric)  # a metric a run did not log: NaN
    rank = {name: index for index, name in enumerate(method_names())}
    frame = frame.sort_values("model", key=lambda column: column.map(rank))
    return frame.reindex(columns=columns).reset_index(drop=True)


TABLE2_KEY = list(TABLE2_AXES.values())
TABLE2_SPREAD = ["content_loss", "style_loss"]


def table2(cfg: Config) -> pd.DataFrame:
    """One row per ViT-LoRA stage-2 configuration found in MLflow: its losses as mean, standard
    deviation and n over the seeds of that configuration (spread.py). The newest finished run of
    each configuration picks its config family (the parent run's digest, so runs of an older
    params.yaml are not mixed in) and the newest run of each of the family's seeds counts; the
    run columns (run_id, ...) are the newest run's."""
    from nstlab.tracking.source import is_server, resolve_tracking_uri
    from nstlab.tracking.view import TABLE2_RUNS, run_page_url
    from nstlab.tracking.queries import search_runs

    runs = search_runs(cfg.mlflow, f"{TABLE2_RUNS} and attributes.status = 'FINISHED'")
    uri = resolve_tracking_uri(cfg.mlflow)
    columns = [
        *TABLE2_KEY,
        "content_loss",
        "content_loss_std",
        "style_loss",
        "style_loss_std",
        "n",
        "seeds",
        "content_loss_within_spread",
        "style_loss_within_spread",
        "loss_source",
        "trainable_parameters",
        "train_seconds",
        "pairs_per_s",
        "run_name",
        "run_id",
        "dvc_experiment",
        *(["mlflow_run_url"] if is_server(uri) else []),
        "paper_reported_content",
        "paper_reported_style",
    ]
    rows = []
    for _, run in runs.iterrows():
        key = tuple(_axis_value(run[f"params.{param}"]) for param in TABLE2_AXES)
        tested = pd.notna(run.get("metrics.test.paper_content_loss"))
        content = run["metrics.test.paper_content_loss"] if tested else run.get("metrics.val.content")
        style = run["metrics.test.paper_style_loss"] if tested else run.get("metrics.val.style")
        reference = PAPER_TABLE2.get(key, (None, None))
        rows.append(
            {
                **dict(zip(TABLE2_KEY, key)),
                "content_loss": content,
                "style_loss": style,
                "loss_source": "test" if tested else "val",
                "trainable_parameters": int(run["params.parameters.trainable"]),
                "train_seconds": run.get("metrics.train_seconds"),
                "pairs_per_s": run.get("metrics.train.pairs_per_s"),
                "run_name": run.get("tags.mlflow.runName"),
                "run_id": run["run_id"],
                "dvc_experiment": run.get("tags.dvc_experiment"),
                "mlflow_run_url": run_page_url(uri, run["experiment_id"], run["run_id"]),
                "paper_reported_content": reference[0],
                "paper_reported_style": reference[1],
                "_start": run["start_time"],
                **_seed_columns(run),
            }
        )
    if not rows:
        return pd.DataFrame(columns=columns)
    return (
        seed_summary(pd.DataFrame(rows), TABLE2_KEY, TABLE2_SPREAD, TABLE2_SPREAD)[columns]
        .sort_values(sorted(TABLE2_KEY, key=lambda column: column != "targets"))  # by LoRA targets first
        .reset_index(drop=True)
    )


def _axis_value(logged: str) -> int | str:
    """One Table 2 axis as MLflow logged it (text) -> as the table shows it: a number, or a list
    of LoRA targets in the paper's short form (qkvd)."""
    value = json.loads(logged.replace("'", '"'))
    return canonical_targets(value) if isinstance(value, list) else int(value)


def _seed_columns(run: pd.Series) -> dict:
    """_family (the configuration across seeds: the parent run's digest; a run from before seeds
    were tracked is its own family) and _seed of one MLflow run row."""
    family, seed = run.get("tags.config_family"), run.get("params.seed")
    return {
        "_family": family if isinstance(family, str) else run["run_id"],
        "_seed": seed if isinstance(seed, str) else None,
    }


def seed_summary(runs: pd.DataFrame, key: list[str], spread: list[str], marked: list[str]) -> pd.DataFrame:
    """Runs (one row each, with _start, _family and _seed) -> one row per `key`: the newest run's
    columns, `spread` as mean/std/n over the newest run of each seed of its family, the seeds
    used, and the within-spread flags of the `marked` columns."""
    from nstlab.report import spread as seed_spread

    runs = runs.reindex(columns=[*runs.columns, *[m for m in spread if m not in runs]])  # old files lack some
    runs[spread] = runs[spread].astype(float)  # None (a metric a run did not log) -> NaN
    runs = runs.sort_values("_start", kind="stable")
    newest = runs.drop_duplicates(key, keep="last").set_index(key)
    runs = runs.merge(newest["_family"].rename("_newest_family"), left_on=key, right_index=True)
    runs = runs[runs["_family"] == runs["_newest_family"]].drop_duplicates([*key, "_seed"], keep="last")
    summary = seed_spread.summarise(runs, key, spread).set_index(key)
    seeds = runs.groupby(key, sort=False)["_seed"].agg(lambda s: ",".join(sorted(str(v) for v in s.dropna())))
    rows = newest.drop(columns=spread).join(summary).assign(seeds=seeds).reset_index()
    return seed_spread.mark(rows, marked)


def adapters_table(cfg: Config) -> pd.DataFrame:
    """`nstlab adapters`: every ViT-LoRA stage-2 run that logged an adapter, newest first, with its
    LoRA config and test losses (NaN until `evaluate` logs them into the run)."""
    from nstlab.tracking.queries import runs_with_artifact

    runs = runs_with_artifact(cfg.mlflow, "tags.model = 'vit_lora' and tags.stage = '2'", "adapter")
    columns = [
        "run_id",
        "run_name",
        "status",
        "r",
        "alpha",
        "target_modules",
        "encoder_layers",
        "decoder_layers",
        "test_content_loss",
        "test_style_loss",
        "adapter",
    ]
    rows = [
        {
            "run_id": run["run_id"],
            "run_name": run.get("tags.mlflow.runName"),
            "status": run["status"],
            "r": int(run["params.lora.r"]),
            "alpha": float(run["params.lora.alpha"]),
            "target_modules": ",".join(json.loads(run["params.lora.target_modules"].replace("'", '"'))),
            "encoder_layers": int(run["params.encoder.layers"]),
            "decoder_layers": int(run["params.decoder.layers"]),
            "test_content_loss": run.get("metrics.test.paper_content_loss"),
            "test_style_loss": run.get("metrics.test.paper_style_loss"),
            "adapter": f"runs:/{run['run_id']}/adapter",
        }
        for _, run in runs.iterrows()
    ]
    return pd.DataFrame(rows, columns=columns)


def gallery_table(reports_dir: Path, pairs: int) -> pd.DataFrame:
    """Per model with outputs, over the first `pairs` test pairs (the gallery's rows), what a viewer
    asks of a stylised image (evaluation.evaluate.gallery_scores): the content kept (mean greyscale
    SSIM), not a flat colour (mean luminance std), moved toward the style (how many outputs have a
    pixel Gram distance to the style at most 0.9 of the content's own)."""
    from nstlab.evaluation.evaluate import gallery_scores_of_outputs

    rows = []
    for model in method_names():
        outputs_dir = reports_dir / "outputs" / model
        if not (outputs_dir / "pairs.json").is_file():
            continue
        scores = gallery_scores_of_outputs(outputs_dir, pairs)
        rows.append(
            {
                "model": model,
                "pairs": len(scores),
                "ssim_content": sum(row["ssim_content"] for row in scores) / len(scores),
                "luminance_std": sum(row["luminance_std"] for row in scores) / len(scores),
                "toward_style": sum(row["style_gram_ratio"] <= GALLERY_TOWARD_STYLE for row in scores),
                "style_gram_ratio": sum(row["style_gram_ratio"] for row in scores) / len(scores),
            }
        )
    columns = ["model", "pairs", "ssim_content", "luminance_std", "toward_style", "style_gram_ratio"]
    return pd.DataFrame(rows, columns=columns)


GALLERY_TOWARD_STYLE = 0.9  # an output's Gram distance to the style at most 0.9 of the content's own


# -- figures ------------------------------------------------------------------------------------


def loss_curves(logs_dir: Path, path: Path) -> Path | None:
    """Train (thin) and validation (markers) total loss per trained model, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs = sorted(p.parent for p in logs_dir.glob("*/train_log.csv"))
    if not logs:
        return None
    columns = 3
    rows = -(-len(logs) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3 * rows), squeeze=False)
    for axis, folder in zip(axes.flat, logs):
        train = pd.read_csv(folder / "train_log.csv")
        axis.plot(train["step"], train["total"], lw=1, label="train total")
        if (folder / "val_log.csv").is_file():
            val = pd.read_csv(folder / "val_log.csv")
            axis.plot(val["step"], val["score"], "o-", ms=3, label="val λc·Lc+λs·Ls")
        axis.set_title(folder.name)
        axis.set_xlabel("step")
        axis.set_yscale("log")
        axis.legend(fontsize=7)
    for axis in list(axes.flat)[len(logs) :]:
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def metric_bars(frame: pd.DataFrame, path: Path, profile: str) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if frame.empty:
        return None
    metrics = ["paper_content_loss", "paper_style_loss", "ssim_content", "latency_ms"]
    figure, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.2))
    for axis, metric in zip(axes, metrics):
        axis.bar(frame["model"], frame[metric], color="tab:blue")
        axis.set_title(metric)
        axis.tick_params(axis="x", rotation=45)
    figure.suptitle(f"Test-pair metrics ({profile} profile)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def pareto_front(costs: list[float], losses: list[float]) -> list[bool]:
    """True for each point that no other point beats: cost and loss both no higher, one lower."""
    points = list(zip(costs, losses))
    return [
        not any(
            other_cost <= cost and other_loss <= loss and (other_cost, other_loss) != (cost, loss)
            for other_cost, other_loss in points
        )
        for cost, loss in points
    ]


def quality_vs_cost(t2: pd.DataFrame, path: Path, profile: str) -> Path | None:
    """Table 2 as a trade-off: content and style loss against trainable parameters (one labelled
    point per configuration, ± one standard deviation over its seeds as error bars, Pareto front
    of the means joined), and training pairs/s when the runs logged it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = t2.dropna(subset=["content_loss", "style_loss"])
    if rows.empty:
        return None
    panels = [("content_loss", "content loss"), ("style_loss", "style loss")]
    if rows["pairs_per_s"].notna().any():
        panels.append(("pairs_per_s", "training pairs/s (higher is faster)"))
    labels = [
        f"r{r} {t} e{e}d{d}"
        for r, t, e, d in zip(rows["r"], rows["targets"], rows["encoder_layers"], rows["decoder_layers"])
    ]
    params_m = rows["trainable_parameters"] / 1e6
    figure, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False)
    for axis, (column, title) in zip(axes[0], panels):
        values = rows[column]
        axis.scatter(params_m, values, color="tab:blue", zorder=2)
        spread = rows.get(f"{column}_std")
        if spread is not None and spread.notna().any():  # n = 1 rows get no bar
            axis.errorbar(
                params_m,
                values,
                yerr=spread.fillna(0),
                fmt="none",
                ecolor="tab:blue",
                capsize=3,
                zorder=1,
                label="± 1 std over seeds",
            )
        for x, y, label in zip(params_m, values, labels):
            axis.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if column != "pairs_per_s":  # speed is context; the front is over quality and size
            front = pareto_front(list(params_m), list(values))
            best = sorted((x, y) for x, y, keep in zip(params_m, values, front) if keep)
            axis.plot(*zip(*best), "o--", color="tab:red", mfc="none", ms=11, label="Pareto front")
            axis.legend(fontsize=7)
        axis.set_title(title)
        axis.set_xlabel("trainable parameters (M)")
    figure.suptitle(
        f"ViT-LoRA ablation: quality vs cost ({profile} profile; lower loss, fewer parameters is better)"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def image_grid(
    frame: pd.DataFrame, reports_dir: Path, pairs_dir: Path, rows_wanted: int, path: Path
) -> Path | None:
    """Rows = test pairs; columns = content, style, each evaluated model's output."""
    from PIL import Image

    from nstlab.evaluation.grids import save_grid

    models = [m for m in frame["model"] if (reports_dir / "outputs" / m / "pairs.json").is_file()]
    if not models:
        return None
    pairs = json.loads((reports_dir / "outputs" / models[0] / "pairs.json").read_text())[:rows_wanted]
    rows = []
    for pair in pairs:
        row = [Image.open(pair["content"]).convert("RGB"), Image.open(pair["style"]).convert("RGB")]
        for model in models:
            output = reports_dir / "outputs" / model / f"{pair['pair']:04d}.png"
            row.append(
                Image.open(output).convert("RGB") if output.is_file() else Image.new("RGB", (8, 8), "white")
            )
        rows.append(row)
    return save_grid(rows, path, header=["content", "style", *models])


# -- HTML ---------------------------------------------------------------------------------------


def write_html(
    cfg: Config,
    reports_dir: Path,
    t1: pd.DataFrame,
    t2: pd.DataFrame,
    figures: list[Path],
    gatys_html: str = "",
    table2_figure: Path | None = None,
) -> Path:
    from nstlab.report.spread import SPREAD_NOTE

    images = "\n".join(figure_html(p, reports_dir) for p in figures)
    trade_off = figure_html(table2_figure, reports_dir) if table2_figure else ""
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>nstlab report ({cfg.profile} profile)</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 1400px; }}
.note {{ background: #fff3cd; border: 1px solid #e0c36a; padding: .6em 1em; }}
table.table {{ border-collapse: collapse; font-size: 13px; margin: 1em 0; }}
table.table td, table.table th {{ border: 1px solid #ccc; padding: 3px 7px; text-align: right; }}
figure {{ margin: 1em 0; }} img {{ max-width: 100%; border: 1px solid #ddd; }}
</style></head><body>
<h1>nstlab: neural style transfer study</h1>
<p class="note" id="profile-note">{html.escape(profile_note(cfg.profile))}</p>
<h2>Table 1: models on the held-out test pairs (from MLflow)</h2>
<p>Loss columns computed by nstlab; <code>paper_reported_*</code> are the paper's published numbers, for reference only.</p>
<div id="table1">{html_table(t1)}</div>
<h2>Table 2: ViT-LoRA ablation (from MLflow)</h2>
<div id="table2">{html_table(t2)}</div>
<p>{html.escape(SPREAD_NOTE)}</p>
{trade_off}
{gatys_html}
<h2>Figures and gallery</h2>
{images}
</body></html>
"""
    path = reports_dir / "index.html"
    path.write_text(page)
    return path


def build_report(
    cfg: Config, reports_dir: Path = Path("reports"), pairs_dir: Path = Path("data/pairs")
) -> dict:
    """Write tables, figures and index.html; returns the paths written."""
    figures_dir = reports_dir / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    from nstlab.report.spread import display

    t1 = table1(cfg)
    t2 = table2(cfg)
    shown1, shown2 = display(t1, TABLE1_SPREAD, TABLE1_MARKED), display(t2, TABLE2_SPREAD, TABLE2_SPREAD)
    write_table(
        t1,
        reports_dir / "table1",
        "Table 1: style transfer models on the test pairs (source: MLflow, every seed of this configuration)",
        cfg.profile,
        shown1,
    )
    write_table(
        t2,
        reports_dir / "table2",
        "Table 2: ViT-LoRA ablation (LoRA rank, targets, layers; source: MLflow, every experiment and seed)",
        cfg.profile,
        shown2,
    )
    figures = [
        image_grid(t1, reports_dir, pairs_dir, cfg.eval.gallery_pairs, figures_dir / "gallery_grid.png"),
        loss_curves(reports_dir / "train", figures_dir / "loss_curves.png"),
        metric_bars(t1, figures_dir / "metrics.png", cfg.profile),
    ]
    figures = [path for path in figures if path is not None]
    gallery = gallery_table(reports_dir, cfg.eval.gallery_pairs)
    write_table(
        gallery,
        reports_dir / "gallery",
        "Does the gallery show learning? (source: reports/outputs, the gallery pairs)",
        cfg.profile,
    )
    trade_off = quality_vs_cost(t2, figures_dir / "quality_vs_cost.png", cfg.profile)
    gatys_html, gatys_figures = gatys_section(cfg, reports_dir)
    page = write_html(cfg, reports_dir, shown1, shown2, figures, gatys_html, trade_off)
    figures += gatys_figures + ([trade_off] if trade_off else [])
    return {"table1": len(t1), "table2": len(t2), "figures": [str(p) for p in figures], "html": str(page)}
