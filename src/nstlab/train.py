"""One trainer for every feed-forward model: ViT-LoRA's two stages and the baselines.

The model brings its forward pass and its unweighted loss terms (see nstlab.models); the
trainer owns everything else: device and precision, the learning-rate schedule, weighting,
logging (CSV always, MLflow when available), validation with sample grids, checkpoints, and
resume. A run killed at any step and resumed ends with the same weights as an uninterrupted
run: data order per epoch is a function of (seed, epoch), RNG state is checkpointed, and the
learning rate is a pure function of (step, epoch). Under torchrun every process runs this loop
on its share of each batch, DDP averages the gradients (nstlab.distributed), and rank 0 alone
validates and writes.
"""

import csv
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from nstlab import distributed
from nstlab.checkpoint import (
    load_checkpoint,
    load_trained_state,
    run_digest,
    save_atomic,
    source_digest,
    trained_state,
)
from nstlab.config import Config
from nstlab.errors import NstlabError
from nstlab.models import build_model


@dataclass(frozen=True)
class TrainSpec:
    """What to train and how long: resolved from the config for one (method, stage)."""

    method: str
    stage: int  # 1 or 2 for vit_lora, 0 for a single-stage baseline
    key: str  # output folder name under models/: vit_lora_stage1, vit_lora_stage2, sanet, ...
    run_name: str
    batch_size: int
    total_steps: int
    steps_per_epoch: int
    lr: float
    grad_clip: float | None
    lr_factor: Callable[[int, int], float]  # (step, epoch) -> multiplier of lr
    keep: str  # which weights models/<key>/model.pt holds: "best" by validation or the "last" step


def output_key(method: str, stage: int) -> str:
    return f"{method}_stage{stage}" if method == "vit_lora" else method


def short_targets(targets) -> str:
    """[query, key, value, dense] -> 'qkvd' (run names stay short and readable)."""
    letters = {"query": "q", "key": "k", "value": "v", "dense": "d"}
    return "".join(letters.get(name, name) for name in targets)


def run_name(cfg: Config, method: str, stage: int) -> str:
    if method != "vit_lora":
        return method
    architecture = f"e{cfg.encoder.layers}-d{cfg.decoder.layers}"
    if stage == 1:
        return f"vit_lora-stage1-{architecture}"
    return f"vit_lora-r{cfg.lora.r}-{short_targets(cfg.lora.target_modules)}-{architecture}"


