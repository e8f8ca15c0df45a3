"""The ViT encoder in plain PyTorch, for stylising without transformers and peft.

Computes what transformers 5's `ViTModel(add_pooling_layer=False)` computes with
`interpolate_pos_encoding=True` (in eval mode), with its module names, so its state dict loads
here as it is. `nstlab stylize` builds ViT-LoRA's encoders from it: importing transformers and
peft costs seconds at start-up, this costs nothing. The frozen base weights are read from
`config.json` + `model.safetensors` (a `save_pretrained` directory or the local hub cache),
mapped rather than copied and shared by both encoders; each encoder adds its trained LoRA pairs
as peft computes them, xWᵀ + b + (xAᵀ)Bᵀ · alpha / r.

    pixels ─patch conv─► + CLS ─► + positions (bicubic to the grid) ─► N × block ─► LayerNorm
    block: x + o_proj(attention(LN(x)))  then  x + fc2(GELU(fc1(LN(x))))
"""

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class ViTSpec:
    """The fields of a transformers ViTConfig that the encoder reads."""

    hidden_size: int
    num_attention_heads: int
    intermediate_size: int
    num_hidden_layers: int
    image_size: int
    patch_size: int
    num_channels: int = 3
    layer_norm_eps: float = 1e-12
    qkv_bias: bool = True

    @classmethod
    def from_config(cls, config: Mapping, layers: int) -> "ViTSpec | None":
        """The first `layers` blocks of a ViTModel's config.json; None when this encoder would not
        compute what ViTModel computes (another activation or head size, non-square sizes, fewer
        blocks than asked for)."""
        values = {name: config[name] for name in cls.__dataclass_fields__ if name in config}
        values["num_hidden_layers"] = layers
        try:
            spec = cls(**values)
        except TypeError:  # a required field is missing
            return None
        standard_heads = config.get("head_dim", spec.hidden_size // spec.num_attention_heads)
        if (
            config.get("hidden_act", "gelu") != "gelu"
            or standard_heads * spec.num_attention_heads != spec.hidden_size
            or not isinstance(spec.image_size, int)
            or not isinstance(spec.patch_size, int)
            or layers > config["num_hidden_layers"]
        ):
            return None
        return spec


class PatchEmbeddings(nn.Module):
    def __init__(self, spec: ViTSpec):
        super().__init__()
        self.projection = nn.Conv2d(
            spec.num_channels, spec.hidden_size, kernel_size=spec.patch_size, stride=spec.patch_size
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.projection(pixels).flatten(2).transpose(1, 2)


class Embeddings(nn.Module):
    """Patch tokens after the CLS token, plus position embeddings for the image's grid."""

    def __init__(self, spec: ViTSpec):
        super().__init__()
        self.patch_size = spec.patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, spec.hidden_size))
        self.patch_embeddings = PatchEmbeddings(spec)
        grid = spec.image_size // spec.patch_size
        self.position_embeddings = nn.Parameter(torch.zeros(1, grid * grid + 1, spec.hidden_size))

    def positions(self, height: int, width: int) -> torch.Tensor:
        """(1, 1 + N, d) for an image of height × width pixels: the trained ones for the trained
        square grid, else the patch positions resized bicubically (align_corners False), as
        ViTEmbeddings.interpolate_pos_encoding; the CLS position is kept as it is."""
        trained = self.position_embeddings.shape[1] - 1
        grid_h, grid_w = height // self.patch_size, width // self.patch_size
        if grid_h * grid_w == trained and height == width:
            return self.position_embeddings
        side, dim = int(trained**0.5), self.position_embeddings.shape[-1]
        patch = self.position_embeddings[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
        patch = F.interpolate(patch, size=(grid_h, grid_w), mode="bicubic", align_corners=False)
        return torch.cat((self.position_embeddings[:, :1], patch.permute(0, 2, 3, 1).view(1, -1, dim)), 1)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> tokens with CLS first (B, 1 + N, d) and their positions (1, 1 + N, d)."""
        tokens = self.patch_embeddings(pixels)
        tokens = torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1), tokens), dim=1)
        positions = self.positions(*pixels.shape[-2:])
        return tokens + positions, positions


class Attention(nn.Module):
    def __init__(self, spec: ViTSpec):
        super().__init__()
        self.heads = spec.num_attention_heads
        width = spec.hidden_size
        self.q_proj = nn.Linear(width, width, bias=spec.qkv_bias)
        self.k_proj = nn.Linear(width, width, bias=spec.qkv_bias)
        self.v_proj = nn.Linear(width, width, bias=spec.qkv_bias)
        self.o_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape

        def split_heads(projection: nn.Linear) -> torch.Tensor:
            return projection(x).view(batch, length, self.heads, -1).transpose(1, 2)

        mixed = F.scaled_dot_product_attention(
            split_heads(self.q_proj), split_heads(self.k_proj), split_heads(self.v_proj)
        )
        return self.o_proj(mixed.transpose(1, 2).reshape(batch, length, width))


class MLP(nn.Module):
    def __init__(self, spec: ViTSpec):
        super().__init__()
        self.fc1 = nn.Linear(spec.hidden_size, spec.intermediate_size)
        self.fc2 = nn.Linear(spec.intermediate_size, spec.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # exact GELU, as transformers' "gelu"


class Block(nn.Module):
    """Pre-LN transformer block (ViTLayer)."""

    def __init__(self, spec: ViTSpec):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(spec.hidden_size, eps=spec.layer_norm_eps)
        self.attention = Attention(spec)
        self.layernorm_after = nn.LayerNorm(spec.hidden_size, eps=spec.layer_norm_eps)
        self.mlp = MLP(spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.layernorm_before(x))
        return x + self.mlp(self.layernorm_after(x))


class PlainViT(nn.Module):
    """ViTModel's encoder without pooler; `forward` gives what ViT-LoRA reads from it."""

    def __init__(self, spec: ViTSpec):
        super().__init__()
        self.spec = spec
        self.embeddings = Embeddings(spec)
        self.layers = nn.ModuleList(Block(spec) for _ in range(spec.num_hidden_layers))
        self.layernorm = nn.LayerNorm(spec.hidden_size, eps=spec.layer_norm_eps)

    @classmethod
    def from_state(cls, spec: ViTSpec, state: Mapping[str, torch.Tensor]) -> "PlainViT":
        """A frozen PlainViT over `state`'s tensors as they are (no random init, no copy)."""
        with torch.device("meta"):
            model = cls(spec)
        model.load_state_dict(state, assign=True)
        return model.requires_grad_(False)

    def twin(self) -> "PlainViT":
        """Another PlainViT over the same frozen tensors: ViT-LoRA's second encoder, before LoRA."""
        return PlainViT.from_state(self.spec, self.state_dict())

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised pixels (B, C, H, W) -> the patch tokens of the last hidden state (B, N, d)
        and their positions (1, N, d), both without the CLS token."""
        x, positions = self.embeddings(pixels.to(self.embeddings.patch_embeddings.projection.weight.dtype))
        for block in self.layers:
            x = block(x)
        return self.layernorm(x)[:, 1:], positions[:, 1:]


# -- frozen base weights, without transformers ---------------------------------------------------

WEIGHTS = "model.safetensors"
# transformers 5 saves ViTModel under its earlier names (and maps them back when loading); ViT
# classifiers prefix the model with "vit.".
_SAVED_NAMES = {
    "attention.attention.query": "attention.q_proj",
    "attention.attention.key": "attention.k_proj",
    "attention.attention.value": "attention.v_proj",
    "attention.output.dense": "attention.o_proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}
_SAVED_BLOCK = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")


def module_name(saved: str) -> str:
    """A ViTModel weight's name in a safetensors file -> its name in PlainViT (and in ViTModel)."""
    saved = saved.removeprefix("vit.")
    block = _SAVED_BLOCK.match(saved)
    if not block:
        return saved
    index, module, kind = block.groups()
    return f"layers.{index}.{_SAVED_NAMES.get(module, module)}.{kind}"


def pretrained_files(source: str) -> tuple[Path, Path] | None:
    """config.json and model.safetensors of `source`: a local directory or a hub id whose files
    are in the local Hugging Face cache; None when either is not there (nothing is downloaded)."""
    if Path(source).is_dir():
        found = [Path(source) / name for name in ("config.json", WEIGHTS)]
        return (found[0], found[1]) if all(path.is_file() for path in found) else None
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = [try_to_load_from_cache(source, name) for name in ("config.json", WEIGHTS)]
    except ValueError:  # not a valid hub id (huggingface_hub's HFValidationError)
        return None
    return (Path(cached[0]), Path(cached[1])) if all(isinstance(path, str) for path in cached) else None


def load_pretrained(source: str, layers: int) -> tuple[PlainViT, int] | None:
    """The first `layers` blocks of the ViTModel at `source` (fp32, frozen) and how many blocks it
    has; None when the files are not local or this encoder cannot compute what ViTModel computes
    from them. The tensors map the file and are read when used: copying them, or merging LoRA
    into them, writes 170 MB per ViT-B/16 encoder, about a second of start-up on 2 CPU cores."""
    from safetensors import safe_open

    files = pretrained_files(source)
    config = json.loads(files[0].read_text()) if files else {}
    spec = ViTSpec.from_config(config, layers) if files else None
    if spec is None:
        return None
    with torch.device("meta"):
        wanted = PlainViT(spec).state_dict().keys()
    with safe_open(files[1], framework="pt") as weights:
        saved = {module_name(key): key for key in weights.keys()}
        if not wanted <= saved.keys():
            return None
        state = {key: weights.get_tensor(saved[key]).float() for key in wanted}
    return PlainViT.from_state(spec, state), config["num_hidden_layers"]


# -- LoRA --------------------------------------------------------------------------------------


class LoRALinear(nn.Module):
    """A frozen Linear plus a trained LoRA pair, computed as peft's unmerged forward does. Not
    merged into W: that would write a new W per encoder (a second of memory traffic here)."""

    def __init__(self, base: nn.Linear, down: torch.Tensor, up: torch.Tensor, scaling: float):
        super().__init__()
        self.base = base
        self.down = nn.Parameter(down, requires_grad=False)  # lora_A: (r, in)
        self.up = nn.Parameter(up, requires_grad=False)  # lora_B: (out, r)
        self.scaling = scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(F.linear(x, self.down), self.up) * self.scaling


def lora_targets(model: PlainViT, targets: Iterable[str]) -> dict[str, nn.Linear]:
    """The Linear layers peft wraps for `targets` (module names, e.g. q_proj), by module name."""
    targets = set(targets)
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in targets
    }


def lora_key(prefix: str, module: str, part: str) -> str:
    """Where a trained_state() of peft's model keeps LoRA `part` (A or B) of `module`."""
    return f"{prefix}base_model.model.{module}.lora_{part}.default.weight"


def lora_shapes(model: PlainViT, targets: Iterable[str], r: int, prefix: str) -> dict[str, tuple[int, ...]]:
    """The LoRA tensors a checkpoint holds for this encoder (keys under `prefix`) and their shapes."""
    shapes = {}
    for name, linear in lora_targets(model, targets).items():
        shapes[lora_key(prefix, name, "A")] = (r, linear.in_features)
        shapes[lora_key(prefix, name, "B")] = (linear.out_features, r)
    return shapes


def add_lora(
    model: PlainViT, state: Mapping[str, torch.Tensor], targets: Iterable[str], prefix: str, scaling: float
) -> None:
    """Wrap every target in a LoRALinear with its pair from `state` (keys under `prefix`, as
    lora_shapes lists them); scaling = alpha / r, peft's default."""
    for name, linear in lora_targets(model, targets).items():
        down, up = (state[lora_key(prefix, name, part)].to(linear.weight.dtype) for part in "AB")
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, LoRALinear(linear, down, up, scaling))
