"""Sources: the packaged demo set, and COCO / WikiArt fetched through the fake mirror, N images only."""

import pytest

import json
import os

from conftest_data import fake_mirror, serve_coco, serve_wikiart, write_image  # noqa: F401 (fixture)
from nstlab.data.download import MANIFEST_NAME
from nstlab.data.sources import demo_images, draw_order, fetch_source, list_images
from nstlab.errors import ConfigError, DownloadError

FAST = dict(retries=1, backoff_s=0.01, timeout_s=2.0, progress=False)


def image_requests(mirror, folder: str) -> list[str]:
    return [path for path, _ in mirror.requests if path.startswith(folder)]


def test_coco_fetches_exactly_n_images_chosen_by_the_seed(fake_mirror, tmp_path):
    names = serve_coco(fake_mirror, 12)
    paths, summary = fetch_source(
        "coco", "content", 5, tmp_path / "a", seed=1, mirror=fake_mirror.base_url, **FAST
    )
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
    paths, summary = fetch_source(
        "wikiart", "style", 4, tmp_path, seed=0, base_url=f"{fake_mirror.base_url}/wikiart", **FAST
    )
    assert summary.ok and len(image_requests(fake_mirror, "wikiart/wikiart/")) == 4
    assert {path.relative_to(tmp_path / "style").as_posix() for path in paths} <= set(names)
    assert all(path.is_file() for path in paths)


def test_wikiart_without_a_base_url_says_how_to_set_one(tmp_path):
    with pytest.raises(ConfigError, match="set data.mirror"):
        fetch_source("wikiart", "style", 4, tmp_path, seed=0, **FAST)


def test_a_source_in_the_wrong_role_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="data.style_source = 'coco'"):
        fetch_source("coco", "style", 4, tmp_path, seed=0, **FAST)


def test_demo_copies_the_packaged_images_into_the_raw_layout(tmp_path):
    for role in ("content", "style"):
        packaged = demo_images(role)
        assert packaged == sorted(packaged) and len(packaged) >= 1
        paths, summary = fetch_source("demo", role, 1000, tmp_path, seed=0)
        assert [path.name for path in paths] == [path.name for path in packaged]
        assert list_images(tmp_path / role) == paths and summary.ok


# -- mirrors that lose and mangle files ----------------------------------------------------------


def test_files_missing_on_the_mirror_are_replaced_by_the_next_of_the_draw(fake_mirror, tmp_path):
    names = serve_wikiart(fake_mirror, 20)
    order = draw_order(names, 0, "wikiart-style")
    lost = order[1:3]  # two of the first six drawn: listed in the CSV, absent on the mirror
    for name in lost:
        del fake_mirror.files[f"wikiart/wikiart/{name}"]
    paths, summary = fetch_source(
        "wikiart", "style", 6, tmp_path, seed=0, mirror=fake_mirror.base_url, max_missing=0.5, **FAST
    )
    relative = [path.relative_to(tmp_path / "style").as_posix() for path in paths]
    assert relative == sorted([*order[:1], *order[3:8]])  # the next two of the same draw took their place
    assert sorted(summary.missing) == sorted(lost) and all("HTTP 404" in r for r in summary.missing.values())
    served = fake_mirror.files
    assert all(path.read_bytes() == served[f"wikiart/wikiart/{name}"] for path, name in zip(paths, relative))
    fake_mirror.requests.clear()
    again, summary = fetch_source(
        "wikiart", "style", 6, tmp_path, seed=0, mirror=fake_mirror.base_url, max_missing=0.5, **FAST
    )
    assert again == paths and not summary.downloaded
    assert sorted(path for path, _ in fake_mirror.requests if "/wikiart/wikiart/" in f"/{path}") == sorted(
        f"wikiart/wikiart/{name}" for name in lost
    )  # only the lost files are asked for again


