"""predict.backend (pipeline.models.backends): every backend gives eager's labels and probabilities to 1e-4, on both
encoder kinds; an unknown or unavailable backend is one clear error; pyfunc and Spark take the option too."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pipeline import LABELS
from pipeline.core.errors import PipelineError
from pipeline.models import backends, batching
from pipeline.models.base import load_predictor, write_model_metadata
from pipeline.text.preprocess import TextPreprocessor
from pipeline.text.segmentation import seed_sentences
from test_inference import make_stance_model

TOLERANCE = 1e-4  # the promise of conf/predict/default.yaml: same probabilities to 1e-4


@pytest.fixture(scope="module")
def transformer_dir(tmp_path_factory) -> Path:
    return make_stance_model(tmp_path_factory.mktemp("backend") / "transformer", max_length=32, seed=5)


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory, transformer_dir) -> Path:
    """An encoder-kind dir (bare encoder + mean-pooled linear head), as the frozen kind writes one."""
    from transformers import AutoModel, AutoTokenizer

    from pipeline.models.encoder import LinearHead

    out = tmp_path_factory.mktemp("backend") / "encoder"
    encoder = AutoModel.from_pretrained(str(transformer_dir))
    encoder.save_pretrained(out)
    AutoTokenizer.from_pretrained(str(transformer_dir)).save_pretrained(out)
    rng = np.random.default_rng(0)
    LinearHead(rng.normal(size=(len(LABELS), encoder.config.hidden_size)) * 3, rng.normal(size=len(LABELS)),
               pooling="mean", normalize=True).save(out)
    write_model_metadata(out, kind="encoder", labels=LABELS, max_length=32, base_model="tiny",
                         preprocessor=TextPreprocessor(None))
    return out


def installed(backend: str) -> bool:
    return backends.available(backend) is None


KEPT = [b for b in backends.BACKENDS if b not in ("eager", "auto")]


@pytest.mark.parametrize("kind", ["transformer", "encoder"])
@pytest.mark.parametrize("backend", KEPT + ["auto"])
def test_every_backend_gives_eagers_labels_and_probabilities(backend, kind, transformer_dir, encoder_dir):
    if not installed(backend):
        pytest.skip(f"backend {backend} is not installed here: {backends.available(backend)}")
    model_dir = transformer_dir if kind == "transformer" else encoder_dir
    texts = seed_sentences() + ["", "اتفاق"]  # mixed lengths: padded and unpadded batches, truncation
    eager = load_predictor(model_dir).predict(texts, batch_size=7)
    other = load_predictor(model_dir, backend=backend)
    assert other.backend in backends.BACKENDS and other.backend != "auto"
    out = other.predict(texts, batch_size=7)
    columns = [f"p_{label}" for label in LABELS]
    assert np.abs(out[columns].to_numpy() - eager[columns].to_numpy()).max() < TOLERANCE
    assert (out["label"] == eager["label"]).all() and (out["truncated"] == eager["truncated"]).all()


def test_an_unknown_backend_is_one_line_naming_the_choices(transformer_dir):
    with pytest.raises(PipelineError) as info:
        load_predictor(transformer_dir, backend="tensorrt")
    message = str(info.value)
    assert "\n" not in message and "predict.backend='tensorrt'" in message
    assert all(name in message for name in backends.BACKENDS)


def test_an_uninstalled_backend_is_one_line_with_the_fix(transformer_dir, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(PipelineError) as info:
        load_predictor(transformer_dir, backend="onnx")
    message = str(info.value)
    assert "\n" not in message and "onnxruntime" in message and 'pip install -e ".[onnx]"' in message
    # auto falls back to what is installed instead of failing
    assert load_predictor(transformer_dir, backend="auto").backend in backends.AUTO_ORDER + ("eager",)


def test_the_pyfunc_model_takes_backend_and_quantize_from_its_model_config(transformer_dir):
    from pipeline.models import store

    model = store.StancePyfuncModel()
    model.load_context(SimpleNamespace(artifacts={store.ARTIFACT_KEY: str(transformer_dir)},
                                       model_config={"backend": "sdpa", "quantize": None}))
    assert model.predictor.backend == "sdpa" and model.predictor.quantize is None
    model.load_context(SimpleNamespace(artifacts={store.ARTIFACT_KEY: str(transformer_dir)}, model_config=None))
    assert model.predictor.backend == "eager"  # a model logged before the option: today's path
    with pytest.raises(PipelineError, match="predict.backend"):
        model.load_context(SimpleNamespace(artifacts={store.ARTIFACT_KEY: str(transformer_dir)},
                                           model_config={"backend": "nope"}))


def test_spark_executors_load_the_backend_the_stage_asks_for(transformer_dir, monkeypatch):
    pytest.importorskip("pyspark")
    import pyspark

    from pipeline.prediction import spark_articles

    monkeypatch.setattr(pyspark.SparkFiles, "get", lambda name: str(transformer_dir))
    monkeypatch.setattr(spark_articles, "_PREDICTORS", {})
    predictor = spark_articles.executor_predictor("m", 1, "cpu", None, None, "sdpa")
    assert predictor.backend == "sdpa"


@pytest.mark.parametrize("kind", ["transformer", "encoder"])
def test_int8_keeps_the_feed_forward_down_projections_pooler_and_head_in_fp32(kind, transformer_dir, encoder_dir):
    import torch
    from torch.ao.nn.quantized.dynamic import Linear as Int8Linear

    predictor = load_predictor(transformer_dir if kind == "transformer" else encoder_dir, quantize="int8")
    config = predictor.model.config
    kept, quantised = {}, {}
    for name, module in predictor.model.named_modules():
        if isinstance(module, Int8Linear):
            quantised[name] = module
        elif type(module) is torch.nn.Linear:
            kept[name] = module
    down = [n for n, m in kept.items() if (m.in_features, m.out_features) == (config.intermediate_size,
                                                                              config.hidden_size)]
    assert len(down) == config.num_hidden_layers  # every layer's down-projection stays fp32
    assert all(n.endswith("output.dense") and "attention" not in n for n in down)
    assert any(n.endswith("pooler.dense") for n in kept)
    if kind == "transformer":
        assert "classifier" in kept
    # everything else in the layers is int8, each behind its input smoothing (pipeline.models.int8): query, key,
    # value, attention output, up-projection
    from pipeline.models.int8 import SmoothedLinear

    modules = dict(predictor.model.named_modules())
    per_layer = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                 "intermediate.dense")
    for part in per_layer:
        assert sum(n.endswith(f"{part}.linear") for n in quantised) == config.num_hidden_layers, part
    assert all(isinstance(modules[n.rpartition(".")[0]], SmoothedLinear) for n in quantised)
    assert not any(isinstance(m, Int8Linear) for n, m in predictor.model.named_modules() if "pooler" in n)


@pytest.mark.parametrize("quantize", ["int8", "bf16"])
def test_auto_picks_a_backend_that_runs_with_the_lower_precision(transformer_dir, quantize, monkeypatch):

    monkeypatch.setattr(batching, "bf16_runs_fast", lambda device: True)  # bf16 stays bf16 on any CPU here
    assert load_predictor(transformer_dir, backend="auto", quantize=quantize).backend == "eager"
    assert backends.resolve("auto", device="cpu") == ("onnx" if installed("onnx") else "eager")
    if installed("onnx"):
        with pytest.raises(PipelineError, match=f"runs the fp32 model only .*quantize={quantize}"):
            load_predictor(transformer_dir, backend="onnx", quantize=quantize)


def test_an_encoder_kind_pools_a_bf16_model_in_fp32(encoder_dir, monkeypatch):
    """The encoder kind's head reads pooled states: a bf16 model's states are pooled in fp32, close to fp32's."""
    import torch


    monkeypatch.setattr(batching, "bf16_runs_fast", lambda device: True)
    texts = seed_sentences()
    fp32 = load_predictor(encoder_dir)
    bf16 = load_predictor(encoder_dir, quantize="bf16", recheck_margin=0)
    assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}
    pooled = bf16.embed(texts[:5])
    assert pooled.dtype == np.float64 and np.abs(pooled - fp32.embed(texts[:5])).max() < 0.05
    difference = np.abs(bf16.predict_proba(texts) - fp32.predict_proba(texts)).max()
    assert 0 < difference < 0.05


