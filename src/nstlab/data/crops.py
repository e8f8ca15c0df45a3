"""The baselines' own training data: random crops of resized images, content and style drawn
independently each step, as every official baseline code trains (docs/methods.md, "Training
protocols": Resize 512×512, RandomCrop 256, infinite samplers).

A batch is a run of global positions p = step·batch_size + k. Everything about position p is
a function of (seed, p) only: which content and which style (a fresh seeded permutation of
each list per pass, as an infinite sampler reshuffles when exhausted) and where each crop
sits. So a run resumed at any step sees exactly the images and crops it would have seen, and
DataLoader workers need no shared state. `PositionSampler` speaks EpochSampler's
`set_epoch(epoch, start_index)`, so the trainer's loop drives both alike.
"""

import csv
import hashlib
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from nstlab.data.dataset import seeded_loader
from nstlab.data.images import load_rgb, to_tensor
from nstlab.data.pairs import IMAGES_CSV
from nstlab.errors import NstlabError


def _stream_seed(*parts) -> int:
    """A 63-bit seed for one named random stream, e.g. ("content", seed, pass)."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big") >> 1


@lru_cache(maxsize=8)
def _pass_order(n_items: int, stream: str, seed: int, pass_index: int) -> tuple[int, ...]:
    generator = torch.Generator().manual_seed(_stream_seed(stream, seed, pass_index))
    return tuple(torch.randperm(n_items, generator=generator).tolist())


def stream_index(n_items: int, stream: str, seed: int, position: int) -> int:
    """Item of `stream` at `position`: passes over range(n_items), each in its own seeded order."""
    pass_index, offset = divmod(position, n_items)
    return _pass_order(n_items, stream, seed, pass_index)[offset]


@lru_cache(maxsize=32)  # the demo's whole train split; at paper scale a few MB that rarely hit
def _resized(path: Path, resize: int) -> Image.Image:
    """torchvision's Resize((resize, resize)) on a PIL image: bilinear, antialiased."""
    return load_rgb(path).resize((resize, resize), Image.Resampling.BILINEAR)


def resized_crop(path: Path, resize: int, crop: int, generator: torch.Generator) -> torch.Tensor:
    """Resize((resize, resize)) then RandomCrop(crop): (3, crop, crop) in [0, 1]."""
    image = _resized(path, resize)
    top, left = (int(torch.randint(0, resize - crop + 1, (1,), generator=generator)) for _ in range(2))
    return to_tensor(image.crop((left, top, left + crop, top + crop)))


def train_sources(pairs_dir: Path, root: Path | None = None) -> dict[str, list[Path]]:
    """The train split's usable source images per role, in images.csv order (the pair stage's)."""
    path = pairs_dir / IMAGES_CSV
    if not path.is_file():
        raise NstlabError(
            f"{path}: missing (the baselines read the source images it lists); "
            "rerun the pair stage (nstlab pair / dvc repro pair)"
        )
    root = root if root is not None else Path()
    sources: dict[str, list[Path]] = {"content": [], "style": []}
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["split"] == "train":
                sources[row["role"]].append(root / row["source"])
    return sources


def train_pair_sources(pairs_dir: Path, root: Path | None = None) -> list[tuple[Path, Path]]:
    """train.csv's fixed pairs, as their source images (images.csv maps cached copy -> source)."""
    root = root if root is not None else Path()
    with open(pairs_dir / IMAGES_CSV, newline="", encoding="utf-8") as handle:
        source_of = {row["cached"]: root / row["source"] for row in csv.DictReader(handle)}
    with open(pairs_dir / "train.csv", newline="", encoding="utf-8") as handle:
        return [(source_of[row["content"]], source_of[row["style"]]) for row in csv.DictReader(handle)]


class CropDataset(Dataset):
    """Position p -> (content crop, style crop). sampling "independent": content and style from
    their own streams; "pairs": both from one stream over the fixed pairs."""

    def __init__(
        self, pairs_dir: Path, sampling: str, resize: int, crop: int, seed: int, root: Path | None = None
    ):
        self.sampling, self.resize, self.crop, self.seed = sampling, resize, crop, seed
        sources = train_sources(pairs_dir, root)
        self.contents, self.styles = sources["content"], sources["style"]
        self.pairs = train_pair_sources(pairs_dir, root) if sampling == "pairs" else []
        if not self.contents or not self.styles:
            raise NstlabError(
                f"{pairs_dir / IMAGES_CSV}: no train content or style images; rerun the pair stage"
            )

    def sources_at(self, position: int) -> tuple[Path, Path]:
        if self.sampling == "pairs":
            return self.pairs[stream_index(len(self.pairs), "pairs", self.seed, position)]
        return (
            self.contents[stream_index(len(self.contents), "content", self.seed, position)],
            self.styles[stream_index(len(self.styles), "style", self.seed, position)],
        )

    def __len__(self) -> int:  # positions are unbounded; the sampler says which ones
        return len(self.pairs) if self.sampling == "pairs" else max(len(self.contents), len(self.styles))

    def __getitem__(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        crops = []
        for role, path in zip(("content", "style"), self.sources_at(position)):
            generator = torch.Generator().manual_seed(_stream_seed("crop", role, self.seed, position))
            crops.append(resized_crop(path, self.resize, self.crop, generator))
        return crops[0], crops[1]


class PositionSampler(Sampler[int]):
    """Positions [epoch·epoch_length + start_index, (epoch + 1)·epoch_length) for `set_epoch`;
    after `shard(rank, world_size)`, this rank's slice of every global batch (as ShardSampler)."""

    def __init__(self, epoch_length: int, global_batch: int):
        self.epoch_length, self.global_batch = epoch_length, global_batch
        self.local_batch, self.offset = global_batch, 0
        self.epoch, self.start_index = 0, 0

    def shard(self, rank: int, world_size: int) -> None:
        self.local_batch = self.global_batch // world_size
        self.offset = rank * self.local_batch

    def set_epoch(self, epoch: int, start_index: int = 0) -> None:
        self.epoch, self.start_index = epoch, start_index

    def __iter__(self) -> Iterator[int]:
        first = self.epoch * self.epoch_length
        for start in range(
            first + self.start_index, first + self.epoch_length - self.global_batch + 1, self.global_batch
        ):
            yield from range(start + self.offset, start + self.offset + self.local_batch)

    def __len__(self) -> int:
        return max(0, self.epoch_length - self.start_index) // self.global_batch * self.local_batch


def make_crop_loader(
    pairs_dir: Path,
    data,
    *,
    batch_size: int,
    steps_per_epoch: int,
    seed: int,
    workers: int = 0,
    root: Path | None = None,
) -> DataLoader:
    """A training DataLoader for a baseline's `data` block (nstlab.config.BaselineDataConfig)."""
    dataset = CropDataset(pairs_dir, data.sampling, data.resize, data.crop, seed, root)
    sampler = PositionSampler(steps_per_epoch * batch_size, batch_size)
    return seeded_loader(dataset, sampler, batch_size=batch_size, drop_last=True, seed=seed, workers=workers)
