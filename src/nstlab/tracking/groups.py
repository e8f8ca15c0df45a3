"""Seed groups: the runs of one configuration over several training seeds nest under one parent
run, so the UI's collapsed rows compare configurations and the expanded rows compare seeds."""

import time
from collections.abc import Mapping
from typing import Any


def now_ms() -> int:
    return int(time.time() * 1000)


def seed_group(cfg, method: str, stage: int, run_name: str) -> dict:
    """What names one configuration across training seeds (`cfg` a Config): its digest without the
    seed, the stage, and the parent run's name, tags and params (the config less the seed)."""
    from nstlab.training.checkpoint import run_digest
    from nstlab.config import run_params

    return {
        "digest": run_digest(cfg, method, stage, with_seed=False),
        "stage": str(stage),
        "run_name": run_name,
        "seed": str(cfg.seed),
        "tags": {"seed_group_model": method, "profile": cfg.profile},
        "params": {
            key: str(value)[:6000] for key, value in run_params(cfg, method, stage).items() if key != "seed"
        },
    }


def find_or_create_parent(client, experiment_id: str, group: Mapping[str, Any]) -> str:
    """The id of the parent run of one configuration (experiment, digest without seed, stage),
    created if missing: the seeds' runs, from any DVC experiment, nest under it. It holds the
    configuration's params and ends FINISHED at once (it only groups). It carries no `model` tag,
    so searches for trained runs never see it. Two processes that create it at once both keep the
    oldest, and the other one is deleted."""
    from mlflow.entities import Param

    query = f"tags.seed_group = '{group['digest']}' and tags.seed_group_stage = '{group['stage']}'"

    def oldest() -> str | None:
        runs = client.search_runs([experiment_id], query, max_results=1000)
        return min(runs, key=lambda run: (run.info.start_time, run.info.run_id)).info.run_id if runs else None

    found = oldest()
    if found:
        return found
    tags = {**group["tags"], "seed_group": group["digest"], "seed_group_stage": group["stage"]}
    run_id = client.create_run(
        experiment_id, start_time=now_ms(), tags=tags, run_name=group["run_name"]
    ).info.run_id
    params = [Param(key, value) for key, value in group["params"].items()]
    for start in range(0, len(params), 100):  # MLflow's batch limit
        client.log_batch(run_id, params=params[start : start + 100])
    client.set_terminated(run_id, "FINISHED")
    kept = oldest()
    if kept != run_id:
        client.delete_run(run_id)
    return kept
