"""hf: sources, offline: a small parquet dataset built here, streamed through the real `datasets` library."""

import sys
from functools import partial

import pytest

from conftest_data import image_bytes
from nstlab.data.sources import fetch_source, list_images
from nstlab.errors import ConfigError, DownloadError

datasets = pytest.importorskip("datasets")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """The real hub id (huggan/wikiart) is documented, never contacted."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    # datasets waits 5 s after a stream ends (an Arrow thread-shutdown workaround): not needed on local files
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0, raising=False)


def make_dataset(root, n_rows: int, bad_rows: tuple[int, ...] = ()) -> dict[bytes, int]:
    """A parquet dataset of `n_rows` PNG/JPEG images and a label; bad rows hold bytes that do not decode."""
    rows = [
        b"not an image at all" * 10
        if index in bad_rows
        else image_bytes((40, 32), seed=index, image_format="PNG" if index % 2 else "JPEG")
        for index in range(n_rows)
    ]
    features = datasets.Features({"image": datasets.Image(), "style": datasets.Value("int64")})
    table = datasets.Dataset.from_dict(
        {"image": [{"bytes": data, "path": None} for data in rows], "style": list(range(n_rows))},
        features=features,
    )
    (root / "data").mkdir(parents=True)
    table.to_parquet(str(root / "data" / "train-00000-of-00001.parquet"))
    return {data: index for index, data in enumerate(rows)}


def test_streams_a_seeded_draw_byte_identical_and_resumes_without_the_network(tmp_path, monkeypatch):
    rows = make_dataset(tmp_path / "hub", 30)
    draw = partial(fetch_source, f"hf:{tmp_path / 'hub'}", "style", 6, hub_shuffle_buffer=8, progress=False)
    paths, summary = draw(tmp_path / "raw", seed=0)
    assert len(paths) == 6 and summary.ok and len(summary.downloaded) == 6
    assert list_images(tmp_path / "raw" / "style") == paths
    assert all(path.read_bytes() in rows for path in paths)  # the stored bytes, not a re-encoding
    assert {path.suffix for path in paths} <= {".png", ".jpg"}
    drawn = sorted(rows[path.read_bytes()] for path in paths)
    again, _ = draw(tmp_path / "other", seed=0)
    other, _ = draw(tmp_path / "third", seed=1)
    assert sorted(rows[path.read_bytes()] for path in again) == drawn
    assert sorted(rows[path.read_bytes()] for path in other) != drawn

    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: pytest.fail("streamed again"))
    rerun, summary = draw(tmp_path / "raw", seed=0)
    assert rerun == paths and summary.skipped == tuple(path.name for path in paths) and not summary.downloaded


def test_an_interrupted_draw_keeps_what_it_has_and_writes_only_the_rest(tmp_path):
    make_dataset(tmp_path / "hub", 20)
    draw = partial(
        fetch_source,
        f"hf:{tmp_path / 'hub'}",
        "content",
        raw_dir=tmp_path / "raw",
        seed=5,
        hub_shuffle_buffer=4,
        progress=False,
    )
    first, _ = draw(n_images=3)
    inodes = {path.name: path.stat().st_ino for path in first}
    paths, summary = draw(n_images=7)
    assert set(summary.skipped) == set(inodes) and len(summary.downloaded) == 4 and len(paths) == 7
    assert all((tmp_path / "raw" / "content" / name).stat().st_ino == inode for name, inode in inodes.items())


def test_rows_that_do_not_decode_are_replaced_by_the_next_rows(tmp_path):
    make_dataset(tmp_path / "hub", 12, bad_rows=tuple(range(0, 12, 3)))
    paths, summary = fetch_source(
        f"hf:{tmp_path / 'hub'}",
        "style",
        6,
        tmp_path / "raw",
        seed=0,
        hub_shuffle_buffer=12,
        max_missing=1.0,
        progress=False,
    )
    assert len(paths) == 6 and summary.missing and all("not an image" in r for r in summary.missing.values())
    with pytest.raises(DownloadError, match=r"do not decode .*more than data.max_missing = 0.1"):
        fetch_source(
            f"hf:{tmp_path / 'hub'}",
            "style",
            6,
            tmp_path / "raw2",
            seed=0,
            hub_shuffle_buffer=12,
            max_missing=0.1,
            progress=False,
        )


def test_without_datasets_installed_the_error_says_which_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ConfigError, match=r'hf:huggan/wikiart needs .* pip install "nstlab\[hub\]"'):
        fetch_source("hf:huggan/wikiart", "style", 3, tmp_path, seed=0, progress=False)


def test_an_unknown_dataset_is_one_line(tmp_path):
    with pytest.raises(DownloadError, match="hf:.*absent: cannot open the dataset") as error:
        fetch_source(f"hf:{tmp_path / 'absent'}", "style", 3, tmp_path / "raw", seed=0, progress=False)
    assert "\n" not in str(error.value)
