"""MLflow store set-up: concurrent first runs on a fresh SQLite store, and a tracking server that is down."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from conftest import REPO

# Each child composes the real config against the shared fresh store, waits for a common start time (so that
# they open the store at the same moment, not one import time apart), then sets up tracking and logs a run.
CHILD = r"""
import sys, time
from pipeline.config import compose_config
from pipeline import tracking
import mlflow
store, start_at = sys.argv[1], float(sys.argv[2])
cfg = compose_config("train", [f"tracking.uri=sqlite:///{store}/mlflow.db", f"tracking.artifact_root={store}/artifacts",
                               f"paths.run_dir={store}/run"])
time.sleep(max(0.0, start_at - time.time()))
with tracking.start_run(cfg, "race", log_params=False):
    mlflow.log_metric("x", 1.0)
print("logged")
"""


def _child_env() -> dict[str, str]:
    # An earlier test's mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI, which would win over tracking.uri.
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return {**env, "PYTHONPATH": str(REPO), "MLFLOW_DISABLE_TELEMETRY": "true"}


@pytest.mark.slow
def test_concurrent_first_runs_on_a_fresh_sqlite_store(tmp_path):
    for trial in range(2):                                  # a fresh store each time: the race is on creation
        store = tmp_path / f"store{trial}"
        start_at = time.time() + 12                         # after every child has imported mlflow
        procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(store), str(start_at)], cwd=REPO,
                                  env=_child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(3)]
        results = [(p.wait(timeout=180), *p.communicate()) for p in procs]
        for rc, out, err in results:
            assert rc == 0 and "logged" in out, err[-2000:]

        import mlflow

        client = mlflow.MlflowClient(f"sqlite:///{store}/mlflow.db")
        (experiment,) = [e for e in client.search_experiments() if e.name == "stance-toward-agreement"]
        assert len(client.search_runs([experiment.experiment_id])) == 3


def test_server_down_fails_fast_with_one_line(tmp_path):
    import socket

    with socket.socket() as s:                              # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "train", "model=tfidf", f"tracking.uri={uri}",
         f"paths.work_dir={tmp_path}/work", f"paths.output_root={tmp_path}/out"],
        cwd=REPO, env=_child_env(), capture_output=True, text=True, timeout=120,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and uri in errors[0] and "mlflow server" in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "work" / "sentences.parquet").exists()   # failed before any stage ran
    assert elapsed < 15


def test_the_experiment_stores_its_headline_view_and_links_it(make_cfg):
    """Runs open with score columns and score charts first, through a view saved in MLflow's own share format
    (experiment tag mlflow.sharedViewState.<key>; the UI opens it with ?viewStateShareKey=<key>)."""
    import json

    from mlflow import MlflowClient

    from pipeline import tracking

    cfg = make_cfg("train")
    mlflow = tracking.setup(cfg)
    experiment = mlflow.get_experiment_by_name(str(cfg.tracking.experiment))
    view = json.loads(experiment.tags[tracking.VIEW_TAG_PREFIX + tracking.VIEW_KEY])
    assert view == tracking.headline_view()
    assert view["selectedColumns"][1:] == view["columnOrder"] == [f"metrics.`{m}`" for m in tracking.HEADLINE_COLUMNS]
    assert view["columnOrder"][:3] == ["metrics.`test_macro_f1`", "metrics.`test_macro_f1_ci_low`",
                                       "metrics.`test_macro_f1_ci_high`"]      # registry's names, unchanged
    sections = view["compareRunSections"]
    assert [(s["name"], s["display"]) for s in sections] == [("Headline", True), ("Model metrics", False),
                                                              ("System metrics", False)]
    assert view["isAccordionReordered"] is True                                # the UI keeps this order
    assert {c["metricKey"] for c in view["compareRunCharts"]} == {*tracking.HEADLINE_BARS, *tracking.HEADLINE_LINES}
    assert all(c["metricSectionId"] == sections[0]["uuid"] for c in view["compareRunCharts"])
    # the description links to it; the printed link is the same page on tracking.ui_url
    path = tracking.headline_path(experiment.experiment_id)
    assert f"]({path})" in experiment.tags[tracking.NOTE_TAG]
    assert tracking.headline_url(cfg, experiment.experiment_id) == f"http://127.0.0.1:5000/{path}"
    # a description written in the UI is kept; an older one of ours is brought up to date
    client = MlflowClient()
    client.set_experiment_tag(experiment.experiment_id, tracking.NOTE_TAG, "our team's own notes")
    tracking.mark_experiment(client.get_experiment(experiment.experiment_id))
    assert client.get_experiment(experiment.experiment_id).tags[tracking.NOTE_TAG] == "our team's own notes"
    client.set_experiment_tag(experiment.experiment_id, tracking.NOTE_TAG, tracking.OUR_DESCRIPTION_START + " (old)")
    tracking.mark_experiment(client.get_experiment(experiment.experiment_id))
    assert f"]({path})" in client.get_experiment(experiment.experiment_id).tags[tracking.NOTE_TAG]
