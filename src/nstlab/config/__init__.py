"""params.yaml -> one frozen, validated `Config`.

params.yaml holds the method's knobs at the top level and, under `profiles.<name>`, the blocks
that differ between the offline demo and the paper run (data source, sizes, backbones,
schedule). The active profile's block is laid under the top level: a key given at the top
level (e.g. by `dvc exp run -S train.lr=1e-3`) wins over the profile's value. The committed
params.yaml sets no key in both places, and `load_config` prints one line for each profile
value a top-level key hides, unless that key is what the user typed (`-S`).

Every key is checked here, once: unknown keys, wrong types and impossible values raise a
one-line `ConfigError` naming the key, the value and what is allowed. Code below this module
receives typed objects, never raw dicts.
"""

import dataclasses
import json
import subprocess
import sys
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nstlab.errors import ConfigError
from nstlab.registry import LOSS_CONVENTIONS, LR_SCHEDULES, baseline_names, get_method, run_blocks

PROFILES = ("demo", "paper")
VIT_B_LAYERS = 12  # google/vit-base-patch16-224-in21k has 12 blocks

# The paper's LoRA target names: their letter in run names and tables, and the transformers 5
# ViT modules they stand for (by role).
LORA_TARGETS = {
    "query": ("q", ("q_proj",)),
    "key": ("k", ("k_proj",)),
    "value": ("v", ("v_proj",)),
    "dense": ("d", ("o_proj", "fc1", "fc2")),
}
NATIVE_TARGETS = tuple(module for _, modules in LORA_TARGETS.values() for module in modules)
SOURCES_BY_ROLE = {"content": ("demo", "coco"), "style": ("demo", "wikiart")}
SOURCE_PREFIXES = ("dir:", "hf:")  # a local folder, a Hugging Face dataset id: either role


def _range(low=None, high=None, *, low_open=False) -> dict:
    return {"low": low, "high": high, "low_open": low_open}


def _choices(*values) -> dict:
    return {"choices": values}


@dataclass(frozen=True)
class DataConfig:
    content_source: str  # demo | coco | dir:PATH | hf:ID (check_source_name)
    style_source: str  # demo | wikiart | dir:PATH | hf:ID
    mirror: str | None
    image_size: int = field(metadata=_range(16, 4096))
    n_train: int = field(metadata=_range(1))
    n_val: int = field(metadata=_range(1))
    n_test: int = field(metadata=_range(1))
    test_max_side: int = field(metadata=_range(16, 8192))
    download_workers: int = field(metadata=_range(1, 64))
    download_retries: int = field(metadata=_range(0, 20))
    download_timeout_s: float = field(metadata=_range(0, low_open=True))
    max_pixels: int = field(metadata=_range(1))
    min_side: int = field(metadata=_range(1))
    # the fraction of a draw that may be missing on the server (replaced by the next files drawn)
    max_missing: float = field(default=0.02, metadata=_range(0, 1))
    hub_shuffle_buffer: int = field(default=1000, metadata=_range(1))  # hf: sources' seeded shuffle buffer
    # The pair tables (nstlab.data.pairs): one_to_one, content i with style i, each image in one
    # pair (NST-Project dataloader.py); random: distinct pairs drawn uniformly, images repeated.
    pairing: str = field(default="one_to_one", metadata=_choices("one_to_one", "random"))
    # Train/val squashing: bilinear, small content images first upscaled with LANCZOS
    # (NST-Project dataloader.py); bicubic.
    resample: str = field(default="bilinear", metadata=_choices("bilinear", "bicubic"))
    # The download draw and the train/val/test pairing: fixed while `seed` (training) varies.
    split_seed: int = field(default=324, metadata=_range(0))


@dataclass(frozen=True)
class BackboneConfig:
    vit: str  # "random" or a Hugging Face hub id / local directory for from_pretrained
    vit_hidden: int = field(metadata=_range(8))  # the random-init ViT's size (ignored when pretrained)
    vit_heads: int = field(metadata=_range(1))
    vit_mlp: int = field(metadata=_range(8))
    vit_layers: int = field(metadata=_range(1, 48))
    vgg19: str  # "random", "imagenet" or a path: torchvision's VGG-19 (the "paper" loss convention)
    adain_vgg: str  # "random" or a path to the normalised VGG-19, vgg_normalised.pth
    vgg_width: float = field(metadata=_range(0, 1, low_open=True))
    # Where the decoder that reads adain_vgg's relu4_1 starts: None (random init, as every official
    # training) or a path to its state dict at vgg_width (the released decoder.pth's layout)
    adain_decoder: str | None = None