def test_more_missing_than_max_missing_fails_with_one_line(fake_mirror, tmp_path):
    names = serve_coco(fake_mirror, 20)
    for name in draw_order(names, 0, "coco-content")[:3]:
        del fake_mirror.files[f"coco/train2014/{name}"]
    with pytest.raises(DownloadError, match=r"3 of the 10 images drawn are missing.*missing = 0.2") as error:
        fetch_source(
            "coco", "content", 10, tmp_path, seed=0, mirror=fake_mirror.base_url, max_missing=0.2, **FAST
        )
    assert "\n" not in str(error.value)


def test_an_image_that_never_decodes_counts_as_missing_and_is_replaced(fake_mirror, tmp_path):
    names = serve_coco(fake_mirror, 10)
    bad = draw_order(names, 0, "coco-content")[0]
    fake_mirror.fail(f"coco/train2014/{bad}", *["corrupt"] * 2)
    paths, summary = fetch_source(
        "coco", "content", 4, tmp_path, seed=0, mirror=fake_mirror.base_url, max_missing=0.25, **FAST
    )
    assert len(paths) == 4 and bad not in {path.name for path in paths}
    assert "unusable bytes" in summary.missing[bad]
    manifest = json.loads((tmp_path / "content" / MANIFEST_NAME).read_text())
    assert all(manifest[path.name]["verified"] for path in paths) and bad not in manifest


def test_a_corrupt_index_is_fetched_again(fake_mirror, tmp_path):
    serve_coco(fake_mirror, 6)
    fake_mirror.fail("coco/annotations/annotations_trainval2014.zip", "corrupt")
    paths, summary = fetch_source("coco", "content", 3, tmp_path, seed=0, mirror=fake_mirror.base_url, **FAST)
    assert summary.ok and len(paths) == 3
    assert len(fake_mirror.requests_for("coco/annotations/annotations_trainval2014.zip")) == 2


def test_an_index_that_never_opens_is_one_line_after_the_retries(fake_mirror, tmp_path):
    serve_wikiart(fake_mirror, 6)
    fake_mirror.fail("wikiart/wikiart_csv/style_train.csv", *["corrupt"] * 2)
    with pytest.raises(DownloadError, match="style_train.csv: unusable bytes .*after 2 attempts"):
        fetch_source("wikiart", "style", 3, tmp_path, seed=0, mirror=fake_mirror.base_url, **FAST)


def test_coco_through_a_mirror_that_flips_bytes_and_sends_s3_etags_gets_no_corrupt_image(
    fake_mirror, tmp_path
):
    names = serve_coco(fake_mirror, 50)
    fake_mirror.checksum, fake_mirror.flip_rate = "etag", 0.3
    options = dict(FAST, retries=4, workers=4, max_missing=0.1)
    paths, summary = fetch_source(
        "coco", "content", 40, tmp_path, seed=0, mirror=fake_mirror.base_url, **options
    )
    served = fake_mirror.files
    assert len(paths) == 40 and set(summary.missing) <= set(names)
    assert all(path.read_bytes() == served[f"coco/train2014/{path.name}"] for path in paths)
    assert len(image_requests(fake_mirror, "coco/train2014/")) > 40  # flipped responses were fetched again


# -- dir: local folders --------------------------------------------------------------------------


def test_a_local_folder_is_drawn_recursively_and_hard_linked(tmp_path):
    folder = tmp_path / "my photos"
    for index in range(8):
        write_image(folder / ("sub" if index % 2 else "") / f"photo {index}.png", seed=index)
    (folder / "notes.txt").write_text("not an image")
    source = f"dir:{folder}"
    paths, summary = fetch_source(source, "content", 5, tmp_path / "raw", seed=0, **FAST)
    assert len(paths) == 5 and list_images(tmp_path / "raw" / "content") == paths
    raw = tmp_path / "raw" / "content"
    assert all(os.path.samefile(path, folder / path.relative_to(raw)) for path in paths)
    assert summary.describe() == f"5 hard-linked from {folder}"
    again, _ = fetch_source(source, "content", 5, tmp_path / "raw2", seed=0, **FAST)
    other, _ = fetch_source(source, "content", 5, tmp_path / "raw3", seed=1, **FAST)
    names = [path.name for path in paths]
    assert [path.name for path in again] == names and [path.name for path in other] != names
    fewer, _ = fetch_source(source, "content", 2, tmp_path / "raw", seed=0, **FAST)
    assert list_images(raw) == fewer and len(list_images(folder)) == 8  # the originals stay


