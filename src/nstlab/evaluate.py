"""Evaluation: stylise the held-out test pairs with a trained model and score the outputs.

Same code, same pairs, same loss networks for every model, so Table 1 compares like with like.
Metrics per model (reports/metrics/<model>.json):
- content/style loss by the ViT-LoRA paper's formulas (torchvision VGG-19, PAPER_LAYERS)
- content/style loss by the StyTr² code convention (normalised VGG, mvn content)
- SSIM(output, content) on luminance; Gram-matrix style distance (size-normalised)
- mean latency per image, peak memory, number of pairs
"""

import json
import resource
import time
from pathlib import Path

import torch
import torch.nn as nn

from nstlab.config import Config
from nstlab.errors import NstlabError
from nstlab.functional import gram_distance, luminance, ssim


def trained_weights_path(method: str, models_dir: Path) -> Path:
    from nstlab.train import output_key

    return models_dir / output_key(method, 2) / "model.pt"


def load_model(cfg: Config, method: str, models_dir: Path = Path("models"), checkpoint: Path | None = None,
               device: torch.device | None = None) -> nn.Module:
    """Build `method` and load its trained weights (ViT-LoRA: the stage-2 model with LoRA)."""
    from nstlab.checkpoint import load_checkpoint, load_trained_state

    model = _build_seeded(cfg, method, lora=method == "vit_lora")
    if method == "gatys":
        return model
    path = checkpoint or trained_weights_path(method, models_dir)
    load_trained_state(model, load_checkpoint(path)["model"], path)
    return model.to(device or torch.device("cpu")).eval()


def _build_seeded(cfg: Config, method: str, *, lora: bool = False) -> nn.Module:
    """The model as training built it: frozen random-init parts (demo backbones) come from cfg.seed."""
    from nstlab.models import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        if method == "gatys":
            from nstlab.models.gatys import build as build_gatys

            return build_gatys(cfg)
        model = build_model(method, cfg)
        if lora:
            model.enable_lora()
    return model


def describe_model(cfg: Config, method: str, stage: int) -> dict:
    """`nstlab info`: parameter counts per part, built from the config (no weights loaded)."""
    model = _build_seeded(cfg, method, lora=method == "vit_lora" and stage == 2)
    return {"model": method, "profile": cfg.profile, **model.parameter_counts()}


class Scorer(nn.Module):
    """Both loss conventions' networks, built once and run once per image."""

    def __init__(self, cfg: Config):
        super().__init__()
        from nstlab.losses import loss_network

        self.paper = loss_network("paper", cfg)
        self.stytr2 = loss_network("stytr2", cfg)

    @torch.no_grad()
    def forward(self, output: torch.Tensor, content: torch.Tensor, style: torch.Tensor) -> dict[str, float]:
        scores = {}
        for name, net in (("paper", self.paper), ("stytr2", self.stytr2)):
            out_f, content_f, style_f = net(output), net(content), net(style)
            scores[f"{name}_content_loss"] = float(net.content_loss(out_f, content_f))
            scores[f"{name}_style_loss"] = float(net.style_loss(out_f, style_f))
            if name == "paper":
                scores["gram_distance"] = float(sum(gram_distance(out_f[k], style_f[k]) for k in out_f))
        scores["ssim_content"] = float(ssim(luminance(output), luminance(content)).mean())
        return scores


def _read_pairs(pairs_dir: Path, split: str) -> list[tuple[Path, Path]]:
    import csv

    path = pairs_dir / f"{split}.csv"
    if not path.is_file():
        raise NstlabError(f"{path}: missing; run the pair stage first (nstlab pair / dvc repro pair)")
    with open(path) as handle:
        return [(Path(row["content"]), Path(row["style"])) for row in csv.DictReader(handle)]


