"""predict's start-up: importing the stage pulls in no heavy library, and a local model directory opens no MLflow
store (nor needs a tracking server), while predict from the store behaves as before."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.io import read_table
from test_inference import make_stance_model

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
HEAVY = ("torch", "mlflow", "transformers", "matplotlib", "sklearn")
SUBPROCESS_TIMEOUT_S = 300  # generous: a loaded machine


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_stance_model(tmp_path_factory.mktemp("startup") / "model")


def test_importing_the_predict_stage_pulls_in_no_heavy_library():
    """torch / transformers load with the model, mlflow only for a model from the store, matplotlib with the
    plot, sklearn with a tfidf model: none of them with the module."""
    code = ("import pipeline.stages.predict, sys; "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_the_logged_pyfunc_class_keeps_its_name():
    """A logged model's pickle names pipeline.models.store.StancePyfuncModel: it must still resolve there."""
    import pickle

    from pipeline.models import store

    cls = store.StancePyfuncModel
    assert cls.__module__ == "pipeline.models.store" and cls.__qualname__ == "StancePyfuncModel"
    assert pickle.loads(pickle.dumps(cls)) is cls


def test_predict_from_a_local_dir_opens_no_mlflow_store(model_dir, tmp_path):
    """In a fresh process: no mlflow.db (nor mlruns dir) is created, MLflow is not even imported, and the
    predictions are the predictor's own."""
    from pipeline.models.base import load_predictor

    store_dir = tmp_path / "mlruns"
    out = tmp_path / "p.parquet"
    code = ("import runpy, sys\nsys.argv = ['pipeline', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('pipeline', run_name='__main__')\n"
            "finally:\n    print('MLFLOW_IMPORTED' if 'mlflow' in sys.modules else 'MLFLOW_NOT_IMPORTED')")
    done = subprocess.run(
        [sys.executable, "-c", code, "predict", "input=seeds", f"output={out}", f"model_uri={model_dir}",
         f"paths.output_root={tmp_path}/outputs", f"tracking.uri=sqlite:///{store_dir}/mlflow.db",
         f"tracking.artifact_root={store_dir}/artifacts"],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "MLFLOW_NOT_IMPORTED" in done.stdout
    assert not store_dir.exists()
    rows = read_table(out)
    expected = load_predictor(model_dir).predict(rows["text"].tolist())
    assert rows["label"].tolist() == expected["label"].tolist()
    probs = [c for c in rows.columns if c.startswith("p_")]
    np.testing.assert_allclose(rows[probs].to_numpy(float), expected[probs].to_numpy(float), atol=1e-6)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_local_model_needs_no_tracking_server_but_the_served_model_does(model_dir, tmp_path, capsys):
    from pipeline.cli.main import main

    server = f"tracking.uri=http://127.0.0.1:{_closed_port()}"
    common = ["input=seeds", f"paths.output_root={tmp_path}/outputs", server]
    assert main(["predict", f"output={tmp_path}/local.csv", f"model_uri={model_dir}", *common]) == 0
    assert (tmp_path / "local.csv").exists()
    capsys.readouterr()
    assert main(["predict", f"output={tmp_path}/served.csv", *common]) == 1
    err = capsys.readouterr().err
    assert "is not reachable" in err and "Traceback" not in err
    assert not (tmp_path / "served.csv").exists()


def test_the_shared_rust_tokenizer_gives_the_same_ids_whatever_the_python_tokenizer_did(tmp_path):
    """The predictor encodes with the tokenizer's own Rust backend (no copy, for start-up): a padded, untruncated
    call of the Python tokenizer in between must not change its ids or truncation flags."""
    from pipeline.models.base import load_predictor
    from pipeline.text.segmentation import seed_sentences

    predictor = load_predictor(make_stance_model(tmp_path / "short", max_length=8))
    texts = seed_sentences()[:6]
    ids, truncated = predictor.encode(texts)
    predictor.tokenizer(texts, padding="longest", truncation=False)
    again, truncated_again = predictor.encode(texts)
    assert again == ids and truncated_again.tolist() == truncated.tolist()
    assert truncated.any() and max(len(i) for i in ids) == 8
    assert ids == predictor.tokenizer(texts, truncation=True, max_length=8)["input_ids"]
