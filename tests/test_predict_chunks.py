"""predict's per-chunk work and resume state (issue 21): the per-article summary is accumulated chunk by chunk with
work in proportion to the chunk (not to the articles seen so far), resume keeps per-article state (the done article
ids, the last article's written row count), never every (article, sentence) pair, and the outputs (sentences, article
summary, timeline, outlets) stay byte for byte those of the code before, also after a kill -9 in the middle of an
article.

The golden files were written by the code before this change (PIPELINE_REGEN_GOLDEN=1 writes them again), with
probabilities made from each sentence's text (`fixed_scores`), so they depend on no model's weights."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from test_predict import REPO, SEEDS, run_predict, store  # noqa: F401 (fixtures)

GOLDEN = REPO / "tests" / "golden" / "predict_chunks"
NAMES = ("p.jsonl", "p.articles.jsonl", "p.timeline.jsonl", "p.outlets.jsonl")  # JSON: every digit
CHUNK = "predict.chunk_sentences=4"  # seed articles have 9-20 sentences: each spans several chunks
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}

FIXED_SCORES = r'''
import hashlib
import numpy as np

def fixed_scores(self, texts, batch_size):
    """Probabilities from an md5 of each (preprocessed) text: the same on every machine, for every chunking."""
    rows = []
    for text in texts:
        raw = np.frombuffer(hashlib.md5(text.encode("utf-8")).digest()[:len(self.labels)], dtype=np.uint8)
        weights = raw.astype(np.float64) + 1.0
        rows.append(weights / weights.sum())
    return np.array(rows).reshape(len(texts), len(self.labels)), np.zeros(len(texts), dtype=bool)
'''
namespace: dict = {}
exec(FIXED_SCORES, namespace)
fixed_scores = namespace["fixed_scores"]

# A subprocess predict with fixed_scores that, on its third chunk (two parts on disk, the first article written in
# part), writes the marker argv[1] and waits to be killed.
KILLED_RUN = FIXED_SCORES + r'''
import sys, time
from pathlib import Path
from pipeline.models.batching import TransformerPredictor
marker, calls = Path(sys.argv[1]), {"n": 0}
def scores(self, texts, batch_size):
    calls["n"] += 1
    if calls["n"] == 3:
        marker.touch()
        time.sleep(600)
    return fixed_scores(self, texts, batch_size)
TransformerPredictor._scores = scores
from pipeline.cli.main import main
raise SystemExit(main(sys.argv[2:]))
'''


def articles_table(path: Path) -> Path:
    """Ten articles (the five seeds twice) with dates over three days and two outlets: one row per article."""
    from pipeline.core.io import read_text_strict

    rows = [{"article_id": f"a{i}", "date": f"2022-01-{10 + i % 3:02d}", "outlet": f"outlet{i % 2}",
             "text": read_text_strict(SEEDS[i % len(SEEDS)])} for i in range(10)]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture
def fixed(monkeypatch):
    from pipeline.models.batching import TransformerPredictor

    monkeypatch.setattr(TransformerPredictor, "_scores", fixed_scores)


def check_golden(folder: Path) -> None:
    if os.environ.get("PIPELINE_REGEN_GOLDEN") == "1":
        GOLDEN.mkdir(parents=True, exist_ok=True)
        for name in NAMES:
            (GOLDEN / name).write_bytes((folder / name).read_bytes())
    for name in NAMES:
        assert (folder / name).read_bytes() == (GOLDEN / name).read_bytes(), name


def test_multi_chunk_outputs_are_byte_identical_to_the_code_before(run_predict, store, tmp_path, fixed):
    table = articles_table(tmp_path / "articles.csv")
    report = run_predict(f"input={table}", f"output={tmp_path}/p.jsonl", f"model_uri={store['model_dir']}", CHUNK)
    assert report["articles"] == 10 and report["sentences"] > 40
    check_golden(tmp_path)


def test_a_resume_after_kill_9_mid_article_gives_the_same_outputs(run_predict, store, tmp_path, fixed,
                                                                   kill_when_marked):
    table = articles_table(tmp_path / "articles.csv")
    common = [f"input={table}", f"output={tmp_path}/p.jsonl", f"model_uri={store['model_dir']}", CHUNK]
    marker = tmp_path / "third-chunk"
    with open(tmp_path / "killed.log", "w") as log:
        kill_when_marked([sys.executable, "-c", KILLED_RUN, str(marker), "predict", *common,
                          f"paths.output_root={tmp_path}/outputs", *store["overrides"]],
                         marker, "reached its third chunk", cwd=REPO, env=ENV, stdout=log, stderr=subprocess.STDOUT)
    parts = sorted((tmp_path / ".p.jsonl.parts").glob("part-*.parquet"))
    assert len(parts) == 2 and not (tmp_path / "p.jsonl").exists()
    written = pd.concat([pd.read_parquet(p) for p in parts])
    assert set(written["article_id"]) == {"a0"}  # the first article, half written
    report = run_predict(*common, "predict.resume=true")
    assert report["articles"] == 10 and report["skipped_done"] == 0
    check_golden(tmp_path)


def test_the_resume_state_is_per_article_not_per_sentence(tmp_path):
    from pipeline.prediction.parts import resume_state

    first = pd.DataFrame({"article_id": ["a"] * 3 + ["b"] * 2, "sentence_id": list("12345")})
    second = pd.DataFrame({"article_id": ["b"] * 4, "sentence_id": list("6789")})
    first.to_parquet(tmp_path / "part-000001.parquet")
    second.to_parquet(tmp_path / "part-000002.parquet")
    state = resume_state([tmp_path / "part-000001.parquet", tmp_path / "part-000002.parquet"], chunk_rows=2)
    assert state.done == {"a", "b"} and state.tail == "b" and state.tail_rows == 6
    assert set(vars(state)) == {"done", "tail", "tail_rows"}  # nothing per sentence


def test_the_summary_update_touches_only_the_chunks_articles():
    """The per-article table was re-aligned whole on every chunk: work grew with the articles seen so far."""
    from pipeline.prediction.outputs import Summary

    labels = ["negative", "neutral", "positive"]
    summary = Summary(labels)
    rng = np.random.default_rng(0)
    touched, expected = [], {}
    for chunk in range(300):
        ids = [f"a{chunk}", f"a{chunk}", f"a{chunk + 1}"]  # an article over two chunks, then a new one
        p = rng.dirichlet(np.ones(3), size=3)
        frame = pd.DataFrame({"article_id": ids, "label": [labels[i] for i in p.argmax(axis=1)],
                              "truncated": False, **{f"p_{x}": p[:, j] for j, x in enumerate(labels)}})
        summary.add(frame)
        touched.append(summary.rows_touched)
        for a, row in zip(ids, p):
            expected.setdefault(a, []).append(row[2] - row[0])
    assert touched == [2] * 300  # the chunk's two articles, never the 301 seen in all
    out = summary.frame().set_index("article_id")
    assert len(out) == 301 and list(out.index[:3]) == ["a0", "a1", "a2"]
    assert out["sentences"].to_dict() == {a: len(v) for a, v in expected.items()}
    np.testing.assert_allclose(out["net_stance"], [np.mean(expected[a]) for a in out.index], rtol=1e-12)
