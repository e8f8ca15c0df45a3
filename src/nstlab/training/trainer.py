"""One trainer for every feed-forward model, each stage of a multi-stage one included.

The model brings its forward pass, its unweighted loss terms and what differs per method (its
optimisers, its schedule, whether it can train under torchrun, what it saves beside its
weights: see nstlab.models.base); the trainer owns everything else: device and precision, the
learning-rate schedule, weighting, logging (CSV always, MLflow when available), validation with
sample grids, checkpoints, and resume. A run killed at any step and resumed ends with the same
weights as an uninterrupted run: data order per epoch is a function of (seed, epoch), RNG state
is checkpointed, and the learning rate is a pure function of (step, epoch). Under torchrun every
process runs this loop on its share of each batch, DDP averages the gradients
(nstlab.training.distributed), and rank 0 alone validates and writes.
"""

import csv
import math
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn

from nstlab.training import distributed
from nstlab.training.checkpoint import (
    load_checkpoint,
    load_trained_state,
    run_digest,
    save_atomic,
    source_digest,
    trained_state,
)
from nstlab.config import Config, config_yaml, run_params
from nstlab.errors import NstlabError
from nstlab.models import build_model, model_class
from nstlab.runtime import (
    autocast,
    autocast_dtype,
    keep_freed_memory,
    pick_device,
    rng_state,
    set_rng_state,
)
from nstlab.training.schedule import scheduled


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """A SIGTERM (`kill`, a scheduler's stop) raises
    KeyboardInterrupt, so training stops as on Ctrl-C: last.pt saved, the MLflow run KILLED, one
    line saying how to resume. Python's default was to die on the spot, leaving the run RUNNING
    and the steps since the last checkpoint lost. Only the main thread can own a signal handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_signal: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def check_distributable(method: str, batch_size: int, world_size: int, batch_size_key: str = "") -> None:
    """One-line refusal of what several processes cannot train as one process would."""
    reason = model_class(method).single_process_only
    if reason:
        raise NstlabError(
            f"{method} cannot train under torchrun: {reason}; "
            "train it as one process (nstlab train without torchrun)"
        )
    if batch_size % world_size:
        key = batch_size_key or f"baselines.{method}.batch_size"
        raise NstlabError(
            f"{key} = {batch_size} is the global batch and does not split over {world_size} "
            f"processes; set it to a multiple of {world_size}"
        )


def check_last_batch(n_pairs: int, batch_size: int, drop_last: bool, world_size: int) -> None:
    """An epoch's kept last batch must split evenly over the processes, as every batch does."""
    tail = 0 if drop_last else n_pairs % batch_size
    if tail % world_size:
        raise NstlabError(
            f"train.last_batch = keep: each epoch ends with a batch of {tail} pairs, which does not "
            f"split over {world_size} processes; set train.last_batch: drop, or data.n_train so that "
            f"the last batch is a multiple of {world_size}"
        )


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


def train_step(
    model: nn.Module,
    optimizer,
    d_optimizer,
    weights: dict[str, float],
    content: torch.Tensor,
    style: torch.Tensor,
    dtype: torch.dtype | None,
    grad_clip: float | None,
) -> dict[str, float]:
    """One optimiser step on one batch; returns the weighted total and each unweighted term.

    A non-finite total skips the update (the caller stops the run), so weights stay good; under
    DDP a non-finite total on any rank skips it on all. `model` may be a DistributedModel.
    """
    model.train()
    with autocast(content.device, dtype):
        terms = model.losses(content, style)
    if d_optimizer is not None:  # adversarial: G forward, D step, G's adversarial term with the updated D
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
        return {
            "total": local_total if not math.isfinite(local_total) else math.nan
        }  # nan: another rank diverged
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    if grad_clip:
        nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], grad_clip)
    optimizer.step()
    return {"total": total.item(), **{name: float(value.detach()) for name, value in terms.items()}}


# ---------------------------------------------------------------------------------------------


