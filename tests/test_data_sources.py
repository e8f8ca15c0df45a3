"""Sources: the packaged demo set, and COCO / WikiArt fetched through the fake mirror, N images only."""

import pytest

from conftest_data import fake_mirror, serve_coco, serve_wikiart  # noqa: F401 (fixture)
from nstlab.data.sources import demo_images, fetch_source, list_images
from nstlab.errors import ConfigError

FAST = dict(retries=1, backoff_s=0.01, timeout_s=2.0, progress=False)


def image_requests(mirror, folder: str) -> list[str]:
    return [path for path, _ in mirror.requests if path.startswith(folder)]


def test_coco_fetches_exactly_n_images_chosen_by_the_seed(fake_mirror, tmp_path):
    names = serve_coco(fake_mirror, 12)
    paths, summary = fetch_source("coco", "content", 5, tmp_path / "a", seed=1, mirror=fake_mirror.base_url, **FAST)
    assert summary.ok and len(paths) == 5 and len(image_requests(fake_mirror, "coco/train2014/")) == 5
    assert list_images(tmp_path / "a" / "content") == paths
    assert {path.name for path in paths} <= set(names)
    assert (tmp_path / "a/index/coco/annotations_trainval2014.zip").is_file()

    again, _ = fetch_source("coco", "content", 5, tmp_path / "b", seed=1, mirror=fake_mirror.base_url, **FAST)
    other, _ = fetch_source("coco", "content", 5, tmp_path / "c", seed=2, mirror=fake_mirror.base_url, **FAST)
    assert [path.name for path in again] == [path.name for path in paths]
    assert [path.name for path in other] != [path.name for path in paths]


def test_a_smaller_draw_removes_the_images_not_chosen(fake_mirror, tmp_path):
    serve_coco(fake_mirror, 12)
    fetch_source("coco", "content", 8, tmp_path, seed=0, mirror=fake_mirror.base_url, **FAST)
    paths, _ = fetch_source("coco", "content", 3, tmp_path, seed=0, mirror=fake_mirror.base_url, **FAST)
    assert list_images(tmp_path / "content") == paths and len(paths) == 3


def test_wikiart_keeps_style_folders_and_fetches_exactly_n(fake_mirror, tmp_path):
    names = serve_wikiart(fake_mirror, 9)
    paths, summary = fetch_source("wikiart", "style", 4, tmp_path, seed=0, base_url=f"{fake_mirror.base_url}/wikiart",
                                  **FAST)
    assert summary.ok and len(image_requests(fake_mirror, "wikiart/wikiart/")) == 4
    assert {path.relative_to(tmp_path / "style").as_posix() for path in paths} <= set(names)
    assert all(path.is_file() for path in paths)


def test_wikiart_without_a_base_url_says_how_to_set_one(tmp_path):
    with pytest.raises(ConfigError, match="set data.mirror"):
        fetch_source("wikiart", "style", 4, tmp_path, seed=0, **FAST)


def test_a_source_in_the_wrong_role_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="data.style_source=coco"):
        fetch_source("coco", "style", 4, tmp_path, seed=0, **FAST)


def test_demo_copies_the_packaged_images_into_the_raw_layout(tmp_path):
    for role in ("content", "style"):
        packaged = demo_images(role)
        assert packaged == sorted(packaged) and len(packaged) >= 1
        paths, summary = fetch_source("demo", role, 1000, tmp_path, seed=0)
        assert [path.name for path in paths] == [path.name for path in packaged]
        assert list_images(tmp_path / role) == paths and summary.ok
