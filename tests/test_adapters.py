"""LoRA adapters: several on one base model, equal to their own stage-2 model, listed from MLflow."""

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from nstlab.cli import app, main
from nstlab.config import load_config
from nstlab.training.adapters import load_adapters
from nstlab.evaluation.evaluate import load_model
from nstlab.models.vit_lora import ViTLoRA
from nstlab.training.trainer import train

from conftest import PARAMS, TINY

FAST = [
    "train.batch_size=4",
    "train.lr=0.01",
    "train.stage1.epochs=1",
    "train.stage2.epochs=1",
    "train.log_every=1",
    "train.val_every=2",
    "train.sample_every=2",
    "train.max_val_pairs=2",
]
RANKS = {"a": 16, "b": 4}  # two stage-2 trainings of different LoRA rank from one stage 1


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Stage 1 once, then two tracked stage-2 runs in their own models/ folders; one MLflow store."""
    from conftest import tiny_pairs

    root = tmp_path_factory.mktemp("adapters")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlruns.db'}")
        patch.chdir(root)  # MLflow artefacts land in root/mlartifacts
        pairs = tiny_pairs.__wrapped__(root)  # the fixture's body, run once for the module
        base = load_config(PARAMS, [*TINY, *FAST])
        train(
            base,
            "vit_lora",
            1,
            pairs_dir=pairs,
            models_dir=root / "a",
            logs_dir=root / "logs_a",
            checkpoints_dir=root / "ckpt",
            progress=False,
            tracking=False,
        )
        shutil.copytree(root / "a" / "vit_lora_stage1", root / "b" / "vit_lora_stage1")
        runs = {}
        for name, rank in RANKS.items():
            cfg = load_config(PARAMS, [*TINY, *FAST, f"lora.r={rank}"])
            summary = train(
                cfg,
                "vit_lora",
                2,
                pairs_dir=pairs,
                models_dir=root / name,
                logs_dir=root / f"logs_{name}",
                checkpoints_dir=root / f"ckpt_{name}",
                progress=False,
            )
            runs[name] = summary["mlflow_run_id"]
        yield {"root": root, "cfg": base, "pairs": pairs, "runs": runs}


@pytest.fixture
def store(trained, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{trained['root'] / 'mlruns.db'}")
    monkeypatch.chdir(trained["root"])
    return trained


def _adapter(trained, name):
    return str(trained["root"] / name / "vit_lora_stage2" / "adapter")


def _cli(trained, *args):
    overrides = [part for item in TINY for part in ("-S", item)]
    return [*args, "--params", str(PARAMS), *overrides]


def _images(trained):
    rows = (trained["pairs"] / "test.csv").read_text().splitlines()[1].split(",")
    return rows[0], rows[1]


def _stylize(trained, output, *options):
    """`nstlab stylize` of the first test pair to `output` with `options`, as CLI arguments."""
    return _cli(trained, "stylize", *_images(trained), "-o", str(output), *options)


def test_two_adapters_give_two_images_from_one_base_model(store, tmp_path, monkeypatch):
    built = []
    original_init = ViTLoRA.__init__

    def counting_init(self, cfg):
        built.append(cfg)
        original_init(self, cfg)

    monkeypatch.setattr(ViTLoRA, "__init__", counting_init)
    result = CliRunner().invoke(
        app,
        _stylize(
            store, tmp_path / "out.png", "--adapter", _adapter(store, "a"), "--adapter", _adapter(store, "b")
        ),
    )
    assert result.exit_code == 0, result.output
    first, second = tmp_path / "out_vit_lora_stage2.png", tmp_path / "out_vit_lora_stage2-2.png"
    assert result.output.split() == [str(first), str(second)]
    assert len(built) == 1
    _assert_each_is_its_own_models(store, tmp_path, first, second)


def _assert_each_is_its_own_models(trained, tmp_path, first, second):
    """The adapter images are those of `nstlab stylize --checkpoint` with each run's own stage-2
    model.pt, to within one 8-bit level (whether two tiny trainings differ in 8 bits is up to them)."""
    from PIL import Image, ImageChops

    for name, image in (("a", first), ("b", second)):
        own = tmp_path / f"own_{name}.png"
        checkpoint = trained["root"] / name / "vit_lora_stage2" / "model.pt"
        arguments = _stylize(trained, own, "--checkpoint", str(checkpoint), "-S", f"lora.r={RANKS[name]}")
        result = CliRunner().invoke(app, arguments)
        assert result.exit_code == 0, result.output
        assert ImageChops.difference(Image.open(image), Image.open(own)).getextrema() <= ((0, 1),) * 3


def test_each_adapter_reproduces_its_own_stage2_model(store):
    model, decoders = load_adapters(store["cfg"], [_adapter(store, "a"), _adapter(store, "b")])
    model.eval()
    adapter_names = dict(zip(RANKS, decoders))
    content, style = torch.rand(1, 3, 32, 48), torch.rand(1, 3, 32, 32)
    outputs = {}
    for name in ("a", "b", "a"):  # switching back restores the first adapter exactly
        own_cfg = load_config(PARAMS, [*TINY, *FAST, f"lora.r={RANKS[name]}"])
        own = load_model(
            own_cfg, "vit_lora", checkpoint=store["root"] / name / "vit_lora_stage2" / "model.pt"
        )
        model.set_adapter(adapter_names[name], decoders[adapter_names[name]])
        with torch.no_grad():
            outputs[name] = model(content, style)
            assert torch.allclose(outputs[name], own(content, style), atol=1e-6)
    assert (outputs["a"] - outputs["b"]).abs().max() > 1e-3  # the equality above is not a trivial one


def _fail(arguments, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(arguments)
    error = capsys.readouterr().err
    assert stopped.value.code == 2 and error.count("\n") == 1
    return error


def test_a_bad_adapter_path_or_run_is_one_line_naming_it(store, tmp_path, capsys):
    out = tmp_path / "out.png"
    assert "--adapter no/such/adapter: no such directory" in _fail(
        _stylize(store, out, "--adapter", "no/such/adapter"), capsys
    )
    unknown = "0123456789abcdef0123456789abcdef"
    assert f"MLflow run {unknown!r}" in _fail(_stylize(store, out, "--adapter", unknown), capsys)


def test_decoders_from_another_training_are_refused(store, tmp_path, capsys):
    mixed = tmp_path / "mixed"
    shutil.copytree(store["root"] / "a" / "vit_lora_stage2" / "adapter", mixed / "adapter")
    shutil.copy(store["root"] / "b" / "vit_lora_stage2" / "model.pt", mixed / "model.pt")
    error = _fail(_stylize(store, tmp_path / "out.png", "--adapter", str(mixed / "adapter")), capsys)
    assert "was not trained with this adapter" in error


def test_an_mlflow_run_id_alone_stylises_with_the_decoders_logged_beside_its_adapter(store, tmp_path, capsys):
    run_a, run_b = store["runs"]["a"], store["runs"]["b"]
    no_local_weights = tmp_path / "empty-models"
    written = _stylize(
        store,
        tmp_path / "out.png",
        "--adapter",
        f"runs:/{run_a}/adapter",
        "--adapter",
        run_b,
        "--models",
        str(no_local_weights),
    )
    result = CliRunner().invoke(app, written)
    assert result.exit_code == 0, result.output
    first, second = (tmp_path / f"out_{run[:8]}.png" for run in (run_a, run_b))
    _assert_each_is_its_own_models(store, tmp_path, first, second)


def test_adapters_lists_each_logged_adapter_with_its_lora_config_and_test_losses(store):
    from nstlab.tracking.queries import log_to_run

    log_to_run(
        store["cfg"].mlflow,
        store["runs"]["a"],
        {"test.paper_content_loss": 2.5, "test.paper_style_loss": 0.5},
    )
    result = CliRunner().invoke(app, _cli(store, "adapters", "--json"))
    assert result.exit_code == 0, result.output
    rows = {row["run_id"]: row for row in json.loads(result.output)}
    assert set(rows) == set(store["runs"].values())
    a, b = rows[store["runs"]["a"]], rows[store["runs"]["b"]]
    assert (a["r"], b["r"], a["alpha"], a["encoder_layers"], a["decoder_layers"]) == (16, 4, 16.0, 2, 1)
    assert a["target_modules"] == "query,key,value,dense"
    assert (a["test_content_loss"], a["test_style_loss"], b["test_content_loss"]) == (2.5, 0.5, None)
    assert a["adapter"] == f"runs:/{store['runs']['a']}/adapter"
    table = CliRunner().invoke(app, _cli(store, "adapters"), env={"COLUMNS": "250"})
    assert table.exit_code == 0 and all(run_id in table.output for run_id in rows)