@pytest.mark.parametrize("kind", ["transformer", "encoder"])
def test_inductor_int8_is_the_fp32_model_to_int8_precision_with_its_close_calls_rechecked(kind, transformer_dir,
                                                                                         encoder_dir):
    """predict.backend=inductor with int8: torchao's PT2E graph, compiled; its logits stay close to fp32's, the layers
    int8 keeps in fp32 are not quantised, and the re-check scores close calls with the (eager) fp32 model."""
    import torch

    why = backends.available("inductor", "int8")
    if why:
        pytest.skip(why)
    model_dir = transformer_dir if kind == "transformer" else encoder_dir
    reference = load_predictor(model_dir)
    quantized = load_predictor(model_dir, quantize="int8", backend="inductor", recheck_margin=0)
    assert isinstance(quantized.forward, backends.InductorForward) and quantized.forward.graph
    assert quantized.forward.autocast is batching.bf16_runs_fast("cpu")  # what is not int8: bf16 where fast
    assert isinstance(quantized.model, torch.fx.GraphModule)
    prepacked = [n for n in quantized.model.graph.nodes if "quantize" in str(n.target)]
    assert prepacked, "no quantisation in the exported graph"
    if kind == "encoder":  # its output is the hidden states (the tiny model's logits are too flat to show int8 noise)
        errors = []
        with torch.inference_mode():
            for row in reference.encode(seed_sentences()[:12])[0]:  # one sentence at a time: no padding
                ids = torch.tensor([row])
                expected = reference.forward(input_ids=ids, attention_mask=None).last_hidden_state
                got = quantized.forward(input_ids=ids, attention_mask=None).last_hidden_state
                errors.append(float((got - expected).norm() / expected.norm()))
        assert max(errors) < 0.1, errors
    checked = load_predictor(model_dir, quantize="int8", backend="inductor", recheck_margin=0.999)  # ~every sentence
    assert checked.reference is not None and not isinstance(checked.reference, backends.InductorForward)
    texts = seed_sentences()[:20]
    np.testing.assert_allclose(checked.predict_proba(texts), reference.predict_proba(texts), atol=TOLERANCE)
    assert checked.matrix_unit_batches and not reference.matrix_unit_batches


