"""Pairing: seeded, reproducible, disjoint splits, requested counts, unusable images skipped and listed."""

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from conftest_data import write_image
import numpy as np

from nstlab.data.images import load_rgb
from nstlab.data.pairs import build_pairs, split_sizes, squash
from nstlab.errors import ConfigError

COUNTS = dict(n_train=30, n_val=4, n_test=3)


@pytest.fixture
def images(tmp_path):
    contents = [
        write_image(tmp_path / "raw/content" / f"c{i:02d}.jpg", (40 + i, 30), seed=i) for i in range(12)
    ]
    styles = [
        write_image(tmp_path / "raw/style" / f"s{i:02d}.png", (30, 50 + i), seed=50 + i) for i in range(10)
    ]
    return contents, styles


def pair(images, tmp_path, out: str = "pairs", seed: int = 0, **overrides):
    contents, styles = images
    options = dict(
        COUNTS,
        seed=seed,
        image_size=32,
        test_max_side=24,
        cache_dir=tmp_path / "cache",
        out_dir=tmp_path / out,
        workers=2,
        progress=False,
        pairing="random",  # 30 train pairs from 12 × 10 images
    )
    return build_pairs(contents, styles, **(options | overrides))


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def sources(path: Path, column: str) -> set[str]:
    """The cached file names of one column; a source image keeps its name in every split's cache."""
    return {Path(row[column]).name for row in rows(path)}


def test_same_seed_gives_byte_identical_files(images, tmp_path):
    pair(images, tmp_path, "first")
    pair(images, tmp_path, "second")
    for name in ("train.csv", "val.csv", "test.csv", "skipped.csv", "pairs.json"):
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes()


def test_another_seed_gives_other_pairs(images, tmp_path):
    pair(images, tmp_path, "first", seed=0)
    pair(images, tmp_path, "second", seed=1)
    assert (tmp_path / "first/train.csv").read_bytes() != (tmp_path / "second/train.csv").read_bytes()


def test_counts_header_and_no_duplicate_pairs(images, tmp_path):
    summary = pair(images, tmp_path)
    assert (tmp_path / "pairs/train.csv").read_text().splitlines()[0] == "content,style"
    for split, n_pairs in (("train", 30), ("val", 4), ("test", 3)):
        split_rows = rows(tmp_path / f"pairs/{split}.csv")
        assert len(split_rows) == n_pairs == summary.pairs[split]
        assert len({(row["content"], row["style"]) for row in split_rows}) == n_pairs
    report = json.loads((tmp_path / "pairs/pairs.json").read_text())
    assert (
        report["pairs"] == {"train": 30, "val": 4, "test": 3}
        and report["seed"] == 0
        and report["skipped"] == 0
    )
    assert sum(counts["content"] for counts in report["images"].values()) == 12


def test_splits_are_disjoint_in_content_and_style(images, tmp_path):
    pair(images, tmp_path)
    for column in ("content", "style"):
        train, val, test = (
            sources(tmp_path / f"pairs/{split}.csv", column) for split in ("train", "val", "test")
        )
        assert not (test & (train | val)) and not (train & val)


def test_a_source_group_stays_in_one_split(images, tmp_path):
    """Crops of one photo never straddle splits: c00..c02 are one group, the others stand alone."""

    def photo(path: Path) -> str:
        return "one_photo" if path.stem < "c03" else path.stem

    summary = pair(images, tmp_path, group_of={"content": photo})
    grouped = {f"c{i:02d}" for i in range(3)}
    splits_holding = [
        split
        for split in ("train", "val", "test")
        if {name.split("-")[0] for name in sources(tmp_path / f"pairs/{split}.csv", "content")} & grouped
    ]
    assert len(splits_holding) == 1
    assert sum(counts["content"] for counts in summary.images.values()) == 12


