"""Frozen feature extractors for optimisation-based transfer (Gatys): VGG-19, ResNet-50, ViT.

Each maps (B, 3, H, W) RGB in [0, 1] to {layer name: (B, C, h, w)} for the layers it was built
with, runs only as deep as the deepest of them, stays in eval mode and never trains.
Weights: "random" (seeded init, the offline demo), "imagenet" (torchvision; CNNs only), a path
(CNNs: a state-dict file; ViT: a `save_pretrained` directory) or a Hugging Face hub id (ViT).

Layer names: VGG-19 `relu4_2`, `conv1_1`, … (nstlab.losses.VGG19_LAYERS); ResNet-50 `stem`
(after the max-pool), `layer1` … `layer4`; ViT `block1` … `blockN` (the residual stream after
block N, CLS dropped, tokens laid out as a (C, H/p, W/p) grid).
"""

import copy
import math
import re
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn

from nstlab.errors import ConfigError
from nstlab.functional import pad_to_multiple
from nstlab.losses import VGG19_LAYERS, TorchVGG19, imagenet_normalize

EXTRACTORS = ("vgg19", "resnet50", "vit")
RESNET_LAYERS = ("stem", "layer1", "layer2", "layer3", "layer4")
VIT_LAYER = re.compile(r"block([1-9][0-9]*)")

# Perceptual (feature reconstruction) layers: Johnson et al. 2016 use VGG-16's relu1_2, relu2_2,
# relu3_3, relu4_3; VGG-19 has the same names at the same depths.
_DEFAULT_LAYERS = {
    "vgg19": {"content": ("relu4_2",), "style": ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"),
              "perceptual": ("relu1_2", "relu2_2", "relu3_3", "relu4_3")},
    "resnet50": {"content": ("layer3",), "style": ("layer1", "layer2", "layer3", "layer4"),
                 "perceptual": ("layer1", "layer2", "layer3")},
}


def is_layer_name(extractor: str, name: str) -> bool:
    """Whether `name` can be a layer of this extractor kind (ViT block numbers are checked at build)."""
    if extractor == "vgg19":
        return name in VGG19_LAYERS
    if extractor == "resnet50":
        return name in RESNET_LAYERS
    return VIT_LAYER.fullmatch(name) is not None


def default_layers(extractor: str, vit_blocks: int = 0) -> dict[str, tuple[str, ...]]:
    """{"content", "style", "perceptual"} -> layer names. ViT: style and perceptual at a quarter,
    half, three quarters and all of the depth (12 blocks: 3, 6, 9, 12), content at three quarters."""
    if extractor != "vit":
        return _DEFAULT_LAYERS[extractor]
    quarters = tuple(dict.fromkeys(f"block{math.ceil(vit_blocks * k / 4)}" for k in (1, 2, 3, 4)))
    return {"content": (f"block{math.ceil(vit_blocks * 3 / 4)}",), "style": quarters, "perceptual": quarters}


class _Frozen(nn.Module):
    def freeze(self) -> None:
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        """Stays in eval mode: a loss network never trains."""
        return super().train(False)


