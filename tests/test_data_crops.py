"""The baselines' data pipeline (data/crops.py): resized random crops of the pair stage's train
sources, content and style drawn independently, the same batches after a resume, rank shards."""

import csv
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from conftest_data import write_image
from nstlab.data.crops import CropDataset, PositionSampler, make_crop_loader, stream_index, train_sources
from nstlab.data.images import load_rgb, to_tensor
from nstlab.data.pairs import build_pairs
from nstlab.errors import NstlabError

RESIZE, CROP = 24, 12


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory) -> Path:
    """Seven content and six style images (odd aspect ratios) through the real pair stage."""
    root = tmp_path_factory.mktemp("crops")
    contents = [write_image(root / "raw/content" / f"c{i}.jpg", (40, 30), seed=i) for i in range(7)]
    styles = [write_image(root / "raw/style" / f"s{i}.png", (36, 50), seed=50 + i) for i in range(6)]
    build_pairs(
        contents,
        styles,
        n_train=6,
        n_val=1,
        n_test=1,
        seed=0,
        image_size=16,
        cache_dir=root / "cache",
        out_dir=root / "pairs",
        workers=1,
        progress=False,
        pairing="random",
    )
    return root / "pairs"


def _data(sampling: str = "independent") -> SimpleNamespace:
    return SimpleNamespace(sampling=sampling, resize=RESIZE, crop=CROP)


def _loader(pairs_dir: Path, sampling: str = "independent", seed: int = 3):
    return make_crop_loader(pairs_dir, _data(sampling), batch_size=2, steps_per_epoch=3, seed=seed)


def _batches(loader, epoch: int, start_index: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.sampler.set_epoch(epoch, start_index)
    return list(loader)


def test_the_pair_stage_lists_every_usable_train_source(pairs_dir):
    sources = train_sources(pairs_dir)
    with open(pairs_dir / "images.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["split"] for row in rows} == {"train", "val", "test"}
    assert len(sources["content"]) + 2 <= 7 and len(sources["style"]) + 2 <= 6  # val and test hold their own
    assert all(path.parent.name == role for role, paths in sources.items() for path in paths)


def test_each_crop_is_a_window_of_the_source_resized_square(pairs_dir):
    dataset = CropDataset(pairs_dir, "independent", RESIZE, CROP, seed=3)
    content, style = dataset[5]
    assert content.shape == style.shape == (3, CROP, CROP)
    for crop, source in zip((content, style), dataset.sources_at(5)):
        resized = to_tensor(load_rgb(source).resize((RESIZE, RESIZE), Image.Resampling.BILINEAR))
        windows = [
            (top, left)
            for top in range(RESIZE - CROP + 1)
            for left in range(RESIZE - CROP + 1)
            if torch.equal(resized[:, top : top + CROP, left : left + CROP], crop)
        ]
        assert len(windows) == 1


def test_content_and_style_are_drawn_independently_each_pass_a_permutation(pairs_dir):
    dataset = CropDataset(pairs_dir, "independent", RESIZE, CROP, seed=3)
    n_content, n_style = len(dataset.contents), len(dataset.styles)
    contents = [stream_index(n_content, "content", 3, p) for p in range(3 * n_content)]
    styles = [stream_index(n_style, "style", 3, p) for p in range(3 * n_style)]
    for passes, n in ((contents, n_content), (styles, n_style)):
        assert all(sorted(passes[k : k + n]) == list(range(n)) for k in range(0, len(passes), n))
    assert contents[:n_content] != contents[n_content : 2 * n_content]  # reshuffled each pass
    seen = {dataset.sources_at(p) for p in range(60)}
    train_pairs = {(Path(c), Path(s)) for c, s in _pair_sources(pairs_dir)}
    assert len(seen) > len(train_pairs) and not seen <= train_pairs  # not the fixed pairs
    other_seed = CropDataset(pairs_dir, "independent", RESIZE, CROP, seed=4)
    assert [other_seed.sources_at(p) for p in range(10)] != [dataset.sources_at(p) for p in range(10)]


def _pair_sources(pairs_dir: Path) -> list[tuple[str, str]]:
    with open(pairs_dir / "images.csv", newline="") as handle:
        source = {row["cached"]: row["source"] for row in csv.DictReader(handle)}
    with open(pairs_dir / "train.csv", newline="") as handle:
        return [(source[row["content"]], source[row["style"]]) for row in csv.DictReader(handle)]


def test_sampling_pairs_draws_only_the_fixed_train_pairs(pairs_dir):
    dataset = CropDataset(pairs_dir, "pairs", RESIZE, CROP, seed=3)
    train_pairs = {(Path(c), Path(s)) for c, s in _pair_sources(pairs_dir)}
    assert {dataset.sources_at(p) for p in range(40)} == train_pairs


def test_a_resumed_epoch_yields_the_batches_it_had_not_consumed(pairs_dir):
    uninterrupted = [b for epoch in (0, 1) for b in _batches(_loader(pairs_dir), epoch)]
    assert len(uninterrupted) == 6 and all(c.shape == (2, 3, CROP, CROP) for c, _ in uninterrupted)
    resumed = _batches(_loader(pairs_dir), 1, start_index=2)  # one batch of epoch 1 already run
    assert len(resumed) == 2
    for (content, style), (reference_content, reference_style) in zip(resumed, uninterrupted[4:]):
        assert torch.equal(content, reference_content) and torch.equal(style, reference_style)
    assert not torch.equal(uninterrupted[0][0], uninterrupted[3][0])


def test_rank_shards_together_are_the_single_process_batch():
    whole = list(PositionSampler(8, 4))
    shards = []
    for rank in (0, 1):
        sampler = PositionSampler(8, 4)
        sampler.shard(rank, 2)
        sampler.set_epoch(0)
        shards.append(list(sampler))
        assert len(sampler) == 4
    assert shards == [[0, 1, 4, 5], [2, 3, 6, 7]] and sorted(shards[0] + shards[1]) == whole


def test_missing_images_csv_is_one_line_naming_it(tmp_path):
    with pytest.raises(NstlabError, match=r"images\.csv: missing .*rerun the pair stage"):
        CropDataset(tmp_path, "independent", RESIZE, CROP, seed=0)