def test_dir_source_works_for_style_too_and_keeps_sub_folders(tmp_path):
    write_image(tmp_path / "art" / "Cubism" / "a.jpg")
    write_image(tmp_path / "art" / "Baroque" / "l'été.jpg", seed=1)
    paths, _ = fetch_source(f"dir:{tmp_path / 'art'}", "style", 10, tmp_path / "raw", seed=0)
    assert [path.relative_to(tmp_path / "raw" / "style").as_posix() for path in paths] == [
        "Baroque/l'été.jpg",
        "Cubism/a.jpg",
    ]


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda root: None, "no such folder"),
        (lambda root: (root / "empty").mkdir(), "no images"),
    ],
)
def test_bad_dir_sources_are_one_line_config_errors(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(ConfigError, match=f"data.content_source=dir:.*{message}"):
        fetch_source(f"dir:{tmp_path / 'empty'}", "content", 3, tmp_path / "raw", seed=0)


def test_a_dir_source_overlapping_the_output_is_refused(tmp_path):
    write_image(tmp_path / "raw" / "content" / "a.png")
    with pytest.raises(ConfigError, match="overlaps the output folder"):
        fetch_source(f"dir:{tmp_path / 'raw'}", "content", 3, tmp_path / "raw", seed=0)


def test_dir_sources_for_both_roles_feed_the_same_pair_stage(tmp_path):
    from nstlab.config import load_config
    from nstlab.data.stages import download_stage, pair_stage

    from conftest import PARAMS

    for index in range(6):
        write_image(tmp_path / "photos" / f"p{index}.jpg", size=(48, 40), seed=index)
        write_image(
            tmp_path / "paintings" / "Baroque" / f"l'œuvre {index}.png", size=(40, 48), seed=50 + index
        )
    cfg = load_config(
        PARAMS,
        [
            f"data.content_source=dir:{tmp_path / 'photos'}",
            f"data.style_source=dir:{tmp_path / 'paintings'}",
            "data.n_train=3",
            "data.n_val=1",
            "data.n_test=1",
            "data.image_size=32",
        ],
    )
    download_stage(cfg, tmp_path / "raw", progress=False)
    assert len(list_images(tmp_path / "raw" / "content")) == len(list_images(tmp_path / "raw" / "style")) == 5
    pair_stage(cfg, tmp_path / "raw", tmp_path / "pairs", cache_dir=tmp_path / "cache", progress=False)
    train_rows = (tmp_path / "pairs" / "train.csv").read_text().splitlines()
    assert train_rows[0] == "content,style" and len(train_rows) == 1 + 3
    assert (tmp_path / "pairs" / "skipped.csv").read_text().splitlines() == ["path,reason"]


def test_a_folder_on_another_filesystem_is_copied(tmp_path, monkeypatch):
    import errno

    from nstlab.data import sources

    for index in range(3):
        write_image(tmp_path / "photos" / f"p{index}.png", seed=index)

    def cross_device(source, destination):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(sources.os, "link", cross_device)
    paths, summary = fetch_source(f"dir:{tmp_path / 'photos'}", "content", 3, tmp_path / "raw", seed=0)
    assert summary.describe() == f"0 hard-linked, 3 copied (another filesystem) from {tmp_path / 'photos'}"
    assert all(
        not path.is_symlink()
        and path.stat().st_ino != (tmp_path / "photos" / path.name).stat().st_ino
        and path.read_bytes() == (tmp_path / "photos" / path.name).read_bytes()
        for path in paths
    )
    monkeypatch.setattr(sources.shutil, "copy2", lambda *args: pytest.fail("copied again"))
    again, _ = fetch_source(f"dir:{tmp_path / 'photos'}", "content", 3, tmp_path / "raw", seed=0)
    assert again == paths  # a rerun keeps the copies it made
