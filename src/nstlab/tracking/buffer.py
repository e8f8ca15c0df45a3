"""Tracking that never stops training: MLflow calls with short retries, and, while the backend is
down, an append-only buffer under mlruns-buffer/ that is replayed when it is back (`nstlab sync`)."""

import contextlib
import json
import os
import time
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nstlab.tracking.groups import find_or_create_parent, summarise_group
from nstlab.tracking.source import repo_root
from nstlab.tracking.view import EXPERIMENT_KIND_TAG, experiment_tags


RETRY_SECONDS = 30.0  # while the backend is down, try it again at most this often
BUFFER_FOLDER = "mlruns-buffer"  # under the repository root, where `nstlab sync` finds every buffer
# Codes of a call that the backend refused (a changed param, a deleted run): retrying cannot help.
REJECTED = {
    "INVALID_PARAMETER_VALUE",
    "RESOURCE_DOES_NOT_EXIST",
    "RESOURCE_ALREADY_EXISTS",
    "BAD_REQUEST",
    "INVALID_STATE",
}


@contextlib.contextmanager
def fail_fast(http_retries: int):
    """MLflow's HTTP defaults (7 retries, backoff factor 2, 120 s timeout) stall training for
    minutes when the server is gone; our calls use short ones unless the user set their own."""
    wanted = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(http_retries),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    }
    added = [name for name in wanted if name not in os.environ]
    os.environ.update({name: wanted[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def with_retries(function, *args, http_retries: int = 1):
    """Call into mlflow; a locked sqlite store (two DVC experiments at once) is retried briefly."""
    for attempt in range(5):
        try:
            with fail_fast(http_retries):
                return function(*args)
        except Exception as error:  # mlflow raises many types
            if "locked" not in str(error) or attempt == 4:
                raise
            time.sleep(0.2 * 2**attempt)


def refused(error: Exception) -> bool:
    """True when the backend answered and refused the call, as opposed to not answering."""
    return getattr(error, "error_code", None) in REJECTED


def describe(error: Exception) -> str:
    return f"{error.__class__.__name__}: {str(error)[:200]}"


def create_run(client, header: Mapping[str, Any]):
    """A run in the header's experiment (created if missing), nested under its configuration's
    parent when the header names a seed group. Artefacts go to mlartifacts/ for a local sqlite
    store, and through the server (its --artifacts-destination) for an http(s) one."""
    experiment = client.get_experiment_by_name(header["experiment"])
    tags = experiment_tags()
    if experiment is None:
        local = header["tracking_uri"].startswith("sqlite")
        artifacts = (repo_root() / "mlartifacts").as_uri() if local else None
        experiment_id = client.create_experiment(header["experiment"], artifact_location=artifacts, tags=tags)
    else:
        experiment_id = experiment.experiment_id
        for key, value in tags.items():  # an experiment made before these tags; a kind set by hand stays
            if key not in experiment.tags or (key != EXPERIMENT_KIND_TAG and experiment.tags[key] != value):
                client.set_experiment_tag(experiment_id, key, value)
    run_tags = dict(header["tags"])
    if header.get("group"):  # a buffer replayed by `nstlab sync` nests its run the same way
        run_tags["mlflow.parentRunId"] = find_or_create_parent(
            client, experiment_id, header["group"], header["start_time"]
        )
    return client.create_run(
        experiment_id, start_time=header["start_time"], tags=run_tags, run_name=header["run_name"]
    )


def deliver(client, run_id: str, record: Mapping[str, Any]) -> None:
    """Send one call, as Tracker records it (op: params, metrics, tags, artifact or end), to a run."""
    from mlflow.entities import Metric, Param, RunTag

    kind = record["op"]
    if kind == "params":
        items = [Param(key, value) for key, value in record["params"].items()]
        for start in range(0, len(items), 100):  # MLflow's batch limit
            client.log_batch(run_id, params=items[start : start + 100])
    elif (
        kind == "metrics"
    ):  # [key, value, timestamp_ms, step]: the original time, so a replay leaves no trace
        client.log_batch(run_id, metrics=[Metric(*item) for item in record["metrics"]])
    elif kind == "tags":
        client.log_batch(run_id, tags=[RunTag(key, value) for key, value in record["tags"].items()])
    elif kind == "artifact":
        path = Path(record["path"])
        if path.exists():
            log = client.log_artifacts if path.is_dir() else client.log_artifact
            log(run_id, str(path), record["folder"])
        else:
            warnings.warn(f"MLflow artefact {path} is gone; run {run_id} goes without it", stacklevel=2)
    elif kind == "inputs":  # dataset inputs: [{name, digest, source_type, source, profile, context}]
        client.log_inputs(run_id, datasets=[_dataset_input(item) for item in record["datasets"]])
    elif kind == "end":
        client.set_terminated(run_id, record["status"], record["end_time"])


def _dataset_input(item: Mapping[str, Any]):
    """A buffered dataset record -> MLflow's DatasetInput, its context as the mlflow.data.context tag."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    dataset = Dataset(
        name=item["name"],
        digest=item["digest"],
        source_type=item["source_type"],
        source=item["source"],
        profile=item.get("profile"),
    )
    return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", item["context"])])


def buffer_dir() -> Path:
    return repo_root() / BUFFER_FOLDER


class Buffer:
    """The MLflow calls of one run that could not be delivered: an append-only JSON-lines file.

    Line 1 is a header (tracking URI, run id, or None when even the run could not be created;
    experiment, name, tags, start time), then one call a line in the order they were made. A
    replay appends `delivered` lines as it goes, so one that stops half-way resumes without
    sending a call twice. The file is locked while open: `nstlab sync` skips the buffer of a
    training that is still running.
    """

    def __init__(self, path: Path):
        import fcntl

        self.path = path
        self._handle = open(path, "a", encoding="utf-8")
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._handle.close()
            raise

    @classmethod
    def create(cls, header: Mapping[str, Any]) -> "Buffer":
        folder = buffer_dir()
        folder.mkdir(parents=True, exist_ok=True)
        # A timestamp first, so sorted names replay two buffers of one run in order.
        name = f"{time.strftime('%Y%m%d-%H%M%S')}-{header['run_id'] or 'new'}-{uuid.uuid4().hex[:6]}.jsonl"
        buffer = cls(folder / name)
        buffer.append({"op": "run", **header})
        return buffer

    def append(self, record: Mapping[str, Any]) -> None:
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()

    def read(self) -> tuple[dict | None, list[dict], int]:
        """(header with the run id known so far, the calls, how many were delivered)."""
        header, records, delivered = None, [], 0
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a crash
                continue
            if record["op"] == "run":
                header = record
            elif record["op"] == "delivered":
                delivered = record["count"]
                header.update(run_id=record["run_id"], experiment_id=record["experiment_id"])
            else:
                records.append(record)
        return header, records, delivered

    def replay(self, client=None) -> dict | None:
        """Deliver the calls not yet delivered, in order, creating the run first if it has no id;
        then delete the file. Returns the header (None for an empty file); raises if the backend
        fails, with the progress so far kept."""
        header, records, delivered = self.read()
        if header is not None:
            if client is None:
                from mlflow.tracking import MlflowClient

                client = MlflowClient(header["tracking_uri"])
            if header["run_id"] is None:
                run = create_run(client, header)
                header.update(run_id=run.info.run_id, experiment_id=run.info.experiment_id)
                self._mark(header, 0)
            for index in range(delivered, len(records)):
                try:
                    deliver(client, header["run_id"], records[index])
                except Exception as error:
                    if not refused(error):
                        raise
                    warnings.warn(
                        f"MLflow refused a buffered {records[index]['op']} call ({describe(error)}); dropped",
                        stacklevel=2,
                    )
                self._mark(header, index + 1)
        self.path.unlink()  # before unlocking, so a concurrent sync never sees a delivered buffer
        self.close()
        return header

    def _mark(self, header: Mapping[str, Any], count: int) -> None:
        self.append(
            {
                "op": "delivered",
                "count": count,
                "run_id": header["run_id"],
                "experiment_id": header["experiment_id"],
            }
        )

    def close(self) -> None:
        self._handle.close()


def sync_buffers() -> tuple[list[str], int]:
    """Replay every buffer under mlruns-buffer/, oldest first, to the tracking URI it was written
    for (where its run lives); a delivered buffer is deleted. Returns a line per buffer and how
    many are left."""
    lines, left = [], 0
    for path in sorted(buffer_dir().glob("*.jsonl")):
        try:
            buffer = Buffer(path)
        except OSError:
            lines.append(f"{path.name}: in use by a running training; skipped")
            left += 1
            continue
        try:
            header = with_retries(buffer.replay)
        except Exception as error:  # the backend is still down: keep the buffer for the next sync
            buffer.close()
            lines.append(f"{path.name}: kept ({describe(error)})")
            left += 1
            continue
        if header is not None:
            lines.append(f"{path.name}: delivered to run {header['run_id']} at {header['tracking_uri']}")
            if header.get("group"):
                _summarise_parent_of(header)
    return lines, left


def _summarise_parent_of(header: Mapping[str, Any]) -> None:
    """A replayed run's seed-group parent gets its aggregate, as it would have online."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(header["tracking_uri"])
    parent_id = client.get_run(header["run_id"]).data.tags.get("mlflow.parentRunId")
    if parent_id:
        with_retries(summarise_group, client, parent_id)
