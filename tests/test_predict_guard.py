"""predict never destroys another run's output or its own input (issue 17 items 5, 6, 10, 11, 14): one run per
output at a time (a live run's parts are never touched, a dead run's are resumed), every written file checked
against the inputs before anything runs, a full disk is one line with the parts kept, cheap checks come before the
model loads, and a very long article is predicted in bounded chunks with the same output."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from pipeline.core.io import read_table
from test_predict import REPO, SEEDS, run_predict, served_rows, store  # noqa: F401 (fixtures)

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
WAIT_S = 300  # generous: the machine may be loaded; nothing here asserts on time

# `python -m pipeline ...` whose predictor, on its second chunk (the first is a part on disk by then), writes the
# file argv[1] and waits until the file argv[2] exists: a run paused in the middle of writing its parts.
PAUSED_RUN = r"""
import sys, time
from pathlib import Path
from pipeline.models.batching import TransformerPredictor
started, release = Path(sys.argv[1]), Path(sys.argv[2])
real, calls = TransformerPredictor.predict, {"n": 0}
def paused(self, texts, batch_size=64):
    calls["n"] += 1
    if calls["n"] == 2:
        started.touch()
        deadline = time.monotonic() + 900
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    return real(self, texts, batch_size)
TransformerPredictor.predict = paused
from pipeline.cli.main import main
raise SystemExit(main(sys.argv[3:]))
"""


def start_paused(tmp_path: Path, args: list[str], name: str) -> tuple[subprocess.Popen, Path, Path]:
    started, release = tmp_path / f"{name}.started", tmp_path / f"{name}.release"
    log = open(tmp_path / f"{name}.log", "w")
    proc = subprocess.Popen([sys.executable, "-c", PAUSED_RUN, str(started), str(release), *args], cwd=REPO,
                            env=ENV, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    deadline = time.monotonic() + WAIT_S
    while not started.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait(timeout=60)
            pytest.fail(f"the paused run did not reach its second chunk: {(tmp_path / f'{name}.log').read_text()[-3000:]}")
        time.sleep(0.1)
    return proc, started, release


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=WAIT_S)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=60)


def test_a_live_runs_output_is_refused_and_a_dead_runs_parts_are_resumed(store, tmp_path):
    """Item 5: two predicts on one output at once: the second deleted the first's live parts."""
    articles = [SEEDS[0], SEEDS[1]]
    expected = sorted(r["sentence_id"] for p in articles for r in served_rows(p))
    common = [f"input=[{articles[0]},{articles[1]}]", f"model_uri={store['model_dir']}", "predict.chunk_sentences=2",
              f"paths.output_root={tmp_path}/outputs", *store["overrides"]]

    out = tmp_path / "p.csv"
    live, _, release = start_paused(tmp_path, ["predict", f"output={out}", *common], "live")
    try:
        parts_dir = tmp_path / ".p.csv.parts"
        parts = sorted(p.name for p in parts_dir.glob("part-*.parquet"))
        assert parts
        second = cli("predict", f"output={out}", *common)
        assert second.returncode == 1, second.stderr[-2000:]
        errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in second.stderr
        assert errors[0].startswith(f"error: output={out} is being written by another run (process {live.pid})")
        assert sorted(p.name for p in parts_dir.glob("part-*.parquet")) == parts  # the live run's parts untouched
        release.touch()
        assert live.wait(timeout=WAIT_S) == 0, (tmp_path / "live.log").read_text()[-3000:]
    finally:
        stop(live)
    assert sorted(read_table(out)["sentence_id"]) == expected  # the first run's output is whole
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no lock file or parts left behind

    # A run killed (-9) in the middle: nobody holds the lock, so its parts are a dead run's and a resume goes on.
    out = tmp_path / "q.csv"
    dead, _, _ = start_paused(tmp_path, ["predict", f"output={out}", *common], "dead")
    try:
        dead.kill()
        dead.wait(timeout=60)
    finally:
        stop(dead)
    assert list((tmp_path / ".q.csv.parts").glob("part-*.parquet")) and not out.exists()
    resumed = cli("predict", f"output={out}", "predict.resume=true", *common)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert sorted(read_table(out)["sentence_id"]) == expected
    assert not (tmp_path / ".q.csv.parts").exists()