def test_the_demo_splits_share_no_photo():
    """The packaged demo set: no photo's crops in two splits (the prefix names the photo)."""
    from nstlab.data.pairs import _plan_splits
    from nstlab.data.sources import demo_images, source_group

    plan = _plan_splits(
        demo_images("content"), {"train": 120, "val": 8, "test": 6}, 324, "content", source_group("demo")
    )
    photos = {split: {source_group("demo")(path) for path in files} for split, files in plan.items()}
    assert not (photos["test"] & (photos["train"] | photos["val"])) and not (photos["train"] & photos["val"])
    assert all(plan.values()) and sum(map(len, plan.values())) == 20


def test_cached_images_have_the_training_and_test_sizes(images, tmp_path):
    pair(images, tmp_path)
    train_row = rows(tmp_path / "pairs/train.csv")[0]
    assert all(Image.open(train_row[column]).size == (32, 32) for column in ("content", "style"))
    assert "/cache/train_val/content/" in train_row["content"]
    test_row = rows(tmp_path / "pairs/test.csv")[0]
    content_size, style_size = Image.open(test_row["content"]).size, Image.open(test_row["style"]).size
    assert max(content_size) == 24 and content_size[0] > content_size[1]  # landscape stays landscape
    assert max(style_size) == 24 and style_size[1] > style_size[0]


def test_unusable_images_are_skipped_and_listed(images, tmp_path):
    contents, styles = images
    broken = tmp_path / "raw/content/broken.jpg"
    broken.write_bytes(contents[0].read_bytes()[:200])
    empty = tmp_path / "raw/style/empty.png"
    empty.write_bytes(b"")
    summary = build_pairs(
        [*contents, broken],
        [*styles, empty],
        **(COUNTS | {"n_val": 3}),
        seed=0,
        image_size=32,
        cache_dir=tmp_path / "cache",
        out_dir=tmp_path / "pairs",
        progress=False,
        pairing="random",
    )
    listed = {row["path"]: row["reason"] for row in rows(tmp_path / "pairs/skipped.csv")}
    assert set(listed) == {broken.as_posix(), empty.as_posix()}
    assert "truncated" in listed[broken.as_posix()] and "empty file" in listed[empty.as_posix()]
    assert (
        len(summary.skipped) == 2 and json.loads((tmp_path / "pairs/pairs.json").read_text())["skipped"] == 2
    )
    assert len(rows(tmp_path / "pairs/train.csv")) == 30


def test_more_pairs_than_exist_is_a_config_error(images, tmp_path):
    with pytest.raises(ConfigError, match=r"data.n_train=500: only \d+ distinct train pairs .* at most \d+"):
        pair(images, tmp_path, n_train=500)


def test_fewer_images_than_splits_is_a_config_error(images, tmp_path):
    contents, styles = images
    with pytest.raises(ConfigError, match="2 content images given: need at least 3"):
        build_pairs(
            contents[:2],
            styles,
            **COUNTS,
            seed=0,
            image_size=32,
            cache_dir=tmp_path / "cache",
            out_dir=tmp_path / "pairs",
            progress=False,
        )


def test_split_sizes_follow_the_square_root_of_the_pairs_asked():
    assert split_sizes(20, {"train": 120, "val": 8, "test": 6}) == {"train": 14, "val": 3, "test": 3}
    assert split_sizes(3, {"train": 10_000, "val": 1, "test": 1}) == {"train": 1, "val": 1, "test": 1}
    assert split_sizes(100, {"train": 100, "val": 100, "test": 400}) == {"train": 25, "val": 25, "test": 50}


ONE_TO_ONE = dict(n_train=6, n_val=2, n_test=2, pairing="one_to_one")