@dataclass(frozen=True)
class EncoderConfig:
    layers: int = field(metadata=_range(1, 48))


@dataclass(frozen=True)
class LoraConfig:
    r: int = field(metadata=_range(1, 1024))
    alpha: float = field(metadata=_range(0, low_open=True))
    dropout: float = field(metadata=_range(0, 1))
    target_modules: tuple[str, ...]


@dataclass(frozen=True)
class DecoderConfig:
    layers: int = field(metadata=_range(1, 24))
    heads: int = field(metadata=_range(1))
    ffn: int = field(metadata=_range(1))
    dropout: float = field(metadata=_range(0, 1))
    cnn_width: float = field(metadata=_range(0, 1, low_open=True))
    # The CNN decoder's weights: xavier (NST-Project decoder.py) or pytorch (torch's default init)
    cnn_init: str = field(default="xavier", metadata=_choices("xavier", "pytorch"))


@dataclass(frozen=True)
class LossConfig:
    convention: str = field(metadata=_choices(*LOSS_CONVENTIONS))
    content: float = field(metadata=_range(0))
    style: float = field(metadata=_range(0))
    identity1: float = field(metadata=_range(0))
    identity2: float = field(metadata=_range(0))


@dataclass(frozen=True)
class StageConfig:
    epochs: int = field(metadata=_range(0))
    milestones: tuple[int, ...] = ()
    gamma: float = field(default=1.0, metadata=_range(0, 1, low_open=True))


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = field(metadata=_range(1))
    lr: float = field(metadata=_range(0, low_open=True))
    stage1: StageConfig
    stage2: StageConfig
    log_every: int = field(metadata=_range(1))
    val_every: int = field(metadata=_range(1))
    max_val_pairs: int = field(metadata=_range(1))
    sample_every: int = field(metadata=_range(1))
    precision: str = field(metadata=_choices("auto", "fp32", "bf16"))
    device: str = field(metadata=_choices("auto", "cpu", "cuda"))
    workers: int = field(metadata=_range(0, 64))
    keep: str = field(default="best", metadata=_choices("best", "last"))  # what this block's model.pt holds
    stage2_from: str = field(default="last", metadata=_choices("last", "best"))  # stage 1's, for stage 2
    # the paper method's val/sample/log steps counted in each epoch (NST-Project trainer.py) or in the run
    val_steps: str = field(default="in_epoch", metadata=_choices("in_epoch", "global"))
    # the paper method's last partial batch of an epoch kept (NST-Project main.py, no drop_last) or dropped
    last_batch: str = field(default="keep", metadata=_choices("keep", "drop"))


@dataclass(frozen=True)
class EvalConfig:
    max_size: int = field(metadata=_range(16, 8192))
    max_pairs: int = field(metadata=_range(1))
    gallery_pairs: int = field(metadata=_range(1))


@dataclass(frozen=True)
class BaselineDataConfig:
    """How a baseline's training images are drawn (`baselines.<name>.data`); the defaults are
    the official codes': content and style drawn independently each step, every image resized
    to 512×512 (aspect not kept), then a random 256×256 crop. `pairs`: the pair stage's fixed
    train pairs instead, resized and cropped alike."""

    sampling: str = field(default="independent", metadata=_choices("independent", "pairs"))
    resize: int = field(default=512, metadata=_range(16, 8192))
    crop: int = field(default=256, metadata=_range(16, 8192))


@dataclass(frozen=True)
class MethodConfig:
    """One baseline's block, `baselines.<name>`: schedule, loss weights, method options."""

    batch_size: int = field(metadata=_range(1))
    iterations: int = field(metadata=_range(1))
    lr: float = field(metadata=_range(0, low_open=True))
    lr_schedule: str = field(metadata=_choices(*LR_SCHEDULES))
    lr_decay: float = field(default=0.0, metadata=_range(0))
    warmup_iterations: int = field(default=0, metadata=_range(0))
    grad_clip: float | None = None
    loss: Mapping[str, float] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    data: BaselineDataConfig = field(default_factory=BaselineDataConfig)
    keep: str = field(default="last", metadata=_choices("last", "best"))  # official codes ship the last step


@dataclass(frozen=True)
class MlflowConfig:
    tracking_uri: str
    experiment: str


