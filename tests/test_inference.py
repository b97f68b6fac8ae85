"""pipeline.models.base: the stance model directory contract, the fast predictor, the MLflow pyfunc model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import LABELS
from pipeline.core.errors import PipelineError
from pipeline.models.base import load_predictor, read_model_metadata, write_model_metadata
from pipeline.models.store import log_stance_model
from pipeline.text.preprocess import TextPreprocessor
from pipeline.text.segmentation import seed_sentences

MAX_LENGTH = 24  # short on purpose: several seed sentences are longer, so truncation is exercised


def make_stance_model(out_dir: Path, *, max_length: int = MAX_LENGTH, preprocess_as: str | None = None,
                      seed: int = 3, preprocessor: TextPreprocessor | None = None) -> Path:
    """A tiny random-weight BERT stance model directory, as the train stage would write it (`seed`: its weights;
    `preprocessor`: its preprocessing, default `preprocess_as` alone)."""
    from pipeline.models.tiny import build_tiny_bert

    build_tiny_bert(seed_sentences(), out_dir, LABELS, seed=seed)
    write_model_metadata(out_dir, kind="transformer", labels=LABELS, max_length=max_length,
                         base_model="tiny", preprocessor=preprocessor or TextPreprocessor(preprocess_as))
    return Path(out_dir)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_stance_model(tmp_path_factory.mktemp("stance") / "model")


def reference_probs(model_dir: Path, texts: list[str], max_length: int) -> np.ndarray:
    """What plain transformers gives: one padded batch, tokenizer truncation, softmax."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    enc = tok(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    with torch.no_grad():
        return torch.softmax(model(**enc).logits.double(), dim=-1).numpy()


def test_metadata_round_trip(model_dir):
    meta = read_model_metadata(model_dir)
    assert meta == {"format": 1, "kind": "transformer", "labels": list(LABELS), "max_length": MAX_LENGTH,
                    "base_model": "tiny"}
    assert json.loads((model_dir / "preprocess.json").read_text()) == {"arabert_model": None}


def test_predictor_matches_plain_transformers_and_flags_truncation(model_dir):
    texts = seed_sentences()
    predictor = load_predictor(model_dir)
    assert (predictor.kind, predictor.labels, predictor.max_length) == ("transformer", list(LABELS), MAX_LENGTH)
    out = predictor.predict(texts, batch_size=7)  # batches of mixed lengths, re-ordered by length
    assert list(out.columns) == ["label", "p_negative", "p_neutral", "p_positive", "truncated"]
    probs = out[predictor.prob_columns].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(probs, reference_probs(model_dir, texts, MAX_LENGTH), atol=1e-5)
    assert (out["label"] == np.asarray(LABELS)[probs.argmax(axis=1)]).all()
    np.testing.assert_allclose(predictor.predict_proba(texts, batch_size=64), probs, atol=1e-6)
    # truncated exactly when the untruncated encoding is longer than max_length
    from transformers import AutoTokenizer

    lengths = np.array([len(ids) for ids in AutoTokenizer.from_pretrained(model_dir)(texts)["input_ids"]])
    assert 0 < out["truncated"].sum() < len(texts)
    assert (out["truncated"].to_numpy() == (lengths > MAX_LENGTH)).all()


def test_empty_and_odd_inputs(model_dir):
    predictor = load_predictor(model_dir)
    assert predictor.predict_proba([]).shape == (0, 3)
    out = predictor.predict(["", "   ", "!!!", "اتفاق"])
    assert len(out) == 4 and not out["truncated"].any()
    with pytest.raises(PipelineError, match="batch_size"):
        predictor.predict(["x"], batch_size=0)


def test_int8_predictor_runs_and_mostly_agrees(model_dir):
    texts = seed_sentences()
    full = load_predictor(model_dir).predict_proba(texts)
    int8 = load_predictor(model_dir, quantize="int8").predict_proba(texts)
    np.testing.assert_allclose(int8.sum(axis=1), 1.0, atol=1e-9)
    assert np.abs(int8 - full).max() < 0.05
    with pytest.raises(PipelineError, match="int8"):
        load_predictor(model_dir, quantize="int4")


def test_not_a_model_directory_is_a_clear_error(tmp_path, model_dir):
    with pytest.raises(PipelineError, match="no such model directory"):
        load_predictor(tmp_path / "nope")
    with pytest.raises(PipelineError, match="stance_model.json is missing"):
        load_predictor(tmp_path)
    (tmp_path / "stance_model.json").write_text('{"format": 9, "kind": "transformer", "labels": [], "max_length": 8}')
    with pytest.raises(PipelineError, match="format 9"):
        load_predictor(tmp_path)
    with pytest.raises(PipelineError, match="unknown stance model kind"):
        write_model_metadata(tmp_path / "m", kind="svm", labels=LABELS, max_length=8, base_model="x",
                             preprocessor=TextPreprocessor(None))


