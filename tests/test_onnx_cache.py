"""predict.onnx_cache (pipeline.models.onnx_cache): the onnx backend's export is made once and reused by later loads,
in this process and in others, keyed by the weights' content and the versions; a partial export is never read; at
most onnx_cache_keep entries stay; a cache that cannot be written falls back to a temporary directory; two
processes loading the same model at once export it once; spark_predict passes the cache to its executors."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pipeline import LABELS
from pipeline.core.errors import PipelineError
from pipeline.models import backends, onnx_cache
from pipeline.models.base import load_predictor, write_model_metadata
from pipeline.text.preprocess import TextPreprocessor
from pipeline.text.segmentation import seed_sentences

pytestmark = pytest.mark.skipif(backends.available("onnx") is not None,
                                reason="predict.backend=onnx is not installed here (the onnx extra)")

TOLERANCE = 1e-4
REPO = Path(__file__).resolve().parents[1]
SUBPROCESS_TIMEOUT_S = 600  # a cold import of torch + onnxruntime and a tiny export on a loaded machine


def tiny_model(out: Path, seed: int) -> Path:
    from pipeline.models.tiny import build_tiny_bert

    build_tiny_bert(seed_sentences(), out, LABELS, seed=seed)
    write_model_metadata(out, kind="transformer", labels=LABELS, max_length=32, base_model="tiny",
                         preprocessor=TextPreprocessor(None))
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("onnx-cache") / "model", seed=3)


@pytest.fixture
def exports(monkeypatch) -> list:
    """Every call of backends.export (the slow torch.onnx export), recorded."""
    calls, real = [], backends.export
    monkeypatch.setattr(backends, "export", lambda *a, **k: (calls.append(a[1]), real(*a, **k))[1])
    return calls


def onnx(cache: Path | None, keep: int = 4) -> backends.Backend:
    return backends.option({"backend": "onnx", "onnx_cache": None if cache is None else str(cache),
                            "onnx_cache_keep": keep})


def entries(cache: Path) -> list[Path]:
    return onnx_cache.entries(cache)


def test_a_second_load_reads_the_cached_export_and_gives_eagers_probabilities(model_dir, tmp_path, exports, caplog):
    cache = tmp_path / "cache"
    texts = seed_sentences() + ["", "اتفاق"]
    with caplog.at_level(logging.INFO, logger="pipeline.models.onnx_cache"):
        first = load_predictor(model_dir, backend=onnx(cache))
        second = load_predictor(model_dir, backend=onnx(cache))
    assert len(exports) == 1  # without the cache, every load exports
    assert [r.getMessage() for r in caplog.records if "exported in" in r.getMessage()] and \
        [r.getMessage() for r in caplog.records if "cache hit" in r.getMessage()]
    assert second.forward.path == first.forward.path and second.forward.path.parent.parent == cache
    eager = load_predictor(model_dir).predict(texts, batch_size=7)
    out = second.predict(texts, batch_size=7)
    columns = [f"p_{label}" for label in LABELS]
    assert np.abs(out[columns].to_numpy() - eager[columns].to_numpy()).max() < TOLERANCE
    assert (out["label"] == eager["label"]).all()
    built = json.loads((second.forward.path.parent / onnx_cache.ENTRY_FILE).read_text())["built_from"]
    assert built["output"] == "logits" and built["opset"] == backends.ONNX_OPSET and built["fused"] is True
    assert {"torch", "transformers", "onnx", "onnxruntime"} <= set(built) and len(built["weights"]) == 64


def test_no_cache_exports_at_every_load(model_dir, exports):
    load_predictor(model_dir, backend="onnx")
    load_predictor(model_dir, backend=onnx(None))
    assert len(exports) == 2


def test_changed_weights_or_versions_get_a_new_entry_never_the_stale_file(model_dir, tmp_path, exports,
                                                                          monkeypatch):
    import shutil

    cache = tmp_path / "cache"
    load_predictor(model_dir, backend=onnx(cache))
    other = tmp_path / "retrained"
    shutil.copytree(model_dir, other)
    tiny_model(tmp_path / "seed9", seed=9)
    shutil.copy(tmp_path / "seed9" / "model.safetensors", other / "model.safetensors")  # same name, new weights
    load_predictor(other, backend=onnx(cache))
    assert len(exports) == 2 and len(entries(cache)) == 2
    # the same weights copied elsewhere (as an MLflow download: a new path and new mtimes) hit
    copy = tmp_path / "downloaded"
    shutil.copytree(model_dir, copy)
    os.utime(copy / "model.safetensors", (1, 1))
    load_predictor(copy, backend=onnx(cache))
    assert len(exports) == 2
    real = onnx_cache.versions
    monkeypatch.setattr(onnx_cache, "versions", lambda: {**real(), "onnxruntime": "0.0.1"})
    load_predictor(model_dir, backend=onnx(cache))
    assert len(exports) == 3 and len(entries(cache)) == 3


def test_a_new_process_reads_the_cache(model_dir, tmp_path, exports):
    cache = tmp_path / "cache"
    load_predictor(model_dir, backend=onnx(cache))
    [log] = run_loaders(model_dir, cache, 1, tmp_path)
    assert "cache hit" in log and "exported in" not in log


def test_a_partial_export_left_by_a_killed_process_is_never_read_and_is_removed(model_dir, tmp_path, exports):
    cache = tmp_path / "cache"
    load_predictor(model_dir, backend=onnx(cache))
    [entry] = entries(cache)
    # what a process killed mid-export leaves: a partial dir (garbage file), never renamed into place
    for path in entry.iterdir():
        path.unlink()
    entry.rmdir()
    partial = cache / f"{onnx_cache.PARTIAL}{entry.name}-killed"
    partial.mkdir()
    (partial / "model.fused.onnx").write_bytes(b"not an onnx file")
    (partial / onnx_cache.ENTRY_FILE).write_text(json.dumps({"file": "model.fused.onnx"}))
    entry.mkdir()  # and a file at the entry's own place that was never completed (no entry.json)
    (entry / "model.fused.onnx").write_bytes(b"not an onnx file either")
    predictor = load_predictor(model_dir, backend=onnx(cache))
    assert len(exports) == 2 and predictor.forward.path.parent == entry
    assert not partial.exists()  # its key's lock was free: nobody was writing it


def test_a_damaged_cached_file_is_exported_again(model_dir, tmp_path, exports, caplog):
    cache = tmp_path / "cache"
    path = load_predictor(model_dir, backend=onnx(cache)).forward.path
    path.write_bytes(b"damaged")
    with caplog.at_level(logging.WARNING, logger="pipeline.models.onnx_cache"):
        predictor = load_predictor(model_dir, backend=onnx(cache))
    assert len(exports) == 2 and predictor.forward.path == path and path.stat().st_size > len(b"damaged")
    assert any("exporting it again" in r.getMessage() for r in caplog.records)


def test_at_most_keep_entries_stay_least_recently_used_removed(tmp_path, exports):
    cache = tmp_path / "cache"
    models = [tiny_model(tmp_path / f"m{i}", seed=20 + i) for i in range(3)]
    paths = [load_predictor(models[0], backend=onnx(cache, keep=2)).forward.path,
             load_predictor(models[1], backend=onnx(cache, keep=2)).forward.path]
    load_predictor(models[0], backend=onnx(cache, keep=2))  # a hit: now the most recently used
    paths.append(load_predictor(models[2], backend=onnx(cache, keep=2)).forward.path)
    assert len(exports) == 3
    assert sorted(entries(cache)) == sorted([paths[0].parent, paths[2].parent])  # models[1] was the oldest use
    assert not (cache / f"{paths[1].parent.name}.lock").exists()


def test_a_cache_dir_that_cannot_be_written_falls_back_to_a_temporary_one(model_dir, tmp_path, exports, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with caplog.at_level(logging.WARNING, logger="pipeline.models.onnx_cache"):
        predictor = load_predictor(model_dir, backend=onnx(blocker / "cache"))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "temporary directory" in warnings[0].getMessage()
    assert predictor.forward.path is None and len(exports) == 1
    assert predictor.predict(["اتفاق"])["label"].iloc[0] in LABELS


def test_the_pyfunc_model_takes_the_cache_from_its_model_config(model_dir, tmp_path, exports):
    from types import SimpleNamespace

    from pipeline.models import store

    cache = tmp_path / "served"
    config = {"backend": "onnx", "onnx_cache": str(cache), "onnx_cache_keep": 2, "quantize": None}
    assert store.model_config_of(config) == config  # what a model is logged with
    for _ in range(2):  # `mlflow models serve` restarted: the second load reads the cache
        model = store.StancePyfuncModel()
        model.load_context(SimpleNamespace(artifacts={store.ARTIFACT_KEY: str(model_dir)}, model_config=config))
        assert model.predictor.backend == "onnx" and model.predictor.forward.path.parent.parent == cache
    assert len(exports) == 1


def test_onnx_cache_keep_below_one_is_one_line_naming_the_key():
    with pytest.raises(PipelineError, match=r"predict.onnx_cache_keep=0") as info:
        backends.option({"backend": "onnx", "onnx_cache": "/tmp/x", "onnx_cache_keep": 0})
    assert "\n" not in str(info.value)
    assert backends.option({"backend": "onnx", "onnx_cache": None, "onnx_cache_keep": 0}).onnx_cache is None


def test_two_processes_loading_at_once_export_once(model_dir, tmp_path):
    cache = tmp_path / "cache"
    logs = run_loaders(model_dir, cache, 2, tmp_path, slow_export_s=3)
    assert sum("exported in" in log for log in logs) == 1, logs
    assert sum("cache hit" in log for log in logs) == 1, logs
    assert len(entries(cache)) == 1 and not list(cache.glob(f"{onnx_cache.PARTIAL}*"))


LOADER = textwrap.dedent("""
    import logging, sys, time
    from pathlib import Path
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    from pipeline.models import backends
    from pipeline.models.base import load_predictor
    model_dir, cache, ready, n, slow = sys.argv[1:6]
    real = backends.export
    def slow_export(*a, **k):  # widens the window in which a second process would also find no entry
        time.sleep(float(slow))
        return real(*a, **k)
    backends.export = slow_export
    Path(ready, str(__import__("os").getpid())).touch()
    deadline = time.monotonic() + 300
    while len(list(Path(ready).iterdir())) < int(n) and time.monotonic() < deadline:
        time.sleep(0.05)  # every process imported: they load at once
    option = backends.option({"backend": "onnx", "onnx_cache": cache, "onnx_cache_keep": 4})
    load_predictor(model_dir, backend=option).predict(["x"])
