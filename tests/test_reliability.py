"""Reliability and security end to end: what a user sees when an input, a checkpoint, the disk
or the process goes wrong.

Exit codes, stderr and the absence of a traceback are checked on the real `nstlab` command in
subprocesses for the cases the issue names. Each of those pays for importing torch, so module
fixtures run them two at a time (one per core, OMP_NUM_THREADS=1) and the tests read their
results. The other CLI cases go through `nstlab.cli.main` in this process (same exit code and
stderr, imports already paid for).
"""

import csv
import errno
import io
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

import nstlab.training.checkpoint
from conftest import PARAMS, TINY
from conftest_data import fake_mirror, noise_image, serve_coco, serve_wikiart, write_image  # noqa: F401 (fixture)
from test_data_images import png_header_only
from nstlab.training.checkpoint import load_checkpoint, save_atomic
from nstlab.cli import main
from nstlab.config import load_config, parse_override
from nstlab.data.images import load_rgb
from nstlab.data.pairs import build_pairs
from nstlab.errors import ImageError, NstlabError
from nstlab.training.trainer import Trainer, train

_SCRIPT = Path(sys.executable).with_name("nstlab")
NSTLAB = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "nstlab"]
# 8 train pairs, batch 2: 4 steps per epoch; a checkpoint every 2 steps.
SCHEDULE = [
    "train.batch_size=2",
    "train.stage1.epochs=1",
    "train.stage2.epochs=1",
    "train.stage2.milestones=[]",
    "train.log_every=1",
    "train.val_every=2",
    "train.sample_every=4",
    "train.max_val_pairs=2",
]
ROLES = ("content", "style")


# -- helpers ----------------------------------------------------------------------------------


def _holds(tree: dict, keys: list[str]) -> bool:
    for key in keys:
        if not isinstance(tree, dict) or key not in tree:
            return False
        tree = tree[key]
    return True


def write_params(path: Path, overrides: list[str]) -> Path:
    """The committed params.yaml with `key=value` overrides written in where a user would: in the
    active profile's block for a key the profile sets (so no profile value is hidden), else at
    the top level."""
    raw = yaml.safe_load(PARAMS.read_text())
    profile = raw["profiles"][raw["profile"]]
    for text in overrides:
        keys, value = parse_override(text)
        node = profile if _holds(profile, keys) else raw
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def cli_env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlruns.db'}"}


@dataclass(frozen=True)
class CliRuns:
    folder: Path  # where the cases' files are, and the commands' working directory
    results: dict[str, subprocess.CompletedProcess]


def run_cli_cases(cases: dict[str, list[str]], folder: Path) -> CliRuns:
    """Run `nstlab <args>` for every case in `folder`, two at a time."""

    def run(args: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*NSTLAB, *args], cwd=folder, env=cli_env(folder), capture_output=True, text=True, timeout=300
        )

    with ThreadPoolExecutor(max_workers=2) as pool:
        return CliRuns(folder, dict(zip(cases, pool.map(run, cases.values()))))


def error_line(result: subprocess.CompletedProcess, *words: str) -> str:
    """Exit code 2, no traceback, exactly one `nstlab: error:` line, holding every word."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("nstlab: error: ")]
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def cli_in_process(args: list[str], capsys) -> subprocess.CompletedProcess:
    """`nstlab <args>` through `nstlab.cli.main` in this process, where torch is already imported."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, exit_info.value.code, captured.out, captured.err)


def stylize_args(
    trained: "Trained", content: Path, style: Path, output: Path, *extra: str, checkpoint: Path | None = None
) -> list[str]:
    return [
        "stylize",
        str(content),
        str(style),
        "-o",
        str(output),
        "--params",
        str(trained.params),
        "--checkpoint",
        str(checkpoint or trained.stage2),
        *extra,
    ]


# -- bad and odd image files: name → (writer, what the one-line error says) --------------------


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _text(path: Path) -> None:
    path.write_text("these are not pixels\n" * 20)


def _truncated_jpeg(path: Path) -> None:
    buffer = io.BytesIO()
    noise_image((64, 48)).save(buffer, format="JPEG", quality=95)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def _bomb_png(path: Path) -> None:  # 57 bytes that claim 30000×30000 and hold no pixel data
    png_header_only(path, 30000, 30000)


