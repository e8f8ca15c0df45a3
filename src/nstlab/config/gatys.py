"""Gatys' settings as config: the presets, every option's validation, and the settings a config
resolves to. Torch-free, so the config digest (nstlab.training.checkpoint) and the report read them
without the model (nstlab.models.gatys optimises with them).
"""

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nstlab.errors import ConfigError
from nstlab.config.layer_names import EXTRACTORS, default_layers, is_layer_name

PRESETS = ("default", "reference")
INITS = ("content", "style", "noise")
OPTIMIZERS = ("lbfgs", "adam", "adamw")
STYLE_LOSSES = ("seed", "pystiche")
EDGES = ("long", "short")  # which edge max_size caps
SPACES = ("normalised", "pixels")  # what the optimiser moves: the ImageNet-normalised image, or [0, 1] pixels
INVERSE_CHANNELS_SQUARED = "1/C^2"  # pystiche's Gatys 2016 layer weights
SEED_LAYER_WEIGHTS = (1.0, 0.75, 0.2, 0.2, 0.2)  # the seed report, relu1_1 … relu5_1
LOSS_TERMS = ("content", "style", "tv", "laplacian", "perceptual")
MIN_SIDE = 16  # VGG-19's relu5_1 is 1/16 of the input


@dataclass(frozen=True)
class GatysSettings:
    """One Gatys run. The defaults are the "default" preset; `settings_from_options` fills in the
    chosen preset and validates. Layer names depend on the extractor (see nstlab.config.layer_names);
    None = the extractor's defaults. style_layer_weights: one number per style layer, "1/C^2",
    or None = the preset's (seed weights for VGG-19's default layers, else 1.0 each)."""

    preset: str = "default"
    extractor: str = "vgg19"
    weights: str | None = None  # "random" | "imagenet" | path | hub id; None: the profile's backbone
    content_layers: tuple[str, ...] | None = None
    style_layers: tuple[str, ...] | None = None
    style_layer_weights: tuple[float, ...] | str | None = None
    perceptual_layers: tuple[str, ...] | None = None
    style_loss: str = "seed"
    content_weight: float = 1.0
    style_weight: float = 1e6
    tv_weight: float = 0.0
    laplacian_weight: float = 0.0
    perceptual_weight: float = 0.0
    init: str = "content"
    space: str = "normalised"
    optimizer: str = "adam"
    lr: float = 0.003
    steps: int = 2000
    # Cap (px) on the image's long or short edge (max_size_edge) while it is optimised; the output
    # is resized back. The seed report loads its images at max side 400 (docs/methods.md#gatys);
    # pystiche caps the short edge at 512 (the reference preset). None: the content's own size.
    max_size: int | None = 400
    max_size_edge: str = "long"
    log_every: int = 10


_PRESET_VALUES = {
    "default": {},
    "reference": {
        "style_layer_weights": INVERSE_CHANNELS_SQUARED,
        "style_loss": "pystiche",
        "style_weight": 1e3,
        "optimizer": "lbfgs",
        "lr": 1.0,
        "steps": 500,
        "max_size": 512,
        "max_size_edge": "short",
    },
}
_CHOICES = {
    "preset": PRESETS,
    "extractor": EXTRACTORS,
    "init": INITS,
    "optimizer": OPTIMIZERS,
    "style_loss": STYLE_LOSSES,
    "space": SPACES,
    "max_size_edge": EDGES,
}


def _one_of(choices: Sequence[str]) -> str:
    return f"{', '.join(choices[:-1])} or {choices[-1]}"


