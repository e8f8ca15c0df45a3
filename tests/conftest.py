"""Shared fixtures: tiny configs built from the real params.yaml, so tests exercise the real loader."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A ViT-LoRA small enough for CPU tests: hidden 32, 2 blocks, 32 px images.
TINY = [
    "backbone.vit_hidden=32", "backbone.vit_heads=2", "backbone.vit_mlp=64", "backbone.vit_layers=4",
    "backbone.vgg_width=0.0625", "encoder.layers=2", "decoder.layers=1", "decoder.heads=2",
    "decoder.ffn=64", "decoder.cnn_width=0.0625", "data.image_size=32",
]


@pytest.fixture
def tiny_overrides() -> list[str]:
    return list(TINY)


@pytest.fixture
def tiny_config():
    from nstlab.config import load_config

    def make(*extra: str):
        return load_config(REPO / "params.yaml", [*TINY, *extra])

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
