"""The data version a run used: DVC's own hash of the pairs folder, computed as DVC computes it.

DVC names a tracked folder by the md5 of a JSON listing of its files ({"md5", "relpath"},
sorted by path) plus ".dir" (dvc.lock's `md5:` of data/pairs). Computing it from the files,
rather than reading dvc.lock, is right also outside DVC (`nstlab pair` by hand, a stale lock)
and costs a read of a few CSV files.
"""

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from nstlab.errors import NstlabError

SPLIT_CONTEXTS = {"train": "training", "val": "validation", "test": "testing"}  # MLflow's input contexts


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dvc_md5(path: Path) -> str:
    """DVC 3's hash of a file (its md5) or of a folder (md5 of its file listing + '.dir')."""
    path = Path(path)
    if path.is_file():
        return file_md5(path)
    if not path.is_dir():
        raise NstlabError(
            f"{path}: no such file or folder to hash; run the pair stage first (dvc repro pair)"
        )
    files = sorted((file.relative_to(path).as_posix(), file) for file in path.rglob("*") if file.is_file())
    listing = [{"md5": file_md5(file), "relpath": relpath} for relpath, file in files]
    return hashlib.md5(json.dumps(listing, sort_keys=True).encode("utf-8")).hexdigest() + ".dir"


@dataclass(frozen=True)
class PairsTable:
    """One split's pairs table as a dataset input: the folder's DVC hash is its digest."""

    name: str  # pairs/train, pairs/val, pairs/test
    path: Path  # the CSV file
    dvc_out: Path  # the DVC-tracked folder it lives in
    digest: str
    rows: int
    context: str  # training, validation or testing


def pairs_tables(pairs_dir: Path, splits: tuple[str, ...]) -> list[PairsTable]:
    """The given splits of a pairs folder, each carrying the folder's DVC hash."""
    digest = dvc_md5(pairs_dir)
    tables = []
    for split in splits:
        path = pairs_dir / f"{split}.csv"
        with open(path, newline="") as handle:
            rows = sum(1 for _ in csv.DictReader(handle))
        tables.append(PairsTable(f"pairs/{split}", path, pairs_dir, digest, rows, SPLIT_CONTEXTS[split]))
    return tables