@pytest.fixture
def no_model(monkeypatch):
    """Fails the test if a model is fetched or loaded: the check under test must come first."""
    from pipeline.stages import predict as predict_module

    def refuse(*args, **kwargs):
        raise AssertionError("the model was fetched or loaded before the check")

    monkeypatch.setattr(predict_module, "resolve_model", refuse)
    monkeypatch.setattr(predict_module, "load_predictor", refuse)


@pytest.mark.parametrize("key", ["predict.report_path", "predict.plot_path", "predict.summary", "predict.errors"])
def test_every_written_file_is_checked_against_the_inputs_before_anything_runs(run_predict, tmp_path, no_model, key):
    """Item 6: predict.report_path=<the input> replaced the input with HTML."""
    article = tmp_path / "article.txt"
    article.write_bytes(SEEDS[0].read_bytes())
    before = article.read_bytes()
    err = run_predict(f"input={article}", f"output={tmp_path}/p.csv", f"{key}={article}", "predict.report=true",
                      "predict.plot=true", expect_error=True)
    assert str(err).startswith(f"{key}={article} is also an input") and "\n" not in str(err)
    assert article.read_bytes() == before
    assert not (tmp_path / "p.csv").exists() and not list(tmp_path.glob(".*"))  # nothing written, not even a lock


def test_two_outputs_on_one_path_and_an_output_directory_are_refused_up_front(run_predict, tmp_path, no_model):
    """Items 6 and 10: outputs against each other; `output=` an existing directory (refused after predicting)."""
    err = run_predict(f"input={SEEDS[0]}", f"output={tmp_path}/p.csv", "predict.report=true",
                      f"predict.report_path={tmp_path}/p.articles.csv", expect_error=True)
    assert str(err).startswith(f"predict.summary={tmp_path}/p.articles.csv is also predict.report_path=")
    (tmp_path / "out").mkdir()
    err = run_predict(f"input={SEEDS[0]}", f"output={tmp_path}/out", expect_error=True)
    assert str(err).startswith(f"output={tmp_path}/out is an existing directory; give the path of a file")
    assert list((tmp_path / "out").iterdir()) == []


def test_an_empty_input_alone_or_another_models_parts_fail_before_the_model_loads(run_predict, store, tmp_path,
                                                                                   monkeypatch, no_model):
    """Item 11: both were found only after the model had loaded (~10 s)."""
    import json

    from pipeline.stages import predict as predict_module
    from pipeline.models.store import resolve_model

    (tmp_path / "empty.txt").write_bytes(b"")
    err = run_predict(f"input={tmp_path}/empty.txt", f"output={tmp_path}/p.csv", expect_error=True)
    assert str(err) == (f"no usable article in input={tmp_path}/empty.txt: {tmp_path}/empty.txt: file is empty; "
                        f"remove it or give it some text; see {tmp_path}/p.errors.csv for why")
    # A resume needs the model's identity (its files, fetched), not the model loaded.
    monkeypatch.setattr(predict_module, "resolve_model", resolve_model)
    parts = tmp_path / ".q.csv.parts"
    parts.mkdir()
    (parts / "manifest.json").write_text(json.dumps({"model": "models:/other@x#0123456789abcdef"}))
    err = run_predict(f"input={SEEDS[0]}", f"output={tmp_path}/q.csv", "predict.resume=true",
                      f"model_uri={store['model_dir']}", expect_error=True)
    assert "were predicted by model 'models:/other@x#0123456789abcdef'" in str(err)


def test_a_full_disk_during_the_merge_is_one_error_and_the_parts_are_resumed(run_predict, tmp_path, monkeypatch):
    """Item 10: ENOSPC in the final merge gave two chained tracebacks (the parts were kept, which is right)."""
    from pipeline.prediction.outputs import TableWriter

    def disk_full(self, df):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))

    inputs = f"input=[{SEEDS[0]},{SEEDS[1]}]"
    out = tmp_path / "p.csv"
    monkeypatch.setattr(TableWriter, "write", disk_full)
    err = run_predict(inputs, f"output={out}", "predict.chunk_sentences=4", expect_error=True)
    message = str(err)
    assert "\n" not in message and message.startswith(f"cannot write {out} (No space left on device)")
    assert "predict.resume=true" in message and str(tmp_path / ".p.csv.parts") in message
    assert not out.exists() and list((tmp_path / ".p.csv.parts").glob("part-*.parquet"))
    assert not list(tmp_path.glob(".p.csv.*.tmp"))
    monkeypatch.undo()
    report = run_predict(inputs, f"output={out}", "predict.resume=true")
    assert report["skipped_done"] == 2 and report["articles"] == 0
    assert sorted(read_table(out)["sentence_id"]) == sorted(r["sentence_id"] for p in SEEDS[:2] for r in served_rows(p))


