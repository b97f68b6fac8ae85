"""MLflow store set-up: concurrent first runs on a fresh SQLite store, a tracking server that is down, a read-only
store, and runs whose process was killed."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO
from test_train_data import labelled  # noqa: F401 (a fixture)

# Each child composes the real config against the shared fresh store, waits for a common start time (so that
# they open the store at the same moment, not one import time apart), then sets up tracking and logs a run.
CHILD = r"""
import sys, time
from pipeline.core.config import compose_config
from pipeline.core import tracking
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

    from pipeline.core import tracking

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


# ---------------------------------------------------------------- a read-only store (issue 17 item 10)

# In a private mount namespace: the store directory bind-mounted read-only onto itself, then the command.
RO_MOUNT = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" "$1" && shift && exec "$@"'


@contextlib.contextmanager
def read_only(store: Path):
    """Yields a function that turns a command into one that runs with `store` read-only, as a mounted share or
    `chmod -R a-w` makes it: permission bits for an ordinary user; for root, whom they do not stop, a read-only
    bind mount in a private mount namespace (skipped where that is not allowed)."""
    if os.geteuid() == 0:
        wrap = lambda command: ["unshare", "-m", "sh", "-c", RO_MOUNT, "sh", str(store), *command]  # noqa: E731
        try:
            probe = subprocess.run(wrap(["sh", "-c", f"! touch '{store}/.probe' 2>/dev/null"]), capture_output=True,
                                   timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            probe = None
        if probe is None or probe.returncode != 0:
            pytest.skip("root without a private mount namespace (unshare -m): no way to make the store read-only")
        yield wrap
        return
    paths = [store, *store.rglob("*")]
    modes = {p: p.stat().st_mode for p in paths}
    try:
        for p in paths:
            p.chmod(modes[p] & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        yield lambda command: command
    finally:
        for p in reversed(paths):
            p.chmod(modes[p])


def cli_args(tmp_path: Path) -> list[str]:
    """The paths of `make_cfg`, as command-line overrides."""
    return [f"paths.work_dir={tmp_path}/work", f"paths.output_root={tmp_path}/outputs",
            f"tracking.uri=sqlite:///{tmp_path}/mlruns/mlflow.db", f"tracking.artifact_root={tmp_path}/mlruns/artifacts"]


def served_tfidf(make_cfg, labelled) -> dict:  # noqa: F811 (labelled is the fixture's value)
    """A TF-IDF model trained into the test's store and served (models:/stance-seeds@champion)."""
    from pipeline.stages.train import train

    return train(make_cfg("train", "model=tfidf", f"paths.labelled={labelled}", "train.baselines=[majority]"))


@pytest.mark.slow
def test_a_read_only_store_serves_predictions_and_refuses_train_in_one_line(make_cfg, labelled, tmp_path):  # noqa: F811
    """predict only reads: it serves the champion from a read-only store (no OSError on `.mlflow.db.lock`);
    train and promote, which write, stop with one line naming the store and the fix."""
    served_tfidf(make_cfg, labelled)
    store = tmp_path / "mlruns"
    before = sorted(p.name for p in store.iterdir())
    output = tmp_path / "out" / "predictions.csv"
    output.parent.mkdir()
    with read_only(store) as wrap:
        predict = subprocess.run(wrap([sys.executable, "-m", "pipeline", "predict", f"input={REPO}/seeds",
                                       f"output={output}", *cli_args(tmp_path)]),
                                 cwd=REPO, env=_child_env(), capture_output=True, text=True, timeout=300)
        assert predict.returncode == 0, predict.stderr[-3000:]
        assert output.exists() and "Traceback" not in predict.stderr
        for command in (["train", "model=tfidf", f"paths.labelled={labelled}"], ["promote", "1"]):
            result = subprocess.run(wrap([sys.executable, "-m", "pipeline", *command, *cli_args(tmp_path)]),
                                    cwd=REPO, env=_child_env(), capture_output=True, text=True, timeout=300)
            errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
            assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
            assert len(errors) == 1 and f"MLflow store sqlite:///{store}/mlflow.db is read-only" in errors[0]
            assert f"make {store} writable, or point tracking.uri" in errors[0], errors
    assert sorted(p.name for p in store.iterdir()) == before  # nothing written, not even a lock file


# ---------------------------------------------------------------- runs of dead processes (issue 17 item 12)

HANG_BEFORE_CHECKPOINT = """
import sys, time
from pathlib import Path
import pipeline.stages.train as train_module

def hang(*args, **kwargs):
    Path(sys.argv[1]).write_text("run open", encoding="utf-8")
    time.sleep(600)  # killed here with SIGKILL: the run is open, no checkpoint exists

train_module.fit_model = hang
from pipeline.cli.main import main
raise SystemExit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_a_train_killed_before_its_first_checkpoint_is_marked_killed_by_the_next_predict(make_cfg, labelled,  # noqa: F811
                                                                                        tmp_path, kill_when_marked):
    from mlflow import MlflowClient

    first = served_tfidf(make_cfg, labelled)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    marker = tmp_path / "run-open"
    proc = kill_when_marked([sys.executable, "-c", HANG_BEFORE_CHECKPOINT, str(marker), "train", "model=tfidf",
                             f"paths.labelled={labelled}", *cli_args(tmp_path)], marker, "opened its run",
                            cwd=REPO, env={**_child_env(), "OMP_NUM_THREADS": "1"})
    experiment = client.get_experiment_by_name("stance-toward-agreement")
    (killed,) = [r for r in client.search_runs([experiment.experiment_id]) if r.info.run_id != first["run_id"]
                 and r.data.tags.get("stage") == "train"]
    assert killed.info.status == "RUNNING" and killed.data.tags["pid"] == str(proc.pid)
    assert float(killed.data.tags["process_started"]) > 0 and killed.data.tags["host"]

    output = tmp_path / "predictions.csv"
    predict = subprocess.run([sys.executable, "-m", "pipeline", "predict", f"input={REPO}/seeds", f"output={output}",
                              *cli_args(tmp_path)], cwd=REPO, env=_child_env(), capture_output=True, text=True,
                             timeout=300)
    assert predict.returncode == 0, predict.stderr[-3000:]
    assert client.get_run(killed.info.run_id).info.status == "KILLED"
    assert client.get_run(first["run_id"]).info.status == "FINISHED"
    assert f"run {killed.info.run_id}" in predict.stderr and "marked KILLED" in predict.stderr


def test_a_run_belongs_to_its_process_not_to_its_pid(monkeypatch):
    """A pid the system gave to another process since (another start time) is a dead owner; a live owner, another
    host's run and a run without owner tags are left alone."""
    import psutil

    from pipeline.core import run_owners

    mine = run_owners.process_tags()
    assert mine["pid"] == str(os.getpid()) and not run_owners.owner_is_dead(mine)
    started = psutil.Process().create_time()
    assert run_owners.owner_is_dead({**mine, "process_started": f"{started - 3600:.3f}"})   # pid reused
    assert not run_owners.owner_is_dead({**mine, "host": mine["host"] + "-elsewhere", "process_started": "1"})
    assert not run_owners.owner_is_dead({})
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=60)
    assert run_owners.owner_is_dead({**mine, "pid": str(gone.pid)})
    assert not run_owners.owner_is_dead({key: value for key, value in mine.items() if key != "process_started"})
