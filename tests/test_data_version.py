"""Data version: DVC's hash of the pairs folder, computed as DVC computes it."""

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nstlab.data.version import dvc_md5, pairs_tables
from nstlab.errors import NstlabError


def test_folder_hash_is_the_md5_of_its_sorted_file_listing(tmp_path):
    (tmp_path / "pairs" / "sub").mkdir(parents=True)
    (tmp_path / "pairs" / "b.csv").write_text("x\n")
    (tmp_path / "pairs" / "sub" / "a.csv").write_text("")
    # md5("x\n") and md5(""), listed by relpath: "b.csv" < "sub/a.csv"
    listing = (
        '[{"md5": "401b30e3b8b5d629635a5c613cdb7919", "relpath": "b.csv"}, '
        '{"md5": "d41d8cd98f00b204e9800998ecf8427e", "relpath": "sub/a.csv"}]'
    )
    assert dvc_md5(tmp_path / "pairs") == hashlib.md5(listing.encode()).hexdigest() + ".dir"
    assert dvc_md5(tmp_path / "pairs" / "b.csv") == "401b30e3b8b5d629635a5c613cdb7919"
    with pytest.raises(NstlabError, match="missing: no such file or folder to hash"):
        dvc_md5(tmp_path / "missing")


def test_folder_hash_equals_the_one_dvc_writes(tiny_pairs, tmp_path):
    beside_python = Path(sys.executable).with_name("dvc")
    dvc = str(beside_python) if beside_python.exists() else shutil.which("dvc")
    if dvc is None:
        pytest.skip("dvc is not installed")
    repo = tmp_path / "repo"
    shutil.copytree(tiny_pairs, repo / "pairs")
    for command in (["init", "--no-scm", "-q"], ["add", "-q", "pairs"]):
        subprocess.run([dvc, *command], cwd=repo, capture_output=True, text=True, timeout=120, check=True)
    written = yaml.safe_load((repo / "pairs.dvc").read_text())["outs"][0]["md5"]
    assert dvc_md5(repo / "pairs") == written


def test_pairs_tables_carry_the_folder_hash_row_counts_and_contexts(tiny_pairs):
    train, val = pairs_tables(tiny_pairs, ("train", "val"))
    assert (train.name, train.rows, train.context) == ("pairs/train", 8, "training")
    assert (val.name, val.rows, val.context) == ("pairs/val", 4, "validation")
    assert train.digest == val.digest == dvc_md5(tiny_pairs) and len(train.digest) == 36
