"""`StyleModel`, the contract every method's model follows, so the trainer, evaluation, `nstlab
info` and `nstlab stylize` serve every method without special cases.

What every model must have is abstract here; what differs between methods is a hook with the
common behaviour as its default, overridden where a method needs more (ViT-LoRA's two stages,
IEST's discriminator, Gatys' runs). The hooks needed before a model exists (its run name,
schedule, inference loader) are classmethods, read from the class without building it.
"""

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import torch
import torch.nn as nn

from nstlab.registry import output_key

if TYPE_CHECKING:
    from nstlab.training.schedule import TrainSpec

Optimizers = tuple[torch.optim.Optimizer, torch.optim.Optimizer | None]


def default_optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam (β 0.9, 0.999) over the trainable parameters outside any discriminator."""
    trainable = [
        parameter
        for name, parameter in model.named_parameters()
        if parameter.requires_grad and not name.startswith("discriminator.")
    ]
    return torch.optim.Adam(trainable, lr=lr, betas=(0.9, 0.999))


class StyleModel(nn.Module, ABC):
    """A style-transfer method. Parameters that must not train (loss networks, frozen encoders)
    have requires_grad False; `loss_weights` holds the weights of its params block's loss terms."""

    name: str  # its registry name
    loss_weights: dict[str, float]
    # Why it cannot train under torchrun, or None when it can.
    single_process_only: str | None = None

    # -- what every model does ------------------------------------------------------------------
    @abstractmethod
    def forward(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) RGB in [0, 1] in, the same shape out, any H and W (pad inside and
        crop back). Not clamped: callers clamp for display."""

    @abstractmethod
    def losses(self, content: torch.Tensor, style: torch.Tensor) -> dict[str, torch.Tensor]:
        """The unweighted scalar loss terms of one training step; only terms whose weight in
        `loss_weights` is non-zero are computed. The trainer applies the weights in one place, so
        MLflow shows each term on its own."""

    @abstractmethod
    def parameter_counts(self) -> dict[str, int]:
        """Trainable/frozen counts per named part, then `trainable` and `total` (`nstlab info`)."""

    # -- building and loading -------------------------------------------------------------------
    @classmethod
    def build(cls, cfg) -> Self:
        """The model from the resolved config, as training starts it."""
        return cls(cfg)

    def add_stage_parts(self, cfg, stage: int) -> None:
        """Add what training stage `stage` trains beyond the built model, with the same random
        draws as training, so its weights load (ViT-LoRA's stage 2: LoRA). Default: nothing."""

    @classmethod
    def load_for_inference(cls, cfg, checkpoint: Path) -> Self | None:
        """The trained model for stylising only, quicker to load than building it for training;
        None where this does not serve, and evaluation builds the model and loads the weights."""
        return None

    # -- training -------------------------------------------------------------------------------
    @classmethod
    def run_name(cls, cfg, stage: int) -> str:
        return cls.name

    @classmethod
    def train_spec(cls, cfg, stage: int, n_train_pairs: int) -> "TrainSpec":
        """What one training runs and for how long. Default: by its baselines.<name> block."""
        from nstlab.training.schedule import baseline_spec

        key, run_name = output_key(cls.name, stage), cls.run_name(cfg, stage)
        return baseline_spec(cfg, cls.name, key, run_name, n_train_pairs)

    def prepare_training(self, cfg, stage: int, models_dir: Path) -> None:
        """Run after `build`, before training (ViT-LoRA's stage 2 starts from stage 1). Default: nothing."""

    def configure_optimizers(self, lr: float) -> Optimizers:
        """(optimizer, discriminator optimizer or None). Default: Adam over the trainable parameters."""
        return default_optimizer(self, lr), None

    def first_batch(self, content: torch.Tensor, style: torch.Tensor) -> bool:
        """Called with a fresh run's step-0 batch; True means the model took that step itself
        and nothing updates (ArtFlow's data-dependent ActNorm init). Default: a normal step."""
        return False

    def save_beside_weights(self, out_dir: Path) -> list[tuple[Path, str]]:
        """Files written beside model.pt after training, from the kept weights (loaded into the
        model first), as (path, MLflow artifact folder). Default: none."""
        return []

    # -- adversarial training: a model with a discriminator (a submodule `discriminator`, trained
    # by the second optimiser of configure_optimizers) overrides these --------------------------
    discriminator_lr_decays = True  # D's lr follows the generator's schedule, else stays constant

    def discriminator_loss(self) -> torch.Tensor:
        """D's loss on the output cached by the last `losses` call (detached)."""
        raise NotImplementedError(f"{self.name} has no discriminator")

    def adversarial_losses(self) -> dict[str, torch.Tensor]:
        """The generator's adversarial terms, with the updated D."""
        raise NotImplementedError(f"{self.name} has no discriminator")

    # -- evaluation -----------------------------------------------------------------------------
    def log_evaluation_run(self, cfg, summary: dict[str, Any], outputs_dir: Path, test_pairs) -> str | None:
        """A method that trains nothing (registry kind OPTIMISED) logs each evaluation as its own
        MLflow run and returns its id; a trained model's test metrics join its training run."""
        raise NotImplementedError(f"{self.name} is trained: its test metrics join its training run")