class Trainer:
    def __init__(
        self,
        cfg: Config,
        method: str,
        stage: int,
        pairs_dir: Path,
        models_dir: Path,
        logs_dir: Path,
        checkpoints_dir: Path,
        progress: bool = True,
        tracking: bool = True,
    ):
        from nstlab.data.dataset import PairDataset, make_loader

        self.cfg, self.method, self.stage, self.progress = cfg, method, stage, progress
        self.pairs_dir = pairs_dir
        self.train_set = PairDataset(pairs_dir / "train.csv")
        self.val_set = PairDataset(pairs_dir / "val.csv")
        self.spec = model_class(method).train_spec(cfg, stage, len(self.train_set))
        if method in cfg.baselines:  # each baseline's own pipeline: resized random crops (nstlab.data.crops)
            from nstlab.data.crops import make_crop_loader

            self.train_loader = make_crop_loader(
                pairs_dir,
                cfg.baselines[method].data,
                batch_size=self.spec.batch_size,
                steps_per_epoch=self.spec.steps_per_epoch,
                seed=cfg.seed,
                workers=cfg.train.workers,
            )
        else:
            self.train_loader = make_loader(
                pairs_dir / "train.csv",
                batch_size=self.spec.batch_size,
                shuffle=True,
                seed=cfg.seed,
                workers=cfg.train.workers,
                drop_last=self.spec.drop_last,
            )
        if len(self.train_set) < self.spec.batch_size:
            raise NstlabError(
                f"{pairs_dir / 'train.csv'}: {len(self.train_set)} pairs, fewer than one batch "
                f"of {self.spec.batch_size}; lower the batch size or add pairs"
            )
        self.world_size = distributed.world_size()
        if self.world_size > 1:
            check_distributable(method, self.spec.batch_size, self.world_size, self.spec.batch_size_key)
            check_last_batch(len(self.train_set), self.spec.batch_size, self.spec.drop_last, self.world_size)
            self.train_loader = distributed.shard_loader(self.train_loader, self.spec.batch_size)
        self.out_dir = models_dir / self.spec.key  # weights, adapters, sample grids (a DVC out)
        self.log_dir = logs_dir / self.spec.key  # metrics.json and the loss curves (DVC metrics/plots)
        self.checkpoint_path = checkpoints_dir / self.spec.key / "last.pt"
        self.device = pick_device(cfg)
        self.dtype = autocast_dtype(cfg, self.device)
        keep_freed_memory()  # activations reuse freed pages instead of faulting in fresh ones
        self.tracking = tracking
        model = build_model(method, cfg)
        model.prepare_training(cfg, stage, models_dir)  # e.g. a stage 2 that starts from stage 1
        self.model = model.to(self.device)
        self.weights = {name: w for name, w in self.model.loss_weights.items() if w}
        self.optimizer, self.d_optimizer = self.model.configure_optimizers(self.spec.lr)
        self.d_lr_decays = self.d_optimizer is not None and self.model.discriminator_lr_decays
        self.config_digest = run_digest(cfg, method, stage)
        # What train_step runs; DDP checks that every rank built the same model (same seed, same config).
        self.step_model = distributed.DistributedModel(self.model) if self.world_size > 1 else self.model

    # -- checkpoints ---------------------------------------------------------------------------
    def _save(self, path: Path, step: int, best: float, finished: bool = False) -> None:
        payload = {
            "model": trained_state(self.model),
            "optimizer": self.optimizer.state_dict(),
            "step": step,
            "best_val": best,
            "rng": rng_state(),
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
        same = (
            state.get("config_digest") == self.config_digest and state.get("source_digest") == source_digest()
        )
        if not same:
            if mode == "require":
                raise NstlabError(
                    f"{self.checkpoint_path}: made with another config or code; "
                    "delete it or run without --resume"
                )
            return 0, math.inf
        best_weights = self.out_dir / "model.pt"
        if state.get("finished") and not best_weights.is_file():
            # DVC deletes a stage's outs before it reruns it; last.pt holds the last weights, not the
            # best-by-validation model.pt, so the finished run cannot give it back: train it again.
            if mode == "require":
                raise NstlabError(
                    f"{self.checkpoint_path}: that run finished and {best_weights} is gone, "
                    "so there is nothing to resume; "
                    "run without --resume require to train it again"
                )
            return 0, math.inf
        load_trained_state(self.model, state["model"], self.checkpoint_path)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.d_optimizer is not None:
            self.d_optimizer.load_state_dict(state["d_optimizer"])
        set_rng_state(state["rng"])
        return int(state["step"]), float(state["best_val"])

    # -- one step ------------------------------------------------------------------------------
    def _autocast(self):
        return autocast(self.device, self.dtype)

    def _batches(self, start_step: int) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
        """(step, epoch, content, style) on the device from `start_step` to the last step; a resumed
        epoch skips the batches it already ran."""
        spec, step = self.spec, start_step
        while step < spec.total_steps:
            epoch = step // spec.steps_per_epoch
            consumed = step - epoch * spec.steps_per_epoch  # batches of this epoch already run
            self.train_loader.sampler.set_epoch(epoch, consumed * spec.batch_size)
            for content, style in self.train_loader:
                if step >= spec.total_steps:
                    return
                yield (
                    step,
                    epoch,
                    content.to(self.device, non_blocking=True),
                    style.to(self.device, non_blocking=True),
                )
                step += 1

    def _set_lr(self, step: int, epoch: int) -> float:
        """The schedule's lr for this step, on the generator's optimiser and (decaying the same way
        unless the model says not) the discriminator's."""
        lr = self.spec.lr * self.spec.lr_factor(step, epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.d_lr = lr if self.d_lr_decays else self.spec.lr
        for group in self.d_optimizer.param_groups if self.d_optimizer else ():
            group["lr"] = self.d_lr
        return lr

    def _step(self, content: torch.Tensor, style: torch.Tensor, step: int) -> dict[str, float]:
        losses = train_step(
            self.step_model,
            self.optimizer,
            self.d_optimizer,
            self.weights,
            content,
            style,
            self.dtype,
            self.spec.grad_clip,
        )
        if not math.isfinite(losses["total"]):
            raise NstlabError(
                f"training diverged at step {step}: loss is {losses['total']}; the last good "
                f"checkpoint is {self.checkpoint_path}; lower the learning rate"
            )
        return losses

    def _train_one(self, content: torch.Tensor, style: torch.Tensor, step: int) -> dict[str, float] | None:
        """One step's update and losses; None where the model's `first_batch` hook (StyleModel)
        took a fresh run's step 0 itself (a data-dependent init: no update, nothing to log). A
        resumed run starts past step 0 and never repeats it, so it ends as an uninterrupted one."""
        if step == 0 and self.model.first_batch(content, style):
            return None
        return self._step(content, style, step)

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
        batches = [
            list(range(i, min(i + self.spec.batch_size, n))) for i in range(0, n, self.spec.batch_size)
        ]
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
        from nstlab.evaluation.grids import save_grid

        self.model.eval()
        content, style = self._batch(self.val_set, list(range(min(4, len(self.val_set)))))
        with self._autocast():
            output = self.model(content, style).float().clamp(0, 1)
        rows = [[c, s, o] for c, s, o in zip(content.cpu(), style.cpu(), output.cpu())]
        save_grid(rows, path, header=["content", "style", "output"])
        return path

    # -- the loop ------------------------------------------------------------------------------
    def run(self, resume: str = "auto") -> dict:
        """Train to the end; SIGTERM ends it as Ctrl-C does (see sigterm_as_interrupt)."""
        with sigterm_as_interrupt():
            return self._run(resume)

    def _run(self, resume: str) -> dict:
        from nstlab.tracking.groups import seed_group
        from nstlab.tracking.run import Tracker

        spec = self.spec
        start_step, best = self._try_resume(resume)
        distributed.barrier()  # every rank has read last.pt before rank 0 may overwrite it
        main = distributed.is_main()  # under torchrun rank 0 alone writes files and logs to MLflow
        if main:
            self._open_logs(start_step)
        counts = self.model.parameter_counts()
        self.started, self.pairs_seen = time.perf_counter(), 0
        done = start_step  # steps completed
        try:
            group = seed_group(self.cfg, self.method, self.stage, spec.run_name)  # nests under its config
            tracking = self.tracking and main
            with Tracker(
                self.cfg.mlflow, spec.run_name, self._tags(), enabled=tracking, group=group
            ) as tracker:
                tracker.log_params(
                    {
                        **run_params(self.cfg, self.method, spec.stage),
                        "parameters.trainable": counts["trainable"],
                        "parameters.total": counts["total"],
                        "train.total_steps": spec.total_steps,
                        "train.world_size": self.world_size,
                        "train.precision_used": "bf16" if self.dtype else "fp32",
                    }
                )
                if main:
                    self._log_inputs(tracker)
                with self._progress_bar(main) as progress:
                    task = progress.add_task("train", total=spec.total_steps, completed=start_step, loss="")
                    try:
                        for step, epoch, content, style in self._batches(start_step):
                            lr = self._set_lr(step, epoch)
                            losses = self._train_one(content, style, step)
                            done = step + 1
                            self.pairs_seen += len(content) * self.world_size
                            shown = f"loss {losses['total']:.4g}" if losses else ""
                            progress.update(task, advance=1, loss=shown)
                            if losses:
                                self._log_train(done, epoch, lr, losses, tracker, main)
                            if main and self._due(done, self.cfg.train.val_every):
                                best = self._validate_and_checkpoint(done, best, tracker)
                    except KeyboardInterrupt:
                        if main:
                            self._save(self.checkpoint_path, done, best)
                        raise  # through the Tracker, which marks the run KILLED
                train_seconds = time.perf_counter() - self.started
                summary = None
                if main:
                    summary = self._finish(done, best, train_seconds, self.pairs_seen, counts, tracker)
        except KeyboardInterrupt:
            raise NstlabError(
                f"interrupted at step {done}; checkpoint saved to {self.checkpoint_path}: "
                "rerun the same command with --resume to continue"
            ) from None
        return distributed.from_main(summary)  # every rank returns rank 0's summary

    def _log_inputs(self, tracker) -> None:
        """The data version (train and val pairs, with the DVC hash of their folder) and the whole
        resolved config, as config.yaml beside the weights: the params hold only this run's keys."""
        from nstlab.data.version import pairs_tables

        tracker.log_datasets(pairs_tables(self.pairs_dir, ("train", "val")))
        config_file = self.out_dir / "config.yaml"
        config_file.write_text(config_yaml(self.cfg))
        tracker.log_artifact(config_file)

    def _tags(self) -> dict[str, str]:
        return {
            "model": self.method,
            "stage": str(self.spec.stage),
            "profile": self.cfg.profile,
            "output": self.spec.key,
            "config_digest": self.config_digest,
        }

    def _progress_bar(self, main: bool):
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        return Progress(
            TextColumn(f"[bold]{self.spec.run_name}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[loss]}"),
            TimeRemainingColumn(),
            disable=not (self.progress and main),
        )

    def _due(self, step: int, every: int) -> bool:
        """Every `every` steps (nstlab.training.schedule.scheduled), and at the last step."""
        return scheduled(step, every, self.spec) or step == self.spec.total_steps

    def _open_logs(self, start_step: int) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "samples").mkdir(exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.train_log = CsvLog(self.log_dir / "train_log.csv", resume=start_step > 0)
        self.val_log = CsvLog(self.log_dir / "val_log.csv", resume=start_step > 0)
        self.train_log.truncate_after(start_step)
        self.val_log.truncate_after(start_step)

    def _log_train(
        self, step: int, epoch: int, lr: float, losses: dict[str, float], tracker, main: bool
    ) -> None:
        """Every train.log_every steps: the global batch's losses to train_log.csv and MLflow."""
        if not self._due(step, self.cfg.train.log_every):
            return
        losses = distributed.mean_over_ranks(losses)  # every rank takes part
        elapsed = time.perf_counter() - self.started
        pairs_per_s = self.pairs_seen / max(elapsed, 1e-9)
        row = {
            "step": step,
            "epoch": epoch,
            "lr": lr,
            **({"d_lr": self.d_lr} if self.d_optimizer else {}),
            **losses,
            "pairs_per_s": pairs_per_s,
        }
        if main:
            self.train_log.write(row)
            tracker.log_metrics({f"train.{k}": v for k, v in row.items() if k != "step"}, step)

    def _validate_and_checkpoint(self, step: int, best: float, tracker) -> float:
        val = self.validate()
        self.val_log.write({"step": step, **val})
        tracker.log_metrics({f"val.{k}": v for k, v in val.items()}, step)
        # Counting in epochs, the final step is validated to describe the weights it ends with,
        # but only the scheduled validations choose the best (NST-Project keeps best.pth so).
        candidate = not self.spec.count_in_epoch or scheduled(step, self.cfg.train.val_every, self.spec)
        if candidate and val["score"] < best:
            best = val["score"]
            if self.spec.keep == "best":
                self._save_weights(self.out_dir / "model.pt", step, val, "best")
        if step == self.spec.total_steps:  # the final weights: model.pt (keep last), else last.pt beside it
            final = self.out_dir / ("model.pt" if self.spec.keep == "last" else "last.pt")
            self._save_weights(final, step, val, "last")
        if self._due(step, self.cfg.train.sample_every):
            grid = self.sample_grid(self.out_dir / "samples" / f"step_{step:06d}.png")
            tracker.log_artifact(grid, "samples")
        self._save(self.checkpoint_path, step, best, finished=step == self.spec.total_steps)
        return best

    def _save_weights(self, path: Path, step: int, val: dict, kept: str) -> None:
        save_atomic({"model": trained_state(self.model), "step": step, "val": val, "kept": kept}, path)

    def _finish(
        self, step: int, best: float, train_seconds: float, pairs_seen: int, counts: dict, tracker
    ) -> dict:
        from nstlab.tracking.records import training_record_paths, write_record
        from nstlab.tracking.source import written_tracking_uri

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
            "tracking_uri": written_tracking_uri(self.cfg.mlflow) if tracker.run_id else None,
        }
        if tracker.run_url:  # a shared server: the run's page, to share or open
            summary["mlflow_run_url"] = tracker.run_url
        # metrics.json: numbers for DVC; run.json: the names and the MLflow run they belong to
        metrics_path, run_path = training_record_paths(self.log_dir.parent, self.spec.key)
        write_record(summary, metrics_path, run_path, identity=["stage"])
        tracker.log_metrics({"best.val_score": best, "train_seconds": train_seconds}, step)
        load_trained_state(self.model, kept_state["model"], self.out_dir / "model.pt")
        for path, artifact_path in self.model.save_beside_weights(self.out_dir):  # e.g. LoRA adapters
            tracker.log_artifact(path, artifact_path)
        tracker.log_artifact(metrics_path)
        return summary


def train(
    cfg: Config,
    method: str,
    stage: int = 0,
    *,
    pairs_dir: Path = Path("data/pairs"),
    models_dir: Path = Path("models"),
    logs_dir: Path = Path("reports/train"),
    checkpoints_dir: Path = Path("checkpoints"),
    resume: str = "auto",
    progress: bool = True,
    tracking: bool = True,
) -> dict:
    """Train one method (one stage of a multi-stage one): models/<key>/model.pt (the best by
    validation or the last step, per train.keep / baselines.<method>.keep; keeping the best,
    last.pt too),
    reports/train/<key>/{metrics.json, train_log.csv, val_log.csv}; resumable from checkpoints/<key>.
    Under torchrun each process trains on its share of every batch (see nstlab.training.distributed)."""
    with distributed.process_group(pick_device(cfg).type):
        trainer = Trainer(
            cfg, method, stage, pairs_dir, models_dir, logs_dir, checkpoints_dir, progress, tracking
        )
        return trainer.run(resume)
