"""Pairs CSV → (content, style) tensors, in an order a resumed run can reproduce.

The order of epoch e is a function of (seed, e) only: `epoch_order` seeds a fresh
torch.Generator with seed·100003 + e (a plain seed + e would give seed 1 / epoch 0 the order of
seed 0 / epoch 1). A run resumed after k batches of epoch e sets `start_index = k·batch_size`
and sees exactly the batches it had not consumed.
"""

import csv
from collections.abc import Iterator
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from nstlab.data.images import to_tensor
from nstlab.errors import ImageError, NstlabError


class PairDataset(Dataset):
    """Rows of a pairs CSV (`content,style`) as ((3, H, W), (3, H, W)) float tensors in [0, 1].

    Reads the pair stage's cached PNGs directly (they were validated when cached). Relative
    paths resolve against `root`, default the working directory (the repo root in the pipeline).
    """

    def __init__(self, csv_path: Path | str, root: Path | str | None = None):
        csv_path = Path(csv_path)
        if not csv_path.is_file():
            raise NstlabError(f"{csv_path}: missing; run the pair stage first (nstlab pair / dvc repro pair)")
        root = Path(root) if root is not None else Path()
        with open(csv_path, newline="", encoding="utf-8") as handle:
            self.pairs = [(root / row["content"], root / row["style"]) for row in csv.DictReader(handle)]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        content_path, style_path = self.pairs[index]
        return _read_cached(content_path), _read_cached(style_path)


def _read_cached(path: Path) -> torch.Tensor:
    try:
        with Image.open(path) as image:
            return to_tensor(image)
    except FileNotFoundError:
        raise ImageError(f"{path}: cached image missing; rerun the pair stage (nstlab pair)") from None


def epoch_order(n_items: int, seed: int, epoch: int) -> list[int]:
    """The permutation of range(n_items) for `epoch`: depends on (seed, epoch) only."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n_items, generator=generator).tolist()


class EpochSampler(Sampler[int]):
    """Yields `epoch_order(n, seed, epoch)[start_index:]`; call `set_epoch` before each epoch."""

    def __init__(self, n_items: int, seed: int):
        self.n_items, self.seed = n_items, seed
        self.epoch, self.start_index = 0, 0

    def set_epoch(self, epoch: int, start_index: int = 0) -> None:
        """Select the epoch; `start_index` skips the items a resumed run already consumed."""
        self.epoch, self.start_index = epoch, start_index

    def __iter__(self) -> Iterator[int]:
        return iter(epoch_order(self.n_items, self.seed, self.epoch)[self.start_index :])

    def __len__(self) -> int:
        return max(0, self.n_items - self.start_index)


def make_loader(
    csv_path: Path | str,
    root: Path | str | None = None,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    workers: int = 0,
    drop_last: bool = True,
) -> DataLoader:
    """A DataLoader over a pairs CSV.

    shuffle=True: training order from an `EpochSampler` (reach it as `loader.sampler`); the last
    partial batch dropped (every step sees `batch_size` pairs) unless drop_last is False.
    shuffle=False: CSV order, every pair. Test pairs keep their aspect ratio, so batch them only
    with batch_size=1.
    """
    dataset = PairDataset(csv_path, root)
    sampler = EpochSampler(len(dataset), seed) if shuffle else None
    return seeded_loader(
        dataset, sampler, batch_size=batch_size, drop_last=shuffle and drop_last, seed=seed, workers=workers
    )


def seeded_loader(
    dataset: Dataset, sampler: Sampler | None, *, batch_size: int, drop_last: bool, seed: int, workers: int
) -> DataLoader:
    """A DataLoader with its own generator seeded by `seed`: a DataLoader iterator otherwise draws
    its base seed from the global RNG, and a resumed run (one more iterator) would then see other
    dropout masks. Every training loader (pairs and baseline crops) is built here."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed),
        pin_memory=torch.cuda.is_available(),
    )
