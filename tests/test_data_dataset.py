"""PairDataset tensors, and a data order that is a function of (seed, epoch) so resume can replay it."""

import pytest
import torch
from PIL import Image

from nstlab.data.dataset import EpochSampler, PairDataset, epoch_order, make_loader
from nstlab.errors import ImageError, NstlabError


@pytest.fixture
def pairs_csv(tmp_path):
    """Ten pairs of 32×32 cached PNGs; pair i has content gray level 10·i and style 255 − 10·i."""
    lines = ["content,style"]
    for i in range(10):
        for role, level in (("content", 10 * i), ("style", 255 - 10 * i)):
            (tmp_path / "cache" / role).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (32, 32), (level,) * 3).save(tmp_path / "cache" / role / f"{i}.png")
        lines.append(f"cache/content/{i}.png,cache/style/{i}.png")
    path = tmp_path / "train.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_items_are_chw_float_tensors_in_unit_range(pairs_csv, tmp_path):
    dataset = PairDataset(pairs_csv, root=tmp_path)
    content, style = dataset[3]
    assert len(dataset) == 10
    assert content.shape == style.shape == (3, 32, 32) and content.dtype == style.dtype == torch.float32
    assert 0 <= content.min() and style.max() <= 1
    assert content[0, 0, 0].item() == pytest.approx(30 / 255) and style[0, 0, 0].item() == pytest.approx(
        225 / 255
    )


def test_relative_paths_resolve_from_the_working_directory_by_default(pairs_csv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert PairDataset("train.csv")[0][0].shape == (3, 32, 32)


def test_missing_csv_and_missing_cached_image_name_the_file(pairs_csv, tmp_path):
    with pytest.raises(NstlabError, match="absent.csv: missing; run the pair stage"):
        PairDataset(tmp_path / "absent.csv")
    (tmp_path / "cache/style/4.png").unlink()
    with pytest.raises(ImageError, match="style/4.png: cached image missing"):
        PairDataset(pairs_csv, root=tmp_path)[4]


def test_epoch_order_depends_on_seed_and_epoch_only():
    assert epoch_order(50, seed=3, epoch=2) == epoch_order(50, seed=3, epoch=2)
    assert sorted(epoch_order(50, seed=3, epoch=2)) == list(range(50))
    assert epoch_order(50, seed=3, epoch=2) != epoch_order(50, seed=3, epoch=3)
    assert epoch_order(50, seed=0, epoch=1) != epoch_order(50, seed=1, epoch=0)


def test_sampler_start_index_yields_the_tail_of_the_epoch():
    sampler = EpochSampler(20, seed=7)
    sampler.set_epoch(4)
    full = list(sampler)
    sampler.set_epoch(4, start_index=6)
    assert list(sampler) == full[6:] and len(sampler) == 14


def batches(loader) -> list[list[float]]:
    """Each batch as its content gray levels, which identify the pairs."""
    return [torch.round(content[:, 0, 0, 0] * 255).tolist() for content, _ in loader]


def test_loader_order_is_reproducible_and_resumable(pairs_csv, tmp_path):
    loader = make_loader(pairs_csv, tmp_path, batch_size=3, shuffle=True, seed=11)
    loader.sampler.set_epoch(1)
    full = batches(loader)
    assert len(full) == 3 and all(len(batch) == 3 for batch in full)  # 10 pairs: last partial batch dropped
    assert batches(make_loader(pairs_csv, tmp_path, batch_size=3, shuffle=True, seed=11)) != full  # epoch 0
    resumed = make_loader(pairs_csv, tmp_path, batch_size=3, shuffle=True, seed=11)
    resumed.sampler.set_epoch(1, start_index=2 * 3)
    assert batches(resumed) == full[2:]


def test_loader_without_shuffle_keeps_csv_order_and_every_pair(pairs_csv, tmp_path):
    loader = make_loader(pairs_csv, tmp_path, batch_size=4, shuffle=False, seed=0)
    assert batches(loader) == [[0, 10, 20, 30], [40, 50, 60, 70], [80, 90]]