def _load_tensor(cfg: Config, path: Path, max_size: int) -> torch.Tensor:
    from nstlab.data.images import load_rgb, resize_max_side, to_tensor

    image = load_rgb(path, max_pixels=cfg.data.max_pixels, min_side=cfg.data.min_side)
    return to_tensor(resize_max_side(image, max_size)).unsqueeze(0)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def evaluate_model(cfg: Config, method: str, *, pairs_dir: Path = Path("data/pairs"), models_dir: Path = Path("models"),
                   reports_dir: Path = Path("reports"), progress: bool = True) -> dict:
    """Stylise the first eval.max_pairs test pairs; write outputs and reports/metrics/<method>.json."""
    from rich.progress import track

    from nstlab.data.images import save_image
    from nstlab.records import evaluation_record_paths, write_record
    from nstlab.train import pick_device

    device = pick_device(cfg)
    model = load_model(cfg, method, models_dir, device=device)
    scorer = Scorer(cfg).to(device)
    pairs = _read_pairs(pairs_dir, "test")[: cfg.eval.max_pairs]
    outputs_dir = reports_dir / "outputs" / method
    outputs_dir.mkdir(parents=True, exist_ok=True)
    rows, latencies, histories = [], [], []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for index, (content_path, style_path) in enumerate(track(pairs, description=f"evaluate {method}", disable=not progress)):
        content = _load_tensor(cfg, content_path, cfg.eval.max_size).to(device)
        style = _load_tensor(cfg, style_path, cfg.eval.max_size).to(device)
        started = time.perf_counter()
        with torch.no_grad():
            output = model(content, style)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        latencies.append((time.perf_counter() - started) * 1000)
        output = output.float().clamp(0, 1)
        save_image(output[0].cpu(), outputs_dir / f"{index:04d}.png")
        rows.append({"pair": index, "content": str(content_path), "style": str(style_path),
                     **scorer(output, content, style), **_against_adain(output, reports_dir, index)})
        if method == "gatys":
            histories.append(model.last_histories[0])
    if not rows:
        raise NstlabError(f"{pairs_dir / 'test.csv'}: no test pairs to evaluate")
    metric_names = [key for key in rows[0] if key not in ("pair", "content", "style") and all(key in r for r in rows)]
    summary = {
        "model": method,
        "profile": cfg.profile,
        "pairs": len(rows),
        **{name: sum(row[name] for row in rows) / len(rows) for name in metric_names},
        # The first image pays for lazy initialisation; report the steady state when we can.
        "latency_ms": sum(latencies[1:]) / (len(latencies) - 1) if len(latencies) > 1 else latencies[0],
        "peak_memory_mb": _peak_memory_mb(device),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }
    if method == "gatys":  # nothing trains: the evaluation is the run (one per grid point)
        (outputs_dir / "history.json").write_text(json.dumps(histories) + "\n")
        summary["mlflow_run_id"] = _log_gatys_run(cfg, summary, outputs_dir / "history.json")
    else:
        summary["mlflow_run_id"] = _log_test_metrics(cfg, method, reports_dir, summary)
    write_record(summary, *evaluation_record_paths(reports_dir, method))
    (outputs_dir / "pairs.json").write_text(json.dumps(rows, indent=2) + "\n")
    return summary


def _log_test_metrics(cfg: Config, method: str, reports_dir: Path, summary: dict) -> str | None:
    """Attach the test metrics to the model's training run in MLflow (Table 2 reads them there)."""
    from nstlab.records import training_record_paths
    from nstlab.tracking import log_to_run
    from nstlab.train import output_key

    _, train_run = training_record_paths(reports_dir / "train", output_key(method, 2))
    if not train_run.is_file():
        return None
    run_id = json.loads(train_run.read_text()).get("mlflow_run_id")
    if run_id:
        numbers = {f"test.{k}": v for k, v in summary.items() if isinstance(v, int | float) and k != "pairs"}
        log_to_run(cfg.mlflow, run_id, numbers)
    return run_id


def _against_adain(output: torch.Tensor, reports_dir: Path, index: int) -> dict[str, float]:
    """MSE and SSIM against AdaIN's output for the same pair, used as pseudo ground truth (the
    Gatys proposal's metric); empty when AdaIN has not been evaluated."""
    from nstlab.data.images import load_rgb, to_tensor

    reference_path = reports_dir / "outputs" / "adain" / f"{index:04d}.png"
    if not reference_path.is_file():
        return {}
    reference = to_tensor(load_rgb(reference_path)).unsqueeze(0).to(output.device)
    if reference.shape != output.shape:
        return {}
    return {"mse_vs_adain": float(torch.mean((output - reference) ** 2)),
            "ssim_vs_adain": float(ssim(luminance(output), luminance(reference)).mean())}


