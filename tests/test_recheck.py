"""predict.quantize=int8 / bf16 and predict.recheck_margin: a lower-precision model scores again one precision up
exactly the sentences whose top-two margin is below the margin (int8 -> bf16 -> fp32 where bf16 is fast, else
straight to fp32), so their labels and probabilities are that precision's; the option reaches the predict stage,
the pyfunc model and Spark; bf16 runs fp32 (and says so) where the CPU has no bf16 unit; a bad value is one line
naming the key.

bf16's speed needs AMX or AVX512-BF16, which a CI machine may lack: its tests declare the unit present
(`bf16_unit`), since bf16 gives the same results on any CPU, only slower without one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline import LABELS
from pipeline.core.errors import PipelineError
from pipeline.models.base import load_predictor
from pipeline.text.segmentation import seed_sentences
from test_inference import make_stance_model

FP32_TOLERANCE = 1e-4  # smoothing is the same function in fp32 (tests/test_int8.py)


def _tiny_model(out: Path, head_scale: float) -> Path:
    import torch
    from transformers import AutoModelForSequenceClassification

    make_stance_model(out, max_length=48, seed=2)
    model = AutoModelForSequenceClassification.from_pretrained(str(out))
    with torch.no_grad():
        model.classifier.weight.mul_(head_scale)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A decisive head: probabilities spread over [0, 1], so margins differ between sentences."""
    return _tiny_model(tmp_path_factory.mktemp("recheck") / "model", 400.0)


@pytest.fixture(scope="module")
def hesitant_dir(tmp_path_factory) -> Path:
    """The tiny model as built: every sentence's probabilities near 1/3, every margin small."""
    return _tiny_model(tmp_path_factory.mktemp("recheck") / "hesitant", 1.0)


@pytest.fixture
def bf16_unit(monkeypatch):
    from pipeline.models import batching

    monkeypatch.setattr(batching, "bf16_runs_fast", lambda device: True)


def _margins(probs: np.ndarray) -> np.ndarray:
    top = np.sort(probs, axis=1)
    return top[:, -1] - top[:, -2]


@pytest.mark.parametrize("quantize", ["int8", "bf16"])
def test_close_calls_are_scored_again_in_fp32_and_only_they(model_dir, quantize, monkeypatch):
    """Where bf16 is not fast, int8 (and bf16 always) climbs straight to fp32."""
    from pipeline.models import batching

    monkeypatch.setattr(batching, "bf16_runs_fast", lambda device: quantize == "bf16")
    texts = seed_sentences()
    fp32 = load_predictor(model_dir).predict_proba(texts)
    plain = load_predictor(model_dir, quantize=quantize).predict_proba(texts)
    margin = float(np.median(_margins(plain)))  # about half the sentences are close calls at this margin
    checked = load_predictor(model_dir, quantize=quantize, recheck_margin=margin)
    assert [(s.below, s.precision, s.margin) for s in checked.ladder] == [(quantize, "fp32", margin)]
    probs = checked.predict_proba(texts)
    close = _margins(plain) < margin
    assert 0 < close.sum() < len(texts)
    np.testing.assert_allclose(probs[close], fp32[close], atol=FP32_TOLERANCE)   # fp32's own probabilities
    np.testing.assert_array_equal(probs[~close], plain[~close])                   # the rest stays int8
    assert checked.rechecked == {"scored": len(texts), "fp32": int(close.sum())}


def test_int8_climbs_to_bf16_then_bf16s_close_calls_to_fp32(model_dir, bf16_unit):
    """Where bf16 is fast, int8's close calls are scored again by predict.quantize=bf16's own model, and those whose
    bf16 margin is below recheck_margin.bf16 once more in fp32; every other sentence keeps what it had."""
    texts = seed_sentences()
    fp32 = load_predictor(model_dir).predict_proba(texts)
    bf16 = load_predictor(model_dir, quantize="bf16").predict_proba(texts)
    plain = load_predictor(model_dir, quantize="int8").predict_proba(texts)
    margins = {"int8": float(np.quantile(_margins(plain), 0.6)), "bf16": float(np.quantile(_margins(bf16), 0.3))}
    checked = load_predictor(model_dir, quantize="int8", recheck_margin=margins)
    assert [(s.below, s.precision) for s in checked.ladder] == [("int8", "bf16"), ("bf16", "fp32")]
    probs = checked.predict_proba(texts)
    to_bf16 = _margins(plain) < margins["int8"]
    to_fp32 = to_bf16 & (_margins(bf16) < margins["bf16"])
    assert 0 < to_fp32.sum() < to_bf16.sum() < len(texts)
    np.testing.assert_array_equal(probs[~to_bf16], plain[~to_bf16])                    # int8's
    np.testing.assert_array_equal(probs[to_bf16 & ~to_fp32], bf16[to_bf16 & ~to_fp32])  # bf16's, to the bit
    np.testing.assert_allclose(probs[to_fp32], fp32[to_fp32], atol=FP32_TOLERANCE)     # fp32's
    assert checked.rechecked == {"scored": len(texts), "bf16": int(to_bf16.sum()), "fp32": int(to_fp32.sum())}
    stops = load_predictor(model_dir, quantize="int8", recheck_margin={**margins, "bf16": 0})
    assert [s.precision for s in stops.ladder] == ["bf16"] and stops.reference is None  # bf16's margin 0: no fp32
    np.testing.assert_array_equal(stops.predict_proba(texts)[to_bf16], bf16[to_bf16])


