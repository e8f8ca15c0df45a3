"""The frozen feature extractors: every network that encodes images and never trains.

- `TorchVGG19`: torchvision's VGG-19 tapped by layer name (the ViT-LoRA paper's loss network
  and Gatys' extractor); `PAPER_LAYERS` are the paper's loss taps.
- `NormalisedVGG`: pytorch-AdaIN's normalised VGG-19 up to relu5_1 (the AdaIN family's encoder
  and the StyTr²/ArtFlow loss network), with `pad_for_vgg` to fit it any image size.
- `ResNet50Features`: torchvision's ResNet-50 by stage (a Gatys extractor).

Each subclasses `FrozenEncoder` (no gradients, always in eval mode) and reads file or ImageNet
weights through `load_weights`. Input (B, 3, H, W) RGB in [0, 1]; output {layer: (B, C, h, w)}
for the layers it was built with, computed once. Layer names: nstlab.config.layer_names.
"""

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from nstlab.errors import ConfigError
from nstlab.functional import imagenet_normalize, pad_to_multiple
from nstlab.config.layer_names import RESNET_LAYERS, VGG19_BLOCKS, VGG19_LAYERS
from nstlab.runtime import seeded

# The paper's code taps features[:29] at indices 0, 5, 10, 19, 28 with torchvision's in-place
# ReLUs, so the stored conv outputs of the first four taps are overwritten by the next ReLU:
# the loss really compares relu1_1, relu2_1, relu3_1, relu4_1 and the pre-ReLU conv5_1
# (features[:29] stops before ReLU 29). We tap those names explicitly with out-of-place ReLUs.
PAPER_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "conv5_1")
VGG_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")  # the normalised VGG's taps

VGG_STRIDE = 8  # relu4_1 is 1/8 of the input: padding to a multiple of 8 makes the decoder's ×8 land back
# relu5_1's reflection padding needs its input (ceil(side / 16)) to be at least 2 px, so side > 16.
VGG_MIN_SIDE = 24
ADAIN_VGG_SOURCE = "https://github.com/naoto0804/pytorch-AdaIN/releases/tag/v0.0.0"


class FrozenEncoder(nn.Module):
    """Base of every encoder here: call `freeze()` at the end of `__init__`."""

    def freeze(self) -> None:
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        """Stays in eval mode: a loss network never trains."""
        return super().train(False)


def load_weights(
    weights: str, key: str, *, imagenet=None, source: str | None = None
) -> dict[str, torch.Tensor]:
    """The state dict `weights` names: "imagenet" (torchvision's `imagenet`, a Weights enum member,
    cached under $TORCH_HOME) or a local file. Errors are one line naming `key`; `source` says
    where the file can be downloaded."""
    if weights == "imagenet" and imagenet is not None:
        try:
            return imagenet.get_state_dict(progress=True)
        except Exception as error:  # offline: urllib/hub errors of many kinds
            raise ConfigError(
                f"{key} = imagenet: could not load torchvision's {imagenet} ({error.__class__.__name__}); "
                "put the file in $TORCH_HOME/hub/checkpoints/ or give its path"
            ) from None
    if not Path(weights).is_file():
        hint = (
            f"download it from {source} and give its path, or use 'random'"
            if source
            else "use 'random', 'imagenet' or a path to a state dict"
        )
        raise ConfigError(f"{key} = {weights!r}: no such file; {hint}")
    return torch.load(weights, map_location="cpu", weights_only=True)


def scaled_channels(channels: int, width: float) -> int:
    """A layer's channel count at `width` (1.0 = the published network), never below 4."""
    return max(4, round(channels * width))


# -- torchvision VGG-19 --------------------------------------------------------------------------


def _vgg19_features(depth: int, width: float) -> nn.Sequential:
    """torchvision's VGG-19 `features[:depth]` layout, channels scaled by `width`, ReLUs not in place."""
    modules: list[nn.Module] = []
    in_channels = 3
    for convs, channels in VGG19_BLOCKS:
        channels = max(4, round(channels * width))
        for _ in range(convs):
            modules += [nn.Conv2d(in_channels, channels, 3, padding=1), nn.ReLU(inplace=False)]
            in_channels = channels
        modules.append(nn.MaxPool2d(2, 2))
    return nn.Sequential(*modules[:depth])