@dataclass(frozen=True)
class Config:
    profile: str = field(metadata=_choices(*PROFILES))
    seed: int
    data: DataConfig
    backbone: BackboneConfig
    encoder: EncoderConfig
    lora: LoraConfig
    decoder: DecoderConfig
    loss: LossConfig
    train: TrainConfig
    eval: EvalConfig
    baselines: Mapping[str, MethodConfig]
    mlflow: MlflowConfig

    def flat(self) -> dict[str, Any]:
        """The resolved config as dotted keys (`lora.r`, `baselines.<name>.lr`): MLflow params."""
        return flatten(dataclasses.asdict(self))


def run_params(cfg: Config, method: str, stage: int = 0) -> dict[str, Any]:
    """The flattened params of one run of `method`, as MLflow logs them: the keys of the blocks
    the registry says the run reads (registry.run_blocks), so a run does not carry another
    method's settings (config.yaml keeps them all)."""
    get_method(method)  # an unknown name: a one-line ConfigError naming the known ones
    wanted = run_blocks(method, stage)
    return {
        key: value
        for key, value in cfg.flat().items()
        if any(key == block or key.startswith(block + ".") for block in wanted)
    }


def config_yaml(cfg: Config) -> str:
    """The whole resolved config as YAML (every run's `config.yaml` artefact)."""
    return yaml.safe_dump(json.loads(json.dumps(dataclasses.asdict(cfg))), sort_keys=False)


def flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = list(value) if isinstance(value, tuple) else value
    return flat


# ---------------------------------------------------------------------------------------------
# Typed construction with one-line errors


