"""Where and how tensors run: the device, autocast precision, and the random state.

The trainer, evaluation and the benchmark share these; model code uses `seeded` to build
weights from a seed without touching the caller's random state.
"""

import contextlib
import ctypes
import ctypes.util
import os
import re
from collections.abc import Iterator
from pathlib import Path

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


def native_bf16_cpu() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX), read from /proc/cpuinfo.

    There bf16 autocast roughly halves matmul and conv time; on other CPUs bf16 is emulated and
    slower than fp32, so `auto` stays fp32 (and on systems without /proc/cpuinfo).
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", flags) is not None


def autocast_dtype(cfg, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `train.precision`, None for fp32.

    `bf16` and `fp32` are obeyed as written; `auto` picks bf16 where it is native (CUDA, CPUs
    with AVX512-BF16/AMX) and fp32 elsewhere.
    """
    precision = cfg.train.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" or native_bf16_cpu() else "fp32"
    return torch.bfloat16 if precision == "bf16" else None


# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Let glibc keep freed memory for reuse instead of handing it back to the OS.

    By default glibc serves every block over 32 MB (a 512² activation map is one) with its own
    mmap and unmaps it on free, so each forward pass faults its activations in afresh; on this
    2-core VM that costs 8-12 % of a training step or a 512² stylisation (reports/benchmarks).
    Serving them from the heap and never trimming it lets later passes reuse freed pages (most
    of them: a freed block stays put when a small allocation lands after it), much as jemalloc or
    tcmalloc would (PyTorch's CPU tuning advice), without a preload.
    Peak RSS is what it was; it is just not returned until the process ends. Set
    NSTLAB_KEEP_FREED_MEMORY=0 to keep glibc's defaults. Returns whether the setting took.
    """
    if os.environ.get("NSTLAB_KEEP_FREED_MEMORY", "1") == "0":
        return False
    try:  # glibc's; macOS has no mallopt, Windows no libc to find, musl's ignores these (returns 0)
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


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