def _own_vgg19_state(state: dict, features: nn.Sequential, path: str, width: float) -> dict:
    """The tensors of `state` (torchvision's `features.N.*` keys or bare `N.*`) that `features`
    holds; a one-line ConfigError when the file lacks one or its shape differs (another width)."""
    prefix = "features." if any(key.startswith("features.") for key in state) else ""
    own = {}
    for key, tensor in features.state_dict().items():
        saved = state.get(prefix + key)
        if saved is None or saved.shape != tensor.shape:
            found = "missing" if saved is None else f"of shape {tuple(saved.shape)}"
            raise ConfigError(
                f"backbone.vgg19 = {path!r}: {prefix + key} is {found}, this VGG-19 (backbone.vgg_width = "
                f"{width}) needs {tuple(tensor.shape)}; give weights saved at this width"
            )
        own[key] = saved
    return own


class TorchVGG19(FrozenEncoder):
    """Frozen torchvision VGG-19 returning the named layers' features.

    Input (B, 3, H, W) RGB in [0, 1]; ImageNet normalisation happens here, once.
    weights: "random" (fixed-seed init), "imagenet" (torchvision) or a path to a state dict
    saved at the same width (the demo's: nstlab.training.demo_backbones). width scales every conv's
    channels (1.0 = the real network).
    """

    def __init__(self, layers: Sequence[str], weights: str = "random", width: float = 1.0, seed: int = 0):
        super().__init__()
        unknown = [name for name in layers if name not in VGG19_LAYERS]
        if unknown:
            raise ConfigError(f"unknown VGG-19 layer {unknown[0]!r}: use names like relu4_1 or conv4_2")
        self.layers = tuple(layers)
        depth = max(VGG19_LAYERS.index(name) for name in layers) + 1
        if weights == "random":
            with seeded(seed):
                self.features = _vgg19_features(depth, width)
        else:
            if weights == "imagenet" and width != 1.0:
                raise ConfigError(f"backbone.vgg_width = {width}: ImageNet VGG-19 weights need width 1.0")
            self.features = _vgg19_features(depth, width)
            imagenet = None
            if weights == "imagenet":  # torchvision takes 2 s to import: only when it serves
                from torchvision.models import VGG19_Weights

                imagenet = VGG19_Weights.IMAGENET1K_V1
            state = load_weights(weights, "backbone.vgg19", imagenet=imagenet)
            self.features.load_state_dict(_own_vgg19_state(state, self.features, weights, width))
        self.freeze()

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        tapped = {}
        hidden = imagenet_normalize(images)
        for name, module in zip(VGG19_LAYERS, self.features):
            hidden = module(hidden)
            if name in self.layers:
                tapped[name] = hidden
        return tapped


# -- pytorch-AdaIN's normalised VGG-19 -----------------------------------------------------------

# One slice of the normalised VGG per tapped layer: the 3×3 convs (output channels at width 1)
# and max-pools that lead from the previous tap to this one (pytorch-AdaIN net.py, enc_1…enc_5).
_VGG_SLICES = {
    "relu1_1": (64,),
    "relu2_1": (64, "pool", 128),
    "relu3_1": (128, "pool", 256),
    "relu4_1": (256, 256, 256, "pool", 512),
    "relu5_1": (512, 512, 512, "pool", 512),
}


def pad_for_vgg(images: torch.Tensor, multiple: int = VGG_STRIDE) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad (B, 3, H, W) so the VGG and the ×8 decoder fit any size: H, W up to a multiple of 8
    (reflect) and at least 24 px (replicate, tiny images only). Returns the batch and (H, W).
    Style images that are never decoded need only the minimum size: multiple=1."""
    padded, size = pad_to_multiple(images, multiple)
    short_h, short_w = max(0, VGG_MIN_SIDE - padded.shape[-2]), max(0, VGG_MIN_SIDE - padded.shape[-1])
    if short_h or short_w:
        padded = F.pad(padded, (0, short_w, 0, short_h), mode="replicate")
    return padded, size


def reflect_conv(in_channels: int, out_channels: int) -> list[nn.Module]:
    """pytorch-AdaIN's 3×3 conv: reflection pad 1, conv, ReLU."""
    return [nn.ReflectionPad2d(1), nn.Conv2d(in_channels, out_channels, 3), nn.ReLU()]