def test_one_to_one_pairs_use_each_image_once(images, tmp_path):
    """NST-Project dataloader.py: content[i] with style[i], so n pairs hold n distinct images per role."""
    summary = pair(images, tmp_path, **ONE_TO_ONE)
    for split, n_pairs in (("train", 6), ("val", 2), ("test", 2)):
        split_rows = rows(tmp_path / f"pairs/{split}.csv")
        assert len(split_rows) == n_pairs
        assert len({row["content"] for row in split_rows}) == n_pairs
        assert len({row["style"] for row in split_rows}) == n_pairs
    assert summary.images["train"]["style"] == 6  # 10 styles split as the pairs asked: 6, 2, 2
    assert json.loads((tmp_path / "pairs/pairs.json").read_text())["pairing"] == "one_to_one"
    pair(images, tmp_path, "again", **ONE_TO_ONE)
    assert (tmp_path / "pairs/train.csv").read_bytes() == (tmp_path / "again/train.csv").read_bytes()


def test_one_to_one_with_too_few_images_names_the_key_and_the_ways_out(images, tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"data.n_train=9: data.pairing one_to_one needs 9 distinct train images per role.*"
        r"at most \d+.*data.pairing: random",
    ):
        pair(images, tmp_path, **(ONE_TO_ONE | {"n_train": 9}))


def test_split_sizes_follow_the_pairs_asked_under_one_to_one():
    paper = {"train": 56462, "val": 4000, "test": 352}  # the download fetches their sum per role
    assert split_sizes(sum(paper.values()), paper, "one_to_one") == paper
    assert split_sizes(12, {"train": 6, "val": 2, "test": 2}, "one_to_one") == {
        "train": 7,
        "val": 3,
        "test": 2,
    }


def test_the_paper_profile_pairs_one_to_one_and_the_demo_with_repeats():
    from nstlab.config import load_config

    from conftest import PARAMS

    paper = load_config(PARAMS, ["profile=paper"]).data
    assert (paper.pairing, paper.resample) == ("one_to_one", "bilinear")
    assert load_config(PARAMS).data.pairing == "random"  # 80 pairs of 14 × 11 demo images


def _pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_squash_is_bilinear_with_small_contents_upscaled_by_lanczos():
    """NST-Project dataloader.py: a content image under 224 px on a side is resized to 224² with
    LANCZOS first; then transforms.Resize((224, 224)), bilinear, for content and style alike."""
    from conftest_data import noise_image

    large, small = noise_image((64, 48), seed=1), noise_image((40, 30), seed=2)
    bilinear, lanczos, bicubic = (
        Image.Resampling.BILINEAR,
        Image.Resampling.LANCZOS,
        Image.Resampling.BICUBIC,
    )
    cases = [
        ("content", large, "bilinear", large.resize((32, 32), bilinear)),
        ("content", small, "bilinear", small.resize((32, 32), lanczos)),
        ("style", small, "bilinear", small.resize((32, 32), bilinear)),
        ("content", small, "bicubic", small.resize((32, 32), bicubic)),
    ]
    for role, image, kernel, wanted in cases:
        assert np.array_equal(_pixels(squash(image, 32, role, kernel)), _pixels(wanted))
    assert not np.array_equal(
        _pixels(small.resize((32, 32), bilinear)), _pixels(small.resize((32, 32), lanczos))
    )
    assert not np.array_equal(
        _pixels(small.resize((32, 32), bilinear)), _pixels(small.resize((32, 32), bicubic))
    )


@pytest.mark.parametrize("resample", ["bilinear", "bicubic"])
def test_the_train_cache_is_squashed_with_data_resample(images, tmp_path, resample):
    pair(images, tmp_path, **ONE_TO_ONE, resample=resample)
    with open(tmp_path / "pairs/images.csv", newline="") as handle:
        train = [row for row in csv.DictReader(handle) if row["split"] == "train"]
    for row in (train[0], train[-1]):  # one content (30 px high: LANCZOS first), one style
        wanted = squash(load_rgb(row["source"]), 32, row["role"], resample)
        assert np.array_equal(_pixels(Image.open(row["cached"]).convert("RGB")), _pixels(wanted))
