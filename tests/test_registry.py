"""The method registry (registry.py): the one owner of what each method is and can do, and the
places that must agree with it (dvc.yaml, experiments/table2.yaml, the README)."""

import re
from pathlib import Path

import pytest
import yaml

from conftest import PARAMS
from nstlab.errors import ConfigError
from nstlab.registry import (
    OPTIMISED,
    SHARED_PARAMS,
    TABLE2_AXES,
    TABLE2_METHOD,
    TRAINED,
    baseline_names,
    final_output_key,
    foreign_blocks,
    get_method,
    method_names,
    output_key,
    run_blocks,
)

REPO = Path(__file__).resolve().parents[1]


def test_names_kinds_and_output_keys():
    assert method_names()[0] == "vit_lora" and method_names(OPTIMISED) == ["gatys"]
    assert set(method_names(TRAINED)) == {"vit_lora", "stytr2", "adain", "sanet", "mcc", "artflow", "iest"}
    assert "vit_lora" not in baseline_names() and "gatys" in baseline_names()
    assert (output_key("vit_lora", 1), final_output_key("vit_lora"), output_key("sanet", 0)) == (
        "vit_lora_stage1",
        "vit_lora_stage2",
        "sanet",
    )
    with pytest.raises(ConfigError, match="unknown model 'sanet2': choose one of vit_lora, artflow"):
        get_method("sanet2")


def test_registry_is_torch_free():
    import subprocess
    import sys

    code = "import sys, nstlab.registry, nstlab.config; print('torch' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        == "False\n"
    )


def test_every_registered_method_is_a_style_model_of_that_name():
    from nstlab.models import model_class
    from nstlab.models.base import StyleModel

    for name in method_names():
        assert issubclass(model_class(name), StyleModel) and model_class(name).name == name


def test_the_contract_is_the_base_class_not_attributes_probed_for():
    """No `getattr(x, "hook", ...)` for a StyleModel member anywhere in the package."""
    from nstlab.models.base import StyleModel

    hooks = {name for name in vars(StyleModel) if not name.startswith("__")}
    probes = re.compile(r"getattr\([^,]+,\s*[\"'](\w+)[\"']")
    found = [
        f"{path.name}: {match}"
        for path in (REPO / "src" / "nstlab").rglob("*.py")
        for match in probes.findall(path.read_text())
        if match in hooks | {"SINGLE_PROCESS_ONLY", "options"}
    ]
    assert found == []


def test_dvc_stages_list_the_registered_methods():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    multi_stage = [name for name in method_names(TRAINED) if len(get_method(name).stages) > 1]
    single_stage = set(method_names(TRAINED)) - set(multi_stage)
    assert set(stages["train_baseline"]["foreach"]) == single_stage
    for name in multi_stage:
        assert {f"train_{output_key(name, stage)}" for stage in get_method(name).stages} <= stages.keys()
    assert set(stages["evaluate"]["foreach"]) == set(method_names(TRAINED))
    assert {f"evaluate_{name}" for name in method_names(OPTIMISED)} <= stages.keys()
    params = yaml.safe_load(PARAMS.read_text())
    assert set(params["baselines"]) == set(baseline_names())


# The modules that serve every method alike: what differs is asked of the registry or the model.
METHOD_AGNOSTIC = (
    "evaluation/evaluate.py",
    "training/checkpoint.py",
    "training/trainer.py",
    "config/__init__.py",
)


@pytest.mark.parametrize("module", METHOD_AGNOSTIC)
def test_method_agnostic_modules_name_no_method(module):
    """A method's name as a word (code, strings and comments; `vit-lora` too) — not inside a longer
    identifier such as the params key `backbone.adain_vgg`."""
    text = (REPO / "src" / "nstlab" / module).read_text()
    named = [
        name
        for name in method_names()
        if re.search(rf"(?<![\w]){name.replace('_', '[_-]')}(?![\w])", text, re.IGNORECASE)
    ]
    assert named == [], f"src/nstlab/{module} names {named}: ask nstlab.registry or the model instead"


# -- a method's params: run_blocks owns them -------------------------------------------------------


def test_each_run_reads_the_shared_params_and_its_own_blocks():
    assert run_blocks("vit_lora", 1)[: len(SHARED_PARAMS)] == SHARED_PARAMS
    assert "lora" not in run_blocks("vit_lora", 1) and "lora" in run_blocks("vit_lora", 2)
    assert {"baselines.sanet", "train.workers"} <= set(run_blocks("sanet", 0))
    assert set(run_blocks("gatys", 0)) == {*SHARED_PARAMS, "baselines.gatys", "train.device"}