def test_inductor_refuses_the_gpu_and_names_what_int8_needs(transformer_dir, monkeypatch):
    with pytest.raises(PipelineError, match="predict.backend=inductor runs on the CPU"):
        backends.resolve("inductor", device="cuda", quantize=None)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchao" else real(name, *a))
    if backends.available("inductor") is None:  # a C++ compiler is here: only torchao is missing
        assert backends.resolve("inductor", device="cpu", quantize=None) == "inductor"  # fp32 needs no torchao
    with pytest.raises(PipelineError) as info:
        load_predictor(transformer_dir, quantize="int8", backend="inductor")
    message = str(info.value)
    assert "\n" not in message and "predict.backend=inductor" in message
    assert 'pip install -e ".[inductor]"' in message or "C++ compiler" in message
    monkeypatch.setattr(backends.shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    assert "no C++ compiler" in backends.available("inductor")
    assert "inductor" not in backends.AUTO_ORDER  # auto never pays its warm-up


def test_a_model_loads_without_torchaos_import_noise(transformer_dir):
    """Where torchao is installed, transformers imports it at every model load, and on a CPU build of torch that
    logs a 'Failed to load' warning per CUDA-only kernel library and an Enum deprecation: noise in every run.
    pipeline.models holds it back (a fresh process: torchao warns on its first import only)."""
    import subprocess
    import sys

    if importlib.util.find_spec("torchao") is None:
        pytest.skip("torchao is not installed: pip install -e \".[inductor]\" runs this test")
    code = ("import logging, sys; logging.basicConfig(); from pipeline.models.base import load_predictor; "
            "load_predictor(sys.argv[1]); print('torchao' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, str(transformer_dir)], capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "True"  # the import this test is about did happen
    assert "Failed to load" not in done.stderr and "Enum subclass" not in done.stderr, done.stderr


def test_the_readme_names_every_backend():
    """The README's list of predict.backend choices is written by hand: it must match BACKENDS."""
    import re

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    match = re.search(r"`predict\.backend` \(([^)]*)\)", readme)
    assert match, "the README no longer lists predict.backend's choices"
    assert [name.strip() for name in match.group(1).replace("\n", " ").split(",")] == list(backends.BACKENDS)
