"""The experiment in the MLflow UI, in a real browser: bench/mlflow_ui_screenshot.py against a real `mlflow server`.

Runs are logged straight through the client (no training: the UI is under test, not the models), in an
experiment tagged as pipeline/core/tracking.py tags it. Skipped where no Chromium binary is on PATH."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from test_mlflow_server import mlflow_server  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("mlflow_ui_screenshot", ROOT / "bench" / "mlflow_ui_screenshot.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

pytestmark = [pytest.mark.skipif(bench.find_chromium() is None, reason="no chromium binary on PATH"),
              pytest.mark.server, pytest.mark.slow]


def _log_runs(url: str, experiment: str) -> dict[str, str]:
    """Two train runs and a two-child sweep, as the train stage names and tags them; returns name -> run id."""
    from mlflow import MlflowClient

    from pipeline.core.tracking import mark_experiment

    client = MlflowClient(tracking_uri=url)
    experiment_id = client.create_experiment(experiment)
    mark_experiment(client.get_experiment(experiment_id), client)  # kind, description, headline view: as a stage
    ids = {}

    def run(name, params, scores, parent=None):
        tags = {"stage": "train", **({"mlflow.parentRunId": parent} if parent else {})}
        r = client.create_run(experiment_id, run_name=name, tags=tags)
        for key, value in params.items():
            client.log_param(r.info.run_id, key, value)
        for key, value in scores.items():
            client.log_metric(r.info.run_id, key, value)
        client.set_terminated(r.info.run_id)
        ids[name] = r.info.run_id
        return r.info.run_id

    run("train-tfidf", {"model.kind": "tfidf", "train.lr": "None"},
        {"test_accuracy": 0.43, "test_macro_f1": 0.2143, "test_macro_f1_ci_low": 0.139})
    run("train-tiny", {"model.kind": "tiny", "train.lr": "0.0005"},
        {"test_accuracy": 0.52, "test_macro_f1": 0.2292, "test_macro_f1_ci_low": 0.167})
    sweep = client.create_run(experiment_id, run_name="train-sweep", tags={"stage": "train"}).info.run_id
    run("train-tiny lr=1e-4", {"model.kind": "tiny", "train.lr": "0.0001"},
        {"test_accuracy": 0.55, "test_macro_f1": 0.3125, "test_macro_f1_ci_low": 0.2}, parent=sweep)
    run("train-tiny lr=5e-4", {"model.kind": "tiny", "train.lr": "0.0005"},
        {"test_accuracy": 0.6, "test_macro_f1": 0.4011, "test_macro_f1_ci_low": 0.25}, parent=sweep)
    client.set_terminated(sweep)
    return ids


def test_runs_and_comparison_render_with_the_logged_scores(mlflow_server, tmp_path):
    ids = _log_runs(mlflow_server, "ui-check")
    pngs = {k: tmp_path / f"{k}.png" for k in ("landing", "runs", "compare", "charts")}
    result = bench.capture(mlflow_server, "ui-check", landing_png=pngs["landing"], runs_png=pngs["runs"],
                           compare_png=pngs["compare"], charts_png=pngs["charts"], width=1200, timeout=45)

    # runs page (the headline view, the link train and evaluate print): the sweep's children by name and the
    # test_macro_f1 column with the logged values from the start; compare page: each run named, test_macro_f1 row =
    # the logged values (names and values in line); charts page: the Headline section first and open, the other
    # metrics in collapsed sections after it -- a failed check would be listed here
    assert result["problems"] == []
    assert result["compared"] == list(ids)  # the newest four finished train runs, oldest first: the sweep parent
    # has no test score and is left out
    # The view a first visit opens on is the UI's choice (MLflow 3.17: the GenAI overview, whatever the
    # experiment's tags); after one click on "Model training" the browser keeps opening it on the runs.
    assert result["landing_view"] in ("overview", "runs")
    if result["landing_view"] != "runs":
        assert result["landing_view_after_switch"] == "runs"
    from PIL import Image

    compare = np.asarray(Image.open(pngs["compare"]).convert("RGB"))
    assert compare.shape[1] == 1200 and compare.shape[0] > 900  # cropped to the content, down to the metrics
