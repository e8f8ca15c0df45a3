"""The demo's backbones: reduced VGG-19s and ViT whose features carry image information, offline.

The demo cannot download pretrained weights, and randomly initialised reduced backbones carry
almost none: features of different images are nearly equal, and the deep layers of a randomly
initialised VGG-19 vanish. So each network's layers are set from the training images, greedily
from the input up (data-driven initialisation; no gradient step):

- every 3×3 convolution of both VGG-19s: the leading principal components of the 3×3 patches
  of its input activations, centred and whitened where their variance is large, in ± pairs, so
  its ReLU keeps both signs of each component (information passes, and no layer fades out);
- the ViT's patch embedding: the leading principal components of the 16×16 patches, alike;
  its blocks keep their seeded random init (the residual stream carries the patch code on);
- the AdaIN family's decoder (`backbone.adain_decoder`): a least-squares inverse of that VGG,
  relu4_1 back to the image, each conv undoing one encoder conv. The demo's few dozen training
  steps cannot teach a decoder from random init to draw an image (the papers train 160,000), so
  the demo starts it from this fit, as a user may start from pytorch-AdaIN's released decoder.

Inputs are crops from the train split's source images only, so no test image shapes the
backbones. The files are what `backbone.vgg19`, `backbone.adain_vgg` and `backbone.vit`
load: a torchvision-style `features.*` state dict, pytorch-AdaIN-style nn.Sequential state
dicts (encoder, decoder) and a `save_pretrained` directory.
"""

import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from nstlab.config import Config
from nstlab.models.blocks import AdaINDecoder
from nstlab.models.encoders import VGG_LAYERS, NormalisedVGG, TorchVGG19
from nstlab.functional import IMAGENET_MEAN, IMAGENET_STD, imagenet_normalize
from nstlab.runtime import seeded

VGG19_FILE = "vgg19.pth"
ADAIN_VGG_FILE = "vgg_normalised.pth"
ADAIN_DECODER_FILE = "adain_decoder.pth"
VIT_DIR = "vit"
SUMMARY_FILE = "summary.json"
PATCHES_PER_DIMENSION = 4  # patch vectors sampled per patch dimension, for each layer's components
MIN_PATCHES = 4096
VIT_PATCH = 16  # ViT-LoRA's (nstlab.models.vit_lora.PATCH), without importing the model
CROPS, CROP_RESIZE, CROP = 64, 256, 128  # the fitting draw: half-image crops, as the baselines frame them
# Added to every eigenvalue, as a multiple of their mean, before whitening: the few high-variance
# directions (an image's coarse structure) come out at unit variance, the many faint ones (fine
# detail) keep their natural scale, so a loss on these features weighs structure first, as a
# trained VGG's does (whitened fully, the losses chase fine detail and the outputs lose the content).
WHITENING_REGULARISER = 10.0
RIDGE = 0.1  # the decoder fit's ridge penalty, a multiple of the mean input variance


# -- training images -----------------------------------------------------------------------------


def training_crops(pairs_dir: Path, count: int, resize: int, crop: int, seed: int) -> torch.Tensor:
    """`count` seeded random crops (count, 3, crop, crop) in [0, 1] from the train split's source
    images, content and style alike, each resized to resize² first (as the baselines crop)."""
    from nstlab.data.crops import resized_crop, train_sources

    sources = [path for paths in train_sources(pairs_dir).values() for path in paths]
    generator = torch.Generator().manual_seed(seed)
    order = torch.randint(0, len(sources), (count,), generator=generator)
    return torch.stack([resized_crop(sources[int(i)], resize, crop, generator) for i in order])


# -- data-driven layers --------------------------------------------------------------------------


Positions = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # image, top, left: (N,) each


def patch_vectors(
    inputs: torch.Tensor, conv: nn.Conv2d, limit: int, generator: torch.Generator
) -> tuple[torch.Tensor, Positions]:
    """`limit` patches `conv` sees in `inputs` (B, C, H, W), at seeded random positions, as rows
    (limit, C·k·k) in F.unfold's order (channel, then kernel row, then kernel column), and the
    positions (each patch's output pixel)."""
    (kernel_h, kernel_w), (pad_h, pad_w) = conv.kernel_size, conv.padding
    padded = F.pad(inputs, (pad_w, pad_w, pad_h, pad_h))
    batch, _, height, width = padded.shape
    samples = torch.randint(0, batch, (limit,), generator=generator)
    tops = torch.randint(0, height - kernel_h + 1, (limit,), generator=generator)
    lefts = torch.randint(0, width - kernel_w + 1, (limit,), generator=generator)
    rows = torch.arange(kernel_h)[None, :, None] + tops[:, None, None]  # (N, kh, 1)
    columns = torch.arange(kernel_w)[None, None, :] + lefts[:, None, None]  # (N, 1, kw)
    patches = padded.permute(0, 2, 3, 1)[samples[:, None, None], rows, columns]  # (N, kh, kw, C)
    return patches.permute(0, 3, 1, 2).reshape(limit, -1), (samples, tops, lefts)


