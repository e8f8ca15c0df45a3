"""MLflow tracking, the write side: one Tracker per run. With nstlab.tracking_queries (the read
side) the only modules that import mlflow, and only when they are used.

The tracking URI is a local sqlite file or a shared `mlflow server` (http(s)://).
Tracking never kills training: when the backend fails (server gone, database locked past its
retries) we warn once, buffer the calls under mlruns-buffer/ and replay them when it is back,
or with `nstlab sync`; without mlflow installed (the GPU machine) a run is not tracked.
The trainer also writes every metric to CSV files, so nothing is lost either way.
"""

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
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


def written_tracking_uri(cfg: MlflowConfig) -> str:
    """The tracking URI as the user wrote it (MLFLOW_TRACKING_URI wins over params): what files
    record, since a resolved sqlite path names one machine's folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking_uri


def resolve_tracking_uri(cfg: MlflowConfig) -> str:
    """MLFLOW_TRACKING_URI wins; a relative sqlite path resolves against the repository root."""
    uri = written_tracking_uri(cfg)
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        uri = prefix + str(repo_root() / uri[len(prefix) :])
    return uri


def is_server(tracking_uri: str) -> bool:
    """A shared `mlflow server` (it has run pages to link), not a local store."""
    return tracking_uri.startswith(("http://", "https://"))


def run_page_url(tracking_uri: str, experiment_id: str | None, run_id: str | None) -> str | None:
    """A run's page in the MLflow UI of a tracking server; None for a local store (no UI to link)."""
    if run_id and experiment_id and is_server(tracking_uri):
        return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return None


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, cwd=repo_root(), timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def git_commit() -> str:
    return _git("rev-parse", "HEAD") or "unknown"


def repo_path(path: Path) -> str:
    """A path as the repository names it: relative to the working copy (a queued DVC experiment's
    temp copy too), else to the repository root, else absolute."""
    path = Path(path).resolve()
    for root in (Path.cwd().resolve(), repo_root().resolve()):
        if path.is_relative_to(root):
            return path.relative_to(root).as_posix()
    return str(path)


def source_tags() -> dict[str, str]:
    """The tags the MLflow UI's Source column and run page read: the entry point (pipeline/train.py
    under DVC, nstlab from a shell), LOCAL, and the git commit, branch and remote when known."""
    import getpass

    entry = Path(sys.argv[0] if sys.argv and sys.argv[0] else "nstlab")
    name = repo_path(entry) if entry.suffix == ".py" else entry.name  # a console script: its name
    tags = {
        "mlflow.source.name": name,
        "mlflow.source.type": "LOCAL",
        "mlflow.source.git.commit": git_commit(),
        "mlflow.source.git.branch": _git("rev-parse", "--abbrev-ref", "HEAD"),
        "mlflow.source.git.repoURL": _git("config", "--get", "remote.origin.url"),
    }
    with contextlib.suppress(OSError, KeyError):
        tags["mlflow.user"] = getpass.getuser()
    return {key: value for key, value in tags.items() if value}


# MLflow 3's experiment kind (the UI's `ExperimentKind` enum): training experiments open on
# their runs table, not on the GenAI overview. MLflow 3.17's UI lets its sidebar switch "GenAI |
# Model training" (browser storage, GenAI at first) decide instead; a URL with
# ?workflowType=machine_learning sets that switch, so the links below carry it.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
MODEL_TRAINING_QUERY = "workflowType=machine_learning"
# A view the UI loads from the experiment's tag mlflow.sharedViewState.<key> when the URL says
# ?viewStateShareKey=<key>: Table 2 (stage-2 ViT-LoRA runs, the params experiments/table2.yaml
# ablates, their test losses). Column keys are the UI's: <params|metrics|attributes>.`name`.
SHARED_VIEW_TAG = "mlflow.sharedViewState."
TABLE2_VIEW_KEY = "table2"
TABLE2_ABLATED = ("lora.r", "lora.target_modules", "encoder.layers", "decoder.layers")
TABLE2_VIEW = {
    "searchFilter": "tags.model = 'vit_lora' and tags.stage = '2'",
    "orderByKey": "metrics.`test.paper_content_loss`",
    "orderByAsc": True,
    "selectedColumns": [
        *(f"params.`{key}`" for key in TABLE2_ABLATED),
        "metrics.`test.paper_content_loss`",
        "metrics.`test.paper_style_loss`",
        "attributes.`Dataset`",
        "attributes.`Source`",
    ],
}


def table2_url(ui_url: str, experiment_id: str) -> str:
    """The MLflow UI page that opens Table 2's comparison (ui_url: where `mlflow ui` serves)."""
    return (
        f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{MODEL_TRAINING_QUERY}"
        f"&viewStateShareKey={TABLE2_VIEW_KEY}"
    )


def experiment_tags() -> dict[str, str]:
    """Tags every nstlab experiment carries: the training kind and the Table 2 view."""
    envelope = {"name": "Table 2", "createdAt": 0, "updatedAt": 0, "state": json.dumps(TABLE2_VIEW)}
    return {EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND, SHARED_VIEW_TAG + TABLE2_VIEW_KEY: json.dumps(envelope)}


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


def _now_ms() -> int:
    return int(time.time() * 1000)


@contextlib.contextmanager
def _fail_fast(http_retries: int):
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


def _with_retries(function, *args, http_retries: int = 1):
    """Call into mlflow; a locked sqlite store (two DVC experiments at once) is retried briefly."""
    for attempt in range(5):
        try:
            with _fail_fast(http_retries):
                return function(*args)
        except Exception as error:  # mlflow raises many types
            if "locked" not in str(error) or attempt == 4:
                raise
            time.sleep(0.2 * 2**attempt)