def test_no_margin_rechecks_nothing_and_fp32_ignores_the_margin(model_dir):
    texts = seed_sentences()[:30]
    plain = load_predictor(model_dir, quantize="int8")
    assert plain.reference is None and not plain.ladder and not plain.rechecked
    fp32 = load_predictor(model_dir, recheck_margin=0.5)
    assert fp32.reference is None
    fp32.predict_proba(texts)
    assert not fp32.rechecked and fp32.recheck_cost() is None


@pytest.mark.parametrize("value, key", [(-0.1, "predict.recheck_margin="), (1.0, "predict.recheck_margin="),
                                        ("many", "predict.recheck_margin="),
                                        ({"int8": 2, "bf16": 0.1}, "predict.recheck_margin.int8=2"),
                                        ({"fp16": 0.1}, "predict.recheck_margin: fp16 is not a precision")])
def test_a_bad_margin_is_one_line_naming_the_key(model_dir, value, key):
    with pytest.raises(PipelineError, match=key):
        load_predictor(model_dir, quantize="int8", recheck_margin=value)


def test_each_precision_takes_its_own_margin_from_the_config(model_dir, make_cfg, bf16_unit):
    from pipeline.models.batching import recheck_option

    cfg = make_cfg("predict", "predict.recheck_margin.bf16=0.25")
    margins = recheck_option(cfg.predict.recheck_margin)
    assert margins == {"int8": 0.05, "bf16": 0.25}  # conf/predict/default.yaml's int8 margin, bf16 overridden
    assert load_predictor(model_dir, quantize="int8", recheck_margin=margins).recheck_margin == 0.05
    assert load_predictor(model_dir, quantize="bf16", recheck_margin=margins).recheck_margin == 0.25
    assert load_predictor(model_dir, quantize="bf16", recheck_margin={"int8": 0.1}).reference is None  # none = 0


def test_the_pyfunc_model_takes_the_margin_from_its_model_config(model_dir):
    from pipeline.models.store import predictor_options

    options = predictor_options({"backend": "eager", "quantize": "int8", "recheck_margin": 0.25})
    assert options["quantize"] == "int8" and options["recheck_margin"] == 0.25
    predictor = load_predictor(model_dir, **options)
    assert predictor.recheck_margin == 0.25 and predictor.reference is not None


@pytest.mark.parametrize("quantize", ["int8", "bf16"])
def test_the_predict_stage_rechecks_and_says_how_many(make_cfg, hesitant_dir, tmp_path, caplog, quantize, bf16_unit):
    import logging

    import pandas as pd

    from pipeline.stages.predict import predict

    article = tmp_path / "a.txt"
    article.write_text("\n".join(seed_sentences()[:40]), encoding="utf-8")
    outputs = {}
    for name, overrides in {"fp32": [], "low": [f"predict.quantize={quantize}", "predict.recheck_margin.int8=0.5",
                                                 "predict.recheck_margin.bf16=0.5"]}.items():
        cfg = make_cfg("predict", f"input={article}", f"output={tmp_path / name}.csv", f"model_uri={hesitant_dir}",
                       *overrides)
        with caplog.at_level(logging.INFO, logger="pipeline.stages.predict"):
            predict(cfg)
        outputs[name] = pd.read_csv(tmp_path / f"{name}.csv", encoding="utf-8-sig")
    # every sentence of this hesitant model is a close call at 0.5: every one is scored again, every label is fp32's
    assert (outputs["low"]["label"] == outputs["fp32"]["label"]).all()
    np.testing.assert_allclose(outputs["low"][[f"p_{x}" for x in LABELS]].to_numpy(),
                               outputs["fp32"][[f"p_{x}" for x in LABELS]].to_numpy(),
                               atol=2 * FP32_TOLERANCE)  # + the CSV's rounding to 4 decimals
    # int8 climbs through bf16 (bf16_unit)
    if quantize == "int8":
        assert "int8: 40 of 40 sentences (100.0%) scored again in bf16" in caplog.text
    assert "40 of 40 sentences (100.0%) scored again in fp32" in caplog.text
    assert f"predict.recheck_margin.{quantize}=0.5" in caplog.text
    assert "fp32 (predict.quantize=null) gives the same labels as fast" in caplog.text  # most were re-scored