def _tiny_7x9(path: Path) -> None:
    noise_image((7, 9)).save(path, format="PNG")


def _eps_named_jpg(path: Path) -> None:  # Pillow would hand an EPS to Ghostscript
    path.write_bytes(
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\n0 0 moveto 32 32 lineto stroke\n%%EOF\n"
    )


BAD_IMAGES = {
    "empty.jpg": (_empty, "empty file (0 bytes)"),
    "not_an_image.jpg": (_text, "not an image"),
    "truncated.jpg": (_truncated_jpeg, "truncated"),
    "bomb_30000x30000.png": (_bomb_png, "decompression-bomb guard"),
    "tiny_7x9.png": (_tiny_7x9, "7x9 px is smaller than min_side=16"),
    "eps_named.jpg": (_eps_named_jpg, "not an image in a supported format"),
}


def _cmyk_jpeg(path: Path) -> None:
    Image.new("CMYK", (40, 24), (0, 255, 255, 0)).save(path, format="JPEG", quality=95)


def _gray16_png(path: Path) -> None:
    image = Image.new("I;16", (32, 20), 200 * 257)
    image.putpixel((0, 0), 65535)
    image.save(path, format="PNG")


def _palette_gif(path: Path) -> None:
    noise_image((36, 28)).convert("P").save(path, format="GIF")


def _rgba_png(path: Path) -> None:
    image = noise_image((30, 30), mode="RGBA")
    image.putpixel((0, 0), (0, 0, 255, 0))
    image.save(path, format="PNG")


