"""IEST: "Artistic Style Transfer with Internal-external Learning and Contrastive Learning"
(Chen et al., NeurIPS 2021; code HalbertCH/IEContraAST). Numbers: docs/methods.md#iest.

SANet's generator (sanet.py) trained with two more signals:
- contrastive: projection heads embed the output's relu3_1 (style) and relu4_1 (content); the
  batch is n contents × n styles, then the contents rolled by one, so every output has exactly
  one partner with the same style (other content) and one with the same content (other style);
- adversarial ("external" learning from the whole style set): a multi-scale LSGAN
  discriminator tells style images from outputs. The trainer runs the code's order: G forward,
  D step (`discriminator_loss`), G adversarial term with the updated D (`adversarial_losses`).
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from nstlab.models.encoders import scaled_channels
from nstlab.errors import ConfigError
from nstlab.models.base import Optimizers, default_optimizer
from nstlab.models.sanet import SANet


class ProjectionHead(nn.Sequential):
    """Linear, ReLU, Linear on features summed over positions, then L2-normalised
    (net.py style/content_feature_contrastive): (B, C, h, w) -> (B, out) of unit norm."""

    def __init__(self, in_features: int, hidden: int, out_features: int):
        super().__init__(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, out_features))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(super().forward(features.sum(dim=(2, 3))), dim=1)


class MultiScaleDiscriminator(nn.Module):
    """IEST's LSGAN critic (net.py MultiDiscriminator): the same patch discriminator at 3 scales,
    AvgPool(3, stride 2, padding 1) between them. Each: conv 4×4 stride 2 3→64→128→256→512 with
    InstanceNorm (no affine) after all but the first, LeakyReLU 0.2, then conv 3×3 512→1."""

    # Four stride-2 convs at the coarsest scale (1/4) must leave ≥ 2×2 for InstanceNorm: 128 px.
    MIN_SIDE = 128

    def __init__(self, width: float = 1.0, scales: int = 3):
        super().__init__()
        self.critics = nn.ModuleList(self._critic(width) for _ in range(scales))
        self.downsample = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)

    @staticmethod
    def _critic(width: float) -> nn.Sequential:
        modules: list[nn.Module] = []
        in_channels = 3
        for index, channels in enumerate((64, 128, 256, 512)):
            out_channels = scaled_channels(channels, width)
            modules.append(nn.Conv2d(in_channels, out_channels, 4, stride=2, padding=1))
            if index > 0:
                modules.append(nn.InstanceNorm2d(out_channels))
            modules.append(nn.LeakyReLU(0.2))
            in_channels = out_channels
        modules.append(nn.Conv2d(in_channels, 1, 3, padding=1))
        return nn.Sequential(*modules)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> one (B, 1, h_k, w_k) score map per scale. Images smaller than 128 px
        (never at the training sizes) are first enlarged, keeping the aspect ratio."""
        short_side = min(images.shape[-2:])
        if short_side < self.MIN_SIDE:
            factor = self.MIN_SIDE / short_side
            size = [math.ceil(side * factor) for side in images.shape[-2:]]
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        scores = []
        for critic in self.critics:
            scores.append(critic(images))
            images = self.downsample(images)
        return scores

    def lsgan_loss(self, images: torch.Tensor, target: float) -> torch.Tensor:
        """Σ over scales of mean((D(x) − target)²) (net.py compute_loss): target 1 real, 0 fake."""
        return sum(torch.mean((scores - target) ** 2) for scores in self(images))


