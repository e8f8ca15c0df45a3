"""ViT-LoRA's adapter library: several stage-2 adapters on one base model (`nstlab stylize --adapter`).

A stage-2 adapter is two things: the LoRA pair in adapter/ (what MLflow holds) and the decoders
trained with it, which live only in the stage-2 model.pt beside adapter/. The ViTs are frozen
and rebuilt from the config, so one base model serves every adapter; each adapter brings its
decoders, and model.pt counts as that adapter's only if its LoRA tensors equal the adapter's.
"""

import re
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from nstlab.training.checkpoint import load_checkpoint
from nstlab.config import Config
from nstlab.errors import NstlabError
from nstlab.models import build_model
from nstlab.registry import final_output_key


def load_adapters(
    cfg: Config, references: list[str], models_dir: Path = Path("models")
) -> tuple[nn.Module, dict]:
    """One ViT-LoRA base + every adapter -> (model on CPU, {adapter name: decoder state})."""
    model = build_model("vit_lora", cfg)
    decoders: dict[str, dict[str, torch.Tensor]] = {}
    with tempfile.TemporaryDirectory() as scratch:  # peft copies the weights in; downloads can go
        for reference in references:
            name, folder, weights = _resolve_adapter(cfg, reference, models_dir, Path(scratch))
            name = _unique(name, decoders)
            for encoder in ("content_encoder", "style_encoder"):
                if not (folder / encoder / "adapter_config.json").is_file():
                    raise NstlabError(
                        f"--adapter {reference}: {folder / encoder} holds no peft adapter; "
                        "give the adapter/ folder that nstlab train writes"
                    )
            try:
                model.load_adapter(name, folder)
            except RuntimeError as error:  # peft's load_state_dict: LoRA shapes of another encoder size
                raise NstlabError(
                    f"--adapter {reference}: does not fit this config's encoders "
                    f"({str(error).splitlines()[-1].strip()}); pass the -S backbone.* values it was trained with"
                ) from None
            decoders[name] = _decoders_of(model, name, weights, reference)
    return model, decoders


def _resolve_adapter(cfg: Config, reference: str, models_dir: Path, scratch: Path) -> tuple[str, Path, Path]:
    """--adapter value -> (name, LoRA folder, the model.pt that should hold its decoders)."""
    path = Path(reference)
    if path.is_dir():
        name = path.parent.name if path.name == "adapter" else path.name
        return name, path, path.parent / "model.pt"
    if reference.startswith("runs:/"):
        run_id, _, artifact = reference[len("runs:/") :].partition("/")
    elif re.fullmatch(r"[0-9a-f]{32}", reference):
        run_id, artifact = reference, "adapter"
    else:
        raise NstlabError(
            f"--adapter {reference}: no such directory, and not an MLflow run id or runs:/<run id>/<path>"
        )
    from nstlab.tracking.queries import download_artifact

    folder = download_artifact(cfg.mlflow, run_id, artifact.strip("/") or "adapter", scratch / run_id)
    logged = folder / "model.pt"  # runs log their stage-2 weights with the adapter; older ones did not
    stage2 = models_dir / final_output_key("vit_lora") / "model.pt"
    return run_id[:8], folder, logged if logged.is_file() else stage2


def _unique(name: str, taken: dict) -> str:
    """A peft adapter name (no dots) that no earlier --adapter took."""
    base = re.sub(r"[^A-Za-z0-9_-]", "_", name) or "adapter"
    candidate, index = base, 2
    while candidate in taken:
        candidate, index = f"{base}-{index}", index + 1
    return candidate


def _decoders_of(model: nn.Module, name: str, weights: Path, reference: str) -> dict[str, torch.Tensor]:
    """The decoder tensors of `weights`, if that model.pt was trained with adapter `name`."""
    if not weights.is_file():
        raise NstlabError(
            f"--adapter {reference}: its stage-2 decoders are not at {weights} (they live in the model.pt "
            "beside adapter/): point --models at that run's weights, e.g. after dvc exp apply"
        )
    state = load_checkpoint(weights)["model"]
    saved = {key: value for key, value in state.items() if "lora_" in key}
    loaded = model.adapter_state(name)
    if saved.keys() != loaded.keys() or not all(torch.equal(saved[key], loaded[key]) for key in saved):
        raise NstlabError(
            f"--adapter {reference}: {weights} was not trained with this adapter (other LoRA weights "
            "or encoder layers), so its decoders do not belong to it"
        )
    decoders = {
        key: value for key, value in state.items() if key.startswith(("transformer_decoder.", "cnn_decoder."))
    }
    try:
        model.set_adapter(name, decoders)  # fail here, naming the adapter, not midway through stylising
    except RuntimeError as error:
        detail = str(error).splitlines()[-1].strip()
        raise NstlabError(
            f"--adapter {reference}: its decoders do not fit this config ({detail}); "
            "pass the -S decoder.* values it was trained with"
        ) from None
    return decoders
