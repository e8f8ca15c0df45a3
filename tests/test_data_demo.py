"""The packaged demo images: counts, decodability, documented sizes, licence table, regeneration."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nstlab.data import demo_art

DEMO = Path(demo_art.__file__).with_name("demo")
ROLES = ("content", "style")
MAX_TOTAL_BYTES = 3 * 1024 * 1024
# README table rows: | `content/name.jpg` | 384x256 | source | author | licence |
ROW = re.compile(r"^\|\s*`((?:content|style)/[^`]+)`\s*\|\s*(\d+)x(\d+)\s*\|(.*)\|\s*$")


def _files(role: str) -> list[Path]:
    return sorted((DEMO / role).glob("*.jpg"))


def _readme_rows() -> dict[str, tuple[tuple[int, int], list[str]]]:
    rows = {}
    for line in (DEMO / "README.md").read_text(encoding="utf-8").splitlines():
        if match := ROW.match(line):
            rel, w, h, rest = match.groups()
            assert rel not in rows, f"{rel} listed twice in the README table"
            rows[rel] = ((int(w), int(h)), [cell.strip() for cell in rest.split("|")])
    return rows


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> list[Path]:
    return demo_art.generate_style_images(tmp_path_factory.mktemp("style"), seed=demo_art.DEFAULT_SEED)


def test_enough_images_for_disjoint_splits():
    assert len(_files("content")) >= 20
    assert len(_files("style")) >= 16


def test_total_size_is_small():
    total = sum(path.stat().st_size for path in DEMO.rglob("*") if path.is_file())
    assert total <= MAX_TOTAL_BYTES, f"demo data is {total} bytes"


def test_readme_table_lists_exactly_the_files():
    listed = set(_readme_rows())
    shipped = {f"{role}/{path.name}" for role in ROLES for path in _files(role)}
    assert shipped - listed == set(), "files missing from demo/README.md"
    assert listed - shipped == set(), "README rows without a file"


def test_readme_rows_name_source_author_and_licence():
    for rel, (_, (source, author, licence)) in _readme_rows().items():
        assert source and author and licence, rel
        if rel.startswith("style/"):
            assert f"pattern `{Path(rel).stem}`" in source and "seed 0" in source, rel


@pytest.mark.parametrize("role", ROLES)
def test_every_file_decodes_as_rgb_with_the_documented_size(role):
    rows = _readme_rows()
    for path in _files(role):
        with Image.open(path) as im:
            assert im.format == "JPEG", path.name
            im.load()
            assert im.mode == "RGB", path.name
            assert im.size == rows[f"{role}/{path.name}"][0], path.name
            if role == "content":
                assert max(im.size) == 384, path.name
            else:
                assert im.size == (demo_art.SIZE, demo_art.SIZE), path.name


def test_style_images_are_distinct():
    means = [np.asarray(Image.open(path), dtype=np.float64).mean(axis=(0, 1)) for path in _files("style")]
    stds = [np.asarray(Image.open(path).convert("L"), dtype=np.float64).std() for path in _files("style")]
    assert min(stds) > 10, "a style image is nearly flat"
    pairs = [(i, j) for i in range(len(means)) for j in range(i)]
    assert min(np.abs(means[i] - means[j]).sum() + abs(stds[i] - stds[j]) for i, j in pairs) > 3


def test_generator_writes_every_committed_style_name(regenerated):
    assert [path.name for path in regenerated] == [f"{name}.jpg" for name in demo_art.PATTERNS]
    assert sorted(path.name for path in regenerated) == [path.name for path in _files("style")]


def test_generator_reproduces_committed_pixels(regenerated):
    # Looser than byte equality: tells a pixel change apart from a mere encoder/bitstream change.
    for path in regenerated:
        new = np.asarray(Image.open(path), dtype=np.float64)
        old = np.asarray(Image.open(DEMO / "style" / path.name), dtype=np.float64)
        assert new.shape == old.shape, path.name
        assert np.abs(new - old).mean() < 1.0, f"{path.name}: mean |diff| >= 1/255"


def test_generator_reproduces_committed_bytes(regenerated):
    changed = [
        path.name for path in regenerated if path.read_bytes() != (DEMO / "style" / path.name).read_bytes()
    ]
    assert not changed, (
        f"{changed} differ from the committed files; if the pixel test passes, this Pillow/numpy build "
        "encodes differently: regenerate with `python -m nstlab.data.demo_art src/nstlab/data/demo/style`"
    )


def test_demo_art_imports_neither_torch_nor_skimage():
    code = "import sys, nstlab.data.demo_art; print(sorted({'torch', 'skimage'} & set(sys.modules)))"
    pythonpath = [str(DEMO.parents[2]), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, pythonpath))}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
