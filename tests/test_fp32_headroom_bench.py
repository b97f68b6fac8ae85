"""bench/fp32_headroom.py (no ../shared): its FLOP count is exact, and it runs end to end on the tiny model and prints
the product whose factors explain the predictor's ratio to the fp32 limit."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import load_bench



@pytest.fixture(scope="module")
def bench():
    return load_bench("fp32_headroom")


def test_linear_flops_counts_every_call_with_its_rows(bench):
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
    x = torch.randn(3, 5, 8)  # 15 rows
    flops = bench.linear_flops(model, lambda: (model(x), model(x[:1, :2])))  # then 2 rows
    assert flops == 2 * (15 + 2) * (8 * 16 + 16 * 4)
    assert bench.linear_flops(model, lambda: None) == 0  # hooks are gone after the run
    assert not any(m._forward_hooks for m in model.modules())


def test_the_bench_prints_the_factors_of_the_predictors_ratio(bench, capsys):
    assert bench.main(["--shape", "tiny", "--n", "24", "--rounds", "1", "--no-compile", "--batch-size", "8"]) == 0
    out = capsys.readouterr().out
    factors = {}
    for name in ("real tokens ÷ padded tokens", "matrix-product rate ÷ probe", "matrix-product share of time",
                 "product"):
        match = re.search(rf"{re.escape(name)}\s+([\d.]+)%", out)
        assert match, (name, out)
        factors[name] = float(match.group(1)) / 100
    assert 0 < factors["real tokens ÷ padded tokens"] <= 1
    assert 0 < factors["matrix-product share of time"] <= 1
    product = (factors["real tokens ÷ padded tokens"] * factors["matrix-product rate ÷ probe"]
               * factors["matrix-product share of time"])
    assert factors["product"] == pytest.approx(product, abs=0.002)
    assert re.search(r"predictor\s+\d+%\s+\d+%", out)  # the timed row, per round and best
    assert "compiled" not in out


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 16), min_size=1, max_size=40), row_length=st.integers(16, 40))
def test_packing_places_every_sentence_once_within_its_row(bench, lengths, row_length):
    rows = bench.pack(lengths, row_length)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= row_length for row in rows)


def test_packed_rows_give_each_sentence_its_own_unpacked_encoding(bench, tmp_path):
    """A sentence packed beside others (block-diagonal mask, positions from 0) is encoded as it is alone, and its
    probabilities are the predictor's; the last batch is filled up to the one shape with empty rows."""
    import numpy as np
    import torch

    from pipeline.models.base import load_predictor
    from pipeline.text.segmentation import seed_sentences

    sentences = seed_sentences()
    model_dir = bench.predict_speed.build_model(sentences, tmp_path, "tiny", 0)
    predictor = load_predictor(model_dir)
    texts = sentences[:11]
    ids, _ = predictor.encode(predictor.preprocessor(texts))
    row_length = max(len(x) for x in ids) + 8
    batches = bench.packed_batches(ids, row_length, 3, predictor.pad_id)
    assert {tuple(b[0].shape) for b in batches} == {(3, row_length)}
    assert sorted(i for b in batches for i, _, _ in b[3]) == list(range(len(texts)))
    encoder = bench.PackedEncoder(predictor.model).eval()
    with torch.inference_mode():
        for input_ids, positions, mask, starts in batches:
            hidden = encoder(input_ids, positions, mask)
            for i, r, at in starts:
                alone = predictor.model.bert(input_ids=torch.tensor([ids[i]])).last_hidden_state[0]
                torch.testing.assert_close(hidden[r, at:at + len(ids[i])], alone, atol=1e-5, rtol=1e-5)
    probs = bench.packed_probabilities(predictor.model, encoder, batches, len(texts))
    np.testing.assert_allclose(probs, predictor.predict_proba(texts), atol=1e-6)


def test_the_bench_times_the_packed_row(bench, capsys):
    assert bench.main(["--shape", "tiny", "--n", "24", "--rounds", "1", "--no-compile", "--batch-size", "8",
                       "--pack-rows", "2"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"packed\s+\d+%\s+\d+%", out)
    match = re.search(r"packed: max \|p - p_eager\| ([\d.e+-]+)", out)
    assert match and float(match.group(1)) < 1e-5, out
    assert "packed+compiled" not in out
