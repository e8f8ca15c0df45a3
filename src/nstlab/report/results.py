"""Table 1 (every model on the test pairs), Table 2 (the ViT-LoRA ablation) and the gallery check as
DataFrames, each from its one source: MLflow for the tables (they span seeds and experiments), the
evaluation outputs for the gallery check. Quality columns are mean ± std and n over seeds."""

import json
from pathlib import Path

import pandas as pd

from nstlab.config import Config, canonical_targets
from nstlab.registry import TABLE2_AXES, get_method, method_names
from nstlab.report.paper import PAPER_TABLE1, PAPER_TABLE2


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
    deviation and n over the seeds of that configuration (spread.py). Only runs that differ from
    this params.yaml in Table 2's axes and the seed alone count, so the rows compare the axes and
    nothing else (an older params.yaml's runs, or another profile's, are left out). The newest
    finished run of each configuration picks its config family (the parent run's digest) and the
    newest run of each of the family's seeds counts; the run columns (run_id, ...) are the newest
    run's."""
    from nstlab.config import run_params
    from nstlab.tracking.source import is_server, resolve_tracking_uri
    from nstlab.tracking.view import TABLE2_METHOD, TABLE2_RUNS, run_page_url
    from nstlab.tracking.queries import search_runs

    runs = search_runs(cfg.mlflow, f"{TABLE2_RUNS} and attributes.status = 'FINISHED'")
    base = {
        f"params.{key}": str(value)[:6000]  # as the Tracker logs a param
        for key, value in run_params(cfg, TABLE2_METHOD, get_method(TABLE2_METHOD).stages[-1]).items()
        if key not in TABLE2_AXES and key != "seed"
    }
    if not runs.empty:
        logged = runs.reindex(columns=list(base)).astype("string")
        runs = runs[logged.eq(pd.Series(base)).all(axis=1)]
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


GALLERY_TOWARD_STYLE = 0.9  # an output's Gram distance to the style at most 0.9 of the content's own


def gallery_table(reports_dir: Path, pairs: int) -> pd.DataFrame:
    """Per model with outputs, over the first `pairs` test pairs (the gallery's rows), what a viewer
    asks of a stylised image (evaluation.evaluate.gallery_scores): the content kept (mean greyscale
    SSIM), not a flat colour (mean luminance std), moved toward the style (how many outputs have a
    pixel Gram distance to the style at most 0.9 of the content's own)."""
    from nstlab.evaluation.gallery import gallery_scores_of_outputs

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
