"""Gatys: "Image Style Transfer Using Convolutional Neural Networks" (Gatys, Ecker & Bethge, CVPR
2016). No network is trained: the pixels of one image are optimised. Numbers: docs/methods.md#gatys.

    image ─extractor─► features ─┬─ content: MSE to the content image's features (relu4_2)
      ▲                          ├─ style: Gram matrices vs the (blended) styles' (relu1_1…relu5_1)
      │                          └─ perceptual: MSE at several layers (optional)
      └── optimiser step on total = α·content + β·style + tv·TV + lap·Laplacian + p·perceptual

Two presets (`preset`), every field overridable:
- "default", the seed course report: per style layer mean((G_o − G_s)²)/(C·h·w) with the
  unnormalised G = F·Fᵀ, layer weights 1.0, 0.75, 0.2, 0.2, 0.2, α 1, β 1e6, start from the
  content image, Adam lr 0.003, 2,000 steps, the long side capped at 400, styles resized to the
  content's size; the optimised tensor is the ImageNet-normalised image, never clamped (only the
  picture is). The report
  taps torchvision's `features` by index 0, 5, 10, 19, 21, 28 ("conv1_1 … conv5_1, conv4_2"),
  but with its in-place ReLUs those tensors hold relu1_1 … relu5_1 and relu4_2 by the time the
  loss reads them, so we tap the ReLU outputs by name (out-of-place ReLUs, nstlab.models.encoders).
- "reference", pystiche's reading of Gatys 2016: relu4_2 content, style layer weights 1/C²,
  G = F·Fᵀ/(h·w) and mean((G_o − G_s)²) per layer, β 1e3, L-BFGS lr 1, 500 steps, the short edge
  capped at 512 (styles keep their aspect, short edge matched); pystiche too optimises the
  extractor's preprocessed image, unclamped (its image_optimization), so the space is the same.
`space: pixels` optimises [0, 1] pixels clamped after every step instead (an ablation).

Optional terms (weight 0 by default): TV = anisotropic total variation per pixel; Laplacian
(Li et al. 2017) = MSE between the Laplacians of the 4×4 average-pooled image and content;
perceptual (Johnson et al. 2016) = Σ feature MSE to the content at relu1_2, relu2_2, relu3_3,
relu4_3. Several styles blend by mixing their Gram matrices, Σₖ wₖ·G(styleₖ), so weights (1, 0)
give the single style exactly.

The extractor (VGG-19, ResNet-50 or a ViT, nstlab.models.extractors) is built once and frozen;
each `stylize` call encodes its content and style targets once, then only the image is re-encoded.
"""

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from nstlab.errors import ConfigError, NstlabError
from nstlab.functional import gram, imagenet_denormalize, imagenet_normalize, laplacian, total_variation
from nstlab.config.gatys import (
    INVERSE_CHANNELS_SQUARED,
    LOSS_TERMS,
    MIN_SIDE,
    SEED_LAYER_WEIGHTS,
    GatysSettings,
    settings_from_config,
)
from nstlab.config.layer_names import default_layers
from nstlab.losses import feature_mse
from nstlab.models.base import StyleModel
from nstlab.models.blocks import count_parameters
from nstlab.models.extractors import build_extractor, vit_block_count

LAPLACIAN_POOL = 4  # Li et al. 2017 ("Laplacian-Steered NST") compare Laplacians of 4×4 average-pooled images


# ---------------------------------------------------------------------------------------------
# The loss terms (unweighted); the weights are applied in one place, GatysTransfer._weighted_total.