def test_bf16_runs_the_model_in_bfloat16_and_keeps_an_fp32_reference(hesitant_dir, bf16_unit):
    import torch

    texts = seed_sentences()
    fp32 = load_predictor(hesitant_dir).predict_proba(texts)
    bf16 = load_predictor(hesitant_dir, quantize="bf16", recheck_margin=0)
    assert bf16.quantize == "bf16" and bf16.reference is None
    assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}
    probs = bf16.predict_proba(texts)
    assert probs.dtype == np.float64 and np.allclose(probs.sum(axis=1), 1.0)
    difference = np.abs(probs - fp32).max()
    assert 0 < difference < 0.02  # bfloat16 keeps 8 bits of mantissa: close to fp32, not equal
    checked = load_predictor(hesitant_dir, quantize="bf16", recheck_margin=0.1)
    assert {p.dtype for p in checked.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in checked.reference.parameters()} == {torch.float32}  # a copy: fp32 left as it was


def test_bf16_without_a_bf16_unit_runs_fp32_and_says_so(model_dir, monkeypatch, caplog):
    import logging

    from pipeline.models import batching

    monkeypatch.setattr(batching, "bf16_runs_fast", lambda device: False)
    texts = seed_sentences()[:20]
    with caplog.at_level(logging.WARNING, logger="pipeline.models.batching"):
        predictor = load_predictor(model_dir, quantize="bf16")
    assert predictor.quantize is None and predictor.reference is None
    assert "no bf16 matrix unit" in caplog.text and "running fp32" in caplog.text
    np.testing.assert_array_equal(predictor.predict_proba(texts), load_predictor(model_dir).predict_proba(texts))


@pytest.mark.parametrize("bf16_unit", [True, False])
def test_int8_on_a_cpu_with_a_bf16_unit_points_to_bf16(model_dir, monkeypatch, caplog, bf16_unit):
    import logging

    from pipeline.models import batching

    monkeypatch.setattr(batching, "bf16_runs_fast", lambda device: bf16_unit)
    with caplog.at_level(logging.INFO, logger="pipeline.models.batching"):
        predictor = load_predictor(model_dir, quantize="int8")
    assert predictor.quantize == "int8"  # advice only: int8 still runs
    assert ("predict.quantize=bf16 runs about twice int8's speed" in caplog.text) is bf16_unit
    assert ("predict.backend=inductor compiles int8" in caplog.text) is bf16_unit


def test_the_cpu_probe_reads_torchs_own_feature_flags(monkeypatch):
    import torch

    from pipeline.models.batching import bf16_runs_fast

    for amx, avx512_bf16, expected in [(True, False, True), (False, True, True), (False, False, False)]:
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
        assert bf16_runs_fast("cpu") is expected


@pytest.mark.parametrize("value", ["fp16", "int4", 8])
def test_an_unknown_precision_is_one_line_naming_the_choices(model_dir, value):
    with pytest.raises(PipelineError, match=r"predict.quantize=.*choose null \(fp32\), int8 or bf16"):
        load_predictor(model_dir, quantize=value)



def test_bf16_batches_hold_more_tokens_before_padding_cuts_them(model_dir, bf16_unit):
    """AMX needs rows: a bf16 batch is cut for padding only once it holds BF16_MIN_BATCH_TOKENS (fp32: MIN_BATCH_TOKENS);
    every sentence is in exactly one batch either way."""
    from pipeline.models.batching import BF16_MIN_BATCH_TOKENS, MIN_BATCH_TOKENS

    rng = np.random.default_rng(0)
    lengths = rng.integers(8, 120, size=600)
    batch_size = 256
    fp32 = load_predictor(model_dir).batches(lengths, batch_size)
    bf16 = load_predictor(model_dir, quantize="bf16", recheck_margin=0).batches(lengths, batch_size)
    for batches, least in ((fp32, MIN_BATCH_TOKENS), (bf16, BF16_MIN_BATCH_TOKENS)):
        assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
        for rows in batches[:-1]:  # a batch ends full, or cut for padding once it held the floor's tokens
            width = lengths[rows].max()
            assert len(rows) == batch_size or len(rows) * width >= least, (len(rows), width, least)
    assert len(bf16) < len(fp32)
