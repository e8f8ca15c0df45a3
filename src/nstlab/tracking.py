"""MLflow tracking: the only module that imports mlflow, and only when a run starts.

Tracking never kills training: every call is guarded; on the first failure (server gone,
database locked past its retries, mlflow not installed as on the GPU machine) we warn once
and go on. Metrics are always also written locally by the trainer (CSV), so nothing is lost.
"""

import os
import subprocess
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nstlab.config import MlflowConfig


def repo_root() -> Path:
    """The original repository, also inside a queued DVC experiment's temp copy (DVC_ROOT)."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"])
    here = Path.cwd()
    for folder in (here, *here.parents):
        if (folder / ".dvc").is_dir() or (folder / "params.yaml").is_file():
            return folder
    return here


def resolve_tracking_uri(cfg: MlflowConfig) -> str:
    """MLFLOW_TRACKING_URI wins; a relative sqlite path resolves against the repository root."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        uri = prefix + str(repo_root() / uri[len(prefix):])
    return uri


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=repo_root(),
                              timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Tracker:
    """One MLflow run. Use as a context manager: an exception inside marks the run FAILED."""

    def __init__(self, cfg: MlflowConfig, run_name: str, tags: Mapping[str, str], enabled: bool = True):
        self.cfg, self.run_name, self.tags = cfg, run_name, dict(tags)
        self.enabled = enabled
        self.run_id: str | None = None
        self.tracking_uri = resolve_tracking_uri(cfg)
        self._client = None

    def _guard(self, action: str, function, *args, **kwargs):
        """Call into mlflow; retry briefly on a locked sqlite store; on failure warn once, go on."""
        if not self.enabled:
            return None
        for attempt in range(5):
            try:
                return function(*args, **kwargs)
            except Exception as error:  # mlflow raises many types; tracking must not stop training
                if "locked" in str(error) and attempt < 4:
                    time.sleep(0.2 * 2**attempt)
                    continue
                warnings.warn(f"MLflow {action} failed ({error.__class__.__name__}: {str(error)[:200]}); "
                              "training goes on, metrics stay in the run folder's CSV files", stacklevel=3)
                self.enabled = False
                return None

    def __enter__(self) -> "Tracker":
        if not self.enabled:
            return self
        try:
            import mlflow
            from mlflow.tracking import MlflowClient
        except ImportError:
            warnings.warn("mlflow is not installed: this run is not tracked (metrics stay in CSV files)", stacklevel=2)
            self.enabled = False
            return self
        self._client = MlflowClient(self.tracking_uri)
        self._mlflow = mlflow
        run = self._guard("start", self._start_run)
        self.run_id = run.info.run_id if run else None
        return self

    def _start_run(self):
        client = self._client
        experiment = client.get_experiment_by_name(self.cfg.experiment)
        if experiment is None:
            artifacts = (repo_root() / "mlartifacts").as_uri() if self.tracking_uri.startswith("sqlite") else None
            experiment_id = client.create_experiment(self.cfg.experiment, artifact_location=artifacts)
        else:
            experiment_id = experiment.experiment_id
        tags = {
            "git_commit": git_commit(),
            "dvc_experiment": os.environ.get("DVC_EXP_NAME", ""),
            "dvc_baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV", ""),
            "tracking_uri": self.tracking_uri,
            "mlflow.runName": self.run_name,
            **self.tags,
        }
        return client.create_run(experiment_id, run_name=self.run_name, tags=tags)

    def __exit__(self, kind, error, trace) -> None:
        if self.run_id:
            status = "FINISHED" if kind is None else ("KILLED" if kind is KeyboardInterrupt else "FAILED")
            self._guard("end", self._client.set_terminated, self.run_id, status)

    def log_params(self, params: Mapping[str, Any]) -> None:
        if self.run_id:
            from mlflow.entities import Param

            items = [Param(key, str(value)[:6000]) for key, value in params.items()]
            for start in range(0, len(items), 100):  # MLflow's batch limit
                self._guard("log_params", self._client.log_batch, self.run_id, params=items[start:start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if self.run_id:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            items = [Metric(key, float(value), now, step) for key, value in metrics.items()]
            self._guard("log_metrics", self._client.log_batch, self.run_id, metrics=items)

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        if self.run_id:
            log = self._client.log_artifacts if Path(path).is_dir() else self._client.log_artifact
            self._guard("log_artifact", log, self.run_id, str(path), folder)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if self.run_id:
            for key, value in tags.items():
                self._guard("set_tag", self._client.set_tag, self.run_id, key, str(value))


def search_runs(cfg: MlflowConfig, filter_string: str = "") -> "Any":
    """All runs of the experiment as a pandas DataFrame (empty when there is none)."""
    import mlflow
    import pandas as pd

    mlflow.set_tracking_uri(resolve_tracking_uri(cfg))
    experiment = mlflow.get_experiment_by_name(cfg.experiment)
    if experiment is None:
        return pd.DataFrame()
    return mlflow.search_runs([experiment.experiment_id], filter_string=filter_string)


def log_to_run(cfg: MlflowConfig, run_id: str, metrics: Mapping[str, float]) -> None:
    """Add metrics (e.g. test losses from the evaluate stage) to a finished training run."""
    tracker = Tracker(cfg, run_name="", tags={})
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        return
    tracker._client = MlflowClient(tracker.tracking_uri)
    tracker.run_id = run_id
    tracker.log_metrics(metrics, step=0)


def metric_history(cfg: MlflowConfig, run_id: str, keys: list[str]) -> "Any":
    """Per-step metrics of one run as a DataFrame, a column per key, indexed by step."""
    import pandas as pd
    from mlflow.tracking import MlflowClient

    client = MlflowClient(resolve_tracking_uri(cfg))
    series = {key: pd.Series({m.step: m.value for m in client.get_metric_history(run_id, key)}, dtype=float)
              for key in keys}
    return pd.DataFrame(series).dropna().sort_index()