def style_gram(features: torch.Tensor, style_loss: str) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, C): F·Fᵀ ("seed") or F·Fᵀ/(h·w) ("pystiche")."""
    matrix = gram(features)
    return matrix if style_loss == "seed" else matrix / (features.shape[-2] * features.shape[-1])


def style_layer_loss(features: torch.Tensor, target_gram: torch.Tensor, style_loss: str) -> torch.Tensor:
    """One layer's Gram loss: mean((G − G_s)²)/(C·h·w) ("seed", the report's d·h·w) or mean((G − G_s)²)."""
    squared = (style_gram(features, style_loss) - target_gram).pow(2).mean()
    return squared / features[0].numel() if style_loss == "seed" else squared


def laplacian_loss(images: torch.Tensor, target_laplacian: torch.Tensor) -> torch.Tensor:
    """Li et al. 2017: MSE between Laplacians of the 4×4 average-pooled images."""
    return F.mse_loss(laplacian(F.avg_pool2d(images, LAPLACIAN_POOL)), target_laplacian)


def _resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)


def _short_edge_size(size: Sequence[int], short_edge: int) -> tuple[int, int]:
    scale = short_edge / min(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def working_size(size: Sequence[int], settings: GatysSettings) -> tuple[int, int]:
    """The (h, w) the image is optimised at: `size` shrunk, aspect kept, until its long or short
    edge (max_size_edge) is at most max_size, but the short edge not below MIN_SIDE (the
    extractor's deepest layer needs it); never enlarged."""
    height, width = size
    if settings.max_size is None:
        return height, width
    edge = max(height, width) if settings.max_size_edge == "long" else min(height, width)
    scale = max(settings.max_size / edge, MIN_SIDE / min(height, width))
    if scale >= 1:
        return height, width
    return round(height * scale), round(width * scale)


def blend_weights(count: int, style_weights: Sequence[float] | None) -> list[float]:
    """Multi-style blending weights: default equal; one per style, ≥ 0, summing to 1."""
    weights = list(style_weights) if style_weights is not None else [1.0 / count] * count
    if count == 0 or len(weights) != count or min(weights) < 0 or abs(sum(weights) - 1.0) > 1e-6:
        raise NstlabError(f"style weights {weights}: give one weight ≥ 0 per style ({count}), summing to 1")
    return weights


@dataclass
class Targets:
    """What the image is compared with, encoded once per `stylize`."""

    content_features: dict[str, torch.Tensor]  # content and perceptual layers of the content image
    grams: dict[str, torch.Tensor]  # blended Σₖ wₖ·G(styleₖ) per style layer
    layer_weights: dict[str, float]
    content_laplacian: torch.Tensor


class GatysTransfer(StyleModel):
    """Optimises an image; `stylize` for one content and several styles, `forward` for batches
    (the feed-forward models' contract, so evaluation treats it alike)."""

    name = "gatys"

    def __init__(self, settings: GatysSettings, *, seed: int = 0, vgg_width: float = 1.0, vit_config=None):
        super().__init__()
        self.settings, self.seed = settings, seed
        weights = settings.weights or "random"
        if settings.extractor == "vit" and weights == "random" and vit_config is None:
            from transformers import ViTConfig

            vit_config = ViTConfig()
        defaults = default_layers(
            settings.extractor, vit_block_count(weights, vit_config) if settings.extractor == "vit" else 0
        )
        self.content_layers = settings.content_layers or defaults["content"]
        self.style_layers = settings.style_layers or defaults["style"]
        self.perceptual_layers = settings.perceptual_layers or defaults["perceptual"]
        self.style_layer_weights = self._style_layer_weights(settings, defaults["style"])
        layers = dict.fromkeys((*self.content_layers, *self.style_layers, *self.perceptual_layers))
        self.extractor = build_extractor(
            settings.extractor, tuple(layers), weights, seed=seed, vgg_width=vgg_width, vit_config=vit_config
        )
        self.loss_weights = {term: getattr(settings, f"{term}_weight") for term in LOSS_TERMS}
        self.last_histories: list[list[dict[str, float]]] = []
        self.histories: list[list[dict[str, float]]] = []  # every optimisation's, since built

    def _style_layer_weights(
        self, settings: GatysSettings, default_style: tuple[str, ...]
    ) -> tuple[float, ...] | str:
        weights = settings.style_layer_weights
        if weights is None and settings.preset == "reference":
            return INVERSE_CHANNELS_SQUARED
        if weights is None:
            seed_layers = settings.extractor == "vgg19" and self.style_layers == default_style
            return SEED_LAYER_WEIGHTS if seed_layers else (1.0,) * len(self.style_layers)
        if weights != INVERSE_CHANNELS_SQUARED and len(weights) != len(self.style_layers):
            raise ConfigError(
                f"style_layer_weights: {len(weights)} weights for {len(self.style_layers)} style layers "
                f"({', '.join(self.style_layers)})"
            )
        return weights

    def train(self, mode: bool = True):
        """Nothing here trains; the extractor stays in eval mode."""
        return super().train(False)

    # -- targets and terms -------------------------------------------------------------------
    @torch.no_grad()
    def encode_targets(
        self, content: torch.Tensor, styles: Sequence[torch.Tensor], weights: Sequence[float]
    ) -> Targets:
        """Encode the content (1, 3, h, w) and the styles (1, 3, H', W') once, on the extractor's
        device; the styles are resized first (see the presets) and their Grams mixed by `weights`."""
        settings = self.settings
        content_features = self.extractor(content)
        grams: dict[str, torch.Tensor] = {}
        for style, weight in zip(styles, weights):
            if settings.style_loss == "seed":  # unnormalised Grams only compare at equal sizes
                style = _resize(style, content.shape[-2:])
            else:
                style = _resize(style, _short_edge_size(style.shape[-2:], min(content.shape[-2:])))
            style_features = self.extractor(style)
            for name in self.style_layers:
                grams[name] = grams.get(name, 0.0) + weight * style_gram(
                    style_features[name], settings.style_loss
                )
        if self.style_layer_weights == INVERSE_CHANNELS_SQUARED:
            layer_weights = {name: 1.0 / grams[name].shape[-1] ** 2 for name in self.style_layers}
        else:
            layer_weights = dict(zip(self.style_layers, self.style_layer_weights))
        return Targets(
            content_features, grams, layer_weights, laplacian(F.avg_pool2d(content, LAPLACIAN_POOL))
        )

    def terms(self, image: torch.Tensor, targets: Targets) -> dict[str, torch.Tensor]:
        """Unweighted loss terms of the image (1, 3, h, w); all are computed (they are cheap once
        the image is encoded), so the history shows TV and Laplacian even when not optimised."""
        features = self.extractor(image)
        style = sum(
            weight * style_layer_loss(features[name], targets.grams[name], self.settings.style_loss)
            for name, weight in targets.layer_weights.items()
        )
        return {
            "content": feature_mse(
                {name: features[name] for name in self.content_layers}, targets.content_features
            ),
            "style": style,
            "tv": total_variation(image) / image.numel(),  # per pixel, so tv_weight does not depend on size
            "laplacian": laplacian_loss(image, targets.content_laplacian),
            "perceptual": feature_mse(
                {name: features[name] for name in self.perceptual_layers}, targets.content_features
            ),
        }

    def _weighted_total(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(weight * terms[name] for name, weight in self.loss_weights.items() if weight)

    def _initial_image(
        self, content: torch.Tensor, styles: Sequence[torch.Tensor], weights: Sequence[float]
    ) -> torch.Tensor:
        if self.settings.init == "content":
            return content.clone()
        if self.settings.init == "style":
            return _resize(
                styles[max(range(len(styles)), key=lambda k: weights[k])], content.shape[-2:]
            ).clone()
        generator = torch.Generator().manual_seed(self.seed)  # on the CPU: the same noise on every device
        return torch.rand(content.shape, generator=generator).to(content.device)

    def _optimizer(self, image: torch.Tensor) -> torch.optim.Optimizer:
        settings = self.settings
        if settings.optimizer == "lbfgs":
            # max_iter 1: one step = one evaluation, as pystiche, so steps compare across optimisers.
            return torch.optim.LBFGS([image], lr=settings.lr, max_iter=1)
        optimizer_class = torch.optim.Adam if settings.optimizer == "adam" else torch.optim.AdamW
        return optimizer_class([image], lr=settings.lr)

    # -- optimisation ------------------------------------------------------------------------
    def stylize(
        self,
        content: torch.Tensor,
        styles: Sequence[torch.Tensor],
        style_weights: Sequence[float] | None = None,
        progress_callback: Callable[[dict[str, float]], None] | None = None,
    ) -> tuple[torch.Tensor, list[dict[str, float]]]:
        """content (1, 3, H, W) in [0, 1]; styles: (1, 3, H', W') images, blended with
        `style_weights` (default equal, summing to 1) by mixing their Gram matrices. Runs on the
        content's device (the extractor follows it). Returns the image (1, 3, H, W), in [0, 1]
        for space pixels, not clamped for space normalised (clamp it to show it), and the
        history: one dict per logged step (step, total, content, style, tv, laplacian,
        perceptual, elapsed_s), from step 0 to `steps`; `progress_callback` gets each entry."""
        if content.dim() != 4 or tuple(content.shape[:2]) != (1, 3):
            raise NstlabError(
                f"content of shape {tuple(content.shape)}: stylize takes one image (1, 3, H, W)"
            )
        if min(content.shape[-2:]) < MIN_SIDE:
            raise NstlabError(
                f"content of size {tuple(content.shape[-2:])}: both sides must be ≥ {MIN_SIDE} px"
            )
        weights = blend_weights(len(styles), style_weights)
        settings, device, size = self.settings, content.device, tuple(content.shape[-2:])
        self.to(device)
        # Evaluation calls models under no_grad (or inference mode) and maybe autocast: the pixels
        # need gradients, and fp32 keeps the Gram matrices exact.
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
            working = content.detach().clone().float()
            working = _resize(working, working_size(size, settings))
            styles = [style.detach().clone().float().to(device) for style in styles]
            targets = self.encode_targets(working, styles, weights)
            image, history = self._optimise(
                self._initial_image(working, styles, weights), targets, progress_callback
            )
        return _resize(image, size).to(content.dtype), history

    def _optimise(
        self,
        image: torch.Tensor,
        targets: Targets,
        progress_callback: Callable[[dict[str, float]], None] | None,
    ) -> tuple[torch.Tensor, list[dict[str, float]]]:
        """`steps` optimiser steps on image (1, 3, h, w) in `space`: its ImageNet-normalised values,
        unclamped, or its [0, 1] pixels, clamped after each step; logs the terms every `log_every`
        steps (those of the step's evaluation) and at the end. Returns the image in pixel units."""
        settings, history = self.settings, []
        normalised = settings.space == "normalised"
        # L-BFGS flattens the gradient with view(-1): a channels-last content (decoded HWC images)
        # would hand it a non-contiguous one.
        variable = (imagenet_normalize(image) if normalised else image).contiguous().requires_grad_(True)
        optimizer = self._optimizer(variable)

        def as_image() -> torch.Tensor:  # the extractors take [0, 1]-scaled RGB and normalise it themselves
            return imagenet_denormalize(variable) if normalised else variable

        evaluated: dict[str, Any] = {}
        started = time.perf_counter()

        def log(step: int, terms: dict[str, torch.Tensor], total: torch.Tensor) -> None:
            record = {
                "step": step,
                "total": total.item(),
                **{name: value.item() for name, value in terms.items()},
                "elapsed_s": time.perf_counter() - started,
            }
            history.append(record)
            if progress_callback is not None:
                progress_callback(record)

        def objective() -> torch.Tensor:
            optimizer.zero_grad()
            evaluated["terms"] = self.terms(as_image(), targets)
            evaluated["total"] = self._weighted_total(evaluated["terms"])
            evaluated["total"].backward()
            return evaluated["total"]

        for step in range(settings.steps):
            optimizer.step(objective)
            if not normalised:
                with torch.no_grad():
                    variable.clamp_(0, 1)
            if step % settings.log_every == 0:
                log(step, evaluated["terms"], evaluated["total"])
        with torch.no_grad():
            image = as_image()
            terms = self.terms(image, targets)
            log(settings.steps, terms, self._weighted_total(terms))
        return image.detach(), history

    def forward(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """content (B, 3, H, W), style (B or 1, 3, H', W') in [0, 1] -> (B, 3, H, W): one
        optimisation per sample; their histories are kept in `last_histories`."""
        outputs, self.last_histories = [], []
        for index in range(content.shape[0]):
            style_image = style[index : index + 1] if style.shape[0] > 1 else style
            output, history = self.stylize(content[index : index + 1], [style_image])
            outputs.append(output)
            self.last_histories.append(history)
        self.histories += self.last_histories
        return torch.cat(outputs)

    def losses(self, content: torch.Tensor, style: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NstlabError("gatys optimises each image at test time; it has no training step")

    def parameter_counts(self) -> dict[str, int]:
        """The frozen extractor's size (nothing trains)."""
        counts = {f"extractor.{kind}": number for kind, number in count_parameters(self.extractor).items()}
        return {**counts, "trainable": 0, "total": sum(p.numel() for p in self.parameters())}

    @classmethod
    def build(cls, cfg) -> "GatysTransfer":
        """GatysTransfer from the config: settings_from_config, `cfg.seed`, `backbone.vgg_width`
        for a random VGG-19 and the `backbone.vit_*` sizes for a random ViT."""
        settings, backbone, vit_config = settings_from_config(cfg), cfg.backbone, None
        if settings.extractor == "vit" and settings.weights == "random":
            from transformers import ViTConfig

            vit_config = ViTConfig(
                hidden_size=backbone.vit_hidden,
                num_hidden_layers=backbone.vit_layers,
                num_attention_heads=backbone.vit_heads,
                intermediate_size=backbone.vit_mlp,
            )
        return cls(settings, seed=cfg.seed, vgg_width=backbone.vgg_width, vit_config=vit_config)

    def log_evaluation_run(self, cfg, summary: dict[str, Any], outputs_dir: Path, test_pairs) -> str | None:
        """One MLflow run per Gatys configuration (each grid point): its settings, the test pairs
        it stylised, test metrics, the first image's step history, every image's history
        (outputs_dir/history.json) and the whole resolved config."""
        from nstlab.config import config_yaml, run_params
        from nstlab.tracking.groups import seed_group
        from nstlab.tracking.run import Tracker
        from nstlab.training.checkpoint import run_digest

        history_path, config_file = outputs_dir / "history.json", outputs_dir / "config.yaml"
        history_path.write_text(json.dumps(self.histories) + "\n")
        config_file.write_text(config_yaml(cfg))
        tags = {
            "model": self.name,
            "stage": "0",
            "profile": cfg.profile,
            "config_digest": run_digest(cfg, self.name, 0),
        }
        with Tracker(cfg.mlflow, self.name, tags, group=seed_group(cfg, self.name, 0, self.name)) as tracker:
            tracker.log_params(run_params(cfg, self.name))
            tracker.log_datasets(test_pairs)
            tracker.log_artifact(config_file)
            tracker.log_metrics({f"test.{k}": v for k, v in summary.items() if isinstance(v, int | float)}, 0)
            for record in self.histories[0] if self.histories else []:
                tracker.log_metrics(
                    {f"optim.{k}": v for k, v in record.items() if k != "step"}, int(record["step"])
                )
            tracker.log_artifact(history_path)
        return tracker.run_id
