"""Building a method by name: the registry (nstlab.registry) names each method's model class, a
nstlab.models.base.StyleModel, imported only when it is asked for."""

import importlib

from nstlab.models.base import StyleModel
from nstlab.registry import get_method
from nstlab.runtime import seeded


def model_class(name: str) -> type[StyleModel]:
    """The StyleModel subclass the registry names for method `name`."""
    module_name, _, class_name = get_method(name).model.rpartition(".")
    return getattr(importlib.import_module(module_name), class_name)


def build_model(name: str, cfg) -> StyleModel:
    """Build method `name` from the resolved config (see nstlab.config.Config). Every random
    initialisation draws from `cfg.seed` here, so two builds are equal and the caller's random
    state is left as it was."""
    with seeded(cfg.seed):
        return model_class(name).build(cfg)


def build_at_stage(name: str, cfg, stage: int) -> StyleModel:
    """The model as training stage `stage` trains it: built, then its stage's parts added."""
    model = build_model(name, cfg)
    model.add_stage_parts(cfg, stage)
    return model