def patch_count(conv: nn.Conv2d) -> int:
    """Patches sampled to fit `conv`: PATCHES_PER_DIMENSION per input dimension, at least MIN_PATCHES."""
    dimensions = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    return max(MIN_PATCHES, PATCHES_PER_DIMENSION * dimensions)


def principal_components(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean (D,), eigenvalues (D,) descending and eigenvectors (D, D) as columns of the rows'
    covariance, in float64 (the products in the rows' own precision)."""
    mean = rows.mean(dim=0)
    centred = rows - mean
    covariance = (centred.T @ centred).double() / max(rows.shape[0] - 1, 1)
    values, vectors = torch.linalg.eigh(covariance)
    return mean.double(), values.flip(0), vectors.flip(1)


def whitened_filters(rows: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` filters (count, D) and biases (count,): the leading principal components, scaled
    by 1/sqrt(variance + WHITENING_REGULARISER · mean variance) and centred on the mean patch."""
    mean, values, vectors = principal_components(rows)
    floor = WHITENING_REGULARISER * values.clamp_min(0).mean()
    kept = min(count, vectors.shape[1])
    filters = (vectors[:, :kept] / (values[:kept].clamp_min(0) + floor).sqrt()).T
    if kept < count:  # more channels than patch dimensions: mix the components at random
        mixing = torch.randn(count - kept, kept, dtype=filters.dtype) / kept**0.5
        filters = torch.cat([filters, mixing @ filters])
    return filters, -(filters @ mean)


def set_conv_from_patches(
    conv: nn.Conv2d, inputs: torch.Tensor, generator: torch.Generator, paired: bool
) -> None:
    """Set `conv` from its inputs' patches: whitened principal components; `paired`: in ±
    pairs (a ReLU follows), each component's two halves on two channels."""
    rows, _ = patch_vectors(inputs, conv, patch_count(conv), generator)
    out_channels = conv.out_channels
    if paired:
        half, odd = divmod(out_channels, 2)
        filters, biases = whitened_filters(rows, half + odd)
        filters = torch.cat([filters, -filters[:half]])
        biases = torch.cat([biases, -biases[:half]])
    else:
        filters, biases = whitened_filters(rows, out_channels)
    conv.weight.data.copy_(filters.reshape(conv.weight.shape).to(conv.weight.dtype))
    conv.bias.data.copy_(biases.to(conv.bias.dtype))


@torch.no_grad()
def fit_sequential(modules: nn.Sequential, inputs: torch.Tensor, seed: int) -> None:
    """Greedy, input first: each Conv2d set from the activations that reach it (those followed
    by a ReLU in ± pairs), then the activations carried through it."""
    generator = torch.Generator().manual_seed(seed)
    hidden = inputs
    children = list(modules)
    for index, module in enumerate(children):
        if isinstance(module, nn.Conv2d):
            followed_by_relu = index + 1 < len(children) and isinstance(children[index + 1], nn.ReLU)
            set_conv_from_patches(module, hidden, generator, paired=followed_by_relu)
        hidden = module(hidden)


def adain_vgg_sequential(network: NormalisedVGG) -> nn.Sequential:
    """The normalised VGG's modules as the one nn.Sequential pytorch-AdaIN saves (its file layout)."""
    return nn.Sequential(*(module for block in network.slices for module in block))


def fit_vgg19(images: torch.Tensor, width: float, seed: int) -> NormalisedVGG:
    """A VGG-19 up to relu5_1 at `width`, in pytorch-AdaIN's layout: the 1×1 input conv maps
    [0, 1] RGB to ImageNet-normalised RGB (what the torchvision layout does before its first
    conv), then every 3×3 conv is set from `images` as it sees them."""
    network = NormalisedVGG("random", width, seed)
    first = network.slices[0][0]
    first.weight.data.copy_(torch.diag(1 / torch.tensor(IMAGENET_STD)).view(3, 3, 1, 1))
    first.bias.data.copy_(-torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD))
    modules = list(adain_vgg_sequential(network))
    fit_sequential(nn.Sequential(*modules[1:]), first(images), seed)
    return network


def loss_vgg_state(network: NormalisedVGG) -> dict[str, torch.Tensor]:
    """The same convolutions as torchvision's VGG-19 `features.N.*` state dict (through conv5_1),
    for the loss network: it normalises its input itself and pads with zeros, not reflections."""
    convs = [m for m in adain_vgg_sequential(network) if isinstance(m, nn.Conv2d)][1:]
    layers = TorchVGG19(("relu5_1",), "random", 1.0).features  # indices only: the layout at any width
    indices = [index for index, module in enumerate(layers) if isinstance(module, nn.Conv2d)]
    state = {}
    for index, conv in zip(indices, convs, strict=True):
        state[f"features.{index}.weight"] = conv.weight.detach().clone()
        state[f"features.{index}.bias"] = conv.bias.detach().clone()
    return state


def ridge_regression(inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights (D_out, D_in) and bias (D_out,) minimising ‖inputs·Wᵀ + b − targets‖² + penalty·‖W‖²,
    rows (N, D_in) → (N, D_out), penalty RIDGE × the mean input variance · N; in float64."""
    inputs, targets = inputs.double(), targets.double()
    input_mean, target_mean = inputs.mean(dim=0), targets.mean(dim=0)
    centred = inputs - input_mean
    gram = centred.T @ centred
    gram += RIDGE * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype)
    weights = torch.linalg.solve(gram, centred.T @ (targets - target_mean)).T
    return weights, target_mean - weights @ input_mean


def encoder_conv_inputs(
    network: NormalisedVGG, images: torch.Tensor
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """What each 3×3 conv of the normalised VGG reads (before its padding), input first, up to
    relu4_1, and relu4_1 itself: the targets and the input of the decoder fit."""
    reads, hidden = [], images
    blocks = network.slices[: VGG_LAYERS.index("relu4_1") + 1]
    for module in (module for block in blocks for module in block):
        if isinstance(module, nn.ReflectionPad2d):
            reads.append(hidden)
        hidden = module(hidden)
    return reads, hidden


@torch.no_grad()
def fit_adain_decoder(network: NormalisedVGG, width: float, images: torch.Tensor, seed: int) -> AdaINDecoder:
    """The AdaIN decoder at `width` (the network's) as its least-squares inverse, input first: the
    k-th conv is fitted (ridge, on sampled 3×3 patches of the activations that reach it through
    the convs fitted so far) to output what the k-th-from-last encoder conv reads, the last one
    the image in [0, 1] (the encoder's 1×1 input conv is affine; the decoder draws RGB)."""
    reads, hidden = encoder_conv_inputs(network, images)
    targets = [*reversed(reads[1:]), images]
    decoder = AdaINDecoder(width)
    convs = [module for module in decoder if isinstance(module, nn.Conv2d)]
    if len(convs) != len(targets):
        raise RuntimeError(f"{len(convs)} decoder convs for {len(targets)} encoder convs")
    generator, fitted = torch.Generator().manual_seed(seed), 0
    for module in decoder:
        if isinstance(module, nn.Conv2d):  # `hidden` is already padded (a ReflectionPad2d precedes)
            rows, (samples, tops, lefts) = patch_vectors(hidden, module, patch_count(module), generator)
            target = targets[fitted].permute(0, 2, 3, 1)[samples, tops, lefts]
            weights, bias = ridge_regression(rows, target)
            module.weight.copy_(weights.reshape(module.weight.shape).to(module.weight.dtype))
            module.bias.copy_(bias.to(module.bias.dtype))
            fitted += 1
        hidden = module(hidden)
    return decoder


def fit_vit(cfg: Config, images: torch.Tensor, seed: int):
    """The demo's ViT (transformers ViTModel, `backbone.vit_*` sizes, `backbone.vit_layers`
    blocks): seeded random init, then the patch embedding set from `images`' 16×16 patches."""
    from transformers import ViTConfig, ViTModel

    backbone = cfg.backbone
    config = ViTConfig(
        hidden_size=backbone.vit_hidden,
        num_hidden_layers=backbone.vit_layers,
        num_attention_heads=backbone.vit_heads,
        intermediate_size=backbone.vit_mlp,
        image_size=cfg.data.image_size,
        patch_size=VIT_PATCH,
    )
    with seeded(seed):
        model = ViTModel(config, add_pooling_layer=False)
    projection = model.embeddings.patch_embeddings.projection
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        set_conv_from_patches(projection, imagenet_normalize(images), generator, paired=False)
    return model.eval()


# -- the stage -----------------------------------------------------------------------------------


def build_demo_backbones(cfg: Config, pairs_dir: Path, out_dir: Path) -> dict:
    """Fit the three backbones and the AdaIN decoder on CROPS training crops and write them under
    `out_dir` (VGG19_FILE, ADAIN_VGG_FILE, ADAIN_DECODER_FILE, VIT_DIR) with SUMMARY_FILE. Sizes
    come from `backbone.*`; the draw from `data.split_seed`, so the backbones (and the scores
    measured with them) stay put while the training seed varies. Another profile loads its own
    backbones: only the summary is written, saying so. Returns the summary. Every file is a
    function of the config and the images alone (no timing in the summary), so rerunning the
    stage leaves its output hash, and every training downstream of it, as they were."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.profile != "demo":
        summary = {
            "profile": cfg.profile,
            "fitted": False,
            "why": "only the demo profile uses these backbones",
        }
    else:
        seed, width = cfg.data.split_seed, cfg.backbone.vgg_width
        images = training_crops(pairs_dir, CROPS, CROP_RESIZE, CROP, seed)
        vgg = fit_vgg19(images, width, seed)
        torch.save(adain_vgg_sequential(vgg).state_dict(), out_dir / ADAIN_VGG_FILE)
        torch.save(loss_vgg_state(vgg), out_dir / VGG19_FILE)
        torch.save(fit_adain_decoder(vgg, width, images, seed).state_dict(), out_dir / ADAIN_DECODER_FILE)
        fit_vit(cfg, images, seed).save_pretrained(out_dir / VIT_DIR)
        summary = {"profile": cfg.profile, "fitted": True, "crops": CROPS, "crop": CROP, "vgg_width": width}
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary
