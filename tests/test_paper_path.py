"""End-to-end (slow): the paper profile on real data layouts, through a mirror that loses and mangles files.

A loopback mirror serves COCO 2014 (annotations zip + train2014/) and ArtGAN WikiArt
(wikiart_csv/style_train.csv + wikiart/, names with spaces, apostrophes and accents) with the
faults real mirrors have; the ViT is the google/vit-base-patch16-224-in21k configuration with
random weights, saved with save_pretrained; the VGGs are weight files. `nstlab` then runs
download → pair → stage 1 → stage 2 → evaluate → report at paper sizes, a handful of steps.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import PARAMS, REPO
from conftest_data import fake_mirror, serve_coco, serve_wikiart  # noqa: F401 (fixture)
from nstlab.data.sources import draw_order

pytestmark = pytest.mark.slow

IMAGES_PER_ROLE = 7  # n_train 4 + n_val 1 + n_test 2


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """The in21k ViT-B/16 config (hidden 768, 12 heads, patch 16, 12 blocks, 224 px) with random
    weights, a VGG-19 `features.*` state dict and a vgg_normalised-style state dict."""
    from transformers import ViTConfig, ViTModel

    from nstlab.models.encoders import NormalisedVGG, _vgg19_features

    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        image_size=224,
        patch_size=16,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
    )
    ViTModel(config, add_pooling_layer=True).save_pretrained(root / "vit-base-patch16-224-in21k")
    vgg = {f"features.{key}": value for key, value in _vgg19_features(37, 1.0).state_dict().items()}
    torch.save(vgg, root / "vgg19.pth")
    convs = [m for m in NormalisedVGG("random").modules() if isinstance(m, torch.nn.Conv2d)]
    torch.save(
        {
            f"{index}.{name}": getattr(conv, name)
            for index, conv in enumerate(convs)
            for name in ("weight", "bias")
        },
        root / "vgg_normalised.pth",
    )
    return root


def _nstlab(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(REPO / "src")}
    for name in ("MLFLOW_TRACKING_URI", "DVC_ROOT"):
        env.pop(name, None)
    quiet = [] if args[0] == "report" else ["--no-progress"]
    return subprocess.run(
        [sys.executable, "-m", "nstlab", *args, *quiet],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"{result.args} exited {result.returncode}:\n{result.stderr[-4000:]}"
    return result.stdout + result.stderr


def test_paper_profile_through_a_faulty_mirror_to_the_report(fake_mirror, weights, tmp_path):
    seed = yaml.safe_load(PARAMS.read_text())["seed"]
    coco = serve_coco(fake_mirror, 30, size=(96, 72))
    wikiart = serve_wikiart(fake_mirror, 30, size=(72, 96), odd_names=True)
    coco_drawn = draw_order(coco, seed, "coco-content")[:IMAGES_PER_ROLE]
    art_drawn = draw_order(wikiart, seed, "wikiart-style")[:IMAGES_PER_ROLE]
    fake_mirror.fail("coco/annotations/annotations_trainval2014.zip", "corrupt")  # a corrupt index, once
    fake_mirror.fail(f"coco/train2014/{coco_drawn[0]}", "drop")  # resumed with a Range request
    fake_mirror.fail(f"coco/train2014/{coco_drawn[1]}", "500", "500")
    fake_mirror.fail(f"coco/train2014/{coco_drawn[2]}", "drop", "ignore_range")
    fake_mirror.fail(f"coco/train2014/{coco_drawn[3]}", "corrupt")  # whole body, bad bytes: decode fails
    fake_mirror.fail(f"coco/train2014/{coco_drawn[4]}", "stall")  # timed out, then fetched again
    fake_mirror.fail("wikiart/wikiart_csv/style_train.csv", "drop")
    fake_mirror.fail(f"wikiart/wikiart/{art_drawn[0]}", "corrupt", "drop")
    lost = art_drawn[1:3]  # listed in style_train.csv, absent on the mirror
    for name in lost:
        del fake_mirror.files[f"wikiart/wikiart/{name}"]

    (tmp_path / "params.yaml").write_text(PARAMS.read_text())
    settings = [
        "-S",
        "profile=paper",
        "-S",
        f"data.mirror={fake_mirror.base_url}",
        *[
            item
            for key_value in (
                "data.n_train=4",
                "data.n_val=1",
                "data.n_test=2",
                "data.max_missing=0.3",
                "data.download_timeout_s=2",
                "data.download_workers=4",
                f"backbone.vit={weights / 'vit-base-patch16-224-in21k'}",
                f"backbone.vgg19={weights / 'vgg19.pth'}",
                f"backbone.adain_vgg={weights / 'vgg_normalised.pth'}",
                "train.batch_size=2",
                "train.stage1={epochs: 1}",
                "train.stage2={epochs: 1}",
                "train.workers=0",
                "train.log_every=1",
                "train.val_every=2",
                "train.max_val_pairs=1",
                "train.sample_every=2",
                "eval.max_pairs=2",
                "eval.gallery_pairs=2",
            )
            for item in ("-S", key_value)
        ],
    ]

    served_bytes = fake_mirror.files
    output = _ok(_nstlab(["download", *settings], tmp_path))
    assert "2 missing on the server" in output and all(name in output for name in lost)
    for role, folder, drawn, served in (
        ("content", "coco/train2014", coco_drawn, coco),
        ("style", "wikiart/wikiart", art_drawn, wikiart),
    ):
        files = sorted(path for path in (tmp_path / "data/raw" / role).rglob("*.jpg"))
        names = [path.relative_to(tmp_path / "data/raw" / role).as_posix() for path in files]
        assert len(names) == IMAGES_PER_ROLE and set(names) <= set(served)
        assert all(path.read_bytes() == served_bytes[f"{folder}/{name}"] for path, name in zip(files, names))
    assert set(lost).isdisjoint(names) and set(art_drawn) - set(lost) <= set(names)
    assert len(fake_mirror.requests_for("coco/annotations/annotations_trainval2014.zip")) == 2
    assert len(fake_mirror.requests_for(f"coco/train2014/{coco_drawn[3]}")) == 2

    fake_mirror.requests.clear()
    again = _ok(_nstlab(["download", *settings], tmp_path))  # a rerun: the missing files only are asked again
    assert sorted(path for path, _ in fake_mirror.requests) == sorted(f"wikiart/wikiart/{n}" for n in lost)
    assert "0 downloaded" in again

    _ok(_nstlab(["pair", *settings], tmp_path))
    for stage in ("1", "2"):
        log = _ok(_nstlab(["train", "vit_lora", "--stage", stage, *settings], tmp_path))
        vit_lines = [line for line in log.splitlines() if "vit-base-patch16-224-in21k): blocks" in line]
        vit = weights / "vit-base-patch16-224-in21k"
        # one load per process: the style encoder is a copy of the content encoder
        assert vit_lines == [f"ViT-B/16 ({vit}): blocks 1-6 of 12 loaded"]
        assert "LOAD REPORT" not in log and "UNEXPECTED" not in log
        assert (tmp_path / f"models/vit_lora_stage{stage}/model.pt").is_file()
    _ok(_nstlab(["evaluate", "vit_lora", *settings], tmp_path))
    assert (tmp_path / "reports/metrics/vit_lora.json").is_file()
    _ok(_nstlab(["report", *settings], tmp_path))
    table1 = (tmp_path / "reports/table1.csv").read_text().splitlines()
    assert len(table1) == 2 and table1[1].lower().startswith("vit")
