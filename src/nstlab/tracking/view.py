"""What the MLflow UI shows first: the experiment's kind (a training experiment opens on its runs
table), two saved views (every configuration's test losses; Table 2), and links to run pages on
a tracking server."""

import json

from nstlab.registry import TABLE2_AXES, TABLE2_METHOD, get_method
from nstlab.tracking.source import is_server


def run_page_url(tracking_uri: str, experiment_id: str | None, run_id: str | None) -> str | None:
    """A run's page in the MLflow UI of a tracking server; None for a local store (no UI to link)."""
    if run_id and experiment_id and is_server(tracking_uri):
        return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return None


# MLflow 3's experiment kind (the UI's `ExperimentKind` enum): training experiments open on
# their runs table, not on the GenAI overview. MLflow 3.17's UI lets its sidebar switch "GenAI |
# Model training" (browser storage, GenAI at first) decide instead; a URL with
# ?workflowType=machine_learning sets that switch, so the links below carry it.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
MODEL_TRAINING_QUERY = "workflowType=machine_learning"
# A view the UI loads from the experiment's tag mlflow.sharedViewState.<key> when the URL says
# ?viewStateShareKey=<key>. Column keys are the UI's: <params|metrics|attributes>.`name`.
SHARED_VIEW_TAG = "mlflow.sharedViewState."
# Every configuration, one collapsed row each (its seed-group parent: the seeds' mean test losses,
# their spread and number, datasets, duration); expanding a row compares its seeds.
COMPARE_VIEW_KEY = "compare"
COMPARE_VIEW = {
    "searchFilter": "",
    "orderByKey": "attributes.start_time",
    "orderByAsc": False,
    "selectedColumns": [
        "metrics.`test.paper_content_loss`",
        "metrics.`test.paper_content_loss.std`",
        "metrics.`test.paper_style_loss`",
        "metrics.`test.paper_style_loss.std`",
        "metrics.`seeds`",
        "attributes.`Dataset`",
        "attributes.`Source`",
    ],
}
# Table 2: stage-2 ViT-LoRA runs, the params experiments/table2.yaml ablates, their test losses.
TABLE2_VIEW_KEY = "table2"
# Table 2's runs, as an MLflow search filter
TABLE2_RUNS = f"tags.model = '{TABLE2_METHOD}' and tags.stage = '{get_method(TABLE2_METHOD).stages[-1]}'"
TABLE2_VIEW = {
    "searchFilter": TABLE2_RUNS,
    "orderByKey": "metrics.`test.paper_content_loss`",
    "orderByAsc": True,
    "selectedColumns": [
        *(f"params.`{key}`" for key in TABLE2_AXES),
        "metrics.`test.paper_content_loss`",
        "metrics.`test.paper_style_loss`",
        "attributes.`Dataset`",
        "attributes.`Source`",
    ],
}


VIEWS = {
    COMPARE_VIEW_KEY: ("Compare configurations", COMPARE_VIEW),
    TABLE2_VIEW_KEY: ("Table 2", TABLE2_VIEW),
}


def view_url(ui_url: str, experiment_id: str, key: str = COMPARE_VIEW_KEY) -> str:
    """The MLflow UI page that opens a saved view (ui_url: where `mlflow ui` serves)."""
    return (
        f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{MODEL_TRAINING_QUERY}"
        f"&viewStateShareKey={key}"
    )


def table2_url(ui_url: str, experiment_id: str) -> str:
    return view_url(ui_url, experiment_id, TABLE2_VIEW_KEY)


def experiment_tags() -> dict[str, str]:
    """Tags every nstlab experiment carries: the training kind and the saved views."""
    tags = {EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND}
    for key, (name, state) in VIEWS.items():
        envelope = {"name": name, "createdAt": 0, "updatedAt": 0, "state": json.dumps(state)}
        tags[SHARED_VIEW_TAG + key] = json.dumps(envelope)
    return tags
