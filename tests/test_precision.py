"""train.precision: what `auto` picks, and bf16 training that agrees with fp32."""

import pytest
import torch

from nstlab import runtime
from nstlab.runtime import autocast_dtype
from nstlab.training.trainer import train

CPU = torch.device("cpu")
FAST = [
    "train.batch_size=2",
    "train.stage1.epochs=1",
    "train.log_every=1",
    "train.val_every=4",
    "train.sample_every=4",
    "train.max_val_pairs=2",
]


@pytest.mark.parametrize(
    ("precision", "native", "expected"),
    [
        ("auto", True, torch.bfloat16),
        ("auto", False, None),
        ("bf16", False, torch.bfloat16),  # explicit bf16 wins even where it is emulated
        ("fp32", True, None),  # explicit fp32 wins even where bf16 is native
    ],
)
def test_precision_on_cpu(tiny_config, monkeypatch, precision, native, expected):
    monkeypatch.setattr(runtime, "native_bf16_cpu", lambda: native)
    assert autocast_dtype(tiny_config(f"train.precision={precision}"), CPU) is expected


def test_auto_is_bf16_on_cuda(tiny_config, monkeypatch):
    monkeypatch.setattr(runtime, "native_bf16_cpu", lambda: False)
    assert autocast_dtype(tiny_config("train.precision=auto"), torch.device("cuda")) is torch.bfloat16


def test_native_bf16_reads_the_cpu_flags(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(runtime, "Path", lambda _: cpuinfo)
    cpuinfo.write_text("flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n")
    assert runtime.native_bf16_cpu()
    cpuinfo.write_text("flags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n")
    assert not runtime.native_bf16_cpu()
    cpuinfo.unlink()
    assert not runtime.native_bf16_cpu()  # no /proc/cpuinfo (macOS, Windows): fp32


def test_bf16_training_losses_track_fp32(tiny_config, tiny_pairs, tmp_path):
    """Four stage-1 steps from the same init: bf16 autocast keeps an 8-bit mantissa (relative
    rounding 2^-8 = 0.4 % per op, largely averaging out over a loss's sums), so per-step losses
    agree to a fraction of a percent (0.15 % measured), not to fp32's 1e-6. 1 % is the bound:
    room for bf16's rounding, well below what a wrong loss term, weight or input range gives."""
    totals = {}
    for precision in ("fp32", "bf16"):
        cfg = tiny_config(*FAST, f"train.precision={precision}")
        out = tmp_path / precision
        train(
            cfg,
            "vit_lora",
            1,
            pairs_dir=tiny_pairs,
            models_dir=out / "models",
            logs_dir=out / "logs",
            checkpoints_dir=out / "ckpt",
            progress=False,
            tracking=False,
        )
        rows = (out / "logs" / "vit_lora_stage1" / "train_log.csv").read_text().splitlines()
        header = rows[0].split(",")
        totals[precision] = [float(row.split(",")[header.index("total")]) for row in rows[1:]]
    assert len(totals["fp32"]) == 4
    assert totals["bf16"] != totals["fp32"]  # bf16 really ran
    assert totals["bf16"] == pytest.approx(totals["fp32"], rel=0.01)


KEEP_MEMORY_PROBE = """
import resource, torch
from nstlab.runtime import keep_freed_memory
took = keep_freed_memory()
def step():  # a forward's worth: three 64 MB activations alive at once (glibc mmaps each), then freed
    a = torch.ones(2**24); b = a * 2; c = b + a
    return float(c[0])
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print(took, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_kept_memory_lets_later_steps_reuse_freed_pages():
    """Three later steps fault all of their nine 64 MB tensors in afresh under glibc's defaults
    (NSTLAB_KEEP_FREED_MEMORY=0: 9 × 16,384 4-KiB pages, every run); with the lever on they mostly
    reuse freed pages: 0 to 3 tensors' worth over 20 runs (a freed block is not reused when a small
    allocation landed after it). Bound: under two thirds of the defaults' faults."""
    import os
    import subprocess
    import sys

    faults = {}
    for setting in ("1", "0"):
        env = {**os.environ, "NSTLAB_KEEP_FREED_MEMORY": setting}
        result = subprocess.run(
            [sys.executable, "-c", KEEP_MEMORY_PROBE], env=env, capture_output=True, text=True, check=True
        )
        took, count = result.stdout.split()
        assert took == str(setting == "1")
        faults[setting] = int(count)
    assert faults["0"] > 0
    assert faults["1"] < faults["0"] * 2 / 3
