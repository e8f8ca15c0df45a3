"""Several processes, one training run: torchrun's environment becomes a process group, and
these are the few things the trainer needs around DistributedDataParallel.

Without torchrun (WORLD_SIZE unset or 1) nothing is started: world_size() is 1, rank() is 0
and every helper hands back its input, so a single-process run takes the code path it always had.
"""

import os
from contextlib import contextmanager

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader

from nstlab.data.dataset import EpochSampler


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """Rank 0 alone writes files and talks to MLflow."""
    return rank() == 0


@contextmanager
def process_group(device_type: str):
    """Join torchrun's group for the duration: nccl with one GPU per process (cuda:LOCAL_RANK),
    gloo on CPU. A no-op outside torchrun, or inside a group the caller already set up."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        yield
        return
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def _reduce_device() -> torch.device:
    """nccl reduces CUDA tensors only, gloo CPU tensors."""
    return (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )


def all_finite(value: torch.Tensor) -> bool:
    """Whether `value` is finite on every rank: a rank that stopped alone on a NaN would leave the
    others waiting in the gradient all-reduce, so all stop together."""
    finite = torch.isfinite(value.detach()).all()
    if world_size() == 1:
        return bool(finite)
    flag = finite.to(_reduce_device(), torch.int32)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag)


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Each value averaged over ranks: a rank's loss is that of its share of the global batch.
    Every rank must call it at the same step."""
    if world_size() == 1:
        return values
    tensor = torch.tensor(list(values.values()), dtype=torch.float64, device=_reduce_device())
    dist.all_reduce(tensor)
    return dict(zip(values, (tensor / world_size()).tolist()))


def from_main(value):
    """Rank 0's `value` (any picklable object) on every rank; also a barrier."""
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


class ShardSampler(EpochSampler):
    """This rank's share of each global batch of EpochSampler's order: of every `global_batch`
    consecutive items, rank r of N takes slice r of size global_batch / N. Together the ranks
    see exactly the batches one process would, so the result does not depend on N. keep_last:
    an epoch's last partial batch too, split the same way (its size must divide by N)."""

    def __init__(self, n_items: int, seed: int, global_batch: int, keep_last: bool = False):
        super().__init__(n_items, seed)
        self.global_batch, self.keep_last = global_batch, keep_last
        self.local_batch = global_batch // world_size()

    def __iter__(self):
        order = list(super().__iter__())  # from start_index, which counts global items
        shares = []
        for start in range(0, len(order), self.global_batch):
            batch = order[start : start + self.global_batch]
            if len(batch) < self.global_batch and not self.keep_last:
                break
            share = len(batch) // world_size()
            shares += batch[rank() * share : (rank() + 1) * share]
        return iter(shares)

    def __len__(self) -> int:
        remaining = super().__len__()
        tail = remaining % self.global_batch // world_size() if self.keep_last else 0
        return remaining // self.global_batch * self.local_batch + tail


def shard_loader(loader: DataLoader, global_batch: int) -> DataLoader:
    """make_loader's shuffled loader (or make_crop_loader's) re-cut for this rank: batches of
    global_batch / N pairs, and a shorter last one where the loader keeps its last batch."""
    sampler = loader.sampler
    if hasattr(sampler, "shard"):  # nstlab.data.crops.PositionSampler
        sampler.shard(rank(), world_size())
    else:
        sampler = ShardSampler(len(loader.dataset), loader.sampler.seed, global_batch, not loader.drop_last)
    return DataLoader(
        loader.dataset,
        batch_size=sampler.local_batch,
        sampler=sampler,
        drop_last=loader.drop_last,
        num_workers=loader.num_workers,
        generator=loader.generator,
        pin_memory=loader.pin_memory,
    )


class _LossesAsForward(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, content: torch.Tensor, style: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.losses(content, style)


class DistributedModel(nn.parallel.DistributedDataParallel):
    """`model` as train_step sees it. DDP averages gradients over ranks only for what runs through
    its forward(), and our models score in losses(), so losses() is routed through forward().
    Frozen parts (encoders, the loss network) have no gradients and are left out by DDP; every
    trainable parameter gets a gradient each step, so find_unused_parameters stays off."""

    def __init__(self, model: nn.Module):
        cuda = next(model.parameters()).is_cuda
        super().__init__(_LossesAsForward(model), device_ids=[torch.cuda.current_device()] if cuda else None)

    def losses(self, content: torch.Tensor, style: torch.Tensor) -> dict[str, torch.Tensor]:
        return self(content, style)
