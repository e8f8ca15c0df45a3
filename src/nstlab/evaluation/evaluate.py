"""Evaluation: stylise the held-out test pairs with a trained model and score the outputs.

Same code, same pairs, same loss networks for every model, so Table 1 compares like with like.
Metrics per model (reports/metrics/<model>.json):
- content/style loss by each loss convention (registry.LOSS_CONVENTIONS, nstlab.losses)
- SSIM(output, content) on luminance; Gram-matrix style distance (size-normalised)
- MSE and SSIM against the pseudo ground truth's output (registry.PSEUDO_GROUND_TRUTH), once it
  has been evaluated
- mean latency per image, peak memory, number of pairs

What differs between methods is asked of the registry (capabilities) or of the model (hooks).

"""

import json
import resource
import time
from pathlib import Path

import torch
import torch.nn as nn

from nstlab.training.adapters import load_adapters
from nstlab.config import Config
from nstlab.errors import NstlabError
from nstlab.functional import gram_distance, luminance, ssim
from nstlab.registry import (
    LOSS_CONVENTIONS,
    METHODS,
    OPTIMISED,
    PSEUDO_GROUND_TRUTH,
    TRAINED,
    final_output_key,
    get_method,
)
from nstlab.runtime import keep_freed_memory, pick_device


def trained_weights_path(method: str, models_dir: Path) -> Path:
    return models_dir / final_output_key(method) / "model.pt"


def load_model(
    cfg: Config,
    method: str,
    models_dir: Path = Path("models"),
    checkpoint: Path | None = None,
    device: torch.device | None = None,
) -> nn.Module:
    """`method` with its trained weights: the model class's `load_for_inference` where it serves
    (a model for stylising only, quick to load), else the model as its last training stage built
    it (frozen random-init parts drawn from cfg.seed), with the weights loaded. A method that
    trains nothing has no weights: it is built from the config."""
    from nstlab.training.checkpoint import load_checkpoint, load_trained_state
    from nstlab.models import build_at_stage, model_class

    path = checkpoint or trained_weights_path(method, models_dir)
    model = model_class(method).load_for_inference(cfg, path)
    if model is None:
        model = build_at_stage(method, cfg, get_method(method).stages[-1])
        if get_method(method).kind == TRAINED:
            load_trained_state(model, load_checkpoint(path)["model"], path)
    return model.to(device or torch.device("cpu")).eval()


def describe_model(cfg: Config, method: str, stage: int) -> dict:
    """`nstlab info`: parameter counts per part, built from the config (no weights loaded)."""
    from nstlab.models import build_at_stage

    model = build_at_stage(method, cfg, stage)
    return {"model": method, "profile": cfg.profile, **model.parameter_counts()}


class Scorer(nn.Module):
    """Every loss convention's network, built once and run once per image; the Gram distance is
    measured on the first convention's features."""

    def __init__(self, cfg: Config):
        super().__init__()
        import dataclasses

        from nstlab.losses import loss_network

        # The measuring stick must not move with the training seed: random-init scoring networks
        # (the demo's) are drawn from the fixed split seed, so every seed is scored alike.
        fixed = dataclasses.replace(cfg, seed=cfg.data.split_seed)
        self.networks = nn.ModuleDict({name: loss_network(name, fixed) for name in LOSS_CONVENTIONS})

    @torch.no_grad()
    def forward(self, output: torch.Tensor, content: torch.Tensor, style: torch.Tensor) -> dict[str, float]:
        scores = {}
        for name, net in self.networks.items():
            out_f, content_f, style_f = net(output), net(content), net(style)
            scores[f"{name}_content_loss"] = float(net.content_loss(out_f, content_f))
            scores[f"{name}_style_loss"] = float(net.style_loss(out_f, style_f))
            if name == LOSS_CONVENTIONS[0]:
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


def evaluate_model(
    cfg: Config,
    method: str,
    *,
    pairs_dir: Path = Path("data/pairs"),
    models_dir: Path = Path("models"),
    reports_dir: Path = Path("reports"),
    progress: bool = True,
) -> dict:
    """Stylise the first eval.max_pairs test pairs; write outputs and reports/metrics/<method>.json."""
    from rich.progress import track

    from nstlab.data.images import save_image
    from nstlab.tracking.records import evaluation_record_paths, write_record

    device = pick_device(cfg)
    keep_freed_memory()
    model = load_model(cfg, method, models_dir, device=device)
    scorer = Scorer(cfg).to(device)
    pairs = _read_pairs(pairs_dir, "test")[: cfg.eval.max_pairs]
    outputs_dir = reports_dir / "outputs" / method
    outputs_dir.mkdir(parents=True, exist_ok=True)
    optimised = get_method(method).kind == OPTIMISED
    rows, latencies = [], []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for index, (content_path, style_path) in enumerate(
        track(pairs, description=f"evaluate {method}", disable=not progress)
    ):
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
        rows.append(
            {
                "pair": index,
                "content": str(content_path),
                "style": str(style_path),
                **scorer(output, content, style),
                # the optimised method only (its dvc.yaml stage declares those outputs)
                **(_against_pseudo_ground_truth(output, reports_dir, index) if optimised else {}),
            }
        )
    if not rows:
        raise NstlabError(f"{pairs_dir / 'test.csv'}: no test pairs to evaluate")
    metric_names = [
        key for key in rows[0] if key not in ("pair", "content", "style") and all(key in r for r in rows)
    ]
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
    from nstlab.data.version import pairs_tables

    test_pairs = pairs_tables(pairs_dir, ("test",))
    if get_method(method).kind == OPTIMISED:  # nothing trains: the evaluation is the run
        summary["mlflow_run_id"] = model.log_evaluation_run(cfg, summary, outputs_dir, test_pairs)
    else:
        summary["mlflow_run_id"] = _log_test_metrics(cfg, method, reports_dir, summary, test_pairs)
    write_record(summary, *evaluation_record_paths(reports_dir, method))
    (outputs_dir / "pairs.json").write_text(json.dumps(rows, indent=2) + "\n")
    return summary