def _exif_rotated_jpeg(path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90° clockwise: stored 40×20, displayed 20×40
    noise_image((40, 20)).save(path, format="JPEG", exif=exif.tobytes(), quality=95)


def _webp(path: Path) -> None:
    noise_image((32, 24)).save(path, format="WEBP", lossless=True)


def _odd_33x17(path: Path) -> None:
    noise_image((33, 17)).save(path, format="PNG")


def _large_96x40(path: Path) -> None:
    noise_image((96, 40)).save(path, format="PNG")


SIZE_CAP = 48  # --size: the longer side of the output
ODD_IMAGES = {  # name → (writer, output size when it is the content, at --size 48)
    "cmyk.jpg": (_cmyk_jpeg, (40, 24)),
    "gray16.png": (_gray16_png, (32, 20)),
    "palette.gif": (_palette_gif, (36, 28)),
    "rgba.png": (_rgba_png, (30, 30)),
    "exif_rotated.jpg": (_exif_rotated_jpeg, (20, 40)),
    "image.webp": (_webp, (32, 24)),
    "odd_33x17.png": (_odd_33x17, (33, 17)),
    "large_96x40.png": (_large_96x40, (48, 20)),
}


class CodeInPickle:
    """A pickle payload that creates `marker` when unpickled by plain pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


# -- a trained tiny ViT-LoRA, once per module ---------------------------------------------------


@dataclass(frozen=True)
class Trained:
    params: Path  # params.yaml holding TINY + SCHEDULE, as the CLI reads it
    pairs: Path
    stage1: Path
    stage2: Path
    content: Path  # a good 40×30 content image
    style: Path


def make_pairs(root: Path) -> Path:
    """Eight content and eight style noise images through the real pair stage."""
    contents = [write_image(root / "raw/content" / f"c{i}.jpg", (40, 30), seed=i) for i in range(8)]
    styles = [write_image(root / "raw/style" / f"s{i}.png", (36, 36), seed=50 + i) for i in range(8)]
    build_pairs(
        contents,
        styles,
        n_train=8,
        n_val=2,
        n_test=2,
        seed=0,
        image_size=32,
        cache_dir=root / "cache",
        out_dir=root / "pairs",
        workers=2,
        progress=False,
        pairing="random",
    )
    return root / "pairs"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Trained:
    root = tmp_path_factory.mktemp("trained")
    pairs = make_pairs(root)
    cfg = load_config(PARAMS, [*TINY, *SCHEDULE])
    dirs = dict(models_dir=root / "models", logs_dir=root / "logs", checkpoints_dir=root / "checkpoints")
    for stage in (1, 2):
        train(cfg, "vit_lora", stage, pairs_dir=pairs, progress=False, tracking=False, **dirs)
    params = write_params(root / "params.yaml", [*TINY, *SCHEDULE])
    assert load_config(params) == cfg
    return Trained(
        params,
        pairs,
        root / "models/vit_lora_stage1/model.pt",
        root / "models/vit_lora_stage2/model.pt",
        root / "raw/content/c0.jpg",
        root / "raw/style/s0.png",
    )


# -- 1. nstlab stylize: bad files are one line, exit 2; odd files are stylised ------------------


# name → (how to make the --checkpoint file, extra args, words of the error, run as a subprocess?)
CHECKPOINT_CASES = {
    "missing": (None, [], ["absent.pt", "no such checkpoint"], True),
    "stage1_weights_for_stage2": (
        "stage1",
        [],
        ["vit_lora_stage1/model.pt", "checkpoint lacks tensor", "made by another model or config"],
        True,
    ),
    "code_in_torch_save": ("torch.save", [], ["code.pt", "refused to load", "io.open"], True),
    "code_in_raw_pickle": ("pickle", [], ["code.pkl", "refused to load"], False),
    "other_lora_rank": (
        "stage2",
        ["-S", "lora.r=8"],
        ["vit_lora_stage2/model.pt", "checkpoint shapes do not fit this model"],
        False,
    ),
    "no_model_tensors": ("no_model", [], ["foreign.pt", "not an nstlab checkpoint"], False),
}


def _checkpoint_file(kind: str | None, trained: Trained, folder: Path) -> Path:
    if kind is None:
        return folder / "absent.pt"
    if kind in ("stage1", "stage2"):
        return trained.stage1 if kind == "stage1" else trained.stage2
    if kind == "torch.save":
        torch.save({"model": CodeInPickle(folder / "marker-torch-save")}, folder / "code.pt")
        return folder / "code.pt"
    if kind == "pickle":
        (folder / "code.pkl").write_bytes(pickle.dumps({"model": CodeInPickle(folder / "marker-pickle")}))
        return folder / "code.pkl"
    torch.save({"weights": {"w": torch.zeros(2)}}, folder / "foreign.pt")
    return folder / "foreign.pt"


@pytest.fixture(scope="module")
def stylize_errors(trained, tmp_path_factory) -> CliRuns:
    """The real `nstlab stylize` for every bad content image and the main bad checkpoints."""
    folder = tmp_path_factory.mktemp("stylize_errors")
    cases = {}
    for name, (write, _) in BAD_IMAGES.items():
        write(folder / name)
        cases[name] = stylize_args(trained, folder / name, trained.style, folder / f"out-{name}.png")
    for name, (kind, extra, _, as_subprocess) in CHECKPOINT_CASES.items():
        if as_subprocess:
            checkpoint = _checkpoint_file(kind, trained, folder)
            cases[name] = stylize_args(
                trained,
                trained.content,
                trained.style,
                folder / f"out-{name}.png",
                *extra,
                checkpoint=checkpoint,
            )
    return run_cli_cases(cases, folder)


@pytest.mark.parametrize("name", BAD_IMAGES)
def test_stylize_refuses_a_bad_content_image_in_one_line(stylize_errors, name):
    folder = stylize_errors.folder
    result = stylize_errors.results[name]
    error_line(result, str(folder / name), BAD_IMAGES[name][1])
    assert (
        result.stderr.count("\n") == 1
    )  # that line is all of stderr: images are read before the model is built
    assert not (folder / f"out-{name}.png").exists()


@pytest.mark.parametrize("name", BAD_IMAGES)
def test_stylize_refuses_a_bad_style_image_in_one_line(trained, tmp_path, capsys, name):
    write, reason = BAD_IMAGES[name]
    write(tmp_path / name)
    result = cli_in_process(
        stylize_args(trained, trained.content, tmp_path / name, tmp_path / "out.png"), capsys
    )
    error_line(result, str(tmp_path / name), reason)
    assert result.stderr.count("\n") == 1 and not (tmp_path / "out.png").exists()


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path):
    path = png_header_only(tmp_path / "bomb.png", 30000, 30000)
    started = time.perf_counter()
    with pytest.raises(ImageError, match="decompression-bomb guard"):  # a decode would say "truncated"
        load_rgb(path)
    assert path.stat().st_size < 100 and time.perf_counter() - started < 0.5


def test_an_eps_file_never_reaches_ghostscript(tmp_path, monkeypatch):
    from PIL import EpsImagePlugin

    calls = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *args, **kwargs: calls.append(args))
    path = tmp_path / "photo.jpg"
    _eps_named_jpg(path)
    with pytest.raises(ImageError, match="not an image in a supported format"):
        load_rgb(path)
    assert calls == []


@pytest.mark.parametrize("n_files", [300, pytest.param(5000, marks=pytest.mark.slow)])
def test_damaged_files_are_refused_in_one_line_or_loaded(tmp_path, n_files):
    """Random byte flips, cuts and insertions in every accepted format: load_rgb either returns
    RGB or raises a one-line ImageError; nothing else escapes (the pair stage relies on it)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    seeds = {}
    for image_format, mode, options in (
        ("JPEG", "RGB", {"exif": exif.tobytes()}),
        ("JPEG", "CMYK", {}),
        ("PNG", "RGBA", {}),
        ("PNG", "I;16", {}),
        ("GIF", "P", {}),
        ("WEBP", "RGB", {}),
        ("BMP", "RGB", {}),
        ("TIFF", "RGB", {}),
    ):
        buffer = io.BytesIO()
        noise_image((40, 32)).convert(mode).save(buffer, format=image_format, **options)
        seeds[f"{image_format}-{mode}"] = buffer.getvalue()
    rng = random.Random(0)
    path = tmp_path / "damaged"
    for _ in range(n_files):
        data = bytearray(rng.choice(list(seeds.values())))
        for _ in range(rng.randint(1, 8)):
            at = rng.randrange(len(data))
            kind = rng.random()
            if kind < 0.6:
                data[at] = rng.randrange(256)
            elif kind < 0.8:
                del data[at : at + rng.randint(1, 64)]
            else:
                data[at:at] = rng.randbytes(rng.randint(1, 8))
        path.write_bytes(bytes(data))
        try:
            assert load_rgb(path).mode == "RGB"
        except ImageError as error:
            assert "\n" not in str(error) and str(error).startswith(str(path))


@pytest.mark.parametrize("name", CHECKPOINT_CASES)
def test_stylize_refuses_a_bad_checkpoint_in_one_line(trained, stylize_errors, tmp_path, capsys, name):
    kind, extra, words, as_subprocess = CHECKPOINT_CASES[name]
    if as_subprocess:
        folder, result = stylize_errors.folder, stylize_errors.results[name]
    else:
        folder, checkpoint = tmp_path, _checkpoint_file(kind, trained, tmp_path)
        result = cli_in_process(
            stylize_args(
                trained,
                trained.content,
                trained.style,
                folder / f"out-{name}.png",
                *extra,
                checkpoint=checkpoint,
            ),
            capsys,
        )
    error_line(result, *words)
    assert not (folder / f"out-{name}.png").exists()
    assert not list(folder.glob("marker-*"))  # a payload's code did not run


def test_the_code_payloads_are_live_under_plain_pickle(tmp_path):
    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps(CodeInPickle(marker))).close()
    assert marker.exists()