def test_a_configuration_across_seeds_leaves_out_what_only_other_runs_read():
    others = {f"baselines.{name}" for name in baseline_names()}
    assert set(foreign_blocks("vit_lora", 1)) == others | {"lora"}
    assert set(foreign_blocks("vit_lora", 2)) == others
    # the train block stays: a baseline's trainer reads some of its keys
    assert set(foreign_blocks("sanet", 0)) == {"encoder", "decoder", "loss", "lora"} | others - {
        "baselines.sanet"
    }


def _within(entry: str, block: str) -> bool:
    return entry == block or entry.startswith(block + ".")


def _stage_params(stage: dict, key: str) -> list[str]:
    """A dvc.yaml stage's params for one foreach key, with profiles.<name>. taken off (a profile's
    block is laid under the top level)."""
    params = [entry.replace("${key}", key) for entry in stage.get("do", stage)["params"]]
    return [re.sub(r"^profiles\.[^.]+\.", "", entry) for entry in params]


def _dvc_runs() -> list[tuple[str, str, int, bool]]:
    """(dvc stage, method, stage, whether the stage must list the method's own blocks): every
    training, and every evaluation (a trained model's own params reach it through its weights)."""
    runs = []
    for name in method_names():
        method = get_method(name)
        if method.kind == OPTIMISED:
            runs.append((f"evaluate_{name}", name, 0, True))
            continue
        for stage in method.stages:
            dvc_stage = f"train_{output_key(name, stage)}" if len(method.stages) > 1 else "train_baseline"
            runs.append((dvc_stage, name, stage, True))
        runs.append(("evaluate", name, method.stages[-1], False))
    return runs


@pytest.mark.parametrize("dvc_stage, method, stage, owns", _dvc_runs())
def test_dvc_yaml_params_are_the_registrys(dvc_stage, method, stage, owns):
    """A stage depends on no param another method owns (so `dvc exp run -S lora.r=32` reruns
    ViT-LoRA stage 2 and nothing else), and on every block its own method owns."""
    params = _stage_params(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][dvc_stage], method)
    reads = run_blocks(method, stage)
    assert [entry for entry in params if not any(_within(entry, block) for block in reads)] == []
    if owns:
        owned = get_method(method).owned_params(stage)
        unlisted = [
            block for block in owned if not any(_within(e, block) or _within(block, e) for e in params)
        ]
        assert unlisted == [], f"dvc.yaml {dvc_stage}: add {unlisted} to its params"


# -- Table 2's axes: registry.TABLE2_AXES --------------------------------------------------------


def _table2_grid() -> dict:
    return yaml.safe_load((REPO / "experiments" / "table2.yaml").read_text())["experiments"]


def test_the_table2_grid_varies_exactly_the_axes():
    assert {key for point in _table2_grid().values() for key in point} == set(TABLE2_AXES)
    assert all(set(point) == set(TABLE2_AXES) for point in _table2_grid().values())


def test_the_papers_table2_is_the_grid_by_the_axes():
    from nstlab.config import canonical_targets
    from nstlab.report.paper import PAPER_TABLE2
    from nstlab.report.results import TABLE2_KEY

    def shown(value):
        return canonical_targets(value) if isinstance(value, list) else value

    grid = {tuple(shown(point[axis]) for axis in TABLE2_AXES) for point in _table2_grid().values()}
    assert set(PAPER_TABLE2) == grid and TABLE2_KEY == list(TABLE2_AXES.values())


def test_the_readmes_dvc_exp_show_keeps_the_axes_and_no_other_param():
    """DVC matches each --keep regex at the start of a column name (a params key, or
    <metrics file>:<metric>)."""
    commands = [line for line in (REPO / "README.md").read_text().splitlines() if "dvc exp show" in line]
    regexes = [re.search(r"--keep '([^']+)'", line).group(1) for line in commands if "--keep" in line]
    assert regexes, "README.md: no `dvc exp show --keep` line left to check"

    def keys(tree, prefix=""):
        for name, value in tree.items():
            if isinstance(value, dict):
                yield from keys(value, f"{prefix}{name}.")
            else:
                yield f"{prefix}{name}"

    params = set(keys(yaml.safe_load(PARAMS.read_text())))
    metrics = f"reports/metrics/{TABLE2_METHOD}.json:paper_content_loss"
    for regex in regexes:
        assert {key for key in params if re.match(regex, key)} == set(TABLE2_AXES)
        assert re.match(regex, metrics)
