"""Where and how tensors run: the device, autocast precision, and the random state.

The trainer, evaluation and the benchmark share these; model code uses `seeded` to build
weights from a seed without touching the caller's random state.
"""

import contextlib
from collections.abc import Iterator

import torch

from nstlab.errors import NstlabError


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with the CPU generator seeded by `seed`; the caller's state is restored after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def pick_device(cfg) -> torch.device:
    """`train.device`: cuda when asked (or auto and visible), else cpu."""
    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise NstlabError("train.device = cuda, but no CUDA device is visible; use auto or cpu")
    if cfg.train.device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def autocast_dtype(cfg, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA (auto or bf16), fp32 on CPU (CPU bf16 is slower and not the paper's)."""
    if device.type == "cuda" and cfg.train.precision in ("auto", "bf16"):
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)


def rng_state() -> dict:
    """This process's random state, as a checkpoint keeps it."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()  # this process's GPU: under torchrun each rank has its own
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