def test_stderr_is_only_the_error_line_when_the_model_was_built(stylize_errors):
    assert stylize_errors.results["stage1_weights_for_stage2"].stderr.count("\n") == 1


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("name", ODD_IMAGES)
def test_stylize_converts_odd_but_valid_images(trained, tmp_path, capsys, name, role):
    write, content_size = ODD_IMAGES[name]
    odd = tmp_path / name
    write(odd)
    content, style = (odd, trained.style) if role == "content" else (trained.content, odd)
    output = tmp_path / "out.png"
    result = cli_in_process(stylize_args(trained, content, style, output, "--size", str(SIZE_CAP)), capsys)
    assert result.returncode == 0 and result.stdout == f"{output}\n"
    with Image.open(output) as image:
        assert image.mode == "RGB"
        assert image.size == (content_size if role == "content" else (40, 30))


def test_an_unwritable_output_is_one_line(trained, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the output folder should be")
    result = cli_in_process(
        stylize_args(trained, trained.content, trained.style, blocker / "out.png"), capsys
    )
    error_line(result, str(blocker), "File exists")
    assert result.stderr.count("\n") == 1


def test_stylize_applies_the_data_limits_its_errors_name(trained, tmp_path, capsys):
    args = stylize_args(
        trained, trained.content, trained.style, tmp_path / "out.png", "-S", "data.max_pixels=1000"
    )
    error_line(cli_in_process(args, capsys), "exceeds max_pixels=1000")


# -- 2. the pair stage skips and lists bad images -----------------------------------------------


def test_pair_stage_skips_and_lists_every_kind_of_bad_image(tmp_path):
    contents = [write_image(tmp_path / "raw/content" / f"c{i:02d}.jpg", (40, 30), seed=i) for i in range(8)]
    styles = [write_image(tmp_path / "raw/style" / f"s{i:02d}.png", (30, 40), seed=50 + i) for i in range(8)]
    _cmyk_jpeg(tmp_path / "raw/content/cmyk.jpg")  # odd but good: kept
    contents.append(tmp_path / "raw/content/cmyk.jpg")
    bad = {}  # path → reason; half of them among the contents, half among the styles
    for index, (name, (write, reason)) in enumerate(BAD_IMAGES.items()):
        path = tmp_path / "raw" / ROLES[index % 2] / f"bad-{name}"
        write(path)
        bad[path.as_posix()] = reason
        (contents if index % 2 == 0 else styles).append(path)
    summary = build_pairs(
        contents,
        styles,
        n_train=6,
        n_val=1,
        n_test=1,
        seed=0,
        image_size=32,
        cache_dir=tmp_path / "cache",
        out_dir=tmp_path / "pairs",
        workers=2,
        progress=False,
        pairing="random",
    )

    with open(tmp_path / "pairs/skipped.csv", newline="") as handle:
        listed = {row["path"]: row["reason"] for row in csv.DictReader(handle)}
    assert set(listed) == set(bad)
    for path, reason in bad.items():
        assert reason in listed[path] and "\n" not in listed[path]
    assert (
        len(summary.skipped) == len(bad) == json.loads((tmp_path / "pairs/pairs.json").read_text())["skipped"]
    )
    assert sum(counts["content"] for counts in summary.images.values()) == 9
    assert sum(counts["style"] for counts in summary.images.values()) == 8
    cached = set()
    for split, n_pairs in (("train", 6), ("val", 1), ("test", 1)):
        with open(tmp_path / f"pairs/{split}.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert len(rows) == n_pairs
        cached |= {Path(row[role]) for row in rows for role in ROLES}
    assert all(path.is_file() for path in cached)
    assert not any(path.name.startswith("bad-") for path in cached)


# -- 3. bad params: one line naming the key -----------------------------------------------------


def _params_args(name: str, folder: Path) -> list[str]:
    """`nstlab info` with one kind of bad params; the file, when there is one, is written to `folder`."""
    overrides = {
        "unknown_key": "lora.rank=4",
        "wrong_type": "lora.r=sixteen",
        "impossible": "train.batch_size=0",
    }
    if name in ("set_wrong_type", "set_not_key_value"):
        override = "decoder.dropout=high" if name == "set_wrong_type" else "lora.r"
        return ["info", "--params", str(PARAMS), "-S", override]
    path = folder / f"{name}.yaml"
    if name == "malformed":
        path.write_text("profile: demo\nlora: [r, 16\nseed: 1\n")
    elif name == "binary":
        noise_image((20, 20)).save(path, format="PNG")
    else:
        write_params(path, [overrides[name]])
    return ["info", "--params", str(path)]


PARAMS_CASES = {  # name → (words of the error, run as a subprocess?)
    "malformed": (["malformed.yaml", "not valid YAML at line 3, column"], True),
    "unknown_key": (["unknown_key.yaml", "unknown key lora.rank: allowed keys are r, alpha"], True),
    "set_wrong_type": (["params.yaml", "decoder.dropout = 'high': expected a number"], True),
    "wrong_type": (["wrong_type.yaml", "lora.r = 'sixteen': expected a whole number"], False),
    "impossible": (["impossible.yaml", "train.batch_size = 0: must be in [1, inf]"], False),
    "set_not_key_value": (["-S 'lora.r': expected key=value"], False),
}


@pytest.fixture(scope="module")
def params_errors(tmp_path_factory) -> CliRuns:
    folder = tmp_path_factory.mktemp("params_errors")
    names = [name for name, (_, as_subprocess) in PARAMS_CASES.items() if as_subprocess] + ["binary"]
    return run_cli_cases({name: _params_args(name, folder) for name in names}, folder)


@pytest.mark.parametrize("name", PARAMS_CASES)
def test_bad_params_are_one_line_naming_the_key(params_errors, tmp_path, capsys, name):
    words, as_subprocess = PARAMS_CASES[name]
    result = (
        params_errors.results[name] if as_subprocess else cli_in_process(_params_args(name, tmp_path), capsys)
    )
    error_line(result, *words)
    assert result.stderr.count("\n") == 1 and result.stdout == ""


def test_a_binary_params_file_is_one_line(params_errors):
    error_line(params_errors.results["binary"], "binary.yaml")


# -- 4. SIGKILL mid-training, then --resume require: bit-identical weights ----------------------


KILL_SCHEDULE = [
    "train.batch_size=2",
    "train.stage1.epochs=8",
    "train.log_every=1",
    "train.val_every=1",
    "train.sample_every=1000",
    "train.max_val_pairs=2",
]  # 32 steps, a checkpoint after each
# The victim runs `nstlab train` but holds still after its step-24 checkpoint until it is killed: the
# kill lands at a random moment, and a fast machine cannot finish the run before it.
HOLD_AFTER_STEP = 24
TRAIN_THEN_HOLD = f"""
import sys, threading
from nstlab.cli import main
from nstlab.training.trainer import Trainer

checkpoint = Trainer._validate_and_checkpoint

def checkpoint_then_hold(self, step, *args):
    best = checkpoint(self, step, *args)
    if step == {HOLD_AFTER_STEP}:
        threading.Event().wait()
    return best

Trainer._validate_and_checkpoint = checkpoint_then_hold
main(sys.argv[1:])
"""


def test_training_killed_with_sigkill_resumes_to_bit_identical_weights(trained, tmp_path):
    params = write_params(tmp_path / "params.yaml", [*TINY, *KILL_SCHEDULE])
    arguments = [
        "train",
        "vit_lora",
        "--stage",
        "1",
        "--no-tracking",
        "--no-progress",
        "--params",
        str(params),
        "--pairs",
        str(trained.pairs),
        "--models",
        "models",
    ]
    command = [*NSTLAB, *arguments]
    last = Path("checkpoints/vit_lora_stage1/last.pt")
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    processes = {}
    victim_command = [sys.executable, "-c", TRAIN_THEN_HOLD, *arguments]
    for folder, argv in ((reference_dir, command), (killed_dir, victim_command)):
        folder.mkdir()
        with open(folder / "stderr.txt", "w") as stderr:
            processes[folder] = subprocess.Popen(
                argv, cwd=folder, env=cli_env(tmp_path), stdout=subprocess.DEVNULL, stderr=stderr
            )
    victim = processes[killed_dir]
    deadline = time.monotonic() + 240
    while not (killed_dir / last).is_file():
        assert victim.poll() is None, (killed_dir / "stderr.txt").read_text()
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.02)
    delay_s = random.uniform(0.0, 1.0)
    time.sleep(delay_s)  # a random moment to kill at (mid-step, mid-save, or holding at step 24), not a race
    assert victim.poll() is None, (killed_dir / "stderr.txt").read_text()
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=30) == -signal.SIGKILL
    killed_at = load_checkpoint(killed_dir / last)
    assert 1 <= killed_at["step"] <= HOLD_AFTER_STEP and not killed_at["finished"], killed_at["step"]

    resumed = subprocess.run(
        [*command, "--resume", "require"],
        cwd=killed_dir,
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert processes[reference_dir].wait(timeout=300) == 0, (reference_dir / "stderr.txt").read_text()
    expected, actual = load_checkpoint(reference_dir / last), load_checkpoint(killed_dir / last)
    assert actual["step"] == expected["step"] == 32 and actual["finished"]
    assert actual["model"].keys() == expected["model"].keys()
    changed = [
        name for name in expected["model"] if not torch.equal(actual["model"][name], expected["model"][name])
    ]
    assert not changed, (
        f"killed at step {killed_at['step']}, {delay_s:.2f} s after its first checkpoint: {changed[:3]}"
    )


# -- 5. a full disk while writing a checkpoint --------------------------------------------------


class FullDisk(io.FileIO):
    """A file on a disk that fills up after `room` bytes."""

    room = 4096

    def write(self, data) -> int:
        if self.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


def _fill_disk(monkeypatch, how: str) -> None:
    if how == "torch.save raises":

        def save_part_then_fail(payload, handle):
            handle.write(b"PK\x03\x04" + bytes(4000))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(nstlab.training.checkpoint.torch, "save", save_part_then_fail)
    else:  # the real torch.save, whose zip writer then fails (it raises RuntimeError)
        monkeypatch.setattr(
            nstlab.training.checkpoint, "open", lambda file, mode: FullDisk(file, mode), raising=False
        )


@pytest.mark.parametrize("how", ["torch.save raises", "the file write fails"])
def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch, how):
    path = tmp_path / "checkpoints" / "last.pt"
    save_atomic({"model": {"weight": torch.ones(3)}, "step": 1}, path)
    before = path.read_bytes()
    with monkeypatch.context() as patch, pytest.raises(NstlabError) as error:
        _fill_disk(patch, how)
        save_atomic({"model": {"weight": torch.zeros(100_000)}, "step": 2}, path)
    message = str(error.value)
    assert (
        message.startswith(f"{path}: checkpoint not written (No space left on device)")
        and "\n" not in message
    )
    assert path.read_bytes() == before and load_checkpoint(path)["step"] == 1
    assert list(path.parent.iterdir()) == [path]  # no temp file left behind


