"""The torchvision VGG-19 loss network and the ViT-LoRA paper's content and style losses.

Encode once, score many: `TorchVGG19` runs once per batch and returns every tapped layer;
the loss functions read that dict. Weights are applied by the caller (trainer or evaluator).
"""

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from nstlab.errors import ConfigError
from nstlab.functional import ADAIN_EPS, mean_std, mean_std_loss, mvn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision's VGG-19 `features`: (convolutions per block, channels) for the five blocks.
_VGG19_BLOCKS = ((2, 64), (2, 128), (4, 256), (4, 512), (4, 512))


def _vgg19_layer_names() -> list[str]:
    """Names of torchvision's vgg19().features modules by index: conv1_1, relu1_1, ..., pool5."""
    names = []
    for block, (convs, _) in enumerate(_VGG19_BLOCKS, start=1):
        for conv in range(1, convs + 1):
            names += [f"conv{block}_{conv}", f"relu{block}_{conv}"]
        names.append(f"pool{block}")
    return names


VGG19_LAYERS = _vgg19_layer_names()

# The paper's code taps features[:29] at indices 0, 5, 10, 19, 28 with torchvision's in-place
# ReLUs, so the stored conv outputs of the first four taps are overwritten by the next ReLU:
# the loss really compares relu1_1, relu2_1, relu3_1, relu4_1 and the pre-ReLU conv5_1
# (features[:29] stops before ReLU 29). We tap those names explicitly with out-of-place ReLUs.
PAPER_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "conv5_1")


