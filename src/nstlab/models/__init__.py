"""Model registry: a method name -> the module that builds it (imported only when used).

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
"""

import importlib

import torch.nn as nn

METHOD_MODULES = {
    "vit_lora": "nstlab.models.vit_lora",
    "stytr2": "nstlab.models.stytr2",
    "adain": "nstlab.models.adain",
    "sanet": "nstlab.models.sanet",
    "mcc": "nstlab.models.mcc",
    "artflow": "nstlab.models.artflow",
    "iest": "nstlab.models.iest",
}


def method_names() -> list[str]:
    return list(METHOD_MODULES)


def build_model(name: str, cfg) -> nn.Module:
    """Build method `name` from the resolved config (see nstlab.config.Config)."""
    from nstlab.errors import ConfigError

    if name not in METHOD_MODULES:
        raise ConfigError(f"unknown model {name!r}: choose one of {', '.join(METHOD_MODULES)}")
    return importlib.import_module(METHOD_MODULES[name]).build(cfg)
