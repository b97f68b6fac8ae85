"""Shared fixtures: every test runs from the repo root, offline, with its own paths and MLflow store."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SEEDS = REPO / "seeds"

# ArSarcasm's raw sentiment labels -> ours, read from their one home, conf/data/arsarcasm.yaml.
ARSARCASM_LABEL_MAP = {str(k): str(v) for k, v in
                       yaml.safe_load((REPO / "conf" / "data" / "arsarcasm.yaml").read_text(encoding="utf-8"))["label_map"].items()}
# The same map as a Hydra override, for tests that label a table the way data=arsarcasm does.
ARSARCASM_LABEL_MAP_OVERRIDE = "+data.label_map={" + ",".join(f"{k}:{v}" for k, v in ARSARCASM_LABEL_MAP.items()) + "}"

# Set before anything imports mlflow/transformers.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.pop("MLFLOW_TRACKING_URI", None)


def load_bench(name: str):
    """bench/<name>.py as a module (the benchmarks are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)


@pytest.fixture
def make_cfg(tmp_path):
    """Compose the real config for a stage with every output path under tmp_path.

    `make_cfg("segment", "data.articles_glob=/x/*.txt")` → DictConfig, like lightning-hydra-template's
    tests that compose configs pointed at a temporary directory.
    """
    from pipeline.core.config import compose_config

    counter = itertools.count()

    def _make(stage: str, *overrides: str):
        n = next(counter)
        base = [
            f"paths.work_dir={tmp_path}/work",
            f"paths.output_root={tmp_path}/outputs",
            f"paths.run_dir={tmp_path}/runs/{stage}-{n}",
            f"tracking.uri=sqlite:///{tmp_path}/mlruns/mlflow.db",
            f"tracking.artifact_root={tmp_path}/mlruns/artifacts",
            f"predict.onnx_cache={tmp_path}/onnx-cache",  # never the user's ~/.cache
        ]
        return compose_config(stage, [*base, *overrides])

    return _make


@pytest.fixture(scope="session")
def small_encoder(tmp_path_factory) -> Path:
    """A small BERT directory standing in for a pretrained encoder (config, tokenizer, safetensors weights), where
    the README points at ~/models/multilingual-e5-small: built here, no ../shared and no hub."""
    from pipeline import LABELS
    from pipeline.text.segmentation import seed_sentences
    from pipeline.models.tiny import build_tiny_bert

    target = tmp_path_factory.mktemp("encoder") / "e5-standin"
    build_tiny_bert(seed_sentences(), target, LABELS, seed=0, hidden_size=32, num_layers=1, num_heads=2,
                    intermediate_size=64)
    return target


@pytest.fixture(scope="session")
def spark():
    """One local[2] SparkSession for every Spark test of the run; skipped without pyspark or a Java runtime."""
    import logging
    import shutil
    import sys

    pytest.importorskip("pyspark", reason="pyspark is not installed: `pip install -e '.[spark]'` runs this test")
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("Spark needs a Java runtime (java on PATH or JAVA_HOME)")
    from pyspark.sql import SparkSession

    # py4j logs "closing connection" at interpreter exit, after pytest has closed the captured stream.
    logging.getLogger("py4j").setLevel(logging.WARNING)
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    session = (SparkSession.builder.master("local[2]").appName("stance-test")
               .config("spark.ui.enabled", "false")
               .config("spark.ui.showConsoleProgress", "false")
               .config("spark.sql.shuffle.partitions", "2")
               .config("spark.sql.execution.arrow.pyspark.enabled", "true")
               .config("spark.driver.bindAddress", "127.0.0.1")
               .config("spark.driver.host", "127.0.0.1")
               .getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture
def kill_when_marked():
    """kill_when_marked(cmd, marker, what, **popen) -> the killed Popen: start `cmd`, wait (up to 5 min, a loaded machine) until it
    writes `marker`, then kill it with SIGKILL — the crash a user's kill -9 or an OOM kill causes."""
    import signal
    import subprocess
    import time

    def run(cmd, marker: Path, what: str, **popen) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, **popen)
        try:
            deadline = time.monotonic() + 300
            while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert marker.exists(), f"the subprocess never {what}"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        return proc

    return run
