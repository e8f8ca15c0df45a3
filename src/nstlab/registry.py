"""The methods nstlab knows, one line each, in the order tables and figures show them.

Torch-free: config validation, CLI help, the report's order and the check of dvc.yaml's stage
lists read it without importing a model. `nstlab.models.build_model` imports `module` and calls
its `build(cfg)`. Adding a method = its model file + one line here + its params block.
"""

from dataclasses import dataclass

from nstlab.errors import ConfigError

TRAINED = "trained"  # a feed-forward network that nstlab.training.trainer trains
OPTIMISED = "optimised"  # nothing trains: each image is optimised at evaluation (Gatys)


@dataclass(frozen=True)
class Method:
    name: str
    module: str  # the module whose build(cfg) makes the model
    kind: str  # TRAINED or OPTIMISED
    stages: tuple[int, ...] = (0,)  # training stages; a single-stage method trains as stage 0
    params: str = ""  # its params.yaml block; "" = baselines.<name>

    @property
    def params_block(self) -> str:
        return self.params or f"baselines.{self.name}"


METHODS = (
    Method("vit_lora", "nstlab.models.vit_lora", TRAINED, stages=(1, 2), params="train"),
    Method("artflow", "nstlab.models.artflow", TRAINED),
    Method("iest", "nstlab.models.iest", TRAINED),
    Method("mcc", "nstlab.models.mcc", TRAINED),
    Method("sanet", "nstlab.models.sanet", TRAINED),
    Method("stytr2", "nstlab.models.stytr2", TRAINED),
    Method("adain", "nstlab.models.adain", TRAINED),
    Method("gatys", "nstlab.models.gatys", OPTIMISED),
)
_BY_NAME = {method.name: method for method in METHODS}


def method_names(kind: str | None = None) -> list[str]:
    """Every method's name in display order, or those of one kind (TRAINED / OPTIMISED)."""
    return [method.name for method in METHODS if kind is None or method.kind == kind]


def baseline_names() -> list[str]:
    """The methods configured under `baselines:` in params.yaml."""
    return [method.name for method in METHODS if method.params_block.startswith("baselines.")]


def get_method(name: str) -> Method:
    if name not in _BY_NAME:
        raise ConfigError(f"unknown model {name!r}: choose one of {', '.join(_BY_NAME)}")
    return _BY_NAME[name]


def output_key(name: str, stage: int) -> str:
    """The folder name under models/, reports/train/ and checkpoints/: vit_lora_stage2, sanet, ..."""
    return f"{name}_stage{stage}" if len(get_method(name).stages) > 1 else name


def final_stage(name: str) -> int:
    """The method's last training stage: the one evaluation tests."""
    return get_method(name).stages[-1]


def final_output_key(name: str) -> str:
    """The output key of the method's last training stage: the weights evaluation reads."""
    return output_key(name, get_method(name).stages[-1])