""")


def run_loaders(model_dir: Path, cache: Path, n: int, tmp_path: Path, slow_export_s: float = 0) -> list[str]:
    """The stderr of `n` processes that each load `model_dir` with the cache, started together."""
    ready = tmp_path / f"ready-{n}"
    ready.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    procs, files = [], [open(tmp_path / f"loader-{n}-{i}.log", "w") for i in range(n)]
    try:
        for i in range(n):
            procs.append(subprocess.Popen(
                [sys.executable, "-c", LOADER, str(model_dir), str(cache), str(ready), str(n), str(slow_export_s)],
                stdout=subprocess.DEVNULL, stderr=files[i], cwd=REPO, env=env))
        for proc in procs:
            proc.wait(timeout=SUBPROCESS_TIMEOUT_S)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for handle in files:
            handle.close()
    logs = [(tmp_path / f"loader-{n}-{i}.log").read_text() for i in range(n)]
    assert all(proc.returncode == 0 for proc in procs), logs
    return logs


@pytest.mark.slow
def test_spark_predict_with_onnx_gives_the_local_stages_rows_from_one_cached_export(spark, make_cfg, tmp_path):
    """predict.onnx_cache reaches the executors with predict.backend (backends.Backend is pickled with the job)."""
    import pandas as pd

    from conftest import SEEDS
    from pipeline.stages.predict import predict
    from pipeline.stages.spark_predict import spark_predict

    model = tiny_model(tmp_path / "model", seed=3)
    cache = tmp_path / "spark-cache"
    local = predict(make_cfg("predict", f"input={SEEDS}", f"output={tmp_path}/local.parquet", f"model_uri={model}"))
    spark_predict(make_cfg("spark_predict", f"input={SEEDS}", f"output={tmp_path}/spark", f"model_uri={model}",
                           "predict.backend=onnx", f"predict.onnx_cache={cache}"))
    key = ["article_id", "idx"]
    want = pd.read_parquet(local["output"]).sort_values(key).reset_index(drop=True)
    got = pd.read_parquet(tmp_path / "spark").sort_values(key).reset_index(drop=True)
    columns = [f"p_{label}" for label in LABELS]
    assert len(got) == len(want) > 0 and (got["label"] == want["label"]).all()
    assert np.abs(got[columns].to_numpy() - want[columns].to_numpy()).max() < TOLERANCE
    [entry] = entries(cache)  # the driver's export; the executors read it (their copy of the model hashes alike)
