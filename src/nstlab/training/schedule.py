"""What one training runs and for how long: the TrainSpec and the learning-rate schedules.

A method's model class may override `StyleModel.train_spec` (ViT-LoRA: two stages, epochs and
milestones); every other method trains by its `baselines.<name>` block, read here.
The learning rate is a pure function of (step, epoch), so a resumed run follows the same curve.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from nstlab.errors import NstlabError


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
    batch_size_key: str = ""  # the params key that sets batch_size, for messages
    keep: str = "best"  # which weights models/<key>/model.pt holds: "best" by validation or the "last" step
    # Whether val_every / sample_every / log_every count the steps of each epoch (NST-Project
    # trainer.py: (i + 1) % interval, i the batch index in the epoch) or of the whole run.
    count_in_epoch: bool = False
    drop_last: bool = True  # an epoch's last partial batch: dropped, or run as a shorter step


def scheduled(step: int, every: int, spec: TrainSpec) -> bool:
    """Whether `step` (steps done) is an every-th one: of its epoch where the spec counts in
    epochs (NST-Project trainer.py: (i + 1) % interval == 0, i the batch index in the epoch),
    else of the run."""
    if spec.count_in_epoch:
        step -= (step - 1) // spec.steps_per_epoch * spec.steps_per_epoch
    return step % every == 0


def multistep_factor(milestones: Sequence[int], gamma: float) -> Callable[[int, int], float]:
    """MultiStepLR stepped once per epoch: gamma ** (milestones passed)."""

    def lr_factor(step: int, epoch: int) -> float:
        return gamma ** sum(1 for milestone in milestones if epoch >= milestone)

    return lr_factor


def baseline_spec(cfg, method: str, key: str, run_name: str, n_train_pairs: int) -> TrainSpec:
    """A single-stage method trained by its `baselines.<method>` block."""
    if method not in cfg.baselines:
        raise NstlabError(f"no params block baselines.{method}: add one to params.yaml")
    block = cfg.baselines[method]
    steps_per_epoch = max(1, n_train_pairs // block.batch_size)
    return TrainSpec(
        method,
        0,
        key,
        run_name,
        block.batch_size,
        block.iterations,
        steps_per_epoch,
        block.lr,
        block.grad_clip,
        _baseline_lr_factor(block),
        f"baselines.{method}.batch_size",
        keep=block.keep,
    )


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