def settings_from_options(options: Mapping[str, Any], key_prefix: str = "baselines.gatys") -> GatysSettings:
    """Options mapping (preset + overrides) -> validated GatysSettings; a bad name or value raises
    ConfigError naming `<key_prefix>.<name>`."""
    fields = {field.name: field for field in dataclasses.fields(GatysSettings)}
    for name in options:
        if name not in fields:
            raise ConfigError(f"unknown key {key_prefix}.{name}: allowed keys are {', '.join(fields)}")
    preset = options.get("preset", "default")
    if preset not in PRESETS:
        raise ConfigError(f"{key_prefix}.preset = {preset!r}: choose {_one_of(PRESETS)}")
    values = {**_PRESET_VALUES[preset], **options}
    for name, choices in _CHOICES.items():
        if name in values and values[name] not in choices:
            raise ConfigError(f"{key_prefix}.{name} = {values[name]!r}: choose {_one_of(choices)}")
    for name, value in values.items():
        key = f"{key_prefix}.{name}"
        if name.endswith("_weight") or name == "lr":
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or value < 0
                or (name == "lr" and value == 0)
            ):
                # YAML 1.1 reads 1e6 (no dot, no exponent sign) as text: say how to write it.
                hint = "; write 1.0e+6, not 1e6" if isinstance(value, str) and _is_number(value) else ""
                raise ConfigError(
                    f"{key} = {value!r}: expected a number {'> 0' if name == 'lr' else '≥ 0'}{hint}"
                )
            values[name] = float(value)
        if name in ("steps", "log_every") or (name == "max_size" and value is not None):
            low = MIN_SIDE if name == "max_size" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{key} = {value!r}: expected a whole number ≥ {low}")
        if name == "weights" and value is not None and (not isinstance(value, str) or not value):
            raise ConfigError(f"{key} = {value!r}: expected 'random', 'imagenet', a path or a hub id")
        if name.endswith("_layers") and value is not None:
            values[name] = _layer_names(values.get("extractor", "vgg19"), value, key)
    values["style_layer_weights"] = _layer_weights(values, key_prefix)
    settings = GatysSettings(**values)
    if not any(getattr(settings, f"{term}_weight") for term in LOSS_TERMS):
        raise ConfigError(
            f"{key_prefix}: every loss weight is 0; give content_weight or style_weight a value > 0"
        )
    return settings


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _layer_names(extractor: str, value: Any, key: str) -> tuple[str, ...]:
    names = (value,) if isinstance(value, str) else value
    if not isinstance(names, list | tuple) or not names or not all(isinstance(name, str) for name in names):
        raise ConfigError(f"{key} = {value!r}: expected a non-empty list of layer names")
    for name in names:
        if not is_layer_name(extractor, name):
            example = {"vgg19": "relu4_2", "resnet50": "layer3", "vit": "block6"}[extractor]
            raise ConfigError(f"{key}: unknown {extractor} layer {name!r}; use names like {example}")
    return tuple(names)


def _layer_weights(values: Mapping[str, Any], key_prefix: str) -> tuple[float, ...] | str | None:
    """The validated style_layer_weights: None, "1/C^2", or one number ≥ 0 per style layer."""
    weights, key = values.get("style_layer_weights"), f"{key_prefix}.style_layer_weights"
    if weights is None or weights == INVERSE_CHANNELS_SQUARED:
        return weights
    if (
        isinstance(weights, str)
        or not isinstance(weights, list | tuple)
        or not all(isinstance(w, int | float) and not isinstance(w, bool) and w >= 0 for w in weights)
    ):
        raise ConfigError(
            f"{key} = {weights!r}: expected a list of numbers ≥ 0 or {INVERSE_CHANNELS_SQUARED!r}"
        )
    extractor = values.get("extractor", "vgg19")
    layers = values.get("style_layers")
    if layers is None and extractor != "vit":  # a ViT's default layers depend on its depth: checked at build
        layers = default_layers(extractor)["style"]
    if layers is not None and len(weights) != len(layers):
        raise ConfigError(
            f"{key}: {len(weights)} weights for {len(layers)} style layers ({', '.join(layers)})"
        )
    return tuple(float(w) for w in weights)


def settings_from_config(cfg) -> GatysSettings:
    """`cfg.baselines["gatys"]` -> GatysSettings: `options` holds GatysSettings' names,
    `iterations` is the step count and `lr` the learning rate (they win over the preset's: set
    both with preset: reference). Weights, when not given: VGG-19 `backbone.vgg19`; ResNet-50
    torchvision ImageNet exactly when `backbone.vgg19` is imagenet, else random; ViT `backbone.vit`."""
    spec = cfg.baselines["gatys"]
    for name, where in (("steps", "iterations"), ("lr", "lr")):
        if name in spec.options:
            raise ConfigError(f"baselines.gatys.options.{name}: set baselines.gatys.{where} instead")
    if spec.loss:
        raise ConfigError(
            "baselines.gatys.loss: give Gatys' weights in baselines.gatys.options "
            "(content_weight, style_weight, tv_weight, laplacian_weight, perceptual_weight)"
        )
    settings = settings_from_options(
        {**spec.options, "steps": spec.iterations, "lr": spec.lr}, key_prefix="baselines.gatys.options"
    )
    if settings.weights is not None:
        return settings
    backbone = cfg.backbone
    profile_weights = {
        "vgg19": backbone.vgg19,
        "vit": backbone.vit,
        "resnet50": "imagenet" if backbone.vgg19 == "imagenet" else "random",
    }
    return dataclasses.replace(settings, weights=profile_weights[settings.extractor])