def _type_name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _convert(value: Any, hint: Any, key: str) -> Any:
    """Check `value` against the type hint `hint`; return it converted (lists -> tuples)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        inner = [option for option in options if option is not type(None)]
        return _convert(value, inner[0], key)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ConfigError(f"{key} = {value!r}: expected a list")
        item_hint = typing.get_args(hint)[0]
        return tuple(_convert(item, item_hint, f"{key}[{index}]") for index, item in enumerate(value))
    if origin in (Mapping, dict):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} = {value!r}: expected a mapping of name: value")
        value_hint = typing.get_args(hint)[1]
        return {str(name): _convert(item, value_hint, f"{key}.{name}") for name, item in value.items()}
    if hint is Any:
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} = {value!r}: expected a number")
        return float(value)
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key} = {value!r}: expected a whole number")
    if not isinstance(value, hint):
        raise ConfigError(f"{key} = {value!r}: expected {_type_name(hint)}")
    return value


def _check_bounds(value: Any, metadata: Mapping, key: str) -> None:
    if "choices" in metadata and value not in metadata["choices"]:
        raise ConfigError(f"{key} = {value!r}: choose one of {', '.join(map(str, metadata['choices']))}")
    low, high = metadata.get("low"), metadata.get("high")
    if value is None or (low is None and high is None):
        return
    too_low = low is not None and (value <= low if metadata.get("low_open") else value < low)
    too_high = high is not None and value > high
    if too_low or too_high:
        left = "(" if metadata.get("low_open") else "["
        allowed = f"{left}{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
        raise ConfigError(f"{key} = {value!r}: must be in {allowed}")


def _build(cls, raw: Any, key: str):
    """Build dataclass `cls` from the mapping `raw` found at dotted `key`."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{key or 'params'} = {raw!r}: expected a mapping of keys")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    prefix = f"{key}." if key else ""
    for name in raw:
        if name not in fields:
            raise ConfigError(f"unknown key {prefix}{name}: allowed keys are {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, spec in fields.items():
        if name not in raw:
            if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise ConfigError(f"missing key {prefix}{name}: add it to params.yaml")
            continue
        values[name] = _convert(raw[name], hints[name], prefix + name)
        _check_bounds(values[name], spec.metadata, prefix + name)
    return cls(**values)


def check_source_name(name: str, role: str) -> None:
    """ConfigError unless `name` is a source for `role`: its own names, dir:PATH or hf:ID."""
    if name in SOURCES_BY_ROLE[role] or (name.startswith(SOURCE_PREFIXES) and name.split(":", 1)[1].strip()):
        return
    raise ConfigError(
        f"data.{role}_source = {name!r}: use one of {', '.join(SOURCES_BY_ROLE[role])}, "
        "dir:PATH (a local folder of images) or hf:DATASET_ID (a Hugging Face dataset)"
    )


def _check_relations(cfg: Config) -> None:
    """Rules that involve more than one key."""
    check_source_name(cfg.data.content_source, "content")
    check_source_name(cfg.data.style_source, "style")
    pretrained = cfg.backbone.vit != "random"
    max_layers = VIT_B_LAYERS if pretrained else cfg.backbone.vit_layers
    if cfg.encoder.layers > max_layers:
        vit = (
            f"ViT-B/16 has {max_layers} blocks"
            if pretrained
            else f"backbone.vit_layers = {max_layers} in the {cfg.profile} profile"
        )
        raise ConfigError(f"encoder.layers = {cfg.encoder.layers}: must be in [1, {max_layers}] ({vit})")
    if not cfg.lora.target_modules:
        raise ConfigError("lora.target_modules = []: name at least one of query, key, value, dense")
    for name in cfg.lora.target_modules:
        if name not in LORA_TARGETS and name not in NATIVE_TARGETS:
            allowed = ", ".join((*LORA_TARGETS, *NATIVE_TARGETS))
            raise ConfigError(f"lora.target_modules: unknown module {name!r}: choose from {allowed}")
    if cfg.backbone.vit == "random" and cfg.backbone.vit_hidden % cfg.backbone.vit_heads:
        raise ConfigError(
            f"backbone.vit_hidden = {cfg.backbone.vit_hidden}: must divide by backbone.vit_heads = {cfg.backbone.vit_heads}"
        )
    for method, block in cfg.baselines.items():
        if block.data.crop > block.data.resize:
            raise ConfigError(
                f"baselines.{method}.data.crop = {block.data.crop}: must be at most "
                f"baselines.{method}.data.resize = {block.data.resize}"
            )
    for stage in ("stage1", "stage2"):
        milestones = getattr(cfg.train, stage).milestones
        if list(milestones) != sorted(set(milestones)):
            raise ConfigError(f"train.{stage}.milestones = {list(milestones)}: must be strictly increasing")


def _merge(base: Mapping, top: Mapping) -> dict:
    """Deep-merge `top` over `base` (mappings merge key by key, anything else replaces)."""
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_override(text: str) -> tuple[list[str], Any]:
    """`lora.r=32` -> (['lora', 'r'], 32); the value is read as YAML, as `dvc exp run -S` does."""
    key, sep, value = text.partition("=")
    key = key.strip().lstrip("+")
    if not sep or not key:
        raise ConfigError(f"-S {text!r}: expected key=value, e.g. -S lora.r=32")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        raise ConfigError(f"-S {text!r}: the value is not valid YAML") from None
    return key.split("."), parsed


def with_overrides(raw: Mapping, overrides: Iterable[str]) -> dict:
    """A copy of raw params with each `key=value` override set at the top level."""
    raw = _merge({}, raw)
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"-S {text!r}: {part} is not a block of keys")
        node[path[-1]] = value
    return raw


@dataclass(frozen=True)
class Shadow:
    """A key set both at the top level and in `profiles.<profile>`: the top-level value wins."""

    key: str  # dotted, as at the top level
    profile: str
    top_value: Any
    profile_value: Any

    def line(self) -> str:
        return (
            f"{self.key} = {self.top_value!r} at the top level overrides "
            f"profiles.{self.profile}.{self.key} = {self.profile_value!r}"
        )


def shadowed(raw: Mapping, profile: str) -> list[Shadow]:
    """Every key of raw params set both at the top level and in profiles.<profile> (leaf keys:
    blocks merge key by key, so only a value replaces a value)."""
    block = (raw.get("profiles") or {}).get(profile)
    top = {key: value for key, value in raw.items() if key != "profiles"}
    return _shadows(top, block, profile, "") if isinstance(block, Mapping) else []


def _shadows(top: Mapping, block: Mapping, profile: str, prefix: str) -> list[Shadow]:
    found = []
    for key, value in top.items():
        if key not in block:
            continue
        if isinstance(value, Mapping) and isinstance(block[key], Mapping):
            found += _shadows(value, block[key], profile, f"{prefix}{key}.")
        else:
            found.append(Shadow(f"{prefix}{key}", profile, value, block[key]))
    return found


