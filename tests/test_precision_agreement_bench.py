"""bench/precision_agreement.py on a tiny model (no ../shared): the weights-only diagnostic rounds exactly the weights
int8 quantises, to int8 values, and leaves the rest alone; the bench runs end to end on a model held out from one
seed article, and refuses a model that trained on every seed sentence."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import load_bench
from pipeline.models.base import load_predictor
from pipeline.text.segmentation import SEEDS_DIR, article_id_for, seed_sentences
from test_inference import make_stance_model

BENCH = Path(__file__).resolve().parent.parent / "bench" / "precision_agreement.py"


@pytest.fixture(scope="module")
def bench():
    return load_bench("precision_agreement")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    out = make_stance_model(tmp_path_factory.mktemp("int8bench") / "model", max_length=32, seed=3)
    articles = sorted(article_id_for(p) for p in SEEDS_DIR.glob("*.txt"))
    (out / "split.json").write_text(json.dumps({"by": "group", "test": articles[:1], "val": [],
                                                "train": articles[1:], "seen_all": False}), encoding="utf-8")
    return out


def test_weights_only_rounds_exactly_the_int8_weights_per_channel(bench, model_dir):
    import torch

    from pipeline.models.int8 import fp32_linear_names

    plain = load_predictor(model_dir)
    rounded = bench.weights_only_int8(load_predictor(model_dir))
    keep = set(fp32_linear_names(plain.model))
    before = dict(plain.model.named_modules())
    rounded_any = False
    for name, module in rounded.model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        weight, original = module.weight.detach(), before[name].weight.detach()
        if name in keep:
            assert torch.equal(weight, original), name  # what int8 keeps in fp32 is untouched
            continue
        scale = original.abs().amax(dim=1, keepdim=True) / 127
        steps = weight / scale
        assert torch.allclose(steps, steps.round(), atol=1e-3), name  # every weight is an int8 step of its row
        assert steps.abs().max() <= 127 + 1e-3
        assert (weight - original).abs().le(scale / 2 + 1e-7).all(), name  # the nearest step
        rounded_any |= not torch.equal(weight, original)
    assert rounded_any
    texts = seed_sentences()[:20]
    np.testing.assert_allclose(rounded.predict_proba(texts).sum(axis=1), 1.0, atol=1e-9)


def test_the_nearest_row_is_the_recipe_before_gptq_and_leaves_the_shipped_one_as_it_was(bench, model_dir):
    import torch

    from pipeline.models import int8

    alphas, regptq = dict(int8.SMOOTHING_ALPHA), (int8.regptq_dynamic, int8.regptq_graph)
    nearest = bench.nearest_rounding_int8(str(model_dir), "eager")
    assert dict(int8.SMOOTHING_ALPHA) == alphas and (int8.regptq_dynamic, int8.regptq_graph) == regptq
    shipped = load_predictor(model_dir, quantize="int8")
    weights = [[m.weight().int_repr() for m in p.model.modules()
                if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)] for p in (nearest, shipped)]
    assert len(weights[0]) == len(weights[1]) > 0
    assert any(not a.equal(b) for a, b in zip(*weights))  # GPTQ moved some weights to other grid points


def test_the_bench_runs_on_a_held_out_article_and_prints_every_row(model_dir):
    run = subprocess.run([sys.executable, str(BENCH), "--model", str(model_dir), "--rounds", "1", "--all-linear",
                          "--weights-only", "--unsmoothed", "--nearest", "--recheck-margin", "0.5"],
                         capture_output=True, text=True, timeout=600,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout
    for row in ("int8: label agreement", "int8_recheck: label agreement", "int8_unsmoothed: label agreement",
                "bf16: label agreement", "bf16_recheck: label agreement", "bf16_recheck: ",
                "int8_all_linear: label agreement", "int8_weights_only: label agreement", "scored again in fp32",
                "int8_nearest: label agreement", "mean ",
                "agreement by fp32 margin", "sentences by fp32 margin", "diagnostic, not timed"):
        assert row in out, out
    assert "fp32: " in out and "sentences/s" in out


def test_the_bench_refuses_a_model_refit_on_every_seed_sentence(tmp_path, model_dir):
    import shutil

    refit = tmp_path / "refit"
    shutil.copytree(model_dir, refit)
    record = json.loads((refit / "split.json").read_text(encoding="utf-8"))
    (refit / "split.json").write_text(json.dumps({**record, "seen_all": True}), encoding="utf-8")
    run = subprocess.run([sys.executable, str(BENCH), "--model", str(refit), "--rounds", "1"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode != 0 and "error:" in run.stderr and "refit" in run.stderr
