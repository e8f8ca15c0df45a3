"""ViT-LoRA: the paper's model ("Neural Style Transfer Based on Fine Tuning Vision Transformer").

A StyTr²-style transformer whose content and style encoders are two copies of a pretrained
ViT-B/16 (first `encoder.layers` blocks + final LayerNorm, CLS dropped), a 3-layer decoder of
cross-attention to the style tokens, and a 9-conv CNN decoder back to pixels. Stage 1 trains
the decoders with the encoders frozen; stage 2 adds LoRA to both encoders and trains LoRA and
decoders together. Every number: docs/methods.md#vit-lora (NST-Project `code/`).

    content ─ViT_c─► tokens_c ─┐                       (B, N, d) + content positions
                               ├─ StyleDecoder ─► (B, N, d) ─► (B, d, H/16, W/16) ─ CNN ─► image
    style   ─ViT_s─► tokens_s ─┘
"""

import copy
import json
import logging
import re
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from nstlab.training.checkpoint import check_trained_keys, load_checkpoint, load_trained_state, trained_state
from nstlab.config import Config, lora_modules, short_targets
from nstlab.errors import ConfigError, NstlabError
from nstlab.functional import crop_to, imagenet_denormalize, imagenet_normalize, pad_to_multiple
from nstlab.losses import identity_terms, loss_network
from nstlab.models.base import StyleModel
from nstlab.models.blocks import StyleDecoder, part_counts, xavier_uniform_weights
from nstlab.models.plain_vit import PlainViT, add_lora, load_pretrained, lora_shapes
from nstlab.registry import output_key
from nstlab.runtime import seeded

if TYPE_CHECKING:
    from nstlab.training.schedule import TrainSpec

PATCH = 16
LOSS_TERMS = ("content", "style", "identity1", "identity2")
ENCODERS = ("content_encoder", "style_encoder")


