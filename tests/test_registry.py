"""The method registry (registry.py) and the places that must list the same methods."""

from pathlib import Path

import pytest
import yaml

from conftest import PARAMS
from nstlab.errors import ConfigError
from nstlab.registry import (
    OPTIMISED,
    TRAINED,
    baseline_names,
    final_output_key,
    get_method,
    method_names,
    output_key,
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


def test_every_registered_method_has_a_module_with_build():
    import importlib

    for name in method_names():
        assert callable(importlib.import_module(get_method(name).module).build), name


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


def test_the_trainer_names_no_method():
    source = (REPO / "src" / "nstlab" / "training" / "trainer.py").read_text().lower()
    assert [name for name in method_names() if name in source] == []
