"""train.precision: what `auto` picks, and bf16 training that agrees with fp32."""

import pytest
import torch

from nstlab import runtime
from nstlab.runtime import autocast_dtype
from nstlab.train import train

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
import resource, sys, torch
from nstlab.runtime import keep_freed_memory
took = keep_freed_memory()
def touch():  # 64 MB, past glibc's 32 MB mmap ceiling: a fresh mapping each time by default
    torch.ones(2**24)
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch()
print(took, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.parametrize("setting", ["1", "0"])
def test_kept_memory_lets_the_second_activation_reuse_the_first_ones_pages(setting):
    """The second 64 MB tensor page-faults its 16,384 4-KiB pages in afresh under glibc's
    defaults (NSTLAB_KEEP_FREED_MEMORY=0) and reuses the first one's with the lever on."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "NSTLAB_KEEP_FREED_MEMORY": setting}
    result = subprocess.run(
        [sys.executable, "-c", KEEP_MEMORY_PROBE], env=env, capture_output=True, text=True, check=True
    )
    took, faults = result.stdout.split()
    if setting == "1":
        assert took == "True" and int(faults) < 1000
    else:
        assert took == "False" and int(faults) > 4000  # 16,384 with 4-KiB pages, fewer with huge pages
