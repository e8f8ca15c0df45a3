"""MLflow tracking, the write side: one Tracker per run. With nstlab.tracking.queries (the read
side) the only modules that import mlflow, and only when they are used.

The tracking URI is a local sqlite file or a shared `mlflow server` (http(s)://).
Tracking never kills training: when the backend fails (server gone, database locked past its
retries) we warn once, buffer the calls under mlruns-buffer/ and replay them when it is back,
or with `nstlab sync`; without mlflow installed (the GPU machine) a run is not tracked.
The trainer also writes every metric to CSV files, so nothing is lost either way.
"""

import json
import os
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nstlab.config import MlflowConfig
from nstlab.tracking import buffer
from nstlab.tracking.buffer import describe, refused
from nstlab.tracking.groups import now_ms, summarise_group
from nstlab.tracking.source import git_commit, repo_path, resolve_tracking_uri, source_tags
from nstlab.tracking.view import run_page_url


class Tracker:
    """One MLflow run. Use as a context manager: an exception inside marks the run FAILED.

    Tracking never kills training. When MLflow fails (server gone, network down, sqlite locked
    past its retries) we warn once and keep every later call in a Buffer under mlruns-buffer/;
    the backend is tried again at most every RETRY_SECONDS and, once it answers, the buffer is
    replayed in order (the metric history has no gap) and calls go straight through again. If
    the backend is down at the start the run has no id yet (run_id None, as in metrics.json): a
    replay creates it later with its name, tags and start time. A buffer left when the run ends
    waits for `nstlab sync`.
    """

    def __init__(
        self,
        cfg: MlflowConfig,
        run_name: str,
        tags: Mapping[str, str],
        enabled: bool = True,
        group: Mapping[str, Any] | None = None,
        run_id: str | None = None,
    ):
        """`group`: seed_group(), to nest this run under its configuration's parent; `run_id`: add
        to that existing run (entering does not start a run, leaving does not end it)."""
        self.cfg, self.run_name, self.tags = cfg, run_name, dict(tags)
        self.group = group  # seed_group(): nest this run under its configuration's parent
        self.enabled = enabled
        self.run_id: str | None = run_id
        self._existing_run = run_id is not None
        self.experiment_id: str | None = None
        self.tracking_uri = resolve_tracking_uri(cfg)
        self._client = None
        self._start_time_ms = now_ms()
        self._buffer: buffer.Buffer | None = None
        self._retry_at = 0.0  # time.monotonic() of the next attempt while buffering

    @property
    def run_url(self) -> str | None:
        """The run's page on a tracking server; None for a local store or a run without an id."""
        return run_page_url(self.tracking_uri, self.experiment_id, self.run_id)

    def __enter__(self) -> "Tracker":
        if not self.enabled:
            return self
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            warnings.warn(
                "mlflow is not installed: this run is not tracked (metrics stay in CSV files)", stacklevel=2
            )
            self.enabled = False
            return self
        self._client = MlflowClient(self.tracking_uri)
        if self._existing_run:
            return self
        self.tags = {
            "git_commit": git_commit(),
            "dvc_experiment": os.environ.get("DVC_EXP_NAME", ""),
            "dvc_baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV", ""),
            "tracking_uri": self.tracking_uri,
            "mlflow.runName": self.run_name,
            **source_tags(),
            **({"seed": self.group["seed"], "config_family": self.group["digest"]} if self.group else {}),
            **self.tags,
        }
        try:
            run = buffer.with_retries(buffer.create_run, self._client, self._header())
        except Exception as error:  # tracking must not stop training
            self._go_offline("start", error)
            return self
        self.run_id, self.experiment_id = run.info.run_id, run.info.experiment_id
        return self

    def __exit__(self, kind, error, trace) -> None:
        if (self.run_id or self._buffer) and not self._existing_run:
            status = "FINISHED" if kind is None else ("KILLED" if kind is KeyboardInterrupt else "FAILED")
            self._retry_at = 0.0  # one last try before leaving a buffer behind
            self._send({"op": "end", "status": status, "end_time": now_ms()})
        self._summarise_group()
        self._leave_buffer()

    def _summarise_group(self) -> None:
        """Refresh the aggregate on this run's seed-group parent, now that its numbers are in."""
        if not self.enabled or self._buffer is not None or self.run_id is None:
            return
        try:
            run = buffer.with_retries(self._client.get_run, self.run_id)
            parent_id = run.data.tags.get("mlflow.parentRunId")
            if parent_id:
                buffer.with_retries(summarise_group, self._client, parent_id)
        except Exception as error:  # tracking must not stop training
            warnings.warn(
                f"MLflow: the seed group's aggregate was not updated ({describe(error)})", stacklevel=3
            )

    def _header(self) -> dict:
        return {
            "tracking_uri": self.tracking_uri,
            "run_id": self.run_id,
            "experiment_id": self.experiment_id,
            "experiment": self.cfg.experiment,
            "run_name": self.run_name,
            "tags": self.tags,
            "start_time": self._start_time_ms,
            "group": self.group,
        }

    def _send(self, record: Mapping[str, Any]) -> None:
        """Deliver one call, or buffer it while the backend is down."""
        if not self.enabled or (self.run_id is None and self._buffer is None):
            return
        if self._buffer and time.monotonic() >= self._retry_at:
            self._flush()
        if self._buffer is None:
            try:
                buffer.with_retries(buffer.deliver, self._client, self.run_id, record)
                return
            except Exception as error:  # tracking must not stop training
                if refused(error):
                    warnings.warn(f"MLflow refused {record['op']} ({describe(error)}); skipped", stacklevel=3)
                    return
                self._go_offline(record["op"], error)
        if self._buffer:
            self._buffer.append(record)

    def _go_offline(self, action: str, error: Exception) -> None:
        try:
            self._buffer = buffer.Buffer.create(self._header())
        except OSError as buffer_error:
            warnings.warn(
                f"MLflow {action} failed ({describe(error)}) and no buffer could be written "
                f"({buffer_error}); metrics stay in the run folder's CSV files only",
                stacklevel=4,
            )
            self.enabled = False
            return
        self._retry_at = time.monotonic() + buffer.RETRY_SECONDS
        warnings.warn(
            f"MLflow {action} failed ({describe(error)}); training goes on, MLflow calls wait in "
            f"{self._buffer.path} and are retried every {buffer.RETRY_SECONDS:g} s",
            stacklevel=4,
        )

    def _flush(self) -> None:
        """Replay the buffer if the backend answers again; otherwise wait another RETRY_SECONDS."""
        try:
            header = buffer.with_retries(self._buffer.replay, self._client, http_retries=0)
        except Exception:  # still down: that one failed call is the whole cost
            self._retry_at = time.monotonic() + buffer.RETRY_SECONDS
            return
        self.run_id, self.experiment_id = header["run_id"], header["experiment_id"]
        self._buffer = None

    def _leave_buffer(self) -> None:
        if self._buffer:
            print(
                f"MLflow at {self.tracking_uri} is still unreachable: this run's calls wait in {self._buffer.path}; "
                "run `nstlab sync` when it is back",
                file=sys.stderr,
            )
            self._buffer.close()
            self._buffer = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._send({"op": "params", "params": {key: str(value)[:6000] for key, value in params.items()}})

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        now = now_ms()
        self._send(
            {"op": "metrics", "metrics": [[key, float(value), now, step] for key, value in metrics.items()]}
        )

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self._send({"op": "artifact", "path": str(Path(path).resolve()), "folder": folder})

    def log_datasets(self, tables) -> None:
        """The data version as dataset inputs: each `nstlab.data.version.PairsTable` with the DVC hash
        of its folder as digest and its DVC path (and git commit) as source, in its context."""
        commit = git_commit()
        datasets = [
            {
                "name": table.name,
                "digest": table.digest,
                "source_type": "dvc",
                "source": json.dumps(
                    {"path": repo_path(table.path), "dvc_out": repo_path(table.dvc_out), "rev": commit}
                ),
                "profile": json.dumps({"num_rows": table.rows}),
                "context": table.context,
            }
            for table in tables
        ]
        self._send({"op": "inputs", "datasets": datasets})

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._send({"op": "tags", "tags": {key: str(value) for key, value in tags.items()}})
