"""`mlflow models serve` on the logged stance model answers REST requests with the predict stage's output."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.stages.predict import predict
from test_inference import make_stance_model, seed_sentences

PROBS = ["p_negative", "p_neutral", "p_positive"]
MLFLOW = Path(sys.executable).parent / "mlflow"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(payload, ensure_ascii=False).encode("utf-8"),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


@pytest.mark.server
def test_rest_answers_match_the_stage(make_cfg, tmp_path):
    from pipeline.core import tracking
    from pipeline.models.store import log_stance_model

    model_dir = make_stance_model(tmp_path / "model")
    cfg = make_cfg("train")
    with tracking.start_run(cfg, "serve-model", log_params=False):
        info = log_stance_model(model_dir)

    texts = seed_sentences()[:30]
    pd.DataFrame({"sentence_id": [f"s{i}" for i in range(len(texts))], "text": texts}).to_json(
        tmp_path / "s.jsonl", orient="records", lines=True, force_ascii=False)
    predict(make_cfg("predict", f"input={tmp_path}/s.jsonl", f"output={tmp_path}/p.parquet",
                     f"model_uri={info.model_uri}"))
    stage = pd.read_parquet(tmp_path / "p.parquet")

    port = free_port()
    # The server execs `uvicorn` from PATH: put this interpreter's bin first, as an activated venv would.
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking.tracking_uri(cfg), "OMP_NUM_THREADS": "1",
           "PATH": f"{MLFLOW.parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    server = subprocess.Popen(
        [str(MLFLOW), "models", "serve", "-m", info.model_uri, "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "serve.log", "wb"), start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "server not ready in 90 s: " + (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.5)

        url = f"http://127.0.0.1:{port}/invocations"
        split = post(url, {"dataframe_split": {"columns": ["text"], "data": [[t] for t in texts]}})
        records = post(url, {"dataframe_records": [{"text": t} for t in texts[:3]]})
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=5)

    got = pd.DataFrame(split["predictions"])
    assert got["label"].tolist() == stage["label"].tolist()
    np.testing.assert_allclose(got[PROBS].to_numpy(), stage[PROBS].to_numpy(), atol=1e-6)
    assert [r["label"] for r in records["predictions"]] == stage["label"].tolist()[:3]
