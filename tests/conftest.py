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
