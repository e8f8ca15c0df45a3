"""The committed demo reports: DVC metrics files hold numbers only, no file names a machine's folder."""

import json
import re
import subprocess

import pytest

from conftest import REPO

MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:work|tmp|home|root|Users|var/folders)/")


def committed(folder: str) -> list[str]:
    result = subprocess.run(["git", "ls-files", folder], cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip("not a git checkout")
    return result.stdout.splitlines()


def test_no_committed_report_holds_an_absolute_path_of_a_machine():
    offending = []
    for name in committed("reports"):
        try:
            text = (REPO / name).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # figures
        offending += [
            f"{name}:{number}: {line.strip()[:120]}"
            for number, line in enumerate(text.splitlines(), 1)
            if MACHINE_PATH.search(line)
        ]
    assert not offending, (
        "machine paths in committed reports (write paths relative to the repo):\n" + "\n".join(offending)
    )


def test_the_scan_sees_a_machine_path():
    assert MACHINE_PATH.search('"tracking_uri": "sqlite:////home/alice/nstlab/mlruns.db"')
    assert not MACHINE_PATH.search('"tracking_uri": "sqlite:///mlruns.db", "path": "data/cache/tmp/a.png"')


def test_committed_dvc_metrics_hold_numbers_only():
    metrics = [
        name
        for name in committed("reports")
        if re.fullmatch(r"reports/(train/[^/]+/metrics|metrics/[^/]+)\.json", name)
    ]
    assert len(metrics) >= 16  # eight trainings, eight evaluations
    for name in metrics:
        values = json.loads((REPO / name).read_text())
        text = {
            key: value
            for key, value in values.items()
            if not isinstance(value, int | float) or isinstance(value, bool)
        }
        assert not text, f"{name}: not numbers, so `dvc exp show` shows them as metrics: {text}"
