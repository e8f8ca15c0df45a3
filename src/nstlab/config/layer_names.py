"""Names of the frozen encoders' layers, torch-free: config validation reads them without
building a network (nstlab.models.encoders builds the networks).

VGG-19 `conv1_1`, `relu1_1`, …, `pool5` (torchvision's `features` by index); ResNet-50 `stem`
(after the max-pool), `layer1` … `layer4`; ViT `block1` … `blockN` (the residual stream after
block N).
"""

import math
import re

EXTRACTORS = ("vgg19", "resnet50", "vit")

# torchvision's VGG-19 `features`: (convolutions per block, channels) for the five blocks.
VGG19_BLOCKS = ((2, 64), (2, 128), (4, 256), (4, 512), (4, 512))


def _vgg19_layer_names() -> list[str]:
    """Names of torchvision's vgg19().features modules by index: conv1_1, relu1_1, ..., pool5."""
    names = []
    for block, (convs, _) in enumerate(VGG19_BLOCKS, start=1):
        for conv in range(1, convs + 1):
            names += [f"conv{block}_{conv}", f"relu{block}_{conv}"]
        names.append(f"pool{block}")
    return names


VGG19_LAYERS = _vgg19_layer_names()
RESNET_LAYERS = ("stem", "layer1", "layer2", "layer3", "layer4")
VIT_LAYER = re.compile(r"block([1-9][0-9]*)")

# Perceptual (feature reconstruction) layers: Johnson et al. 2016 use VGG-16's relu1_2, relu2_2,
# relu3_3, relu4_3; VGG-19 has the same names at the same depths.
_DEFAULT_LAYERS = {
    "vgg19": {
        "content": ("relu4_2",),
        "style": ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"),
        "perceptual": ("relu1_2", "relu2_2", "relu3_3", "relu4_3"),
    },
    "resnet50": {
        "content": ("layer3",),
        "style": ("layer1", "layer2", "layer3", "layer4"),
        "perceptual": ("layer1", "layer2", "layer3"),
    },
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
