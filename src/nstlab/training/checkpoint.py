"""Checkpoints: atomic writes, safe loads, and a digest that says which config/code made them.

A checkpoint holds only what training changes (trainable parameters and buffers, optimiser
state, step, RNG); frozen backbones are rebuilt from the config, deterministically.
"""

import hashlib
import json
import os
import pickle
import re
import zipfile
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
    check_trained_keys(set(trained_state(model)), state, path)
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as error:
        detail = str(error).splitlines()[-1].strip()  # the first line only names the model class
        raise NstlabError(f"{path}: checkpoint shapes do not fit this model ({detail})") from None


def check_trained_keys(expected: set[str], state: dict[str, torch.Tensor], path: Path) -> None:
    """The checkpoint holds exactly the `expected` tensors, or a one-line NstlabError."""
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        example = sorted(missing or unexpected)[0]
        kind = "lacks" if missing else "has an unexpected"
        raise NstlabError(
            f"{path}: checkpoint {kind} tensor {example!r}: it was made by another model or config"
        )


def save_atomic(payload: dict[str, Any], path: Path) -> None:
    """Write to a temp file in the same directory, fsync, then rename: a crash or a full disk
    leaves the previous checkpoint intact. A failed write is a one-line NstlabError."""
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temp, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except (OSError, RuntimeError) as error:
        # torch.save reports a failed write (disk full, quota) as a RuntimeError of its zip
        # writer, with the OSError as context.
        cause = error if isinstance(error, OSError) else error.__context__
        reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else _first_line(error)
        raise NstlabError(
            f"{path}: checkpoint not written ({reason}); the previous file, if any, is unchanged: "
            "free disk space and run again (training resumes from the last checkpoint)"
        ) from None
    finally:
        temp.unlink(missing_ok=True)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """torch.load with weights_only=True: a file carrying pickled code is refused, not run."""
    if not path.is_file():
        raise NstlabError(f"{path}: no such checkpoint; train the model first (nstlab train ...)")
    if not zipfile.is_zipfile(path):  # torch.save writes zip archives; never run the legacy pickle path
        raise NstlabError(
            f"{path}: refused to load: not a torch.save zip archive (a raw pickle, another format "
            "or a truncated file); use weights written by nstlab train"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise NstlabError(
            f"{path}: refused to load: not a plain-tensor checkpoint ({_unpickler_reason(error)}); "
            "use weights written by nstlab train"
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise NstlabError(
            f"{path}: unreadable checkpoint ({_first_line(error)}); delete it and retrain"
        ) from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise NstlabError(
            f"{path}: not an nstlab checkpoint (no 'model' tensors); use weights written by nstlab train"
        )
    return state


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__)[:160]


def _unpickler_reason(error: pickle.UnpicklingError) -> str:
    """The line of torch's weights-only refusal that says what was refused (its first line only
    suggests turning the protection off)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    _, marker, detail = text.partition("WeightsUnpickler error:")
    return _first_line(detail if marker and detail.strip() else text).split(". ")[0]


def digest(data: Any) -> str:
    """Short stable hash of JSON-able data (resolved config, source files)."""
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_digest(cfg, method: str, stage: int, *, with_seed: bool = True) -> str:
    """Identifies one training (or evaluation, for a method that trains nothing) configuration:
    resume and `ablate` key on it. Spellings of one configuration share a digest, so a grid point
    that writes out a default is the run that already exists: LoRA targets are a set, and a
    method's free-form options count by the settings they resolve to, where the registry names
    a resolver (`optimizer: adam` is what leaving it out means).
    with_seed=False names the configuration across training seeds (its MLflow parent run): the
    seed and the params only other runs read (registry.foreign_blocks) are left out, so one
    baseline's seeds, trained in grid experiments that differ in LoRA keys, share a parent."""
    from nstlab.registry import foreign_blocks, resolved_options

    config = cfg.flat()
    config["lora.target_modules"] = sorted(config["lora.target_modules"])
    resolved = resolved_options(method, cfg)
    if resolved is not None:
        key, settings = resolved
        config = {name: value for name, value in config.items() if not name.startswith(key + ".")}
        config[key] = settings
    if not with_seed:
        foreign = tuple(f"{block}." for block in foreign_blocks(method, stage))
        config = {
            key: value for key, value in config.items() if key != "seed" and not key.startswith(foreign)
        }
    return digest({"method": method, "stage": stage, "config": config})


def source_digest() -> str:
    """Hash of the package's own source: a checkpoint from other code is not resumed."""
    package = Path(__file__).parent
    files = sorted(package.rglob("*.py"))
    return digest({str(f.relative_to(package)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files})