@pytest.mark.parametrize("stored_as", ["skops", "legacy joblib"])
def test_tfidf_model_directory(tmp_path, stored_as):
    import joblib
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from pipeline.models.trust import save_sklearn

    texts = seed_sentences()
    y = [LABELS[i % 3] for i in range(len(texts))]
    pipe = make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=200)).fit(texts, y)
    if stored_as == "skops":
        save_sklearn(pipe, tmp_path)
    else:  # written before skops: still read (fetch_model_dir decides whether it may be)
        joblib.dump(pipe, tmp_path / "model.joblib")
    write_model_metadata(tmp_path, kind="tfidf", labels=LABELS, max_length=512, base_model="tfidf",
                         preprocessor=TextPreprocessor(None))
    predictor = load_predictor(tmp_path)
    out = predictor.predict(texts[:10])
    expected = pipe.predict_proba(texts[:10])[:, [list(pipe.classes_).index(c) for c in LABELS]]
    np.testing.assert_allclose(out[predictor.prob_columns].to_numpy(), expected, atol=1e-9)
    assert (out["label"] == pipe.predict(texts[:10])).all() and not out["truncated"].any()


def test_logged_pyfunc_model_gives_the_same_answer_in_a_fresh_process(model_dir, make_cfg, tmp_path):
    import mlflow

    from pipeline.core import tracking

    cfg = make_cfg("train")
    texts = seed_sentences()[:20]
    with tracking.start_run(cfg, "log-test", log_params=False):
        info = log_stance_model(model_dir, input_example=texts[:2])
    expected = load_predictor(model_dir).predict(texts)[["label", "p_negative", "p_neutral", "p_positive"]]

    loaded = mlflow.pyfunc.load_model(info.model_uri)
    got = loaded.predict(pd.DataFrame({"text": texts}))
    assert list(got.columns) == list(expected.columns)
    assert (got["label"] == expected["label"]).all()
    np.testing.assert_allclose(got.iloc[:, 1:].to_numpy(), expected.iloc[:, 1:].to_numpy(), atol=1e-6)

    # A fresh interpreter that only knows the tracking URI and the model URI.
    script = (
        "import sys, json, mlflow, pandas as pd\n"
        "mlflow.set_tracking_uri(sys.argv[1])\n"
        "m = mlflow.pyfunc.load_model(sys.argv[2])\n"
        "texts = json.loads(open(sys.argv[3], encoding='utf-8').read())\n"
        "m.predict(pd.DataFrame({'text': texts})).to_json(sys.argv[4], orient='records', force_ascii=False)\n"
    )
    (tmp_path / "texts.json").write_text(json.dumps(texts, ensure_ascii=False), encoding="utf-8")
    subprocess.run([sys.executable, "-c", script, tracking.tracking_uri(cfg), info.model_uri,
                    str(tmp_path / "texts.json"), str(tmp_path / "out.json")], check=True, timeout=120)
    fresh = pd.read_json(tmp_path / "out.json", orient="records")
    assert (fresh["label"] == expected["label"]).all()
    np.testing.assert_allclose(fresh[["p_negative", "p_neutral", "p_positive"]].to_numpy(),
                               expected.iloc[:, 1:].to_numpy(), atol=1e-6)


def test_log_stance_model_needs_an_active_run(model_dir):
    import mlflow

    assert mlflow.active_run() is None
    with pytest.raises(PipelineError, match="active MLflow run"):
        log_stance_model(model_dir)


def test_device_choice_with_mocked_gpu():
    from pipeline.models.batching import GPU_BATCH_TOKENS, batch_token_budget, resolve_device

    assert resolve_device("auto", cuda=False) == "cpu"
    assert resolve_device("auto", cuda=True) == "cuda"
    assert resolve_device("auto", "int8", cuda=True) == "cpu"  # dynamic int8 is a CPU kernel
    assert resolve_device("cuda:1", cuda=True) == "cuda:1"
    with pytest.raises(PipelineError, match="no GPU is visible"):
        resolve_device("cuda", cuda=False)
    with pytest.raises(PipelineError, match="choose auto, cpu, cuda"):
        resolve_device("tpu", cuda=True)
    assert batch_token_budget(None, "cpu") is None
    assert batch_token_budget(None, "cuda") == GPU_BATCH_TOKENS
    assert batch_token_budget(4096, "cpu") == 4096


def test_token_budget_caps_the_padded_tokens_of_every_batch(model_dir):
    texts = seed_sentences()
    predictor = load_predictor(model_dir, max_batch_tokens=64)
    ids, _ = predictor.encode(predictor.preprocessor(texts))
    lengths = np.array([len(x) for x in ids])
    batches = predictor.batches(lengths, batch_size=64)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(texts)))
    assert all(len(rows) * lengths[rows].max() <= 64 or len(rows) == 1 for rows in batches)
    # Same probabilities as without a budget (smaller batches, same sentences).
    np.testing.assert_allclose(predictor.predict_proba(texts), load_predictor(model_dir).predict_proba(texts),
                               atol=1e-6)