class NormalisedVGG(FrozenEncoder):
    """pytorch-AdaIN's "normalised VGG-19" up to relu5_1, frozen: a 1×1 conv 3→3 (it maps [0, 1]
    RGB to the Caffe input), then 3×3 reflection-padded convs with ReLU and ceil-mode max-pools.

    weights: "random" (Kaiming-normal from a generator seeded with `seed`: two builds are equal)
    or a path to pytorch-AdaIN's vgg_normalised.pth (a state dict of an nn.Sequential, mapped by
    position; width 1.0) or to one saved alike at `width` (the demo's: nstlab.training.demo_backbones).
    width scales the channels 64/128/256/512/512.
    forward((B, 3, H, W) in [0, 1]) -> {relu1_1: (B, 64w, H, W), …, relu5_1: (B, 512w, ⌈H/16⌉, ⌈W/16⌉)}.
    """

    def __init__(self, weights: str = "random", width: float = 1.0, seed: int = 0):
        super().__init__()
        self.channels: dict[str, int] = {}
        slices, in_channels = [], 3
        for layer, plan in _VGG_SLICES.items():
            modules: list[nn.Module] = [nn.Conv2d(3, 3, 1)] if layer == "relu1_1" else []
            for step in plan:
                if step == "pool":
                    modules.append(nn.MaxPool2d(2, 2, ceil_mode=True))
                else:
                    out_channels = scaled_channels(step, width)
                    modules += reflect_conv(in_channels, out_channels)
                    in_channels = out_channels
            slices.append(nn.Sequential(*modules))
            self.channels[layer] = in_channels
        self.slices = nn.ModuleList(slices)
        convs = [m for m in self.modules() if isinstance(m, nn.Conv2d)]
        if weights == "random":
            generator = torch.Generator().manual_seed(seed)
            for conv in convs:
                nn.init.kaiming_normal_(conv.weight, nonlinearity="relu", generator=generator)
                nn.init.zeros_(conv.bias)
        else:
            self._load(weights, width, convs)
        self.freeze()

    @staticmethod
    def _load(path: str, width: float, convs: list[nn.Conv2d]) -> None:
        state = load_weights(path, "backbone.adain_vgg", source=ADAIN_VGG_SOURCE)
        # The file is nn.Sequential's state dict ("0.weight", "0.bias", "2.weight", …): the convs
        # in module order are ours in order (the file goes on to relu5_4; we stop at relu5_1).
        indices = sorted({int(key.split(".")[0]) for key in state if key.endswith(".weight")})
        if len(indices) < len(convs):
            raise ConfigError(
                f"backbone.adain_vgg = {path!r}: {len(indices)} convolutions, "
                f"expected at least {len(convs)} (pytorch-AdaIN's vgg_normalised.pth)"
            )
        for conv, index in zip(convs, indices):
            weight, bias = state[f"{index}.weight"], state[f"{index}.bias"]
            if weight.shape != conv.weight.shape:
                raise ConfigError(
                    f"backbone.adain_vgg = {path!r}: layer {index} has shape {tuple(weight.shape)}, "
                    f"expected {tuple(conv.weight.shape)} (backbone.vgg_width = {width}); is it "
                    "pytorch-AdaIN's vgg_normalised.pth (width 1.0) or saved at this width?"
                )
            conv.weight.data.copy_(weight)
            conv.bias.data.copy_(bias)

    def forward(self, images: torch.Tensor, last_layer: str = "relu5_1") -> dict[str, torch.Tensor]:
        """(B, 3, H, W) in [0, 1] -> features of VGG_LAYERS up to `last_layer`, encoded once."""
        features, hidden = {}, images
        for layer, block in zip(VGG_LAYERS, self.slices):
            hidden = features[layer] = block(hidden)
            if layer == last_layer:
                break
        return features


# -- torchvision ResNet-50 -----------------------------------------------------------------------


class ResNet50Features(FrozenEncoder):
    """torchvision ResNet-50 cut after the deepest requested stage; ImageNet-normalised input."""

    def __init__(self, layers: Sequence[str], weights: str = "random", seed: int = 0):
        super().__init__()
        from torchvision.models import ResNet50_Weights, resnet50

        self.layers = tuple(layers)
        with seeded(seed):
            network = resnet50()
        if weights != "random":
            # The classifier (fc.*) may be absent from a saved file: it is never used here.
            state = load_weights(weights, "weights", imagenet=ResNet50_Weights.IMAGENET1K_V1)
            result = network.load_state_dict(state, strict=False)
            wrong = result.unexpected_keys + [key for key in result.missing_keys if not key.startswith("fc.")]
            if wrong:
                raise ConfigError(
                    f"weights = {weights!r}: not a torchvision ResNet-50 state dict (e.g. key {wrong[0]!r})"
                )
        stages = {
            "stem": nn.Sequential(network.conv1, network.bn1, network.relu, network.maxpool),
            **{name: getattr(network, name) for name in RESNET_LAYERS[1:]},
        }
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
