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