def _log_gatys_run(cfg: Config, summary: dict, history_path: Path) -> str | None:
    """One MLflow run per Gatys configuration: its settings, test metrics and step history."""
    from nstlab.checkpoint import run_digest
    from nstlab.tracking import Tracker

    tags = {"model": "gatys", "stage": "0", "profile": cfg.profile, "config_digest": run_digest(cfg, "gatys", 0)}
    with Tracker(cfg.mlflow, "gatys", tags) as tracker:
        tracker.log_params({k: v for k, v in cfg.flat().items() if k.startswith(("baselines.gatys", "backbone", "seed"))})
        tracker.log_metrics({f"test.{k}": v for k, v in summary.items() if isinstance(v, int | float) and k != "pairs"}, 0)
        histories = json.loads(history_path.read_text())
        for record in histories[0] if histories else []:
            tracker.log_metrics({f"optim.{k}": v for k, v in record.items() if k != "step"}, int(record["step"]))
        tracker.log_artifact(history_path)
    return tracker.run_id


def stylize_file(cfg: Config, method: str, content_path: Path, style_paths: list[Path], output_path: Path, *,
                 checkpoint: Path | None = None, max_size: int | None = None, alpha: float = 1.0,
                 style_weights: list[float] | None = None, adapters: list[str] | None = None,
                 models_dir: Path = Path("models")) -> list[Path]:
    """`nstlab stylize`: one image, any size; AdaIN extras (alpha, several styles) when asked.

    With `adapters` (ViT-LoRA only), one output per adapter: OUT's stem + `_<adapter name>`.
    """
    from nstlab.data.images import save_image
    from nstlab.train import pick_device

    if not 0.0 <= alpha <= 1.0:
        raise NstlabError(f"--alpha {alpha}: must be in [0, 1]")
    if (alpha != 1.0 or len(style_paths) > 1) and method != "adain":
        raise NstlabError("--alpha and several style images are AdaIN features: add --model adain")
    if adapters and (method != "vit_lora" or checkpoint is not None):
        raise NstlabError("--adapter loads LoRA adapters onto ViT-LoRA: use it with --model vit_lora and no --checkpoint")
    limit = max_size or cfg.eval.max_size
    content = _load_tensor(cfg, content_path, limit)
    styles = [_load_tensor(cfg, path, limit) for path in style_paths]
    device = pick_device(cfg)
    if adapters:
        model, decoders = load_adapters(cfg, adapters, models_dir)
        model = model.to(device).eval()
        outputs = []
        for name, decoder_state in decoders.items():
            model.set_adapter(name, decoder_state)
            with torch.no_grad():
                output = model(content.to(device), styles[0].to(device))
            outputs.append(save_image(output[0].float().clamp(0, 1).cpu(),
                                      output_path.with_name(f"{output_path.stem}_{name}{output_path.suffix}")))
        return outputs
    model = load_model(cfg, method, checkpoint=checkpoint, device=device)
    with torch.no_grad():
        if method == "adain":
            output = model(content.to(device), [s.to(device) for s in styles] if len(styles) > 1 else styles[0].to(device),
                           alpha=alpha, style_weights=style_weights)
        else:
            output = model(content.to(device), styles[0].to(device))
    save_image(output[0].float().clamp(0, 1).cpu(), output_path)
    return [output_path]


# -- LoRA adapters --------------------------------------------------------------------------------
# A stage-2 adapter is two things: the LoRA pair in adapter/ (what MLflow holds) and the decoders
# trained with it, which live only in the stage-2 model.pt beside adapter/. The ViTs are frozen
# and rebuilt from the config, so one base model serves every adapter; each adapter brings its
# decoders, and model.pt counts as that adapter's only if its LoRA tensors equal the adapter's.


