"""A tiny training against a real `mlflow server` on 127.0.0.1, checked through the REST API."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from pipeline import LABELS
from test_train_data import labelled  # noqa: F401 (fixture)

pytestmark = [pytest.mark.server, pytest.mark.slow]

MLFLOW_BIN = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, payload: dict | None = None) -> dict:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture
def mlflow_server(tmp_path):
    if MLFLOW_BIN is None:
        pytest.skip("the mlflow command is not installed")
    port = _free_port()
    store = tmp_path / "server"
    store.mkdir()
    log = open(store / "server.log", "wb")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        [MLFLOW_BIN, "server", "--backend-store-uri", f"sqlite:///{store}/mlflow.db",
         "--artifacts-destination", str(store / "artifacts"), "--workers", "1",
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("mlflow server did not start:\n" + (store / "server.log").read_text()[-3000:])
                time.sleep(0.3)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group (it runs workers)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_tiny_training_against_a_real_server(make_cfg, labelled, mlflow_server, monkeypatch):
    from pipeline.stages.train import train

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)  # the environment wins over tracking.uri
    cfg = make_cfg("train", "model=tiny", "train.epochs=2", f"paths.labelled={labelled}",
                   "train.baselines=[majority]", "evaluate.bootstrap=50", "tracking.experiment=rest-check")
    result = train(cfg)

    api = f"{mlflow_server}/api/2.0/mlflow"
    experiment = _get(f"{api}/experiments/get-by-name?experiment_name=rest-check")["experiment"]
    found = _get(f"{api}/runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
    assert [r["info"]["run_id"] for r in found] == [result["run_id"]]
    run = found[0]
    assert run["info"]["status"] == "FINISHED"
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert metrics["test_macro_f1"] == pytest.approx(result["metrics"]["test_macro_f1"])
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["has_model"] == "true" and tags["stage"] == "train"
    history = _get(f"{api}/metrics/get-history?run_id={result['run_id']}&metric_key=val_macro_f1")["metrics"]
    assert len(history) == 2  # one per epoch

    # The model: a logged model of this run, its files on the server, loadable over HTTP.
    models = _get(f"{api}/logged-models/search", {"experiment_ids": [experiment["experiment_id"]]})["models"]
    assert [m["info"]["source_run_id"] for m in models] == [result["run_id"]]
    model_id = models[0]["info"]["model_id"]
    files = _get(f"{api}/logged-models/{model_id}/artifacts/directories?artifact_directory_path=")
    assert "MLmodel" in {f["path"] for f in files.get("files", [])}
    import mlflow

    model = mlflow.pyfunc.load_model(f"models:/{model_id}")
    out = model.predict(pd.DataFrame({"text": ["وافقت موسكو على مواصلة المحادثات."]}))
    assert list(out.columns) == ["label", *[f"p_{x}" for x in LABELS]] and out["label"][0] in LABELS
