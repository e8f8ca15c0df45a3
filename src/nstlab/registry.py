"""The methods nstlab knows, one entry each, in the order tables and figures show them, and
what each can do: everything outside a method's own model file asks here instead of naming it.

Torch-free: config validation, CLI help, the report's order and the checks of dvc.yaml read it
without importing a model. `nstlab.models.model_class` imports `model`, the method's
`nstlab.models.base.StyleModel` subclass, which holds the code hooks (how it trains, loads, logs).
Adding a method = its model file + one entry here + its params block.
"""

import dataclasses
import importlib
from dataclasses import dataclass

from nstlab.errors import ConfigError

TRAINED = "trained"  # a feed-forward network that nstlab.training.trainer trains
OPTIMISED = "optimised"  # nothing trains: each image is optimised at evaluation (Gatys)

# The params every run reads, whatever the method; a method's own blocks come on top (run_blocks).
SHARED_PARAMS = ("profile", "seed", "data", "backbone", "eval")
# The train.* keys the trainer reads for every method it trains (a method's schedule lies in its
# own block), and the one an evaluation reads for a method that trains nothing.
TRAINER_KEYS = tuple(
    f"train.{key}"
    for key in ("log_every", "val_every", "max_val_pairs", "sample_every", "precision", "device", "workers")
)
EVALUATION_KEYS = ("train.device",)

# Choices named after the method whose code defines them: the loss conventions that train
# (loss.convention) and score (every convention, in evaluation) a model, "paper" being the
# ViT-LoRA paper's formulas, and the baselines' lr schedules (baselines.<name>.lr_schedule).
LOSS_CONVENTIONS = ("paper", "stytr2")
LR_SCHEDULES = ("constant", "inverse", "stytr2")

# Whose outputs the others are compared with, as pseudo ground truth (the Gatys proposal's
# metric: mse_vs_<it>, ssim_vs_<it>).
PSEUDO_GROUND_TRUTH = "adain"


@dataclass(frozen=True)
class Method:
    name: str
    model: str  # its nstlab.models.base.StyleModel subclass, as module.Class
    kind: str = TRAINED  # TRAINED or OPTIMISED
    stages: tuple[int, ...] = (0,)  # training stages; a single-stage method trains as stage 0
    params: tuple[str, ...] = ()  # the params.yaml blocks it owns; () = its baselines.<name> block
    later_params: tuple[str, ...] = ()  # blocks that only its stages after the first read
    alpha: bool = False  # stylises with a content–style trade-off `alpha` (its forward says how)
    several_styles: bool = False  # stylises with a weighted mix of several style images
    adapters: bool = False  # its last stage saves LoRA adapters that `stylize --adapter` loads
    # module.function, torch-free: config -> the settings its free-form options resolve to (a dataclass)
    options_resolver: str = ""

    def owned_params(self, stage: int) -> tuple[str, ...]:
        """The params blocks this method owns at one stage: no other method's run reads them."""
        own = self.params or (f"baselines.{self.name}",)
        return (*own, *self.later_params) if stage != self.stages[0] else own


METHODS = (
    Method(
        "vit_lora",
        "nstlab.models.vit_lora.ViTLoRA",
        stages=(1, 2),
        params=("encoder", "decoder", "loss", "train"),
        later_params=("lora",),
        adapters=True,
    ),
    Method("artflow", "nstlab.models.artflow.ArtFlow", alpha=True),
    Method("iest", "nstlab.models.iest.IEST", alpha=True),
    Method("mcc", "nstlab.models.mcc.MCC", alpha=True),
    Method("sanet", "nstlab.models.sanet.SANet", alpha=True),
    Method("stytr2", "nstlab.models.stytr2.StyTr2", alpha=True),
    Method("adain", "nstlab.models.adain.AdaIN", alpha=True, several_styles=True),
    Method(
        "gatys",
        "nstlab.models.gatys.GatysTransfer",
        OPTIMISED,
        options_resolver="nstlab.config.gatys.settings_from_config",
    ),
)
_BY_NAME = {method.name: method for method in METHODS}

# Table 2, the paper's ablation of ViT-LoRA's last stage (experiments/table2.yaml), is along these
# params, each with its column in reports/table2.*; the MLflow UI's Table 2 view shows the same.
TABLE2_METHOD = "vit_lora"
TABLE2_AXES = {
    "lora.r": "r",
    "lora.target_modules": "targets",
    "encoder.layers": "encoder_layers",
    "decoder.layers": "decoder_layers",
}


def method_names(kind: str | None = None) -> list[str]:
    """Every method's name in display order, or those of one kind (TRAINED / OPTIMISED)."""
    return [method.name for method in METHODS if kind is None or method.kind == kind]


def baseline_names() -> list[str]:
    """The methods configured under `baselines:` in params.yaml."""
    return [method.name for method in METHODS if not method.params]


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


def run_blocks(name: str, stage: int) -> tuple[str, ...]:
    """Every params entry (a block, or one key of a block) one run of `name` at `stage` reads:
    the shared ones, the method's own, and the train keys of what runs it (the trainer, or an
    evaluation for a method that trains nothing). MLflow logs these keys (nstlab.config.run_params),
    dvc.yaml's stages list theirs (tests/test_registry.py), and the digest of a configuration
    across seeds leaves out what only other runs read (nstlab.training.checkpoint)."""
    method = get_method(name)
    runner = TRAINER_KEYS if method.kind == TRAINED else EVALUATION_KEYS
    return (*SHARED_PARAMS, *method.owned_params(stage), *runner)


def every_run() -> list[tuple[str, int]]:
    """(method, stage) of every training, and of every evaluation of a method that trains nothing."""
    return [(method.name, stage) for method in METHODS for stage in method.stages]


def overlaps(entry: str, other: str) -> bool:
    """Whether two params entries share keys: equal, or one a block that holds the other."""
    return entry == other or entry.startswith(other + ".") or other.startswith(entry + ".")


def foreign_blocks(name: str, stage: int) -> tuple[str, ...]:
    """The params entries that only other runs read: those sharing no key with this run's."""
    own = run_blocks(name, stage)
    return tuple(
        dict.fromkeys(
            entry
            for other in every_run()
            if other != (name, stage)
            for entry in run_blocks(*other)
            if not any(overlaps(entry, mine) for mine in own)
        )
    )


def resolved_options(name: str, cfg) -> tuple[str, dict] | None:
    """(the options key, the settings they resolve to) where the registry names a resolver, so a
    configuration counts by what it means, not how it is spelt; else None."""
    method = get_method(name)
    if not method.options_resolver:
        return None
    module, _, function = method.options_resolver.rpartition(".")
    settings = getattr(importlib.import_module(module), function)(cfg)
    return f"baselines.{name}.options", dataclasses.asdict(settings)