def load_vit(cfg: Config):
    """One ViT encoder: `from_pretrained` (hub id or local dir) or a seeded random init (demo).

    Only the first `encoder.layers` blocks are built and loaded; pooler removed.
    """
    from transformers import ViTConfig, ViTModel

    layers = cfg.encoder.layers
    if cfg.backbone.vit == "random":
        vit_config = ViTConfig(
            hidden_size=cfg.backbone.vit_hidden,
            num_hidden_layers=layers,
            num_attention_heads=cfg.backbone.vit_heads,
            intermediate_size=cfg.backbone.vit_mlp,
            image_size=cfg.data.image_size,
            patch_size=PATCH,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            return ViTModel(vit_config, add_pooling_layer=False)
    try:
        return load_truncated_vit(cfg.backbone.vit, layers)
    except OSError as error:
        raise ConfigError(
            f"backbone.vit = {cfg.backbone.vit!r}: cannot load it ({str(error).splitlines()[0]}); "
            "give a local directory saved with save_pretrained, or run where the Hugging Face hub is reachable"
        ) from None


def load_truncated_vit(source: str, layers: int):
    """`from_pretrained` keeping the first `layers` blocks, reported in one line on stderr.

    transformers logs a LOAD REPORT listing every weight of the dropped blocks (and of the
    pooler) as UNEXPECTED; those are dropped on purpose, so that report is held back for this
    call and replaced by "ViT-B/16 (<source>): blocks 1-6 of 12 loaded". Any other unexpected,
    missing or mismatched key still warns.
    """
    from transformers import ViTConfig, ViTModel

    total = ViTConfig.from_pretrained(source).num_hidden_layers
    with _load_report_held_back():
        model, info = ViTModel.from_pretrained(
            source, num_hidden_layers=layers, add_pooling_layer=False, output_loading_info=True
        )
    dropped = re.compile(r"(^|\.)(layers?\.(\d+)\.|pooler\.)")

    def dropped_on_purpose(key: str) -> bool:
        match = dropped.search(key)
        return bool(match) and (match.group(3) is None or int(match.group(3)) >= layers)

    surprises = sorted(key for key in info["unexpected_keys"] if not dropped_on_purpose(key))
    _report_loaded(model.config, source, layers, total)
    for kind, keys in (
        ("unexpected", surprises),
        ("missing", sorted(info["missing_keys"])),
        ("mismatched", sorted(str(entry[0]) for entry in info["mismatched_keys"])),
    ):
        if keys:
            warnings.warn(
                f"{source}: {len(keys)} {kind} weight(s) in the ViT checkpoint "
                f"({', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''})",
                stacklevel=2,
            )
    return model


def _report_loaded(config, source: str, layers: int, total: int) -> None:
    """One line on stderr: "ViT-B/16 (<source>): blocks 1-6 of 12 loaded"."""
    kept = "block 1" if layers == 1 else f"blocks 1-{layers}"
    print(f"{_vit_name(config)} ({source}): {kept} of {total} loaded", file=sys.stderr)


def _vit_name(config) -> str:
    """ViT-B/16 and friends by width (the ViT paper's names), else the plain sizes."""
    size = {192: "Ti", 384: "S", 768: "B", 1024: "L", 1280: "H"}.get(config.hidden_size)
    if size:
        return f"ViT-{size}/{config.patch_size}"
    return f"ViT (hidden {config.hidden_size}, patch {config.patch_size})"


@contextmanager
def _load_report_held_back():
    """Drop transformers' LOAD REPORT record (and only it) while the context is open."""
    hf_logger = logging.getLogger("transformers.modeling_utils")

    def not_a_load_report(record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)

    hf_logger.addFilter(not_a_load_report)
    try:
        yield
    finally:
        hf_logger.removeFilter(not_a_load_report)


class CNNDecoder(nn.Sequential):
    """Tokens as a (B, d, H/16, W/16) map -> image: 3×3 reflection-padded convs, ReLU except the
    last, four nearest ×2 upsamplings (d→512, ↑, 512, 256, ↑, 256, 128, ↑, 128, 64, ↑, 64, 3)."""

    def __init__(self, in_channels: int, width: float = 1.0):
        def ch(n: int) -> int:
            return max(4, round(n * width))

        plan = [
            (in_channels, ch(512)),
            "up",
            (ch(512), ch(512)),
            (ch(512), ch(256)),
            "up",
            (ch(256), ch(256)),
            (ch(256), ch(128)),
            "up",
            (ch(128), ch(128)),
            (ch(128), ch(64)),
            "up",
            (ch(64), ch(64)),
            (ch(64), 3),
        ]
        modules: list[nn.Module] = []
        for step in plan:
            if step == "up":
                modules.append(nn.Upsample(scale_factor=2, mode="nearest"))
            else:
                modules += [nn.ReflectionPad2d(1), nn.Conv2d(*step, kernel_size=3), nn.ReLU()]
        super().__init__(*modules[:-1])  # no ReLU after the last conv


class ViTLoRA(StyleModel):
    name = "vit_lora"

    def __init__(self, cfg: Config, encoders: tuple[PlainViT, PlainViT] | None = None):
        """The training model: two copies of the HF ViT (load_vit) and the loss network. With
        `encoders` (load_for_inference: two PlainViTs), a model that only stylises."""
        super().__init__()
        self.cfg = cfg
        self.loss_weights = dict(
            content=cfg.loss.content,
            style=cfg.loss.style,
            identity1=cfg.loss.identity1,
            identity2=cfg.loss.identity2,
        )
        training = encoders is None
        if training:
            # Both encoders start from the same weights: load once, copy (halves start-up at paper size)
            vit = load_vit(cfg)
            encoders = (vit, copy.deepcopy(vit))
        self.content_encoder, self.style_encoder = encoders
        self.content_encoder.requires_grad_(False)
        self.style_encoder.requires_grad_(False)
        hidden = self.content_encoder.embeddings.cls_token.shape[-1]  # either kind of encoder
        if hidden % cfg.decoder.heads:
            raise ConfigError(
                f"decoder.heads = {cfg.decoder.heads}: must divide the ViT hidden size {hidden}"
            )
        with seeded(cfg.seed):  # the decoders' init does not depend on how the encoders were loaded
            self.transformer_decoder = StyleDecoder(
                hidden, cfg.decoder.layers, cfg.decoder.heads, cfg.decoder.ffn, cfg.decoder.dropout
            )
            self.cnn_decoder = CNNDecoder(hidden, cfg.decoder.cnn_width)
            if cfg.decoder.cnn_init == "xavier":
                # NST-Project decoder.py Decoder._reset_parameters: Xavier-uniform on every weight
                # (dim > 1) of the whole Decoder, its cnn_decoder included; biases keep PyTorch's init.
                xavier_uniform_weights(self.cnn_decoder)
        self.loss_network = loss_network(cfg.loss.convention, cfg) if training else None
        self.lora_enabled = False

    # -- stage 2 -----------------------------------------------------------------------------
    def enable_lora(self) -> None:
        """Wrap both encoders with peft LoRA (stage 2): only LoRA A/B (and the decoders) train."""
        from peft import LoraConfig, get_peft_model

        lora = self.cfg.lora
        for name in ("content_encoder", "style_encoder"):
            lora_config = LoraConfig(
                r=lora.r,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                bias="none",
                target_modules=lora_modules(lora.target_modules),
            )
            with warnings.catch_warnings():  # peft probes transformers' deprecated is_gradient_checkpointing
                warnings.filterwarnings(
                    "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
                )
                setattr(self, name, get_peft_model(getattr(self, name), lora_config))
        self.lora_enabled = True

    def save_adapters(self, directory: Path) -> list[Path]:
        """`save_pretrained` both LoRA adapters: directory/content_encoder, directory/style_encoder."""
        paths = []
        for name in ("content_encoder", "style_encoder"):
            getattr(self, name).save_pretrained(directory / name)
            _sort_target_modules(directory / name / "adapter_config.json")
            paths.append(directory / name)
        return paths

    def save_beside_weights(self, out_dir: Path) -> list[tuple[Path, str]]:
        """Stage 2, after training (the best weights loaded): the adapters under out_dir/adapter,
        as (path, MLflow artifact folder); model.pt goes to the adapter folder too, for its
        decoders, so a run id alone stylises. Stage 1: nothing."""
        if not self.lora_enabled:
            return []
        adapters = [(path, f"adapter/{path.name}") for path in self.save_adapters(out_dir / "adapter")]
        return [*adapters, (out_dir / "model.pt", "adapter")]

    def load_adapter(self, name: str, directory: Path) -> None:
        """Add the LoRA pair `save_adapters` wrote in `directory` as adapter `name` on both encoders;
        the frozen ViTs are shared, so any number of adapters cost one base model."""
        from peft import PeftModel

        for encoder_name in ("content_encoder", "style_encoder"):
            encoder, path = getattr(self, encoder_name), directory / encoder_name
            with warnings.catch_warnings():  # as in enable_lora
                warnings.filterwarnings(
                    "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
                )
                if self.lora_enabled:
                    encoder.load_adapter(path, adapter_name=name)
                else:
                    setattr(self, encoder_name, PeftModel.from_pretrained(encoder, path, adapter_name=name))
        self.lora_enabled = True

    def set_adapter(self, name: str, decoders: dict[str, torch.Tensor]) -> None:
        """Make adapter `name` active, with the decoder weights trained alongside it in stage 2."""
        self.content_encoder.set_adapter(name)
        self.style_encoder.set_adapter(name)
        self.transformer_decoder.load_state_dict(_part(decoders, "transformer_decoder."))
        self.cnn_decoder.load_state_dict(_part(decoders, "cnn_decoder."))

    def adapter_state(self, name: str) -> dict[str, torch.Tensor]:
        """Adapter `name`'s LoRA tensors, keyed as a stage-2 model.pt keys them (adapter 'default')."""
        return {
            key.replace(f".{name}.", ".default."): value
            for key, value in self.state_dict().items()
            if "lora_" in key and f".{name}." in key
        }

    # -- forward -----------------------------------------------------------------------------
    def encode(self, encoder, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W), H and W multiples of 16 -> tokens (B, N, d) and their positions (1, N, d),
        CLS dropped, from either encoder: HF's ViTModel (training) or a PlainViT (inference)."""
        pixels = imagenet_normalize(images)  # ImageNet mean/std, as the paper (not the ViT processor's 0.5)
        if isinstance(encoder, PlainViT):
            return encoder(pixels)
        tokens = encoder(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state[:, 1:]
        base = encoder.get_base_model() if hasattr(encoder, "get_base_model") else encoder
        with_cls = torch.empty(1, tokens.shape[1] + 1, tokens.shape[2], device=tokens.device)
        positions = base.embeddings.interpolate_pos_encoding(with_cls, *images.shape[-2:])[:, 1:]
        return tokens, positions

    def forward(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """content, style (B, 3, H, W) in [0, 1] (sizes may differ) -> (B, 3, H, W) like content."""
        content, content_size = pad_to_multiple(content, PATCH)
        style, _ = pad_to_multiple(style, PATCH)
        content_tokens, content_positions = self.encode(self.content_encoder, content)
        style_tokens, _ = self.encode(self.style_encoder, style)
        mixed = self.transformer_decoder(content_tokens, style_tokens, content_positions)
        grid_h, grid_w = content.shape[-2] // PATCH, content.shape[-1] // PATCH
        feature_map = mixed.transpose(1, 2).reshape(mixed.shape[0], -1, grid_h, grid_w)
        output = imagenet_denormalize(self.cnn_decoder(feature_map))  # decoder works in ImageNet space
        return crop_to(output, content_size)

    # -- training ----------------------------------------------------------------------------
    def losses(self, content: torch.Tensor, style: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unweighted terms; the identity passes run only when an identity weight is non-zero."""
        output = self(content, style)
        net = self.loss_network
        output_features, content_features, style_features = net(output), net(content), net(style)
        terms = {
            "content": net.content_loss(output_features, content_features),
            "style": net.style_loss(output_features, style_features),
        }
        terms.update(
            identity_terms(
                self.loss_weights,
                (content, style),
                (content_features, style_features),
                lambda: (self(content, content), self(style, style)),
                net,
            )
        )
        return terms

    def parameter_counts(self) -> dict[str, int]:
        """Per part (encoders, decoders, loss network), LoRA alone, then totals."""
        lora = sum(p.numel() for name, p in self.named_parameters() if "lora_" in name)
        return {**part_counts(self), "lora": lora}

    # -- how it trains and loads (the StyleModel hooks) ------------------------------------------
    def add_stage_parts(self, cfg: Config, stage: int) -> None:
        """Stage 2 trains LoRA on both encoders: added here, its init drawn from cfg.seed."""
        if stage == 2:
            with seeded(cfg.seed):
                self.enable_lora()

    def prepare_training(self, cfg: Config, stage: int, models_dir: Path) -> None:
        """Stage 2 starts from stage 1's weights (train.stage2_from: the final ones by default, as
        NST-Project), then adds LoRA; stage 1 trains the decoders as built."""
        if stage == 2:
            stage1 = stage1_weights(models_dir, cfg.train.stage2_from)
            load_trained_state(self, load_checkpoint(stage1)["model"], stage1)
        self.add_stage_parts(cfg, stage)

    @classmethod
    def run_name(cls, cfg: Config, stage: int) -> str:
        architecture = f"e{cfg.encoder.layers}-d{cfg.decoder.layers}"
        if stage == 1:
            return f"vit_lora-stage1-{architecture}"
        return f"vit_lora-r{cfg.lora.r}-{short_targets(cfg.lora.target_modules)}-{architecture}"

    @classmethod
    def train_spec(cls, cfg: Config, stage: int, n_train_pairs: int) -> "TrainSpec":
        """Both stages train by the `train` block: its batch size and lr, the stage's epochs and
        MultiStepLR milestones. train.last_batch keep: an epoch is ceil(pairs / batch) steps, the
        last one shorter (NST-Project main.py's DataLoader has no drop_last: 56,462 pairs / 16 =
        3,529 steps); drop: floor. train.val_steps in_epoch: validation counts the steps of each
        epoch (NST-Project trainer.py: (i + 1) % 400 == 0); global: of the run."""
        from nstlab.training.schedule import (
            TrainSpec,
            multistep_factor,
        )  # training only: stylising does not import it

        if stage not in (1, 2):
            raise NstlabError("vit_lora trains in two stages: pass --stage 1 or --stage 2")
        batch_size = cfg.train.batch_size
        drop_last = cfg.train.last_batch == "drop"
        steps_per_epoch = max(
            1, (n_train_pairs if drop_last else n_train_pairs + batch_size - 1) // batch_size
        )
        count_in_epoch = cfg.train.val_steps == "in_epoch"
        if count_in_epoch and cfg.train.keep == "best" and cfg.train.val_every > steps_per_epoch:
            raise ConfigError(
                f"train.val_every = {cfg.train.val_every}: an epoch has {steps_per_epoch} steps "
                f"({n_train_pairs} pairs, batch {batch_size}), so train.val_steps in_epoch never validates "
                "and train.keep best has nothing to keep; lower train.val_every or set train.val_steps: global"
            )
        stage_cfg = cfg.train.stage1 if stage == 1 else cfg.train.stage2
        return TrainSpec(
            cls.name,
            stage,
            output_key(cls.name, stage),
            cls.run_name(cfg, stage),
            batch_size,
            stage_cfg.epochs * steps_per_epoch,
            steps_per_epoch,
            cfg.train.lr,
            None,
            multistep_factor(stage_cfg.milestones, stage_cfg.gamma),
            "train.batch_size",
            keep=cfg.train.keep,
            count_in_epoch=count_in_epoch,
            drop_last=drop_last,
        )

    @classmethod
    def load_for_inference(cls, cfg: Config, checkpoint: Path) -> "ViTLoRA | None":
        """The stage-2 model of `checkpoint` for stylising, without transformers and peft (seconds
        of start-up): PlainViT encoders sharing the frozen weights, each with its LoRA pairs from
        the checkpoint, its decoders, no loss network, in eval mode. None where the training model
        must serve instead: a random-init ViT (the demo's, drawn by HF's init), a ViT that is not
        a local config.json + model.safetensors."""
        if cfg.backbone.vit == "random":
            return None
        loaded = load_pretrained(cfg.backbone.vit, cfg.encoder.layers)
        if loaded is None:
            return None
        vit, total = loaded
        _report_loaded(vit.spec, cfg.backbone.vit, cfg.encoder.layers, total)
        state = load_checkpoint(checkpoint)["model"]
        encoders = (vit, vit.twin())
        with torch.device("meta"):  # no random init of the decoders: every tensor comes from the checkpoint
            model = cls(cfg, encoders)
        lora, targets = cfg.lora, lora_modules(cfg.lora.target_modules)
        shapes = {key: tuple(value.shape) for key, value in trained_state(model).items()}  # the decoders
        for name in ENCODERS:
            shapes.update(lora_shapes(getattr(model, name), targets, lora.r, f"{name}."))
        check_trained_keys(set(shapes), state, checkpoint)
        for key, shape in shapes.items():
            found = tuple(getattr(state[key], "shape", ()))
            if found != shape:
                raise NstlabError(
                    f"{checkpoint}: checkpoint shapes do not fit this model "
                    f"({key}: {found} in the checkpoint, {shape} in the model)"
                )
        model.load_state_dict(state, strict=False, assign=True)  # the decoders; LoRA goes in below
        for name in ENCODERS:
            add_lora(getattr(model, name), state, targets, f"{name}.", lora.alpha / lora.r)
        return model.eval()


def _sort_target_modules(config_file: Path) -> None:
    """peft writes target_modules from a set, in the order of that process's string hashes, so two
    identical trainings wrote different adapter_config.json files and DVC saw a changed output."""
    config = json.loads(config_file.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True))


def _part(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}


def stage1_weights(models_dir: Path, start_from: str) -> Path:
    """The stage-1 weights stage 2 starts from (train.stage2_from): "last", the final ones, as
    NST-Project main.py continues the stage-1 model in memory; "best", the best-validation ones.
    Stage 1 keeps one in model.pt (train.keep) and, keeping the best, its final ones in last.pt."""
    folder = models_dir / output_key("vit_lora", 1)
    kept = folder / "model.pt"
    if not kept.is_file():
        raise NstlabError(f"{kept}: missing; train stage 1 first (nstlab train vit_lora --stage 1)")
    if load_checkpoint(kept).get("kept", "best") == start_from:
        return kept
    if start_from == "last" and (folder / "last.pt").is_file():
        return folder / "last.pt"
    raise NstlabError(
        f"{folder}: stage 1 kept no {start_from} weights for train.stage2_from = {start_from}; "
        f"rerun stage 1 (train.keep = best also saves last.pt) or set train.stage2_from"
    )