def resolve(raw: Mapping, overrides: Iterable[str] = ()) -> Config:
    """Raw params (as read from params.yaml) + `key=value` overrides -> validated Config."""
    raw = with_overrides(raw, overrides)
    profiles = raw.pop("profiles", None)
    if not isinstance(profiles, Mapping) or set(profiles) != set(PROFILES):
        raise ConfigError(f"profiles: params.yaml needs one block per profile: {', '.join(PROFILES)}")
    profile = raw.get("profile")
    if profile not in PROFILES:
        raise ConfigError(f"profile = {profile!r}: choose one of {', '.join(PROFILES)}")
    resolved = {}
    # The active profile first, then the others, so a typo in the paper block shows in the demo.
    for name in sorted(PROFILES, key=lambda candidate: candidate != profile):
        if not isinstance(profiles[name], Mapping):
            raise ConfigError(f"profiles.{name}: expected a mapping of keys")
        merged = _merge(profiles[name], {**raw, "profile": name})
        for method in merged.get("baselines") or {}:
            if method not in baseline_names():
                allowed = ", ".join(baseline_names())
                raise ConfigError(f"unknown key baselines.{method}: allowed baselines are {allowed}")
        candidate = _build(Config, merged, "")
        _check_relations(candidate)
        resolved[name] = candidate
    return resolved[profile]


def load_config(path: str | Path = "params.yaml", overrides: Iterable[str] = ()) -> Config:
    """Read and validate params.yaml; errors name the file and the key."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(
            f"{path}: cannot read ({error.strerror}); run from the repository root or pass --params"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(
            f"{path}: not a text file (undecodable bytes); pass the YAML parameters file"
        ) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}; fix the syntax") from None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: expected a mapping of keys at the top")
    overrides = list(overrides)
    try:
        cfg = resolve(raw, overrides)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    for shadow in untyped_shadows(path, raw, overrides, cfg.profile):
        print(f"{path}: {shadow.line()}; set it in one place", file=sys.stderr)
    return cfg


def untyped_shadows(path: Path, raw: Mapping, overrides: list[str], profile: str) -> list[Shadow]:
    """The active profile's values hidden by a top-level key the user did not type: typed are
    the keys set by `overrides` (nstlab's -S) and the top-level values that differ from the
    file's committed version (git HEAD), as `dvc exp run -S` writes them into params.yaml.
    Without a committed version every hidden value counts."""
    typed = [parse_override(text)[0] for text in overrides]
    shadows = [
        shadow
        for shadow in shadowed(with_overrides(raw, overrides), profile)
        if not any(shadow.key.split(".")[: len(keys)] == keys for keys in typed)
    ]
    committed = _committed_params(path) if shadows else None
    if committed is None:
        return shadows
    return [shadow for shadow in shadows if _lookup(committed, shadow.key) == _lookup(raw, shadow.key)]


_ABSENT = object()


def _lookup(tree: Mapping, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, Mapping) or part not in tree:
            return _ABSENT
        tree = tree[part]
    return tree


def _committed_params(path: Path) -> Mapping | None:
    """`path` as committed at git HEAD, parsed; None outside a repository or if untracked."""
    try:
        shown = subprocess.run(
            ["git", "-C", str(path.parent), "show", f"HEAD:./{path.name}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        committed = yaml.safe_load(shown.stdout) if shown.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, yaml.YAMLError):
        return None
    return committed if isinstance(committed, Mapping) else None


def short_targets(target_modules: Iterable[str]) -> str:
    """[query, key, value, dense] -> 'qkvd' in the given order (run names stay short and readable)."""
    return "".join(LORA_TARGETS[name][0] if name in LORA_TARGETS else name for name in target_modules)


def canonical_targets(target_modules: Iterable[str]) -> str:
    """Any spelling of the LoRA targets (paper or module names) -> the paper's short form, e.g. 'qkvd'."""
    letter_of = {name: letter for name, (letter, _) in LORA_TARGETS.items()}
    letter_of |= {module: letter for letter, modules in LORA_TARGETS.values() for module in modules}
    letters = {letter_of.get(name, name) for name in target_modules}
    return "".join(letter for letter, _ in LORA_TARGETS.values() if letter in letters)


def lora_modules(target_modules: Iterable[str]) -> list[str]:
    """Paper names (query, key, value, dense) -> transformers 5 ViT module names, by role."""
    modules: list[str] = []
    for name in target_modules:
        for module in LORA_TARGETS[name][1] if name in LORA_TARGETS else (name,):
            if module not in modules:
                modules.append(module)
    return modules
