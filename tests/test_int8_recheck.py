"""predict.int8_recheck_margin: an int8 model scores again in fp32 exactly the sentences whose int8 top-two margin is
below the margin, so their labels and probabilities are fp32's; the option reaches the predict stage, the pyfunc model
and Spark; a bad value is one line naming the key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline import LABELS
from pipeline.core.errors import PipelineError
from pipeline.models.base import load_predictor, write_model_metadata
from pipeline.text.preprocess import TextPreprocessor
from pipeline.text.segmentation import seed_sentences

FP32_TOLERANCE = 1e-4  # smoothing is the same function in fp32 (tests/test_int8.py)


def _tiny_model(out: Path, head_scale: float) -> Path:
    import torch
    from transformers import AutoModelForSequenceClassification

    from pipeline.models.tiny import build_tiny_bert

    build_tiny_bert(seed_sentences(), out, LABELS, seed=2)
    model = AutoModelForSequenceClassification.from_pretrained(str(out))
    with torch.no_grad():
        model.classifier.weight.mul_(head_scale)
    model.save_pretrained(out)
    write_model_metadata(out, kind="transformer", labels=LABELS, max_length=48, base_model="tiny",
                         preprocessor=TextPreprocessor(None))
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A decisive head: probabilities spread over [0, 1], so margins differ between sentences."""
    return _tiny_model(tmp_path_factory.mktemp("recheck") / "model", 400.0)


@pytest.fixture(scope="module")
def hesitant_dir(tmp_path_factory) -> Path:
    """The tiny model as built: every sentence's probabilities near 1/3, every margin small."""
    return _tiny_model(tmp_path_factory.mktemp("recheck") / "hesitant", 1.0)


def _margins(probs: np.ndarray) -> np.ndarray:
    top = np.sort(probs, axis=1)
    return top[:, -1] - top[:, -2]


def test_close_calls_are_scored_again_in_fp32_and_only_they(model_dir):
    texts = seed_sentences()
    fp32 = load_predictor(model_dir).predict_proba(texts)
    plain = load_predictor(model_dir, quantize="int8").predict_proba(texts)
    margin = float(np.median(_margins(plain)))  # about half the sentences are close calls at this margin
    checked = load_predictor(model_dir, quantize="int8", int8_recheck_margin=margin)
    probs = checked.predict_proba(texts)
    close = _margins(plain) < margin
    assert 0 < close.sum() < len(texts)
    np.testing.assert_allclose(probs[close], fp32[close], atol=FP32_TOLERANCE)   # fp32's own probabilities
    np.testing.assert_array_equal(probs[~close], plain[~close])                   # the rest stays int8
    assert checked.int8_rechecked == [len(texts), int(close.sum())]


def test_no_margin_rechecks_nothing_and_fp32_ignores_the_margin(model_dir):
    texts = seed_sentences()[:30]
    plain = load_predictor(model_dir, quantize="int8")
    assert plain.reference is None and plain.int8_rechecked == [0, 0]
    fp32 = load_predictor(model_dir, int8_recheck_margin=0.5)
    assert fp32.reference is None
    fp32.predict_proba(texts)
    assert fp32.int8_rechecked == [0, 0]


@pytest.mark.parametrize("value", [-0.1, 1.0, "many"])
def test_a_bad_margin_is_one_line_naming_the_key(model_dir, value):
    with pytest.raises(PipelineError, match="predict.int8_recheck_margin"):
        load_predictor(model_dir, quantize="int8", int8_recheck_margin=value)


def test_the_pyfunc_model_takes_the_margin_from_its_model_config(model_dir):
    from pipeline.models.store import predictor_options

    options = predictor_options({"backend": "eager", "quantize": "int8", "int8_recheck_margin": 0.25})
    assert options["quantize"] == "int8" and options["int8_recheck_margin"] == 0.25
    predictor = load_predictor(model_dir, **options)
    assert predictor.int8_recheck_margin == 0.25 and predictor.reference is not None


def test_the_predict_stage_rechecks_and_says_how_many(make_cfg, hesitant_dir, tmp_path, caplog):
    import logging

    import pandas as pd

    from pipeline.stages.predict import predict

    article = tmp_path / "a.txt"
    article.write_text("\n".join(seed_sentences()[:40]), encoding="utf-8")
    outputs = {}
    for name, overrides in {"fp32": [], "int8": ["predict.quantize=int8", "predict.int8_recheck_margin=0.5"]}.items():
        cfg = make_cfg("predict", f"input={article}", f"output={tmp_path / name}.csv", f"model_uri={hesitant_dir}",
                       *overrides)
        with caplog.at_level(logging.INFO, logger="pipeline.stages.predict"):
            predict(cfg)
        outputs[name] = pd.read_csv(tmp_path / f"{name}.csv", encoding="utf-8-sig")
    # every sentence of this hesitant model is a close call at 0.5: every one is scored again, every label is fp32's
    assert (outputs["int8"]["label"] == outputs["fp32"]["label"]).all()
    np.testing.assert_allclose(outputs["int8"][[f"p_{x}" for x in LABELS]].to_numpy(),
                               outputs["fp32"][[f"p_{x}" for x in LABELS]].to_numpy(),
                               atol=2 * FP32_TOLERANCE)  # + the CSV's rounding to 4 decimals
    assert "40 of 40 sentences (100.0%) scored again in fp32" in caplog.text
    assert "predict.int8_recheck_margin=0.5" in caplog.text
    assert "fp32 (predict.quantize=null) gives the same labels as fast" in caplog.text  # most were re-scored