def train_spec(cfg: Config, method: str, stage: int, n_train_pairs: int) -> TrainSpec:
    if method == "vit_lora":
        if stage not in (1, 2):
            raise NstlabError("vit_lora trains in two stages: pass --stage 1 or --stage 2")
        batch_size = cfg.train.batch_size
        steps_per_epoch = max(1, n_train_pairs // batch_size)
        stage_cfg = cfg.train.stage1 if stage == 1 else cfg.train.stage2
        milestones, gamma = stage_cfg.milestones, stage_cfg.gamma

        def lr_factor(step: int, epoch: int) -> float:  # MultiStepLR stepped once per epoch
            return gamma ** sum(1 for milestone in milestones if epoch >= milestone)

        return TrainSpec(method, stage, output_key(method, stage), run_name(cfg, method, stage), batch_size,
                         stage_cfg.epochs * steps_per_epoch, steps_per_epoch, cfg.train.lr, None, lr_factor,
                         cfg.train.keep)
    if method not in cfg.baselines:
        raise NstlabError(f"no params block baselines.{method}: add one to params.yaml")
    block = cfg.baselines[method]
    steps_per_epoch = max(1, n_train_pairs // block.batch_size)
    return TrainSpec(method, 0, method, method, block.batch_size, block.iterations, steps_per_epoch, block.lr,
                     block.grad_clip, _baseline_lr_factor(block), block.keep)


def _baseline_lr_factor(block) -> Callable[[int, int], float]:
    decay, warmup = block.lr_decay, block.warmup_iterations
    if block.lr_schedule == "inverse":  # pytorch-AdaIN: lr / (1 + decay * iteration)
        return lambda step, epoch: 1.0 / (1.0 + decay * step)
    if block.lr_schedule == "stytr2":  # StyTr² train.py: linear warm-up, then inverse decay
        def factor(step: int, epoch: int) -> float:
            if step < warmup:
                return (1.0 + 3e-4 * step) / (1.0 + 3e-4 * warmup)
            return 1.0 / (1.0 + decay * (step - warmup))
        return factor
    return lambda step, epoch: 1.0


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
    raise NstlabError(f"{folder}: stage 1 kept no {start_from} weights for train.stage2_from = {start_from}; "
                      f"rerun stage 1 (train.keep = best also saves last.pt) or set train.stage2_from")


# Methods whose step is not one forward and one backward that DDP could average over ranks.
_SINGLE_PROCESS_ONLY = {
    "iest": "its discriminator takes its own optimiser step between two generator passes",
    "artflow": "ActNorm initialises its weights from the first batch, which differs per rank",
}


def check_distributable(method: str, batch_size: int, world_size: int) -> None:
    """One-line refusal of what several processes cannot train as one process would."""
    if method in _SINGLE_PROCESS_ONLY:
        raise NstlabError(f"{method} cannot train under torchrun: {_SINGLE_PROCESS_ONLY[method]}; "
                          "train it as one process (nstlab train without torchrun)")
    if batch_size % world_size:
        key = "train.batch_size" if method == "vit_lora" else f"baselines.{method}.batch_size"
        raise NstlabError(f"{key} = {batch_size} is the global batch and does not split over {world_size} "
                          f"processes; set it to a multiple of {world_size}")


# ---------------------------------------------------------------------------------------------


def pick_device(cfg: Config) -> torch.device:
    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise NstlabError("train.device = cuda, but no CUDA device is visible; use auto or cpu")
    if cfg.train.device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def autocast_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA (auto or bf16), fp32 on CPU (CPU bf16 is slower and not the paper's)."""
    if device.type == "cuda" and cfg.train.precision in ("auto", "bf16"):
        return torch.bfloat16
    return None


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()  # this process's GPU: under torchrun each rank has its own
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class CsvLog:
    """Append-only CSV (one row per log step); the header is fixed by the first row."""

    def __init__(self, path: Path, resume: bool):
        self.path = path
        self.columns: list[str] | None = None
        if resume and path.is_file():
            with open(path) as handle:
                self.columns = next(csv.reader(handle), None)
        elif path.exists():
            path.unlink()

    def write(self, row: dict) -> None:
        new = self.columns is None
        if new:
            self.columns = list(row)
        with open(self.path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, self.columns, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)

    def truncate_after(self, step: int) -> None:
        """On resume, drop rows logged after the checkpoint (they will be logged again)."""
        if not self.path.is_file():
            return
        with open(self.path) as handle:
            rows = list(csv.DictReader(handle))
        kept = [row for row in rows if int(row["step"]) <= step]
        self.path.unlink()
        self.columns = None
        for row in kept:
            self.write(row)


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)


def train_step(model: nn.Module, optimizer, d_optimizer, weights: dict[str, float], content: torch.Tensor,
               style: torch.Tensor, dtype: torch.dtype | None, grad_clip: float | None) -> dict[str, float]:
    """One optimiser step on one batch; returns the weighted total and each unweighted term.

    A non-finite total skips the update (the caller stops the run), so weights stay good; under
    DDP a non-finite total on any rank skips it on all. `model` may be a DistributedModel.
    """
    model.train()
    with autocast(content.device, dtype):
        terms = model.losses(content, style)
    if d_optimizer is not None:  # IEST order: G forward, D step, G adversarial with the updated D
        with autocast(content.device, dtype):
            d_loss = model.discriminator_loss()
        d_optimizer.zero_grad(set_to_none=True)
        d_loss.backward()
        d_optimizer.step()
        with autocast(content.device, dtype):
            terms.update(model.adversarial_losses())
        terms["discriminator"] = d_loss.detach()
    total = sum(weights[name] * value for name, value in terms.items() if name in weights)
    if not distributed.all_finite(total):
        local_total = float(total.detach())
        return {"total": local_total if not math.isfinite(local_total) else math.nan}  # nan: another rank diverged
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    if grad_clip:
        nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], grad_clip)
    optimizer.step()
    return {"total": total.item(), **{name: float(value.detach()) for name, value in terms.items()}}