def test_a_full_disk_during_training_stops_it_with_the_last_checkpoint_intact(
    tiny_config, tiny_pairs, tmp_path, monkeypatch
):
    cfg = tiny_config(*SCHEDULE)
    real_save = torch.save
    saves = []

    def fail_the_second_checkpoint(payload, handle):
        if "optimizer" in payload:
            saves.append(payload["step"])
            if len(saves) == 2:
                handle.write(bytes(1000))
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(payload, handle)

    with (
        monkeypatch.context() as patch,
        pytest.raises(NstlabError, match=r"last.pt: checkpoint not written \(No"),
    ):
        patch.setattr(nstlab.training.checkpoint.torch, "save", fail_the_second_checkpoint)
        train(
            cfg,
            "vit_lora",
            1,
            pairs_dir=tiny_pairs,
            models_dir=tmp_path / "models",
            logs_dir=tmp_path / "logs",
            checkpoints_dir=tmp_path / "checkpoints",
            progress=False,
            tracking=False,
        )
    folder = tmp_path / "checkpoints/vit_lora_stage1"
    assert saves == [2, 4] and load_checkpoint(folder / "last.pt")["step"] == 2
    assert [path.name for path in folder.iterdir()] == ["last.pt"]


# -- 6. two downloads into one folder at once ---------------------------------------------------


