"""Checkpoints: atomic writes, safe loads, and a digest that says which config/code made them.

A checkpoint holds only what training changes (trainable parameters and buffers, optimiser
state, step, RNG); frozen backbones are rebuilt from the config, deterministically.
"""

import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from nstlab.errors import NstlabError


def trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters + buffers: everything training can change, nothing it cannot."""
    state = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    state.update({name: b for name, b in model.named_buffers()})
    return state


def load_trained_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load trained_state() output; a key mismatch means another model or config made the file."""
    expected = set(trained_state(model))
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        example = sorted(missing or unexpected)[0]
        kind = "lacks" if missing else "has an unexpected"
        raise NstlabError(f"{path}: checkpoint {kind} tensor {example!r}: it was made by another model or config")
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as error:
        raise NstlabError(f"{path}: checkpoint shapes do not fit this model ({str(error).splitlines()[1].strip()})") from None


def save_atomic(payload: dict[str, Any], path: Path) -> None:
    """Write to a temp file in the same directory, fsync, then rename: a crash or a full disk
    leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temp, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """torch.load with weights_only=True: a file carrying pickled code is refused, not run."""
    if not path.is_file():
        raise NstlabError(f"{path}: no such checkpoint; train the model first (nstlab train ...)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).splitlines()[0][:160]
        raise NstlabError(f"{path}: refused to load: not a plain-tensor checkpoint ({reason})") from None
    except (RuntimeError, EOFError, OSError) as error:
        raise NstlabError(f"{path}: unreadable checkpoint ({str(error).splitlines()[0][:160]}); delete it and retrain") from None


def digest(data: Any) -> str:
    """Short stable hash of JSON-able data (resolved config, source files)."""
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_digest(cfg, method: str, stage: int) -> str:
    """Identifies one training (or Gatys evaluation) configuration: resume and `ablate` key on it."""
    return digest({"method": method, "stage": stage, "config": cfg.flat()})


def source_digest() -> str:
    """Hash of the package's own source: a checkpoint from other code is not resumed."""
    package = Path(__file__).parent
    files = sorted(package.rglob("*.py"))
    return digest({str(f.relative_to(package)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files})