def load_adapters(cfg: Config, references: list[str], models_dir: Path = Path("models")) -> tuple[nn.Module, dict]:
    """One ViT-LoRA base + every adapter -> (model on CPU, {adapter name: decoder state})."""
    import tempfile

    model = _build_seeded(cfg, "vit_lora")
    decoders: dict[str, dict[str, torch.Tensor]] = {}
    with tempfile.TemporaryDirectory() as scratch:  # peft copies the weights in; downloads can go
        for reference in references:
            name, folder, weights = _resolve_adapter(cfg, reference, models_dir, Path(scratch))
            name = _unique(name, decoders)
            for encoder in ("content_encoder", "style_encoder"):
                if not (folder / encoder / "adapter_config.json").is_file():
                    raise NstlabError(f"--adapter {reference}: {folder / encoder} holds no peft adapter; "
                                      "give the adapter/ folder that nstlab train writes")
            try:
                model.load_adapter(name, folder)
            except RuntimeError as error:  # peft's load_state_dict: LoRA shapes of another encoder size
                raise NstlabError(f"--adapter {reference}: does not fit this config's encoders "
                                  f"({str(error).splitlines()[-1].strip()}); pass the -S backbone.* values it was trained with") from None
            decoders[name] = _decoders_of(model, name, weights, reference)
    return model, decoders


def _resolve_adapter(cfg: Config, reference: str, models_dir: Path, scratch: Path) -> tuple[str, Path, Path]:
    """--adapter value -> (name, LoRA folder, the model.pt that should hold its decoders)."""
    import re

    from nstlab.train import output_key

    path = Path(reference)
    if path.is_dir():
        name = path.parent.name if path.name == "adapter" else path.name
        return name, path, path.parent / "model.pt"
    if reference.startswith("runs:/"):
        run_id, _, artifact = reference[len("runs:/"):].partition("/")
    elif re.fullmatch(r"[0-9a-f]{32}", reference):
        run_id, artifact = reference, "adapter"
    else:
        raise NstlabError(f"--adapter {reference}: no such directory, and not an MLflow run id or runs:/<run id>/<path>")
    from nstlab.tracking import download_artifact

    folder = download_artifact(cfg.mlflow, run_id, artifact.strip("/") or "adapter", scratch / run_id)
    logged = folder / "model.pt"  # runs log their stage-2 weights with the adapter; older ones did not
    return run_id[:8], folder, logged if logged.is_file() else models_dir / output_key("vit_lora", 2) / "model.pt"


def _unique(name: str, taken: dict) -> str:
    """A peft adapter name (no dots) that no earlier --adapter took."""
    import re

    base = re.sub(r"[^A-Za-z0-9_-]", "_", name) or "adapter"
    candidate, index = base, 2
    while candidate in taken:
        candidate, index = f"{base}-{index}", index + 1
    return candidate


def _decoders_of(model: nn.Module, name: str, weights: Path, reference: str) -> dict[str, torch.Tensor]:
    """The decoder tensors of `weights`, if that model.pt was trained with adapter `name`."""
    from nstlab.checkpoint import load_checkpoint

    if not weights.is_file():
        raise NstlabError(f"--adapter {reference}: its stage-2 decoders are not at {weights} (they live in the model.pt "
                          "beside adapter/): point --models at that run's weights, e.g. after dvc exp apply")
    state = load_checkpoint(weights)["model"]
    saved = {key: value for key, value in state.items() if "lora_" in key}
    loaded = model.adapter_state(name)
    if saved.keys() != loaded.keys() or not all(torch.equal(saved[key], loaded[key]) for key in saved):
        raise NstlabError(f"--adapter {reference}: {weights} was not trained with this adapter (other LoRA weights "
                          "or encoder layers), so its decoders do not belong to it")
    decoders = {key: value for key, value in state.items() if key.startswith(("transformer_decoder.", "cnn_decoder."))}
    try:
        model.set_adapter(name, decoders)  # fail here, naming the adapter, not midway through stylising
    except RuntimeError as error:
        detail = str(error).splitlines()[-1].strip()
        raise NstlabError(f"--adapter {reference}: its decoders do not fit this config ({detail}); "
                          "pass the -S decoder.* values it was trained with") from None
    return decoders
