"""Seeds in MLflow: each configuration is a parent run, each seed a nested child run."""

import pytest

from nstlab.tracking.groups import find_or_create_parent, seed_group
from nstlab.tracking.queries import log_to_run, search_runs
from nstlab.tracking.run import Tracker

pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)


def _train_like(cfg) -> str:
    """A run as the trainer opens it: nested by seed_group, every config key a param."""
    with Tracker(
        cfg.mlflow,
        "vit_lora-r16",
        {"model": "vit_lora", "stage": "2"},
        group=seed_group(cfg, "vit_lora", 2, "vit_lora-r16"),
    ) as tracker:
        tracker.log_params(cfg.flat())
    return tracker.run_id


def test_each_configuration_is_one_parent_with_one_child_per_seed(store, tiny_config):
    children = {
        (r, seed): _train_like(tiny_config(f"lora.r={r}", f"seed={seed}"))
        for r, seed in ((16, 1), (16, 2), (16, 3), (32, 1))
    }
    runs = search_runs(tiny_config().mlflow).set_index("run_id")
    parents = runs[runs["tags.seed_group"].notna()]
    assert len(parents) == 2 and set(parents["status"]) == {"FINISHED"}
    assert parents["tags.model"].isna().all()  # Table 2's search for trained runs never sees a parent
    assert "params.seed" not in parents or parents["params.seed"].isna().all()
    assert set(parents["params.lora.r"]) == {"16", "32"}
    parent_of = {key: runs.loc[run_id, "tags.mlflow.parentRunId"] for key, run_id in children.items()}
    assert parent_of[16, 1] == parent_of[16, 2] == parent_of[16, 3] != parent_of[32, 1]
    assert runs.loc[parent_of[16, 1], "params.lora.r"] == "16"
    assert [runs.loc[children[16, seed], "params.seed"] for seed in (1, 2, 3)] == ["1", "2", "3"]
    assert runs.loc[children[16, 2], "tags.seed"] == "2"
    assert runs.loc[children[16, 1], "tags.config_family"] == runs.loc[parent_of[16, 1], "tags.seed_group"]


def test_a_parent_carries_its_seeds_test_losses_datasets_and_duration(store, tiny_config, tmp_path):
    """The collapsed MLflow view compares configurations: each parent shows the mean over its
    seeds under the metric's own name, the spread and n beside it, the seeds' dataset inputs, and
    a duration that spans their runs. A seed run twice counts by its newest run."""
    from nstlab.data.version import PairsTable

    pairs = tmp_path / "pairs"
    pairs.mkdir()
    test_pairs = [
        PairsTable("pairs/test", pairs / "test.csv", pairs, "d41d8cd98f00b204e9800998ecf8427e", 6, "testing")
    ]
    losses = {1: 1.0, 2: 5.0, 3: 1.6}  # seed 2 first gives 5.0, then its newer run 1.4
    runs = {}
    for seed, content in (*losses.items(), (2, 1.4)):
        runs[seed] = _train_like(tiny_config(f"seed={seed}"))
        log_to_run(tiny_config().mlflow, runs[seed], {"test.paper_content_loss": content}, test_pairs)
    client = MlflowClient()
    child = client.get_run(runs[1])
    parent = client.get_run(child.data.tags["mlflow.parentRunId"])
    metrics = parent.data.metrics
    assert metrics["seeds"] == 3
    assert metrics["test.paper_content_loss"] == pytest.approx((1.0 + 1.4 + 1.6) / 3)
    assert metrics["test.paper_content_loss.std"] == pytest.approx(0.305505, abs=1e-6)
    assert [item.dataset.name for item in parent.inputs.dataset_inputs] == ["pairs/test"]
    ends = [client.get_run(run_id).info.end_time for run_id in runs.values()]
    assert parent.info.end_time == max(ends) and parent.info.start_time <= child.info.start_time


def test_two_processes_creating_one_parent_both_keep_the_oldest(store, tiny_config):
    cfg = tiny_config()
    client = MlflowClient()
    experiment_id = client.create_experiment("race")
    group = seed_group(cfg, "vit_lora", 2, "vit_lora-r16")
    first = find_or_create_parent(client, experiment_id, group)

    class LateToSee:
        """The other process's parent is not visible yet at the first search, as in a race."""

        def __init__(self):
            self.searches = 0

        def search_runs(self, *args, **kwargs):
            self.searches += 1
            return [] if self.searches == 1 else client.search_runs(*args, **kwargs)

        def __getattr__(self, name):
            return getattr(client, name)

    assert find_or_create_parent(LateToSee(), experiment_id, group) == first
    (kept,) = client.search_runs([experiment_id], f"tags.seed_group = '{group['digest']}'")
    assert kept.info.run_id == first  # the second one deleted itself


def test_the_seed_stays_out_of_the_configuration_digest_only(tiny_config):
    from nstlab.training.checkpoint import run_digest

    one, two = tiny_config("seed=1"), tiny_config("seed=2")
    assert run_digest(one, "vit_lora", 2) != run_digest(two, "vit_lora", 2)
    assert run_digest(one, "vit_lora", 2, with_seed=False) == run_digest(two, "vit_lora", 2, with_seed=False)
    assert (
        seed_group(one, "vit_lora", 2, "x")["digest"]
        != seed_group(tiny_config("seed=1", "lora.r=4"), "vit_lora", 2, "x")["digest"]
    )


def test_a_baselines_seeds_share_a_parent_across_grid_experiments_that_differ_in_lora_keys(tiny_config):
    from nstlab.training.checkpoint import run_digest

    def family(method: str, stage: int, *overrides: str) -> str:
        return run_digest(tiny_config(*overrides), method, stage, with_seed=False)

    assert family("sanet", 0, "lora.r=4", "seed=1") == family("sanet", 0, "lora.r=32", "seed=2")
    assert family("sanet", 0) != family("sanet", 0, "baselines.sanet.lr=0.5")
    assert family("sanet", 0) == family("sanet", 0, "baselines.adain.lr=0.5")
    assert family("vit_lora", 1, "lora.r=4") == family("vit_lora", 1, "lora.r=32")
    assert family("vit_lora", 2, "lora.r=4") != family("vit_lora", 2, "lora.r=32")