def imagenet_normalize(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] RGB -> ImageNet-normalised RGB (torchvision VGG and ViT-LoRA's convention)."""
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def imagenet_denormalize(images: torch.Tensor) -> torch.Tensor:
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return images * std + mean


def _vgg19_features(depth: int, width: float) -> nn.Sequential:
    """torchvision's VGG-19 `features[:depth]` layout, channels scaled by `width`, ReLUs not in place."""
    modules: list[nn.Module] = []
    in_channels = 3
    for convs, channels in _VGG19_BLOCKS:
        channels = max(4, round(channels * width))
        for _ in range(convs):
            modules += [nn.Conv2d(in_channels, channels, 3, padding=1), nn.ReLU(inplace=False)]
            in_channels = channels
        modules.append(nn.MaxPool2d(2, 2))
    return nn.Sequential(*modules[:depth])


def _load_vgg19_state(weights: str) -> dict[str, torch.Tensor]:
    """torchvision ImageNet weights ("imagenet") or a local state-dict file (the `features.N.*` keys)."""
    if weights == "imagenet":
        from torchvision.models import VGG19_Weights

        try:
            return VGG19_Weights.IMAGENET1K_V1.get_state_dict(progress=True)
        except Exception as error:  # offline: urllib/hub errors of many kinds
            raise ConfigError(
                f"backbone.vgg19 = imagenet: could not load torchvision's VGG-19 weights ({error.__class__.__name__}); "
                "put vgg19-dcbb9e9d.pth in $TORCH_HOME/hub/checkpoints/ or set backbone.vgg19 to its path"
            ) from None
    path = Path(weights)
    if not path.is_file():
        raise ConfigError(f"backbone.vgg19 = {weights!r}: no such file; use 'random', 'imagenet' or a path to VGG-19 weights")
    return torch.load(path, map_location="cpu", weights_only=True)


class TorchVGG19(nn.Module):
    """Frozen torchvision VGG-19 returning the named layers' features.

    Input (B, 3, H, W) RGB in [0, 1]; ImageNet normalisation happens here, once.
    weights: "random" (fixed-seed init, the offline demo), "imagenet" (torchvision) or a path.
    width scales every conv's channels (1.0 = the real network).
    """

    def __init__(self, layers: Sequence[str], weights: str = "random", width: float = 1.0, seed: int = 0):
        super().__init__()
        unknown = [name for name in layers if name not in VGG19_LAYERS]
        if unknown:
            raise ConfigError(f"unknown VGG-19 layer {unknown[0]!r}: use names like relu4_1 or conv4_2")
        self.layers = tuple(layers)
        depth = max(VGG19_LAYERS.index(name) for name in layers) + 1
        if weights == "random":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.features = _vgg19_features(depth, width)
        else:
            if width != 1.0:
                raise ConfigError(f"backbone.vgg_width = {width}: pretrained VGG-19 weights need width 1.0")
            self.features = _vgg19_features(depth, width)
            state = _load_vgg19_state(weights)
            prefix = "features." if any(key.startswith("features.") for key in state) else ""
            own = {key: state[prefix + key] for key in self.features.state_dict()}
            self.features.load_state_dict(own)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        """Stays in eval mode: a loss network never trains."""
        return super().train(False)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        tapped = {}
        hidden = imagenet_normalize(images)
        for name, module in zip(VGG19_LAYERS, self.features):
            hidden = module(hidden)
            if name in self.layers:
                tapped[name] = hidden
        return tapped


def paper_content_loss(output: dict[str, torch.Tensor], content: dict[str, torch.Tensor]) -> torch.Tensor:
    """ViT-LoRA paper: Σ over the tapped layers of MSE(φ(output), φ(content)), no normalisation."""
    return sum(F.mse_loss(output[name], content[name]) for name in output)


def paper_style_loss(output: dict[str, torch.Tensor], style: dict[str, torch.Tensor]) -> torch.Tensor:
    """ViT-LoRA paper: Σ over layers of MSE(μ) + MSE(σ), σ the plain unbiased std (no eps)."""
    total = 0.0
    for name in output:
        out_mean, out_std = mean_std(output[name], eps=0.0)
        style_mean, style_std = mean_std(style[name], eps=0.0)
        total = total + F.mse_loss(out_mean, style_mean) + F.mse_loss(out_std, style_std)
    return total


def feature_mse(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> torch.Tensor:
    """Σ over layers of MSE between two feature dicts (StyTr²'s identity-2 term)."""
    return sum(F.mse_loss(first[name], second[name]) for name in first)


class PaperLossNetwork(TorchVGG19):
    """The ViT-LoRA paper's loss: VGG-19 taps PAPER_LAYERS, plain MSE content, mean/std style."""

    def __init__(self, weights: str = "random", width: float = 1.0, seed: int = 0):
        super().__init__(PAPER_LAYERS, weights, width, seed)

    content_loss = staticmethod(paper_content_loss)
    style_loss = staticmethod(paper_style_loss)
    identity_loss = staticmethod(feature_mse)


STYTR2_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


def normalised_content_loss(output_features: dict[str, torch.Tensor], content_features: dict[str, torch.Tensor],
                            layers: tuple[str, ...] = ("relu4_1", "relu5_1")) -> torch.Tensor:
    """Σ over layers of MSE(mvn φ(output), mvn φ(content)): the content loss of StyTr², SANet, MCC
    and IEST (SANet train.py calc_content_loss(norm=True) at relu4_1 + relu5_1)."""
    return sum(F.mse_loss(mvn(output_features[layer]), mvn(content_features[layer])) for layer in layers)


def mean_std_style_loss(output_features: dict[str, torch.Tensor], style_features: dict[str, torch.Tensor],
                        layers: tuple[str, ...] = STYTR2_LAYERS) -> torch.Tensor:
    """Σ over layers of MSE(μ) + MSE(σ), σ = sqrt(unbiased var + 1e-5) (pytorch-AdaIN calc_style_loss)."""
    return sum(mean_std_loss(output_features[layer], style_features[layer], ADAIN_EPS) for layer in layers)


class StyTr2LossNetwork(nn.Module):
    """The StyTr² code's loss convention on the AdaIN normalised VGG-19 ([0, 1] RGB input):
    content = Σ MSE(mvn φ(o), mvn φ(c)) at relu4_1 + relu5_1; style = Σ relu1_1..relu5_1 of
    MSE(μ) + MSE(σ) with σ = sqrt(var + 1e-5); identity = Σ plain feature MSE at all 5 layers."""

    def __init__(self, weights: str = "random", width: float = 1.0, seed: int = 0):
        super().__init__()
        from nstlab.models.blocks import NormalisedVGG

        self.vgg = NormalisedVGG(weights, width, seed)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.vgg(images)

    content_loss = staticmethod(normalised_content_loss)
    style_loss = staticmethod(mean_std_style_loss)
    identity_loss = staticmethod(feature_mse)


def loss_network(convention: str, cfg) -> nn.Module:
    """The loss network of a convention ("paper" or "stytr2") with the config's backbone weights."""
    if convention == "paper":
        return PaperLossNetwork(cfg.backbone.vgg19, cfg.backbone.vgg_width, cfg.seed)
    return StyTr2LossNetwork(cfg.backbone.adain_vgg, cfg.backbone.vgg_width, cfg.seed)