def contrastive_batch(content: torch.Tensor, style: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """IEST train.py's batch: the first n = B // 2 contents c and styles s make 2n pairs
    (c_i, s_i) then (c_{i+1 mod n}, s_i). Returns contents, styles (2n, 3, H, W) and their
    content and style ids (2n,), which tell contrastive_loss who is whose partner."""
    pairs = content.shape[0] // 2
    content, style = content[:pairs], style[:pairs]
    ids = torch.arange(pairs, device=content.device)
    content_ids = torch.cat([ids, ids.roll(-1)])
    style_ids = torch.cat([ids, ids])
    return torch.cat([content, content.roll(-1, dims=0)]), torch.cat([style, style]), content_ids, style_ids


def contrastive_masks(shared_ids: torch.Tensor, other_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, N) masks per anchor row: the positive shares `shared_ids` and differs in `other_ids`
    (exactly one in contrastive_batch's layout); the candidates are the positive and the
    negatives, which differ in both, i.e. every sample whose `other_ids` differs. These are the
    sets net.py writes out by hand as index lists for n = 6."""
    candidates = other_ids[:, None] != other_ids[None, :]
    positive = candidates & (shared_ids[:, None] == shared_ids[None, :])
    return positive, candidates


def contrastive_loss(
    embeddings: torch.Tensor, shared_ids: torch.Tensor, other_ids: torch.Tensor, tau: float
) -> torch.Tensor:
    """InfoNCE summed over anchors (net.py compute_contrastive_loss: cross-entropy of
    anchor·candidates / τ with the positive as target). embeddings (N, D) of unit norm, ids (N,)."""
    positive, candidates = contrastive_masks(shared_ids, other_ids)
    logits = embeddings @ embeddings.T / tau
    log_partition = logits.masked_fill(~candidates, float("-inf")).logsumexp(dim=1)
    positive_logit = (logits * positive).sum(dim=1)
    return (log_partition - positive_logit).sum()


class IEST(SANet):
    name = "iest"
    # Its step is not one forward and one backward that DDP could average over ranks.
    single_process_only = "its discriminator takes its own optimiser step between two generator passes"
    # IEContraAST train.py: content 1, style 1, identity 50 and 1, contrastive 0.3 each, GAN 5
    loss_defaults = {
        "content": 1.0,
        "style": 1.0,
        "identity1": 50.0,
        "identity2": 1.0,
        "contrastive_content": 0.3,
        "contrastive_style": 0.3,
        "adversarial": 5.0,
    }
    # train.py: τ 0.2 in compute_contrastive_loss; D Adam betas (0.5, 0.999) (configure_optimizers)
    # and D's lr decayed as G's (train.py:143; false: constant: discriminator_lr_decays)
    option_defaults = {"tau": 0.2, "d_betas": (0.5, 0.999), "d_lr_decay": True}

    def __init__(self, cfg):
        super().__init__(cfg)
        weights, width = self.loss_weights, cfg.backbone.vgg_width
        if self.options["tau"] <= 0:
            raise ConfigError(
                f"baselines.iest.options.tau = {self.options['tau']}: the temperature must be > 0"
            )
        betas = self.options["d_betas"]
        if len(betas) != 2 or not all(0 <= beta < 1 for beta in betas):
            raise ConfigError(f"baselines.iest.options.d_betas = {betas!r}: give two numbers in [0, 1)")
        if not isinstance(self.options["d_lr_decay"], bool):
            raise ConfigError(
                f"baselines.iest.options.d_lr_decay = {self.options['d_lr_decay']!r}: give true or false"
            )
        contrastive = weights["contrastive_content"] or weights["contrastive_style"]
        if contrastive and cfg.baselines["iest"].batch_size < 4:
            raise ConfigError(
                f"baselines.iest.batch_size = {cfg.baselines['iest'].batch_size}: the contrastive "
                "batch needs at least 4 (2 contents × 2 styles, rolled)"
            )
        # A part whose loss weight is 0 is not built: nothing that cannot train sits in the model.
        channels = self.encoder.channels
        self.style_head = (
            ProjectionHead(channels["relu3_1"], scaled_channels(128, width), scaled_channels(128, width))
            if weights["contrastive_style"]
            else None
        )
        self.content_head = (
            ProjectionHead(channels["relu4_1"], scaled_channels(256, width), scaled_channels(128, width))
            if weights["contrastive_content"]
            else None
        )
        self.discriminator = MultiScaleDiscriminator(width) if weights["adversarial"] else None
        self._last_real: torch.Tensor | None = None
        self._last_output: torch.Tensor | None = None

    def losses(self, content: torch.Tensor, style: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unweighted generator terms (net.py Net.forward). With a contrastive term on and B ≥ 4,
        the step runs on contrastive_batch(content, style) (B // 2 contents × B // 2 styles), as
        the code does; smaller batches (a last validation batch) skip the contrastive terms.
        Caches the styles and output for discriminator_loss / adversarial_losses."""
        pairs = None
        if (self.style_head is not None or self.content_head is not None) and content.shape[0] >= 4:
            content, style, content_ids, style_ids = contrastive_batch(content, style)
            pairs = (content_ids, style_ids)
        step = self.transfer_step(content, style)
        terms = self.content_style_identity_terms(step)
        if pairs is not None:
            content_ids, style_ids = pairs
            tau = self.options["tau"]
            if self.style_head is not None:
                embeddings = self.style_head(step.output_features["relu3_1"])
                terms["contrastive_style"] = contrastive_loss(embeddings, style_ids, content_ids, tau)
            if self.content_head is not None:
                embeddings = self.content_head(step.output_features["relu4_1"])
                terms["contrastive_content"] = contrastive_loss(embeddings, content_ids, style_ids, tau)
        self._last_real, self._last_output = step.style, step.output
        return terms

    def _cached(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.discriminator is None or self._last_output is None:
            raise RuntimeError("call losses() first, with baselines.iest.loss.adversarial > 0")
        return self._last_real, self._last_output

    def discriminator_loss(self) -> torch.Tensor:
        """D's LSGAN loss on the last step: style images → 1, outputs (detached) → 0 (train.py)."""
        real, output = self._cached()
        return self.discriminator.lsgan_loss(real, 1.0) + self.discriminator.lsgan_loss(output.detach(), 0.0)

    def adversarial_losses(self) -> dict[str, torch.Tensor]:
        """G's LSGAN term with the (updated) D: outputs → 1, gradients reach the generator."""
        _, output = self._cached()
        return {"adversarial": self.discriminator.lsgan_loss(output, 1.0)}

    @property
    def discriminator_lr_decays(self) -> bool:
        return self.options["d_lr_decay"]

    def configure_optimizers(self, lr: float) -> Optimizers:
        """The generator's Adam, as every model's, and D's own Adam with train.py's betas."""
        generator = default_optimizer(self, lr)
        if self.discriminator is None:
            return generator, None
        betas = tuple(self.options["d_betas"])
        return generator, torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=betas)

    def parts(self) -> dict[str, nn.Module]:
        parts = super().parts()
        for name in ("style_head", "content_head", "discriminator"):
            if getattr(self, name) is not None:
                parts[name] = getattr(self, name)
        return parts

    def parameter_counts(self) -> dict[str, int]:
        counts = super().parameter_counts()
        counts["generator.trainable"] = counts["trainable"] - counts.get("discriminator.trainable", 0)
        return counts
