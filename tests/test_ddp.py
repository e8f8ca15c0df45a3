"""Training under torchrun: two CPU processes (gloo) write one set of outputs and one MLflow run,
and end with the weights one process reaches on the same global batch; a DDP run interrupted
and resumed ends with the weights of an uninterrupted one."""

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from conftest import PARAMS
from nstlab.training import distributed
from nstlab.training.checkpoint import load_checkpoint
from nstlab.data.dataset import EpochSampler
from nstlab.errors import NstlabError
from nstlab.training.trainer import Trainer, check_distributable, check_last_batch, train

REPO = Path(__file__).resolve().parents[1]
# 8 pairs, global batch 2 (1 per rank), 2 epochs = 8 steps. Dropout off: its masks depend on how
# a batch is split over ranks, so with dropout DDP and one process agree in distribution only.
RUN = [
    "train.batch_size=2",
    "train.stage1.epochs=2",
    "train.log_every=1",
    "train.val_every=3",
    "train.sample_every=3",
    "train.max_val_pairs=2",
    "decoder.dropout=0",
]


def _dirs(root: Path) -> dict[str, Path]:
    return {"models_dir": root / "models", "logs_dir": root / "logs", "checkpoints_dir": root / "ckpt"}


def _weights(dirs: dict[str, Path], key: str = "vit_lora_stage1") -> dict[str, torch.Tensor]:
    return load_checkpoint(dirs["checkpoints_dir"] / key / "last.pt")["model"]


