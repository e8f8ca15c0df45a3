"""The read side of MLflow: runs, metric histories and artefacts, for the report, `ablate`,
evaluation and the adapter library. Writing goes through nstlab.tracking.run's Tracker."""

import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nstlab.config import MlflowConfig
from nstlab.tracking.run import Tracker
from nstlab.tracking.source import resolve_tracking_uri


def search_runs(cfg: MlflowConfig, filter_string: str = "") -> "Any":
    """All runs of the experiment, newest first, as a pandas DataFrame with mlflow.search_runs'
    columns (run_id, status, params.*, metrics.*, tags.*, ...); empty when there is none.

    Built from an MlflowClient of this store: mlflow.search_runs reads the process-global
    tracking URI, and setting that also exports MLFLOW_TRACKING_URI to the whole process, which
    would then override params.yaml for every later run.
    """
    import pandas as pd
    from mlflow.tracking import MlflowClient

    client = MlflowClient(resolve_tracking_uri(cfg))
    experiment = client.get_experiment_by_name(cfg.experiment)
    rows, token = [], None
    while experiment is not None:
        page = client.search_runs(
            [experiment.experiment_id], filter_string, max_results=1000, page_token=token
        )
        rows += [_run_row(run) for run in page]
        token = page.token
        if not token:
            break
    return pd.DataFrame(rows, columns=None if rows else list(_RUN_COLUMNS))


_RUN_COLUMNS = ("run_id", "experiment_id", "status", "artifact_uri", "start_time", "end_time")


def _run_row(run) -> dict:
    import pandas as pd

    info, data = run.info, run.data
    times = {
        name: pd.to_datetime(getattr(info, name), unit="ms", utc=True) if getattr(info, name) else None
        for name in ("start_time", "end_time")
    }
    return {
        "run_id": info.run_id,
        "experiment_id": info.experiment_id,
        "status": info.status,
        "artifact_uri": info.artifact_uri,
        **times,
        **{f"metrics.{key}": value for key, value in data.metrics.items()},
        **{f"params.{key}": value for key, value in data.params.items()},
        **{f"tags.{key}": value for key, value in data.tags.items()},
    }


def log_to_run(cfg: MlflowConfig, run_id: str, metrics: Mapping[str, float], tables=()) -> None:
    """Add metrics (e.g. test losses from the evaluate stage) and dataset inputs (the test pairs,
    see Tracker.log_datasets) to a finished training run."""
    if importlib.util.find_spec("mlflow") is None:  # not tracked where mlflow is not installed
        return
    with Tracker(cfg, run_name="", tags={}, run_id=run_id) as tracker:
        tracker.log_metrics(metrics, step=0)
        if tables:
            tracker.log_datasets(tables)


def metric_history(cfg: MlflowConfig, run_id: str, keys: list[str]) -> "Any":
    """Per-step metrics of one run as a DataFrame, a column per key, indexed by step."""
    import pandas as pd
    from mlflow.tracking import MlflowClient

    client = MlflowClient(resolve_tracking_uri(cfg))
    series = {
        key: pd.Series({m.step: m.value for m in client.get_metric_history(run_id, key)}, dtype=float)
        for key in keys
    }
    return pd.DataFrame(series).dropna().sort_index()


def download_artifact(cfg: MlflowConfig, run_id: str, artifact_path: str, destination: Path) -> Path:
    """Copy one run's artefact (file or folder) under `destination`; an unknown run or path is
    a one-line NstlabError naming both."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from nstlab.errors import NstlabError

    uri = resolve_tracking_uri(cfg)
    os.environ.setdefault(
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"
    )  # adapters are small; keep stderr to errors
    try:
        return Path(MlflowClient(uri).download_artifacts(run_id, artifact_path, str(destination)))
    except (MlflowException, OSError) as error:
        reason = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
        raise NstlabError(
            f"MLflow run {run_id!r}, artefact {artifact_path!r}: not found in {uri} ({reason})"
        ) from None


def runs_with_artifact(cfg: MlflowConfig, filter_string: str, artifact_path: str) -> "Any":
    """search_runs(), keeping only the runs that logged a top-level artefact `artifact_path`."""
    from mlflow.tracking import MlflowClient

    runs = search_runs(cfg, filter_string)
    if runs.empty:
        return runs
    client = MlflowClient(resolve_tracking_uri(cfg))
    logged = [
        any(item.path == artifact_path for item in client.list_artifacts(run_id)) for run_id in runs["run_id"]
    ]
    return runs[logged].reset_index(drop=True)
