"""Where a run comes from and goes to: the repository root (also inside a queued DVC experiment's
temp copy), its git state as MLflow's source tags, and the tracking store's URI."""

import contextlib
import os
import subprocess
import sys
from pathlib import Path

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