def _torchvision_state(weights: str, imagenet) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights (`imagenet`: a Weights enum member) or a local state-dict file."""
    if weights == "imagenet":
        try:
            return imagenet.get_state_dict(progress=True)
        except Exception as error:  # offline: urllib/hub errors of many kinds
            raise ConfigError(f"weights = imagenet: could not load torchvision's {imagenet} ({error.__class__.__name__}); "
                              "put the file in $TORCH_HOME/hub/checkpoints/ or give its path") from None
    if not Path(weights).is_file():
        raise ConfigError(f"weights = {weights!r}: no such file; use 'random', 'imagenet' or a path to a state dict")
    return torch.load(weights, map_location="cpu", weights_only=True)


class ResNet50Features(_Frozen):
    """torchvision ResNet-50 cut after the deepest requested stage; ImageNet-normalised input."""

    def __init__(self, layers: Sequence[str], weights: str = "random", seed: int = 0):
        super().__init__()
        from torchvision.models import ResNet50_Weights, resnet50

        self.layers = tuple(layers)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            network = resnet50()
        if weights != "random":
            # The classifier (fc.*) may be absent from a saved file: it is never used here.
            result = network.load_state_dict(_torchvision_state(weights, ResNet50_Weights.IMAGENET1K_V1), strict=False)
            wrong = result.unexpected_keys + [key for key in result.missing_keys if not key.startswith("fc.")]
            if wrong:
                raise ConfigError(f"weights = {weights!r}: not a torchvision ResNet-50 state dict (e.g. key {wrong[0]!r})")
        stages = {"stem": nn.Sequential(network.conv1, network.bn1, network.relu, network.maxpool),
                  **{name: getattr(network, name) for name in RESNET_LAYERS[1:]}}
        depth = max(RESNET_LAYERS.index(name) for name in self.layers) + 1
        self.stages = nn.ModuleDict({name: stages[name] for name in RESNET_LAYERS[:depth]})
        self.freeze()

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden, tapped = imagenet_normalize(images), {}
        for name, stage in self.stages.items():
            hidden = stage(hidden)
            if name in self.layers:
                tapped[name] = hidden
        return tapped


def vit_block_count(weights: str, vit_config=None) -> int:
    """Blocks of the ViT that `weights` names ("random": `vit_config`'s)."""
    if weights == "random":
        return vit_config.num_hidden_layers
    from transformers import ViTConfig

    return _from_pretrained(ViTConfig, weights).num_hidden_layers


def _from_pretrained(cls, weights: str, **kwargs):
    try:
        return cls.from_pretrained(weights, **kwargs)
    except OSError as error:
        raise ConfigError(f"weights = {weights!r}: cannot load this ViT ({str(error).splitlines()[0]}); give a directory "
                          "saved with save_pretrained, or a hub id where the Hugging Face hub is reachable") from None


class ViTFeatures(_Frozen):
    """transformers ViTModel (first N blocks only) returning block outputs as (B, C, h, w) grids.

    Inputs are reflect-padded to a multiple of the patch size and the position embeddings
    interpolated, so any H, W works. ImageNet mean/std normalisation, as ViT-LoRA's encoders.
    """

    def __init__(self, layers: Sequence[str], weights: str = "random", seed: int = 0, vit_config=None):
        super().__init__()
        from transformers import ViTModel

        self.layers = tuple(layers)
        blocks = vit_block_count(weights, vit_config)
        self.block_numbers = {name: int(VIT_LAYER.fullmatch(name).group(1)) for name in self.layers}
        for name, number in self.block_numbers.items():
            if number > blocks:
                raise ConfigError(f"layer {name!r}: this ViT has {blocks} blocks; use block1 … block{blocks}")
        depth = max(self.block_numbers.values())
        if weights == "random":
            config = copy.deepcopy(vit_config)
            config.num_hidden_layers = depth
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.vit = ViTModel(config, add_pooling_layer=False)
        else:
            self.vit = _from_pretrained(ViTModel, weights, num_hidden_layers=depth, add_pooling_layer=False)
        self.patch = self.vit.config.patch_size
        self.freeze()

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        images, _ = pad_to_multiple(images, self.patch)
        grid = (images.shape[-2] // self.patch, images.shape[-1] // self.patch)
        hidden = self.vit(pixel_values=imagenet_normalize(images), interpolate_pos_encoding=True,
                          output_hidden_states=True).hidden_states  # [embeddings, block1, …]
        return {name: hidden[number][:, 1:].transpose(1, 2).reshape(images.shape[0], -1, *grid)
                for name, number in self.block_numbers.items()}


def build_extractor(extractor: str, layers: Sequence[str], weights: str = "random", *, seed: int = 0,
                    vgg_width: float = 1.0, vit_config=None) -> nn.Module:
    """A frozen extractor tapping `layers`; `vgg_width` scales the random VGG-19, `vit_config`
    (a transformers ViTConfig) sizes the random ViT."""
    if extractor == "vgg19":
        return TorchVGG19(layers, weights, vgg_width, seed)
    if extractor == "resnet50":
        return ResNet50Features(layers, weights, seed)
    if weights == "imagenet":
        raise ConfigError("weights = imagenet: the ViT extractor takes 'random', a hub id or a save_pretrained directory")
    return ViTFeatures(layers, weights, seed, vit_config)
