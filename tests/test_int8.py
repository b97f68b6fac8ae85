"""predict.quantize=int8 (pipeline.models.int8): input smoothing is the same function in fp32, it is what keeps int8
close to fp32 when a few input channels run far larger than the rest (as in trained BERT-like encoders), and the
calibration that sets it ships with the code, so every load of a model gives the same int8 model."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path

import numpy as np
import pytest

from pipeline import LABELS
from pipeline.models import int8
from pipeline.models.base import load_predictor, write_model_metadata
from pipeline.text.arabic import has_arabic
from pipeline.text.preprocess import TextPreprocessor
from pipeline.text.segmentation import seed_sentences

REPO = Path(__file__).resolve().parent.parent
OUTLIER_CHANNELS = (3, 17)   # hidden channels made to run far larger than the rest
OUTLIER_FACTOR = 100.0


def _model_dir(root: Path, *, outliers: bool) -> Path:
    import torch
    from transformers import AutoModelForSequenceClassification

    from pipeline.models.tiny import build_tiny_bert

    out = root / ("outliers" if outliers else "plain")
    build_tiny_bert(seed_sentences(), out, LABELS, seed=11)
    if outliers:  # every LayerNorm output (the input of query/key/value and of the up-projection) gets outliers
        model = AutoModelForSequenceClassification.from_pretrained(str(out))
        with torch.no_grad():
            for name, module in model.named_modules():
                if isinstance(module, torch.nn.LayerNorm):
                    for channel in OUTLIER_CHANNELS:
                        module.weight[channel] *= OUTLIER_FACTOR
                        module.bias[channel] *= OUTLIER_FACTOR
        model.save_pretrained(out)
    write_model_metadata(out, kind="transformer", labels=LABELS, max_length=48, base_model="tiny",
                         preprocessor=TextPreprocessor(None))
    return out


@pytest.fixture(scope="module")
def outlier_dir(tmp_path_factory) -> Path:
    return _model_dir(tmp_path_factory.mktemp("int8"), outliers=True)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return seed_sentences()


def test_smoothing_alone_changes_nothing_in_fp32(outlier_dir, texts):
    predictor = load_predictor(outlier_dir)
    before = predictor.predict_proba(texts)
    names = int8.smooth_predictor(predictor)
    assert sum(isinstance(m, int8.SmoothedLinear) for m in predictor.model.modules()) == len(names) > 0
    np.testing.assert_allclose(predictor.predict_proba(texts), before, atol=1e-5)


def _hidden_states(predictor, texts):
    """The encoder's last hidden states, every sentence at its own length (the tiny model's probabilities are too
    flat to show int8 noise; its hidden states are not)."""
    import torch

    ids, _ = predictor.encode(texts)
    base = getattr(predictor.model, predictor.model.base_model_prefix)
    with torch.inference_mode():
        return [base(input_ids=torch.tensor([row])).last_hidden_state[0].numpy() for row in ids]


def test_smoothing_keeps_int8_close_to_fp32_where_inputs_have_outlier_channels(outlier_dir, texts):
    reference = _hidden_states(load_predictor(outlier_dir), texts)
    unsmoothed = load_predictor(outlier_dir)  # the recipe without smoothing: the same layers, dynamic int8
    unsmoothed.model = int8.quantize_dynamic(copy.deepcopy(unsmoothed.model), int8.int8_linear_names(unsmoothed.model))

    def relative_error(predictor):
        states = _hidden_states(predictor, texts)
        return np.mean([np.linalg.norm(s - r) / np.linalg.norm(r) for s, r in zip(states, reference)])

    error_without = relative_error(unsmoothed)
    error_with = relative_error(load_predictor(outlier_dir, quantize="int8"))
    assert error_with < 0.5 * error_without, (error_with, error_without)


def test_every_load_gives_the_same_int8_model(outlier_dir, texts):
    first = load_predictor(outlier_dir, quantize="int8").predict_proba(texts)
    np.testing.assert_array_equal(load_predictor(outlier_dir, quantize="int8").predict_proba(texts), first)


def test_the_calibration_sentences_ship_with_the_package():
    sentences = int8.calibration_sentences()
    assert len(sentences) >= 16 and all(has_arabic(s) for s in sentences)
    # a wheel carries the file too (pyproject package-data), not only an editable install or an MLflow code path
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"][
        "package-data"]["pipeline"]
    relative = int8.CALIBRATION_FILE.relative_to(REPO / "pipeline").as_posix()
    assert any(Path(relative).match(pattern) for pattern in package_data), package_data


@pytest.mark.parametrize("amx, expected", [(True, "onednn"), (False, None)])
def test_int8_layers_are_packed_for_onednn_only_on_a_cpu_with_amx(monkeypatch, outlier_dir, texts, amx, expected):
    import torch

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    previous = torch.backends.quantized.engine
    packed_under = []
    real = torch.ao.quantization.quantize_dynamic

    def spy(*args, **kwargs):
        packed_under.append(torch.backends.quantized.engine)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.ao.quantization, "quantize_dynamic", spy)
    reference = _hidden_states(load_predictor(outlier_dir), texts)
    quantized = load_predictor(outlier_dir, quantize="int8")
    assert packed_under == [expected or previous]
    assert torch.backends.quantized.engine == previous  # the process-wide setting is left as it was
    # whichever engine packed them, the layers run after the setting is restored and stay close to fp32
    states = _hidden_states(quantized, texts)
    error = np.mean([np.linalg.norm(s - r) / np.linalg.norm(r) for s, r in zip(states, reference)])
    assert error < 0.01, error


def test_a_failed_quantisation_leaves_the_engine_as_it_was(monkeypatch, outlier_dir):
    import torch

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    previous = torch.backends.quantized.engine

    def fail(*args, **kwargs):
        raise RuntimeError("packing failed")

    monkeypatch.setattr(torch.ao.quantization, "quantize_dynamic", fail)
    with pytest.raises(RuntimeError, match="packing failed"):
        int8.quantize_dynamic(load_predictor(outlier_dir).model, ["bert.encoder.layer.0.attention.self.query"])
    assert torch.backends.quantized.engine == previous
