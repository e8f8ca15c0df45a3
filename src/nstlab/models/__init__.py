"""Building a method by name (nstlab.registry lists them), and the contract every model follows.

Every method module exposes `build(cfg: nstlab.config.Config) -> nn.Module`, and the module
it returns follows one contract, so the trainer, evaluation, `nstlab info` and `nstlab stylize`
serve every method without special cases:

- `model(content, style) -> output`: images (B, 3, H, W) RGB in [0, 1] in, same shape out, any
  H and W (pad inside and crop back). Output is not clamped; callers clamp for display.
- `model.losses(content, style) -> dict[str, Tensor]`: the *unweighted* scalar loss terms of
  one training step; only terms whose weight in `model.loss_weights` is non-zero are computed.
  The trainer applies `model.loss_weights` in one place, so MLflow shows each term on its own.
- `model.loss_weights: dict[str, float]` from the method's params block.
- `model.parameter_counts() -> dict[str, int]`: trainable/frozen counts per named part.
- parameters that must not train (loss networks, frozen encoders) have requires_grad False.
- adversarial methods also have `model.discriminator` (nn.Module, its own optimiser),
  `model.discriminator_loss() -> Tensor` (on the output cached by the last `losses` call,
  detached) and `model.adversarial_losses() -> dict[str, Tensor]` (with the updated D).

What differs in training, each optional, with the default in brackets:
- `model.configure_optimizers(lr) -> (optimizer, discriminator optimizer or None)`
  [`default_optimizer`: Adam over the trainable parameters, no discriminator].
- `model.save_beside_weights(out_dir) -> [(path, MLflow artifact folder)]`: files written
  beside model.pt from the best weights (ViT-LoRA's adapters) [nothing].
- `model.first_batch(content, style) -> bool`: called with the batch of a fresh run's step 0;
  True means it took that step itself and nothing updates (ArtFlow's ActNorm init pass)
  [a normal step].
- module-level `train_spec(cfg, stage, n_train_pairs) -> TrainSpec` [its baselines block,
  nstlab.schedule.baseline_spec]; `run_name(cfg, stage)` [the method's name];
  `prepare_training(model, cfg, stage, models_dir)`, run after `build` [nothing];
  `SINGLE_PROCESS_ONLY`: why it cannot train under torchrun [it can].

And in evaluation and `nstlab stylize`, optional: module-level `load_for_inference(cfg,
checkpoint) -> model or None`, the trained model for stylising only, quicker to load (ViT-LoRA:
without transformers and peft); None where it cannot serve [`build`, then the checkpoint].
"""

import importlib
from pathlib import Path
from types import ModuleType

import torch
import torch.nn as nn

from nstlab.registry import get_method, output_key
from nstlab.runtime import seeded


def method_module(name: str) -> ModuleType:
    return importlib.import_module(get_method(name).module)


def build_model(name: str, cfg) -> nn.Module:
    """Build method `name` from the resolved config (see nstlab.config.Config). Every random
    initialisation draws from `cfg.seed` here, so two builds are equal and the caller's random
    state is left as it was."""
    module = method_module(name)
    with seeded(cfg.seed):
        return module.build(cfg)


def run_name(name: str, cfg, stage: int) -> str:
    hook = getattr(method_module(name), "run_name", None)
    return hook(cfg, stage) if hook else name


def train_spec(name: str, cfg, stage: int, n_train_pairs: int):
    """What one training of `name` runs: its module's `train_spec`, else its baselines block."""
    from nstlab.schedule import baseline_spec

    hook = getattr(method_module(name), "train_spec", None)
    if hook:
        return hook(cfg, stage, n_train_pairs)
    return baseline_spec(cfg, name, output_key(name, stage), run_name(name, cfg, stage), n_train_pairs)


def prepare_training(name: str, model: nn.Module, cfg, stage: int, models_dir: Path) -> None:
    hook = getattr(method_module(name), "prepare_training", None)
    if hook:
        hook(model, cfg, stage, models_dir)


def single_process_reason(name: str) -> str | None:
    """Why method `name` cannot train under torchrun, or None when it can."""
    return getattr(method_module(name), "SINGLE_PROCESS_ONLY", None)


def default_optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam (β 0.9, 0.999) over the trainable parameters outside any discriminator."""
    trainable = [
        parameter
        for name, parameter in model.named_parameters()
        if parameter.requires_grad and not name.startswith("discriminator.")
    ]
    return torch.optim.Adam(trainable, lr=lr, betas=(0.9, 0.999))


Optimizers = tuple[torch.optim.Optimizer, torch.optim.Optimizer | None]


def configure_optimizers(model: nn.Module, lr: float) -> Optimizers:
    """The model's (optimizer, discriminator optimizer or None)."""
    configure = getattr(model, "configure_optimizers", None)
    return configure(lr) if configure else (default_optimizer(model, lr), None)