def _log_test_metrics(cfg: Config, method: str, reports_dir: Path, summary: dict, test_pairs) -> str | None:
    """Attach the test metrics and the test pairs (a dataset input) to the model's training run in
    MLflow (Table 2 reads them there)."""
    from nstlab.tracking.records import training_record_paths
    from nstlab.tracking.queries import log_to_run

    _, train_run = training_record_paths(reports_dir / "train", final_output_key(method))
    if not train_run.is_file():
        return None
    run_id = json.loads(train_run.read_text()).get("mlflow_run_id")
    if run_id:
        numbers = {f"test.{k}": v for k, v in summary.items() if isinstance(v, int | float)}
        log_to_run(cfg.mlflow, run_id, numbers, test_pairs)
    return run_id


def _against_pseudo_ground_truth(output: torch.Tensor, reports_dir: Path, index: int) -> dict[str, float]:
    """MSE and SSIM against the pseudo ground truth's output for the same pair (the project
    proposal's metric for the optimisation-based method); empty until that method has been
    evaluated."""
    from nstlab.data.images import load_rgb, to_tensor

    reference_path = reports_dir / "outputs" / PSEUDO_GROUND_TRUTH / f"{index:04d}.png"
    if not reference_path.is_file():
        return {}
    reference = to_tensor(load_rgb(reference_path)).unsqueeze(0).to(output.device)
    if reference.shape != output.shape:
        return {}
    return {
        f"mse_vs_{PSEUDO_GROUND_TRUTH}": float(torch.mean((output - reference) ** 2)),
        f"ssim_vs_{PSEUDO_GROUND_TRUTH}": float(ssim(luminance(output), luminance(reference)).mean()),
    }


def _methods_that(can) -> str:
    """The registered methods for which `can(method)` holds, named for a message."""
    return ", ".join(method.name for method in METHODS if can(method))


def stylize_file(
    cfg: Config,
    method: str,
    content_path: Path,
    style_paths: list[Path],
    output_path: Path,
    *,
    checkpoint: Path | None = None,
    max_size: int | None = None,
    alpha: float = 1.0,
    style_weights: list[float] | None = None,
    adapters: list[str] | None = None,
    preserve_color: bool = False,
    models_dir: Path = Path("models"),
) -> list[Path]:
    """`nstlab stylize`: one image, any size; what the registry says the method can do (a
    content–style trade-off `alpha`, several styles mixed by `style_weights`, LoRA `adapters`:
    one output each, OUT's stem + `_<adapter name>`), and `preserve_color` (every model: the
    style image takes the content's colours first, by CORAL: nstlab.functional.coral).
    """
    from nstlab.data.images import save_image
    from nstlab.functional import coral
    from nstlab.runtime import autocast, autocast_dtype

    if not 0.0 <= alpha <= 1.0:
        raise NstlabError(f"--alpha {alpha}: must be in [0, 1]")
    can = get_method(method)
    if alpha != 1.0 and not can.alpha:
        raise NstlabError(
            f"--alpha: {method} has no content–style trade-off; models with one: {_methods_that(lambda m: m.alpha)}"
        )
    if len(style_paths) > 1 and not can.several_styles:
        raise NstlabError(
            f"several style images: {method} takes one; models that mix several: "
            f"{_methods_that(lambda m: m.several_styles)}"
        )
    if adapters and (not can.adapters or checkpoint is not None):
        raise NstlabError(
            f"--adapter loads LoRA adapters: use it with --model {_methods_that(lambda m: m.adapters)} and no --checkpoint"
        )
    limit = max_size or cfg.eval.max_size
    content = _load_tensor(cfg, content_path, limit)
    styles = [_load_tensor(cfg, path, limit) for path in style_paths]
    if preserve_color:
        styles = [coral(style, content) for style in styles]
    device = pick_device(cfg)
    dtype = autocast_dtype(cfg, device)  # train.precision: bf16 where native (auto), as in training
    keep_freed_memory()
    if adapters:
        model, decoders = load_adapters(cfg, adapters, models_dir)
        model = model.to(device).eval()
        outputs = []
        for name, decoder_state in decoders.items():
            model.set_adapter(name, decoder_state)
            with torch.no_grad(), autocast(device, dtype):
                output = model(content.to(device), styles[0].to(device))
            outputs.append(
                save_image(
                    output[0].float().clamp(0, 1).cpu(),
                    output_path.with_name(f"{output_path.stem}_{name}{output_path.suffix}"),
                )
            )
        return outputs
    model = load_model(cfg, method, checkpoint=checkpoint, device=device)
    style = [s.to(device) for s in styles] if len(styles) > 1 else styles[0].to(device)
    options = {"alpha": alpha} if can.alpha else {}
    if can.several_styles:
        options["style_weights"] = style_weights
    with torch.no_grad(), autocast(device, dtype):
        output = model(content.to(device), style, **options)
    save_image(output[0].float().clamp(0, 1).cpu(), output_path)
    return [output_path]
