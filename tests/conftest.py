"""Shared fixtures: tiny configs built from the committed params.yaml, so tests exercise the real loader."""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def committed_params() -> Path:
    """params.yaml as committed at HEAD, in a folder of its own that is removed at exit.

    Tests read the defaults, never the workspace's file, which `dvc exp run -S lora.r=32` (it
    applies the experiment's params there) or an edit may have changed. Outside a git checkout
    (an unpacked sdist) the file in the tree is the only version there is.
    """
    shown = subprocess.run(
        ["git", "show", "HEAD:params.yaml"], cwd=REPO, capture_output=True, text=True, check=False
    )
    text = shown.stdout if shown.returncode == 0 else (REPO / "params.yaml").read_text()
    folder = Path(tempfile.mkdtemp(prefix="nstlab-params-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    (folder / "params.yaml").write_text(text)
    return folder / "params.yaml"


# The committed defaults: every test reads these (plus the overrides it states), never REPO / "params.yaml".
PARAMS = committed_params()
WORKSPACE_PARAMS = str(REPO / "params.yaml")
workspace_params_reads: list[str] = []  # what opened the workspace's params.yaml during the current test


def _note_workspace_params(event: str, args: tuple) -> None:
    """Audit hook: a test process that opens the workspace's params.yaml (subprocesses are not seen)."""
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        if os.path.abspath(os.fsdecode(args[0])) == WORKSPACE_PARAMS:
            workspace_params_reads.append(WORKSPACE_PARAMS)


sys.addaudithook(_note_workspace_params)


@pytest.fixture(autouse=True)
def _reads_no_workspace_params():
    workspace_params_reads.clear()
    yield
    assert not workspace_params_reads, (
        f"this test read {WORKSPACE_PARAMS}, which `dvc exp run -S` or an edit may have changed; "
        "read conftest.PARAMS (the committed defaults) and state the overrides the test needs"
    )


# A ViT-LoRA small enough for CPU tests: hidden 32, 2 blocks, 32 px images; random-init backbones
# of that size (the demo profile's fitted ones are `dvc repro` outputs, at the demo's size).
TINY = [
    "backbone.vit=random",
    "backbone.vgg19=random",
    "backbone.adain_vgg=random",
    "backbone.adain_decoder=null",
    "backbone.vit_hidden=32",
    "backbone.vit_heads=2",
    "backbone.vit_mlp=64",
    "backbone.vit_layers=4",
    "backbone.vgg_width=0.0625",
    "encoder.layers=2",
    "decoder.layers=1",
    "decoder.heads=2",
    "decoder.ffn=64",
    "decoder.cnn_width=0.0625",
    "data.image_size=32",
]

# TINY's ViT as a transformers ViTConfig (32 px: a 2 × 2 grid), four blocks, for save_pretrained folders
TINY_VIT = dict(
    hidden_size=32,
    num_hidden_layers=4,
    num_attention_heads=2,
    intermediate_size=64,
    image_size=32,
    patch_size=16,
)


SHRINK = {  # the demo profile, smaller still: every stage runs, each in seconds
    "data": {"image_size": 32, "n_train": 8, "n_val": 2, "n_test": 2, "test_max_side": 48},
    "backbone": {"vit_hidden": 32, "vit_heads": 2, "vit_mlp": 64, "vit_layers": 4, "vgg_width": 0.0625},
    "decoder": {"ffn": 64, "cnn_width": 0.0625},
    "train": {
        "batch_size": 2,
        "stage1": {"epochs": 1},
        "stage2": {"epochs": 1, "milestones": [], "gamma": 1.0},
        "log_every": 1,
        "val_every": 2,
        "max_val_pairs": 2,
        "sample_every": 2,
    },
    "eval": {"max_size": 48, "max_pairs": 2, "gallery_pairs": 2},
    "baselines": {
        name: {"batch_size": 4 if name == "iest" else 2, "iterations": 2, "data": {"resize": 48, "crop": 32}}
        for name in ("stytr2", "adain", "sanet", "mcc", "artflow", "iest")
    },
}


def write_shrunk_params(path: Path) -> None:
    """Rewrite params.yaml at `path` with the demo profile shrunk to SHRINK (every stage in seconds)."""
    import yaml

    params = yaml.safe_load(path.read_text())
    demo = params["profiles"]["demo"]
    for block, values in SHRINK.items():
        for key, value in values.items():
            if isinstance(value, dict) and isinstance(demo[block].get(key), dict):
                demo[block][key].update(value)
            else:
                demo[block][key] = value
    demo["baselines"]["stytr2"]["options"] = {"d_model": 16, "heads": 2, "ffn": 32}
    demo["baselines"]["artflow"]["options"] = {"hidden": 8}
    demo["baselines"]["gatys"].update({"iterations": 2, "options": {"max_size": 32}})
    params["encoder"]["layers"] = 2
    params["decoder"].update({"layers": 1, "heads": 2})
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture
def tiny_overrides() -> list[str]:
    return list(TINY)


@pytest.fixture
def tiny_config():
    from nstlab.config import load_config

    def make(*extra: str):
        return load_config(PARAMS, [*TINY, *extra])

    return make


@pytest.fixture
def tiny_pairs(tmp_path):
    """train/val/test CSVs over 32 px seeded random images, as the pair stage writes them (each
    image its own source in images.csv)."""
    import csv

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    pairs_dir, cache = tmp_path / "pairs", tmp_path / "cache"
    pairs_dir.mkdir()
    cache.mkdir()
    images = [("split", "role", "source", "cached")]
    for split, count in (("train", 8), ("val", 4), ("test", 2)):
        with open(pairs_dir / f"{split}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["content", "style"])
            for index in range(count):
                row = []
                for role in ("content", "style"):
                    path = cache / f"{split}_{role}_{index}.png"
                    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
                    row.append(str(path))
                    images.append((split, role, str(path), str(path)))
                writer.writerow(row)
    with open(pairs_dir / "images.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(images)
    return pairs_dir