def _run_together(commands: list[list[str]], cwd: Path) -> list[subprocess.CompletedProcess]:
    processes = [
        subprocess.Popen(
            command, cwd=cwd, env=cli_env(cwd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for command in commands
    ]
    results = []
    for process, command in zip(processes, commands):
        stdout, stderr = process.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(command, process.returncode, stdout, stderr))
    return results


def test_two_demo_downloads_at_once_leave_intact_files(tmp_path):
    from nstlab.data.sources import demo_images

    command = [*NSTLAB, "download", "--params", str(PARAMS), "--out", "raw", "--no-progress"]
    for result in _run_together([command, command], tmp_path):
        assert result.returncode == 0, result.stderr
    for role in ROLES:
        packaged = {path.name: path.read_bytes() for path in demo_images(role)}
        copied = {path.name: path.read_bytes() for path in (tmp_path / "raw" / role).iterdir()}
        assert copied and copied == {name: packaged[name] for name in copied}


def test_two_network_downloads_at_once_fetch_each_file_once(fake_mirror, tmp_path):
    coco, wikiart = serve_coco(fake_mirror, 10), serve_wikiart(fake_mirror, 10)
    fake_mirror.delay_s = 0.05  # long enough for the two runs to overlap
    command = [
        *NSTLAB,
        "download",
        "--params",
        str(PARAMS),
        "--out",
        "raw",
        "--no-progress",
        "-S",
        "data.content_source=coco",
        "-S",
        "data.style_source=wikiart",
        "-S",
        f"data.mirror={fake_mirror.base_url}",
        "-S",
        "data.n_train=4",
        "-S",
        "data.n_val=1",
        "-S",
        "data.n_test=1",
    ]
    for result in _run_together([command, command], tmp_path):
        assert result.returncode == 0, result.stderr
    for role, source, names in (("content", "coco/train2014", coco), ("style", "wikiart/wikiart", wikiart)):
        folder = tmp_path / "raw" / role
        present = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*.jpg"))
        assert len(present) == 6 and set(present) <= set(names)
        for name in present:
            assert (folder / name).read_bytes() == fake_mirror.files[f"{source}/{name}"]
            assert fake_mirror.requests_for(f"{source}/{name}") == [None]  # the second run found it verified
        assert not list(folder.rglob("*.part"))
        assert set(json.loads((folder / "manifest.json").read_text())) == set(present)


# -- 7. a failing training stage ends its MLflow run as FAILED or KILLED ------------------------


@pytest.fixture
def tracked(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    monkeypatch.chdir(tmp_path)
    return {
        "models_dir": tmp_path / "models",
        "logs_dir": tmp_path / "logs",
        "checkpoints_dir": tmp_path / "ckpt",
    }


def _fail_at_step(monkeypatch, error: BaseException, at_step: int = 3) -> None:
    original_step = Trainer._step

    def step_or_fail(self, content, style, step):
        if step == at_step:
            raise error
        return original_step(self, content, style, step)

    monkeypatch.setattr(Trainer, "_step", step_or_fail)


def test_an_exception_in_a_training_stage_ends_the_run_as_failed(
    tiny_config, tiny_pairs, tracked, monkeypatch
):
    from nstlab.tracking.queries import search_runs

    cfg = tiny_config(*SCHEDULE)
    _fail_at_step(monkeypatch, RuntimeError("simulated fault"))
    with pytest.raises(RuntimeError, match="simulated fault"):
        train(cfg, "vit_lora", 1, pairs_dir=tiny_pairs, progress=False, **tracked)
    runs = search_runs(cfg.mlflow, "tags.model = 'vit_lora'")  # its seed-group parent is FINISHED
    assert list(runs["status"]) == ["FAILED"]


def test_ctrl_c_in_a_training_stage_ends_the_run_as_killed(tiny_config, tiny_pairs, tracked, monkeypatch):
    from nstlab.tracking.queries import search_runs

    cfg = tiny_config(*SCHEDULE)
    _fail_at_step(monkeypatch, KeyboardInterrupt())
    with pytest.raises(NstlabError, match="interrupted at step 3; checkpoint saved"):
        train(cfg, "vit_lora", 1, pairs_dir=tiny_pairs, progress=False, **tracked)
    assert load_checkpoint(tracked["checkpoints_dir"] / "vit_lora_stage1/last.pt")["step"] == 3
    runs = search_runs(cfg.mlflow, "tags.model = 'vit_lora'")  # its seed-group parent is FINISHED
    assert list(runs["status"]) == ["KILLED"]


def test_sigterm_in_a_training_stage_ends_it_as_ctrl_c_does(tiny_config, tiny_pairs, tracked, monkeypatch):
    """`kill` (or a scheduler's stop) used to end the process on the spot: run RUNNING, steps lost."""
    from nstlab.tracking.queries import search_runs

    cfg = tiny_config(*SCHEDULE)
    original_step, handler_before = Trainer._step, signal.getsignal(signal.SIGTERM)

    def step_then_terminated(self, content, style, step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return original_step(self, content, style, step)

    monkeypatch.setattr(Trainer, "_step", step_then_terminated)
    with pytest.raises(NstlabError, match="interrupted at step 3; checkpoint saved"):
        train(cfg, "vit_lora", 1, pairs_dir=tiny_pairs, progress=False, **tracked)
    assert load_checkpoint(tracked["checkpoints_dir"] / "vit_lora_stage1/last.pt")["step"] == 3
    assert list(search_runs(cfg.mlflow, "tags.model = 'vit_lora'")["status"]) == ["KILLED"]
    assert signal.getsignal(signal.SIGTERM) is handler_before  # restored after training
