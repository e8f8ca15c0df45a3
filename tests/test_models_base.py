"""nstlab.models.base.StyleModel: the contract every method's model follows, and its default hooks."""

import pytest
import torch

from nstlab.models import build_model, model_class
from nstlab.models.base import StyleModel
from nstlab.registry import method_names


def test_a_model_without_its_required_members_cannot_be_built():
    class Incomplete(StyleModel):
        name = "incomplete"

        def forward(self, content, style):
            return content

    with pytest.raises(TypeError, match="losses"):
        Incomplete()


def test_a_plain_baseline_takes_every_default(tiny_config, tmp_path):
    cfg = tiny_config()
    model = build_model("sanet", cfg)
    assert type(model).run_name(cfg, 0) == "sanet" and type(model).train_spec(cfg, 0, 8).key == "sanet"
    optimizer, discriminator_optimizer = model.configure_optimizers(1e-3)
    assert isinstance(optimizer, torch.optim.Adam) and discriminator_optimizer is None
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for group in optimizer.param_groups for p in group["params"]} == trainable
    assert model.save_beside_weights(tmp_path) == [] and not any(tmp_path.iterdir())
    assert type(model).load_for_inference(cfg, tmp_path / "model.pt") is None
    assert type(model).single_process_only is None and model.discriminator_lr_decays
    with pytest.raises(NotImplementedError):
        model.discriminator_loss()


def test_the_methods_that_cannot_train_under_torchrun_say_why():
    reasons = {name: model_class(name).single_process_only for name in method_names()}
    assert {name for name, reason in reasons.items() if reason} == {"artflow", "iest"}


def test_iest_trains_its_discriminator_with_its_own_optimiser(tiny_config):
    model = build_model("iest", tiny_config("baselines.iest.options.d_lr_decay=false"))
    generator, discriminator = model.configure_optimizers(1e-3)
    in_generator = {id(p) for group in generator.param_groups for p in group["params"]}
    assert {id(p) for p in model.discriminator.parameters()}.isdisjoint(in_generator)
    assert discriminator.defaults["betas"] == (0.5, 0.999) and not model.discriminator_lr_decays


def test_only_a_method_that_trains_nothing_logs_its_evaluation_as_a_run(tiny_config, tmp_path):
    with pytest.raises(NotImplementedError, match="its test metrics join its training run"):
        build_model("adain", tiny_config()).log_evaluation_run(tiny_config(), {}, tmp_path, [])
