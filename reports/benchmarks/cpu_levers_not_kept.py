"""The CPU levers of issue 20 that were measured and not kept, each against the same eager step.

ViT-LoRA, paper configuration, random weights, batch 4 at 224², bf16 autocast and the kept
levers on (fast dropout, kept memory), synthetic inputs: seconds per training step.
  - channels-last memory format for the CNN decoder and the VGG loss network;
  - torch.compile (inductor) of `model.losses`, forward and backward, with its compile time;
  - the saving an exact cache of what cannot change would give: the loss network's features of
    the content and style images (stage 1 and 2) and, in stage 1, the frozen encoders' tokens,
    served from memory for the very tensors of the step (an upper bound: a real cache also pays
    for its reads).
Usage (repository root, venv active): python reports/benchmarks/cpu_levers_not_kept.py
"""

import time
from pathlib import Path

import torch

from nstlab.config import load_config
from nstlab.models import build_model
from nstlab.runtime import keep_freed_memory, use_fast_dropout
from nstlab.training.trainer import train_step

CPU = torch.device("cpu")
OVERRIDES = ["profile=paper", "backbone.vit=random", "backbone.vgg19=random", "train.batch_size=4"]


def make(stage: int):
    cfg = load_config(Path("params.yaml"), OVERRIDES)
    model = build_model("vit_lora", cfg)
    if stage == 2:
        model.enable_lora()
    use_fast_dropout(model, cfg, CPU)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    weights = {name: w for name, w in model.loss_weights.items() if w}
    return model, lambda content, style: train_step(
        model, optimizer, None, weights, content, style, torch.bfloat16, None
    )


def seconds_per_step(step, content, style, steps: int = 3) -> float:
    step(content, style)
    started = time.perf_counter()
    for _ in range(steps):
        step(content, style)
    return (time.perf_counter() - started) / steps


def cached_loss_targets(model, content, style) -> None:
    """The loss network answers for `content` and `style` from memory (computed once)."""
    network = model.loss_network
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        known = {id(content): network(content), id(style): network(style)}
    original = network.forward
    network.forward = lambda images: known[id(images)] if id(images) in known else original(images)


def cached_tokens(model, content, style) -> None:
    """Stage 1: the frozen encoders answer for `content` and `style` from memory."""
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        known = {
            (id(model.content_encoder), content.data_ptr()): model.encode(model.content_encoder, content),
            (id(model.style_encoder), style.data_ptr()): model.encode(model.style_encoder, style),
        }
    original = model.encode
    model.encode = lambda encoder, images: (
        known.get((id(encoder), images.data_ptr())) or original(encoder, images)
    )


def main() -> None:
    keep_freed_memory()
    torch.manual_seed(0)
    content, style = torch.rand(4, 3, 224, 224), torch.rand(4, 3, 224, 224)
    rows = []
    for stage in (1, 2):
        model, step = make(stage)
        eager = seconds_per_step(step, content, style)
        rows.append((f"stage {stage} eager", eager, eager))
        cached_loss_targets(model, content, style)
        rows.append(
            (f"stage {stage} loss-network targets cached", seconds_per_step(step, content, style), eager)
        )
        if stage == 1:
            cached_tokens(model, content, style)
            rows.append(
                (f"stage {stage} + frozen tokens cached", seconds_per_step(step, content, style), eager)
            )

    model, step = make(2)
    eager = seconds_per_step(step, content, style)
    rows.append(("stage 2 eager (again)", eager, eager))
    model.cnn_decoder.to(memory_format=torch.channels_last)
    model.loss_network.to(memory_format=torch.channels_last)
    rows.append(("stage 2 channels-last CNNs", seconds_per_step(step, content, style), eager))

    model, step = make(2)
    model.losses = torch.compile(model.losses)
    started = time.perf_counter()
    step(content, style)
    compile_seconds = time.perf_counter() - started
    rows.append(
        (
            f"stage 2 torch.compile (first step {compile_seconds:.0f} s)",
            seconds_per_step(step, content, style),
            eager,
        )
    )

    print(f"{'variant':<52}{'s/step':>8}{'vs eager':>10}")
    for name, seconds, baseline in rows:
        print(f"{name:<52}{seconds:>8.2f}{baseline / seconds:>9.2f}x")


if __name__ == "__main__":
    main()
