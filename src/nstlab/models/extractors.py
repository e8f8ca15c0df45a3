"""Gatys' extractors: the ViT feature extractor, and `build_extractor` over every kind.

The CNN extractors (VGG-19, ResNet-50) live in nstlab.models.encoders with the other frozen networks;
the ViT one stays here beside the ViT loading code. Each maps (B, 3, H, W) RGB in [0, 1] to
{layer name: (B, C, h, w)} for the layers it was built with. Weights: "random" (seeded init, the
offline demo), "imagenet" (torchvision; CNNs only), a path (CNNs: a state-dict file; ViT: a
`save_pretrained` directory) or a Hugging Face hub id (ViT). Layer names: nstlab.config.layer_names
(ViT `block1` … `blockN`: the residual stream after block N, CLS dropped, tokens laid out as a
(C, H/p, W/p) grid).
"""

import copy
from collections.abc import Sequence

import torch
import torch.nn as nn

from nstlab.models.encoders import FrozenEncoder, ResNet50Features, TorchVGG19
from nstlab.errors import ConfigError
from nstlab.functional import imagenet_normalize, pad_to_multiple
from nstlab.config.layer_names import VIT_LAYER
from nstlab.runtime import seeded


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
        raise ConfigError(
            f"weights = {weights!r}: cannot load this ViT ({str(error).splitlines()[0]}); give a directory "
            "saved with save_pretrained, or a hub id where the Hugging Face hub is reachable"
        ) from None


class ViTFeatures(FrozenEncoder):
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
            with seeded(seed):
                self.vit = ViTModel(config, add_pooling_layer=False)
        else:
            self.vit = _from_pretrained(ViTModel, weights, num_hidden_layers=depth, add_pooling_layer=False)
        self.patch = self.vit.config.patch_size
        self.freeze()

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        images, _ = pad_to_multiple(images, self.patch)
        grid = (images.shape[-2] // self.patch, images.shape[-1] // self.patch)
        hidden = self.vit(
            pixel_values=imagenet_normalize(images), interpolate_pos_encoding=True, output_hidden_states=True
        ).hidden_states  # [embeddings, block1, …]
        return {
            name: hidden[number][:, 1:].transpose(1, 2).reshape(images.shape[0], -1, *grid)
            for name, number in self.block_numbers.items()
        }


def build_extractor(
    extractor: str,
    layers: Sequence[str],
    weights: str = "random",
    *,
    seed: int = 0,
    vgg_width: float = 1.0,
    vit_config=None,
) -> nn.Module:
    """A frozen extractor tapping `layers`; `vgg_width` scales the random VGG-19, `vit_config`
    (a transformers ViTConfig) sizes the random ViT."""
    if extractor == "vgg19":
        return TorchVGG19(layers, weights, vgg_width, seed)
    if extractor == "resnet50":
        return ResNet50Features(layers, weights, seed)
    if weights == "imagenet":
        raise ConfigError(
            "weights = imagenet: the ViT extractor takes 'random', a hub id or a save_pretrained directory"
        )
    return ViTFeatures(layers, weights, seed, vit_config)