def _log(dirs: dict[str, Path], key: str = "vit_lora_stage1") -> list[dict[str, str]]:
    with open(dirs["logs_dir"] / key / "train_log.csv") as handle:
        return list(csv.DictReader(handle))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(
    rank: int,
    port: int,
    cfg,
    pairs_dir: Path,
    dirs: dict,
    resume: str,
    stop_at_step: int | None,
    method: str,
    stage: int,
) -> None:
    """One spawned rank: torchrun's variables, then the ordinary train(); the outcome goes to a file."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2"
    )
    torch.set_num_threads(1)
    if stop_at_step is not None:  # Ctrl-C reaches every rank of a torchrun job at the same step
        original_step = Trainer._step

        def interrupt(self, content, style, step):
            if step == stop_at_step:
                raise KeyboardInterrupt
            return original_step(self, content, style, step)

        Trainer._step = interrupt
    try:
        summary = train(
            cfg, method, stage, pairs_dir=pairs_dir, progress=False, tracking=False, resume=resume, **dirs
        )
        outcome = f"finished at step {summary['steps']}"
    except NstlabError as error:
        outcome = str(error)
    (dirs["models_dir"].parent / f"rank{rank}.txt").write_text(outcome)


def _spawn(
    cfg,
    pairs_dir: Path,
    dirs: dict,
    resume: str = "auto",
    stop_at_step: int | None = None,
    method: str = "vit_lora",
    stage: int = 1,
) -> list[str]:
    args = (_free_port(), cfg, pairs_dir, dirs, resume, stop_at_step, method, stage)
    mp.spawn(_rank_main, args=args, nprocs=2)
    return [(dirs["models_dir"].parent / f"rank{rank}.txt").read_text() for rank in range(2)]


def test_ranks_split_each_global_batch_of_the_single_process_order(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    single = EpochSampler(10, seed=3)
    single.set_epoch(1, start_index=4)  # a resumed run that had consumed 2 batches of 2
    shards = []
    for rank in range(2):
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        sampler = distributed.ShardSampler(10, seed=3, global_batch=2)
        sampler.set_epoch(1, start_index=4)
        shards.append(list(sampler))
        assert len(sampler) == 3
    assert [item for pair in zip(*shards) for item in pair] == list(single)


def test_ranks_split_the_kept_last_partial_batch_too(monkeypatch):
    """10 pairs, global batch 4, train.last_batch keep: batches of 4, 4 and 2, each halved."""
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    single = EpochSampler(10, seed=3)
    shards = []
    for rank in range(2):
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        sampler = distributed.ShardSampler(10, seed=3, global_batch=4, keep_last=True)
        shards.append(list(sampler))
        assert len(sampler) == 5
    order = list(single)
    assert shards[0] == order[0:2] + order[4:6] + order[8:9]
    assert shards[1] == order[2:4] + order[6:8] + order[9:10]


def test_a_kept_last_batch_that_does_not_split_is_refused():
    check_last_batch(10, 4, drop_last=False, world_size=2)  # a last batch of 2: 1 per rank
    check_last_batch(9, 4, drop_last=True, world_size=2)  # dropped
    with pytest.raises(
        NstlabError, match=r"a batch of 1 pairs, which does not split over 2 .*train.last_batch: drop"
    ):
        check_last_batch(9, 4, drop_last=False, world_size=2)


def test_methods_ddp_cannot_train_and_batches_that_do_not_split_are_refused():
    with pytest.raises(NstlabError, match="iest cannot train under torchrun: its discriminator"):
        check_distributable("iest", 4, 2)
    with pytest.raises(NstlabError, match="artflow cannot train under torchrun: ActNorm"):
        check_distributable("artflow", 4, 2)
    with pytest.raises(
        NstlabError, match=r"baselines.sanet.batch_size = 5 is the global batch .* multiple of 2"
    ):
        check_distributable("sanet", 5, 2)
    check_distributable("sanet", 4, 2)


def test_torchrun_writes_one_run_and_matches_one_process_on_the_same_global_batch(
    tiny_config, tiny_overrides, tiny_pairs, tmp_path, monkeypatch
):
    from nstlab.tracking.queries import search_runs

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    cfg = tiny_config(*RUN)
    single = _dirs(tmp_path / "single")
    train(cfg, "vit_lora", 1, pairs_dir=tiny_pairs, progress=False, tracking=False, **single)

    ddp_root = tmp_path / "ddp"
    ddp_root.mkdir()
    overrides = [flag for override in [*tiny_overrides, *RUN] for flag in ("-S", override)]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "nstlab",
        "train",
        "vit_lora",
        "--stage",
        "1",
        "--params",
        str(PARAMS),
        *overrides,
        "--pairs",
        str(tiny_pairs),
        "--models",
        "models",
        "--no-progress",
    ]
    result = subprocess.run(
        command,
        cwd=ddp_root,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = {
        "models_dir": ddp_root / "models",
        "logs_dir": ddp_root / "reports" / "train",
        "checkpoints_dir": ddp_root / "checkpoints",
    }

    runs = search_runs(cfg.mlflow, "tags.model = 'vit_lora'")  # the run (its seed-group parent aside)
    assert len(runs) == 1 and list(runs["status"]) == ["FINISHED"]
    assert runs["params.train.world_size"][0] == "2"
    metrics = json.loads((ddp["logs_dir"] / "vit_lora_stage1" / "metrics.json").read_text())
    run = json.loads((ddp["logs_dir"] / "vit_lora_stage1" / "run.json").read_text())
    assert metrics["steps"] == 8 and run["mlflow_run_id"] == runs["run_id"][0]
    ddp_log, single_log = _log(ddp), _log(single)
    assert [row["step"] for row in ddp_log] == [
        str(step) for step in range(1, 9)
    ]  # one writer, no repeated rows
    # The logged loss is the mean over ranks, i.e. the global batch's loss.
    assert [float(row["total"]) for row in ddp_log] == pytest.approx(
        [float(row["total"]) for row in single_log], rel=1e-5
    )
    # Adam divides each gradient by its own running scale, so float-level differences in the
    # averaged gradient move a weight by a small fraction of one step (about lr); another data
    # split or a missing average would move it by whole steps.
    ddp_weights, single_weights = _weights(ddp), _weights(single)
    assert ddp_weights.keys() == single_weights.keys()
    for name, tensor in single_weights.items():
        torch.testing.assert_close(
            _without_key_bias(name, ddp_weights[name]),
            _without_key_bias(name, tensor),
            rtol=0,
            atol=cfg.train.lr / 5,
            msg=name,
        )


def _without_key_bias(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """An attention's key bias shifts all logits of a query alike, so softmax gives it a zero
    gradient in exact arithmetic; Adam turns the float noise left there into steps of either
    sign, up to lr. The query and value biases, like every other weight, are compared."""
    if not name.endswith("in_proj_bias"):
        return tensor
    width = tensor.shape[0] // 3  # query, key, value
    return torch.cat([tensor[:width], tensor[2 * width :]])


def test_an_interrupted_ddp_run_resumes_to_the_weights_of_an_uninterrupted_one(
    tiny_config, tiny_pairs, tmp_path
):
    cfg = tiny_config(*RUN)
    uninterrupted, interrupted = _dirs(tmp_path / "a"), _dirs(tmp_path / "b")
    assert _spawn(cfg, tiny_pairs, uninterrupted) == ["finished at step 8"] * 2
    outcomes = _spawn(cfg, tiny_pairs, interrupted, stop_at_step=5)
    assert all(outcome.startswith("interrupted at step 5;") for outcome in outcomes)
    assert _spawn(cfg, tiny_pairs, interrupted, resume="require") == ["finished at step 8"] * 2
    reference, resumed = _weights(uninterrupted), _weights(interrupted)
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[name], reference[name]) for name in reference)


def test_a_baseline_under_two_ranks_trains_on_the_crops_of_one_process(tiny_config, tiny_pairs, tmp_path):
    """The crop loader under torchrun (each rank its share of every global batch, see
    test_data_crops) ends where one process ends."""
    cfg = tiny_config(
        "train.log_every=1",
        "train.val_every=4",
        "train.sample_every=4",
        "train.max_val_pairs=2",
        "baselines.adain.batch_size=4",
        "baselines.adain.iterations=4",
        "baselines.adain.data.resize=32",
        "baselines.adain.data.crop=16",
    )
    single, ddp = _dirs(tmp_path / "single"), _dirs(tmp_path / "ddp")
    train(cfg, "adain", pairs_dir=tiny_pairs, progress=False, tracking=False, **single)
    assert _spawn(cfg, tiny_pairs, ddp, method="adain", stage=0) == ["finished at step 4"] * 2
    assert [float(row["total"]) for row in _log(ddp, "adain")] == pytest.approx(
        [float(row["total"]) for row in _log(single, "adain")], rel=1e-5
    )
    lr = cfg.baselines["adain"].lr
    for name, tensor in _weights(single, "adain").items():
        torch.testing.assert_close(_weights(ddp, "adain")[name], tensor, rtol=0, atol=lr / 5, msg=name)
