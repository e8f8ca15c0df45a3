"""Seed groups: the runs of one configuration over several training seeds nest under one parent
run, so the UI's collapsed rows compare configurations and the expanded rows compare seeds.

The parent carries its configuration's aggregate (summarise_group): each test metric as the mean
over the seeds under the metric's own name (so one column compares collapsed configurations and
expanded seeds alike), its sample standard deviation as `<metric>.std`, the number of seeds as
`seeds`, the seeds' dataset inputs, and an end time that spans its children's training.
"""

import statistics
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


def find_or_create_parent(
    client, experiment_id: str, group: Mapping[str, Any], start_time_ms: int | None = None
) -> str:
    """The id of the parent run of one configuration (experiment, digest without seed, stage),
    created if missing: the seeds' runs, from any DVC experiment, nest under it. It holds the
    configuration's params and ends FINISHED at once (it only groups). It carries no `model` tag,
    so searches for trained runs never see it. Two processes that create it at once both keep the
    oldest, and the other one is deleted. It starts when its first seed's run started."""
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
        experiment_id, start_time=start_time_ms or now_ms(), tags=tags, run_name=group["run_name"]
    ).info.run_id
    params = [Param(key, value) for key, value in group["params"].items()]
    for start in range(0, len(params), 100):  # MLflow's batch limit
        client.log_batch(run_id, params=params[start : start + 100])
    client.set_terminated(run_id, "FINISHED")
    kept = oldest()
    if kept != run_id:
        client.delete_run(run_id)
    return kept


def summarise_group(client, parent_id: str) -> None:
    """Lay the seeds' aggregate on their parent run (see the module docstring). A seed run twice
    counts once, by its newest run, as in the report's tables."""
    from mlflow.entities import Metric

    parent = client.get_run(parent_id)
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'", max_results=10000
    )
    newest_per_seed = {}
    for child in sorted(children, key=lambda run: run.info.start_time):
        newest_per_seed[child.data.tags.get("seed", child.info.run_id)] = child
    seeds = list(newest_per_seed.values())
    tested = [run for run in seeds if any(key.startswith("test.") for key in run.data.metrics)]
    now = now_ms()
    metrics = [Metric("seeds", float(len(tested)), now, 0)] if tested else []
    for key in sorted({key for run in tested for key in run.data.metrics if key.startswith("test.")}):
        values = [run.data.metrics[key] for run in tested if key in run.data.metrics]
        metrics.append(Metric(key, statistics.fmean(values), now, 0))
        if len(values) > 1:
            metrics.append(Metric(f"{key}.std", statistics.stdev(values), now, 0))
    for start in range(0, len(metrics), 1000):  # MLflow's batch limit
        client.log_batch(parent_id, metrics=metrics[start : start + 1000])
    datasets = {
        (item.dataset.name, item.dataset.digest, tuple((tag.key, tag.value) for tag in item.tags)): item
        for run in seeds
        for item in run.inputs.dataset_inputs
    }
    known = {
        (item.dataset.name, item.dataset.digest, tuple((tag.key, tag.value) for tag in item.tags))
        for item in parent.inputs.dataset_inputs
    }
    new_inputs = [item for key, item in datasets.items() if key not in known]
    if new_inputs:
        client.log_inputs(parent_id, datasets=new_inputs)
    ended = [run.info.end_time for run in seeds if run.info.end_time]
    if ended:
        client.set_terminated(parent_id, "FINISHED", max(ended))