# ---------------------------------------------------------------------------------------------


class Trainer:
    def __init__(self, cfg: Config, method: str, stage: int, pairs_dir: Path, models_dir: Path,
                 logs_dir: Path, checkpoints_dir: Path, progress: bool = True, tracking: bool = True):
        from nstlab.data.dataset import PairDataset, make_loader

        self.cfg, self.method, self.stage, self.progress = cfg, method, stage, progress
        self.train_set = PairDataset(pairs_dir / "train.csv")
        self.val_set = PairDataset(pairs_dir / "val.csv")
        self.spec = train_spec(cfg, method, stage, len(self.train_set))
        if method in cfg.baselines:  # each baseline's own pipeline: resized random crops (nstlab.data.crops)
            from nstlab.data.crops import make_crop_loader

            self.train_loader = make_crop_loader(
                pairs_dir, cfg.baselines[method].data, batch_size=self.spec.batch_size,
                steps_per_epoch=self.spec.steps_per_epoch, seed=cfg.seed, workers=cfg.train.workers)
        else:
            self.train_loader = make_loader(pairs_dir / "train.csv", batch_size=self.spec.batch_size,
                                            shuffle=True, seed=cfg.seed, workers=cfg.train.workers)
        if len(self.train_set) < self.spec.batch_size:
            raise NstlabError(f"{pairs_dir / 'train.csv'}: {len(self.train_set)} pairs, fewer than one batch "
                              f"of {self.spec.batch_size}; lower the batch size or add pairs")
        self.world_size = distributed.world_size()
        if self.world_size > 1:
            check_distributable(method, self.spec.batch_size, self.world_size)
            self.train_loader = distributed.shard_loader(self.train_loader, self.spec.batch_size)
        self.out_dir = models_dir / self.spec.key  # weights, adapters, sample grids (a DVC out)
        self.log_dir = logs_dir / self.spec.key  # metrics.json and the loss curves (DVC metrics/plots)
        self.checkpoint_path = checkpoints_dir / self.spec.key / "last.pt"
        self.device = pick_device(cfg)
        self.dtype = autocast_dtype(cfg, self.device)
        self.tracking = tracking
        self.model = self._build_model(models_dir).to(self.device)
        self.weights = {name: w for name, w in self.model.loss_weights.items() if w}
        trainable = [p for n, p in self.model.named_parameters() if p.requires_grad and not n.startswith("discriminator.")]
        self.optimizer = torch.optim.Adam(trainable, lr=self.spec.lr, betas=(0.9, 0.999))
        discriminator = getattr(self.model, "discriminator", None)
        self.d_optimizer = None
        if discriminator is not None:
            betas = tuple(cfg.baselines[method].options.get("d_betas", (0.5, 0.999)))
            self.d_optimizer = torch.optim.Adam(discriminator.parameters(), lr=self.spec.lr, betas=betas)
        # IEContraAST train.py decays D's lr as G's; d_lr_decay false keeps it constant
        self.d_lr_decays = self.d_optimizer is not None and self.model.options.get("d_lr_decay", True)
        self.config_digest = run_digest(cfg, method, stage)
        # What train_step runs; DDP checks that every rank built the same model (same seed, same config).
        self.step_model = distributed.DistributedModel(self.model) if self.world_size > 1 else self.model

    def _build_model(self, models_dir: Path) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed)
            model = build_model(self.method, self.cfg)
        if self.method == "vit_lora" and self.stage == 2:
            stage1 = stage1_weights(models_dir, self.cfg.train.stage2_from)
            load_trained_state(model, load_checkpoint(stage1)["model"], stage1)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.cfg.seed)
                model.enable_lora()
        return model

    # -- checkpoints ---------------------------------------------------------------------------
    def _save(self, path: Path, step: int, best: float, finished: bool = False) -> None:
        payload = {
            "model": trained_state(self.model),
            "optimizer": self.optimizer.state_dict(),
            "step": step,
            "best_val": best,
            "rng": _rng_state(),
            "config_digest": self.config_digest,
            "source_digest": source_digest(),
            "method": self.method,
            "stage": self.stage,
            "finished": finished,
        }
        if self.d_optimizer is not None:
            payload["d_optimizer"] = self.d_optimizer.state_dict()
        save_atomic(payload, path)

    def _try_resume(self, mode: str) -> tuple[int, float]:
        """Returns (first step to run, best validation loss so far); seeds the RNG for a fresh run."""
        torch.manual_seed(self.cfg.seed)  # dropout masks (and any noise) follow from the seed
        if mode == "never" or not self.checkpoint_path.is_file():
            if mode == "require":
                raise NstlabError(f"{self.checkpoint_path}: nothing to resume; run without --resume")
            return 0, math.inf
        state = load_checkpoint(self.checkpoint_path)
        same = state.get("config_digest") == self.config_digest and state.get("source_digest") == source_digest()
        if not same:
            if mode == "require":
                raise NstlabError(f"{self.checkpoint_path}: made with another config or code; "
                                  "delete it or run without --resume")
            return 0, math.inf
        load_trained_state(self.model, state["model"], self.checkpoint_path)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.d_optimizer is not None:
            self.d_optimizer.load_state_dict(state["d_optimizer"])
        _set_rng_state(state["rng"])
        return int(state["step"]), float(state["best_val"])

    # -- one step ------------------------------------------------------------------------------
    def _autocast(self):
        return autocast(self.device, self.dtype)

    def _step(self, content: torch.Tensor, style: torch.Tensor, step: int) -> dict[str, float]:
        losses = train_step(self.step_model, self.optimizer, self.d_optimizer, self.weights, content, style,
                            self.dtype, self.spec.grad_clip)
        if not math.isfinite(losses["total"]):
            raise NstlabError(f"training diverged at step {step}: loss is {losses['total']}; the last good "
                              f"checkpoint is {self.checkpoint_path}; lower the learning rate")
        return losses

    def _batch(self, dataset, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [dataset[i] for i in indices]
        content = torch.stack([c for c, _ in pairs]).to(self.device, non_blocking=True)
        style = torch.stack([s for _, s in pairs]).to(self.device, non_blocking=True)
        return content, style

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean unweighted content/style terms on up to train.max_val_pairs val pairs, and the
        selection score λc·Lc + λs·Ls (the paper keeps the best checkpoint by it)."""
        self.model.eval()
        n = min(len(self.val_set), self.cfg.train.max_val_pairs)
        sums: dict[str, float] = {}
        batches = [list(range(i, min(i + self.spec.batch_size, n))) for i in range(0, n, self.spec.batch_size)]
        for indices in batches:
            content, style = self._batch(self.val_set, indices)
            with self._autocast():
                terms = self.model.losses(content, style)
            for name in ("content", "style"):
                if name in terms:
                    sums[name] = sums.get(name, 0.0) + float(terms[name]) * len(indices)
        result = {name: total / n for name, total in sums.items()}
        result["score"] = sum(self.weights.get(name, 0.0) * value for name, value in result.items())
        return result

    @torch.no_grad()
    def sample_grid(self, path: Path) -> Path:
        """Rows of content | style | output for the first val pairs, saved as one PNG."""
        from nstlab.grids import save_grid

        self.model.eval()
        content, style = self._batch(self.val_set, list(range(min(4, len(self.val_set)))))
        with self._autocast():
            output = self.model(content, style).float().clamp(0, 1)
        rows = [[c, s, o] for c, s, o in zip(content.cpu(), style.cpu(), output.cpu())]
        save_grid(rows, path, header=["content", "style", "output"])
        return path

    # -- the loop ------------------------------------------------------------------------------
    def run(self, resume: str = "auto") -> dict:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        from nstlab.tracking import Tracker

        cfg, spec = self.cfg, self.spec
        start_step, best = self._try_resume(resume)
        distributed.barrier()  # every rank has read last.pt before rank 0 may overwrite it
        main = distributed.is_main()  # under torchrun rank 0 alone writes files and logs to MLflow
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "samples").mkdir(exist_ok=True)
            self.log_dir.mkdir(parents=True, exist_ok=True)
            train_log = CsvLog(self.log_dir / "train_log.csv", resume=start_step > 0)
            val_log = CsvLog(self.log_dir / "val_log.csv", resume=start_step > 0)
            train_log.truncate_after(start_step)
            val_log.truncate_after(start_step)
        counts = self.model.parameter_counts()
        tags = {"model": self.method, "stage": str(spec.stage), "profile": cfg.profile, "output": spec.key,
                "config_digest": self.config_digest}
        log_every = cfg.train.log_every
        val_every = cfg.train.val_every
        started = time.perf_counter()
        pairs_seen = 0
        step = start_step
        try:
            with Tracker(cfg.mlflow, spec.run_name, tags, enabled=self.tracking and main) as tracker:
                tracker.log_params({**cfg.flat(), "parameters.trainable": counts["trainable"],
                                    "parameters.total": counts["total"], "train.total_steps": spec.total_steps,
                                    "train.world_size": self.world_size})
                progress = Progress(TextColumn(f"[bold]{spec.run_name}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                    TextColumn("{task.fields[loss]}"), TimeRemainingColumn(),
                                    disable=not (self.progress and main))
                with progress:
                    task = progress.add_task("train", total=spec.total_steps, completed=start_step, loss="")
                    try:
                        while step < spec.total_steps:
                            epoch = step // spec.steps_per_epoch
                            consumed = step - epoch * spec.steps_per_epoch  # batches of this epoch already run
                            self.train_loader.sampler.set_epoch(epoch, consumed * spec.batch_size)
                            for content, style in self.train_loader:
                                if step >= spec.total_steps:
                                    break
                                lr = spec.lr * spec.lr_factor(step, epoch)
                                for group in self.optimizer.param_groups:
                                    group["lr"] = lr
                                d_lr = lr if self.d_lr_decays else spec.lr
                                for group in self.d_optimizer.param_groups if self.d_optimizer else ():
                                    group["lr"] = d_lr
                                content = content.to(self.device, non_blocking=True)
                                style = style.to(self.device, non_blocking=True)
                                losses = self._step(content, style, step)
                                step += 1
                                pairs_seen += len(content) * self.world_size
                                progress.update(task, advance=1, loss=f"loss {losses['total']:.4g}")
                                if step % log_every == 0 or step == spec.total_steps:
                                    losses = distributed.mean_over_ranks(losses)  # the global batch's losses
                                    elapsed = time.perf_counter() - started
                                    row = {"step": step, "epoch": epoch, "lr": lr,
                                           **({"d_lr": d_lr} if self.d_optimizer else {}), **losses,
                                           "pairs_per_s": pairs_seen / max(elapsed, 1e-9)}
                                    if main:
                                        train_log.write(row)
                                        tracker.log_metrics({f"train.{k}": v for k, v in row.items() if k != "step"},
                                                            step)
                                if main and (step % val_every == 0 or step == spec.total_steps):
                                    best = self._validate_and_checkpoint(step, best, val_log, tracker)
                    except KeyboardInterrupt:
                        if main:
                            self._save(self.checkpoint_path, step, best)
                        raise  # through the Tracker, which marks the run KILLED
                train_seconds = time.perf_counter() - started
                summary = self._finish(step, best, train_seconds, pairs_seen, counts, tracker) if main else None
        except KeyboardInterrupt:
            raise NstlabError(f"interrupted at step {step}; checkpoint saved to {self.checkpoint_path}: "
                              "rerun the same command with --resume to continue") from None
        return distributed.from_main(summary)  # every rank returns rank 0's summary

    def _validate_and_checkpoint(self, step: int, best: float, val_log: CsvLog, tracker) -> float:
        val = self.validate()
        val_log.write({"step": step, **val})
        tracker.log_metrics({f"val.{k}": v for k, v in val.items()}, step)
        if val["score"] < best:
            best = val["score"]
            if self.spec.keep == "best":
                self._save_weights(self.out_dir / "model.pt", step, val, "best")
        if step == self.spec.total_steps:  # the final weights: model.pt (keep last), else last.pt beside it
            final = self.out_dir / ("model.pt" if self.spec.keep == "last" else "last.pt")
            self._save_weights(final, step, val, "last")
        if step % self.cfg.train.sample_every == 0 or step == self.spec.total_steps:
            grid = self.sample_grid(self.out_dir / "samples" / f"step_{step:06d}.png")
            tracker.log_artifact(grid, "samples")
        self._save(self.checkpoint_path, step, best, finished=step == self.spec.total_steps)
        return best

    def _save_weights(self, path: Path, step: int, val: dict, kept: str) -> None:
        save_atomic({"model": trained_state(self.model), "step": step, "val": val, "kept": kept}, path)

    def _finish(self, step: int, best: float, train_seconds: float, pairs_seen: int, counts: dict, tracker) -> dict:
        kept_state = load_checkpoint(self.out_dir / "model.pt")  # the kept weights (train.keep)
        summary = {
            "model": self.method,
            "stage": self.spec.stage,
            "run_name": self.spec.run_name,
            "profile": self.cfg.profile,
            "steps": step,
            "keep": self.spec.keep,
            "kept_step": kept_state["step"],
            "val_content": kept_state["val"].get("content"),
            "val_style": kept_state["val"].get("style"),
            "val_score": kept_state["val"]["score"],
            "best_val_score": best,
            "train_seconds": train_seconds,
            "pairs_per_s": pairs_seen / max(train_seconds, 1e-9),
            "parameters_trainable": counts["trainable"],
            "parameters_total": counts["total"],
            "mlflow_run_id": tracker.run_id,
            "tracking_uri": tracker.tracking_uri if tracker.run_id else None,
        }
        if tracker.run_url:  # a shared server: the run's page, to share or open
            summary["mlflow_run_url"] = tracker.run_url
        (self.log_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
        tracker.log_metrics({"best.val_score": best, "train_seconds": train_seconds}, step)
        if getattr(self.model, "lora_enabled", False):
            load_trained_state(self.model, kept_state["model"], self.out_dir / "model.pt")
            adapters = self.model.save_adapters(self.out_dir / "adapter")
            for path in adapters:
                tracker.log_artifact(path, f"adapter/{path.name}")
            tracker.log_artifact(self.out_dir / "model.pt", "adapter")  # its decoders: a run id alone stylises
        tracker.log_artifact(self.log_dir / "metrics.json")
        return summary


def train(cfg: Config, method: str, stage: int = 0, *, pairs_dir: Path = Path("data/pairs"),
          models_dir: Path = Path("models"), logs_dir: Path = Path("reports/train"),
          checkpoints_dir: Path = Path("checkpoints"), resume: str = "auto", progress: bool = True,
          tracking: bool = True) -> dict:
    """Train one method (one stage of ViT-LoRA): models/<key>/model.pt (the best by validation or
    the last step, per train.keep / baselines.<method>.keep; keeping the best, last.pt too),
    reports/train/<key>/{metrics.json, train_log.csv, val_log.csv}; resumable from checkpoints/<key>.
    Under torchrun each process trains on its share of every batch (see nstlab.distributed)."""
    with distributed.process_group(pick_device(cfg).type):
        trainer = Trainer(cfg, method, stage, pairs_dir, models_dir, logs_dir, checkpoints_dir, progress, tracking)
        return trainer.run(resume)