def long_article(path: Path, sentences: int) -> Path:
    """One article of `sentences` distinct Arabic sentences, one paragraph per 10."""
    base = [r["text"].rstrip(".!?؟…") for p in SEEDS for r in served_rows(p)]
    lines = [f"{base[i % len(base)]} {i}." for i in range(sentences)]
    path.write_text("\n\n".join(" ".join(lines[i:i + 10]) for i in range(0, sentences, 10)) + "\n", encoding="utf-8")
    return path


def test_a_long_article_is_predicted_in_bounded_chunks_with_the_same_output(run_predict, store, tmp_path,
                                                                            monkeypatch):
    """Item 14: one very long article was held and predicted whole (1.38 GiB for 75k sentences)."""
    from pipeline.models.batching import TransformerPredictor

    article = long_article(tmp_path / "long.txt", 60)
    inputs = f"input=[{SEEDS[2]},{article},{SEEDS[3]}]"
    # batch_size=1: each sentence is predicted alone, so the chunking alone could change an output
    common = (inputs, f"model_uri={store['model_dir']}", "predict.batch_size=1")
    sizes: list[int] = []
    real = TransformerPredictor.predict

    def counting(self, texts, batch_size=64):
        sizes.append(len(texts))
        return real(self, texts, batch_size)

    monkeypatch.setattr(TransformerPredictor, "predict", counting)
    whole = run_predict(*common, f"output={tmp_path}/whole.parquet", "predict.chunk_sentences=1000")
    assert max(sizes) > 60
    sizes.clear()
    chunked = run_predict(*common, f"output={tmp_path}/chunked.parquet", "predict.chunk_sentences=7")
    assert sizes and max(sizes) <= 7  # the predictor never gets more than a chunk at once
    pd.testing.assert_frame_equal(pd.read_parquet(chunked["output"]), pd.read_parquet(whole["output"]))
    pd.testing.assert_frame_equal(pd.read_parquet(chunked["summary"]), pd.read_parquet(whole["summary"]))
    assert pd.read_parquet(chunked["summary"]).set_index("article_id").loc["long", "sentences"] >= 60

    # Killed in the middle of the long article: the resume goes on from its first missing sentence.
    calls = {"n": 0}

    def dies_in_the_long_article(self, texts, batch_size=64):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(self, texts, batch_size)

    monkeypatch.setattr(TransformerPredictor, "predict", dies_in_the_long_article)
    with pytest.raises(KeyboardInterrupt):
        run_predict(*common, f"output={tmp_path}/resumed.parquet", "predict.chunk_sentences=7")
    monkeypatch.setattr(TransformerPredictor, "predict", real)
    report = run_predict(*common, f"output={tmp_path}/resumed.parquet", "predict.chunk_sentences=7",
                         "predict.resume=true")
    assert report["skipped_done"] == 1  # the first article, whole in the parts; the long one is continued
    pd.testing.assert_frame_equal(pd.read_parquet(report["output"]), pd.read_parquet(whole["output"]))
    pd.testing.assert_frame_equal(pd.read_parquet(report["summary"]), pd.read_parquet(whole["summary"]))


def test_a_long_sentence_table_article_keeps_its_last_piece_and_counts_once(run_predict, store, tmp_path):
    """A sentence table whose first article is longer than predict.chunk_sentences: its last piece was taken for a
    second article of the same id and dropped, and every piece was counted as an article."""
    texts = [f"{r['text'].rstrip('.!?؟…')} {i}." for i, r in enumerate(served_rows(SEEDS[2])[:20])]
    rows = [{"article_id": "long", "sentence_id": f"s{i}", "text": t} for i, t in enumerate(texts)]
    rows.append({"article_id": "short", "sentence_id": "x", "text": "رفضت روسيا المقترح."})
    table = tmp_path / "sentences.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    report = run_predict(f"input={table}", f"output={tmp_path}/p.csv", f"model_uri={store['model_dir']}",
                         "predict.chunk_sentences=7")
    out = pd.read_csv(report["output"])
    assert list(out.loc[out["article_id"] == "long", "sentence_id"]) == [f"s{i}" for i in range(20)]
    assert report["articles"] == 2 and report["sentences"] == 21
