"""`nstlab bench train|stylize`: the speed benchmarks of the ViT-LoRA model.

Synthetic inputs already on the device (so the number is the model's, not the disk's), warm-up
steps first, `torch.cuda.synchronize` around the timed region, FLOPs counted once with
torch's FlopCounterMode. Needs neither mlflow nor dvc (the GPU machine has neither).
"""

import datetime
import platform
import sys
import time

import torch

from nstlab.config import Config


def _device_name(device: torch.device) -> str:
    return (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _count_flops(function) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        function()
    return float(counter.get_total_flops())


def _timed(function, steps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        function()
    _sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        function()
    _sync(device)
    return (time.perf_counter() - started) / steps


def run_benchmark(
    cfg: Config, what: str, *, steps: int = 10, warmup: int = 3, size: tuple[int, int] = (1064, 1600)
) -> dict:
    """Returns a JSON-able dict: seconds per step/image, throughput, peak memory, TFLOP/s, the speed
    levers in force (train.precision as resolved, glibc keeping freed memory:
    nstlab.runtime.keep_freed_memory), config."""
    from nstlab.errors import NstlabError
    from nstlab.models import build_model
    from nstlab.runtime import autocast, autocast_dtype, keep_freed_memory, pick_device
    from nstlab.training.trainer import train_step

    if what not in ("train", "stylize"):
        raise NstlabError(f"bench {what!r}: choose train or stylize")
    device = pick_device(cfg)
    dtype = autocast_dtype(cfg, device)
    kept_memory = keep_freed_memory()
    torch.manual_seed(cfg.seed)
    model = build_model("vit_lora", cfg)
    model.enable_lora()
    model.to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if what == "train":
        side = cfg.data.image_size
        content = torch.rand(cfg.train.batch_size, 3, side, side, device=device)
        style = torch.rand(cfg.train.batch_size, 3, side, side, device=device)
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.train.lr)
        weights = {name: w for name, w in model.loss_weights.items() if w}

        def step():
            train_step(model, optimizer, None, weights, content, style, dtype, None)
    else:
        model.eval()
        content = torch.rand(1, 3, *size, device=device)
        style = torch.rand(1, 3, 512, 512, device=device)

        @torch.no_grad()
        def step():
            with autocast(device, dtype):
                model(content, style)

    flops = _count_flops(step)
    seconds = _timed(step, steps, warmup, device)
    result = {
        "benchmark": what,
        "device": _device_name(device),
        "precision": str(dtype).replace("torch.", "") if dtype else "fp32",
        "levers": {
            "precision": "bf16" if dtype else "fp32",
            "keep_freed_memory": kept_memory,
        },
        "seconds_per_step": seconds,
        "tflops_per_step": flops / 1e12,
        "achieved_tflop_per_s": flops / seconds / 1e12,
        "peak_memory_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "steps": steps,
        "warmup": warmup,
        "profile": cfg.profile,
        "config": {
            key: value
            for key, value in cfg.flat().items()
            if key.split(".")[0] in ("encoder", "lora", "decoder", "backbone", "train", "data")
        },
        "command": " ".join(["nstlab", *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
    }
    if what == "train":
        result["batch_size"] = cfg.train.batch_size
        result["image_size"] = cfg.data.image_size
        result["pairs_per_s"] = cfg.train.batch_size / seconds
    else:
        result["image_hw"] = list(size)
        result["ms_per_image"] = seconds * 1000
    return result