def _rejected(error: Exception) -> bool:
    """True when the backend answered and refused the call, as opposed to not answering."""
    return getattr(error, "error_code", None) in REJECTED


def _describe(error: Exception) -> str:
    return f"{error.__class__.__name__}: {str(error)[:200]}"


def _create_run(client, header: Mapping[str, Any]):
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
        run_tags["mlflow.parentRunId"] = find_or_create_parent(client, experiment_id, header["group"])
    return client.create_run(
        experiment_id, start_time=header["start_time"], tags=run_tags, run_name=header["run_name"]
    )


def seed_group(cfg, method: str, stage: int, run_name: str) -> dict:
    """What names one configuration across training seeds (`cfg` a Config): its digest without the
    seed, the stage, and the parent run's name, tags and params (the config less the seed)."""
    from nstlab.checkpoint import run_digest
    from nstlab.config import run_params

    return {
        "digest": run_digest(cfg, method, stage, with_seed=False),
        "stage": str(stage),
        "run_name": run_name,
        "seed": str(cfg.seed),
        "tags": {"seed_group_model": method, "profile": cfg.profile},
        "params": {
            key: str(value)[:6000] for key, value in run_params(cfg, method, stage).items() if key != "seed"
        },
    }


def find_or_create_parent(client, experiment_id: str, group: Mapping[str, Any]) -> str:
    """The id of the parent run of one configuration (experiment, digest without seed, stage),
    created if missing: the seeds' runs, from any DVC experiment, nest under it. It holds the
    configuration's params and ends FINISHED at once (it only groups). It carries no `model` tag,
    so searches for trained runs never see it. Two processes that create it at once both keep the
    oldest, and the other one is deleted."""
    from mlflow.entities import Param

    query = f"tags.seed_group = '{group['digest']}' and tags.seed_group_stage = '{group['stage']}'"

    def oldest() -> str | None:
        runs = client.search_runs([experiment_id], query, max_results=1000)
        return min(runs, key=lambda run: (run.info.start_time, run.info.run_id)).info.run_id if runs else None

    found = oldest()
    if found:
        return found
    tags = {**group["tags"], "seed_group": group["digest"], "seed_group_stage": group["stage"]}
    run_id = client.create_run(
        experiment_id, start_time=_now_ms(), tags=tags, run_name=group["run_name"]
    ).info.run_id
    params = [Param(key, value) for key, value in group["params"].items()]
    for start in range(0, len(params), 100):  # MLflow's batch limit
        client.log_batch(run_id, params=params[start : start + 100])
    client.set_terminated(run_id, "FINISHED")
    kept = oldest()
    if kept != run_id:
        client.delete_run(run_id)
    return kept


def _deliver(client, run_id: str, record: Mapping[str, Any]) -> None:
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
                run = _create_run(client, header)
                header.update(run_id=run.info.run_id, experiment_id=run.info.experiment_id)
                self._mark(header, 0)
            for index in range(delivered, len(records)):
                try:
                    _deliver(client, header["run_id"], records[index])
                except Exception as error:
                    if not _rejected(error):
                        raise
                    warnings.warn(
                        f"MLflow refused a buffered {records[index]['op']} call ({_describe(error)}); "
                        "dropped",
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
        self._start_time_ms = _now_ms()
        self._buffer: Buffer | None = None
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
            run = _with_retries(_create_run, self._client, self._header())
        except Exception as error:  # tracking must not stop training
            self._go_offline("start", error)
            return self
        self.run_id, self.experiment_id = run.info.run_id, run.info.experiment_id
        return self

    def __exit__(self, kind, error, trace) -> None:
        if (self.run_id or self._buffer) and not self._existing_run:
            status = "FINISHED" if kind is None else ("KILLED" if kind is KeyboardInterrupt else "FAILED")
            self._retry_at = 0.0  # one last try before leaving a buffer behind
            self._send({"op": "end", "status": status, "end_time": _now_ms()})
        self._leave_buffer()

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
                _with_retries(_deliver, self._client, self.run_id, record)
                return
            except Exception as error:  # tracking must not stop training
                if _rejected(error):
                    warnings.warn(
                        f"MLflow refused {record['op']} ({_describe(error)}); skipped", stacklevel=3
                    )
                    return
                self._go_offline(record["op"], error)
        if self._buffer:
            self._buffer.append(record)

    def _go_offline(self, action: str, error: Exception) -> None:
        try:
            self._buffer = Buffer.create(self._header())
        except OSError as buffer_error:
            warnings.warn(
                f"MLflow {action} failed ({_describe(error)}) and no buffer could be written "
                f"({buffer_error}); metrics stay in the run folder's CSV files only",
                stacklevel=4,
            )
            self.enabled = False
            return
        self._retry_at = time.monotonic() + RETRY_SECONDS
        warnings.warn(
            f"MLflow {action} failed ({_describe(error)}); training goes on, MLflow calls wait in "
            f"{self._buffer.path} and are retried every {RETRY_SECONDS:g} s",
            stacklevel=4,
        )

    def _flush(self) -> None:
        """Replay the buffer if the backend answers again; otherwise wait another RETRY_SECONDS."""
        try:
            header = _with_retries(self._buffer.replay, self._client, http_retries=0)
        except Exception:  # still down: that one failed call is the whole cost
            self._retry_at = time.monotonic() + RETRY_SECONDS
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
        now = _now_ms()
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
            header = _with_retries(buffer.replay)
        except Exception as error:  # the backend is still down: keep the buffer for the next sync
            buffer.close()
            lines.append(f"{path.name}: kept ({_describe(error)})")
            left += 1
            continue
        if header is not None:
            lines.append(f"{path.name}: delivered to run {header['run_id']} at {header['tracking_uri']}")
    return lines, left
