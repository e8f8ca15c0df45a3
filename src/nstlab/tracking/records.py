"""A run's record on disk as two files: the numbers DVC compares, and who made them.

DVC reads every value of a metrics file as a metric, so `dvc exp show` and `dvc metrics diff`
stay readable only if those files hold numbers. Names, run ids and URIs go into a sibling
JSON that DVC keeps as a plain output (see dvc.yaml).
"""

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def write_record(
    summary: Mapping[str, Any], metrics_path: Path, run_path: Path, identity: Iterable[str] = ()
) -> None:
    """Numbers (except the `identity` keys, numeric labels such as a stage) -> metrics_path; the
    rest -> run_path. Missing numbers (None) are left out: DVC would show them as text."""
    labels = set(identity)
    numbers = {k: v for k, v in summary.items() if is_number(v) and k not in labels}
    described = {k: v for k, v in summary.items() if k not in numbers and v is not None}
    for path, content in ((metrics_path, numbers), (run_path, described)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content, indent=2) + "\n")


def read_record(metrics_path: Path, run_path: Path) -> dict[str, Any]:
    """The summary again: identity first, then the numbers (a missing run file reads as empty)."""
    described = json.loads(run_path.read_text()) if run_path.is_file() else {}
    return {**described, **json.loads(metrics_path.read_text())}


def training_record_paths(logs_dir: Path, key: str) -> tuple[Path, Path]:
    """reports/train/<key>/metrics.json (a DVC metric) and run.json beside it."""
    return logs_dir / key / "metrics.json", logs_dir / key / "run.json"


def evaluation_record_paths(reports_dir: Path, method: str) -> tuple[Path, Path]:
    """reports/metrics/<method>.json (a DVC metric) and reports/runs/<method>.json (model, profile,
    device, MLflow run id): a folder of its own, so every file under reports/metrics is a metric."""
    return reports_dir / "metrics" / f"{method}.json", reports_dir / "runs" / f"{method}.json"
