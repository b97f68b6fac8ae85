"""bench/fp32_headroom.py (no ../shared): its FLOP count is exact, and it runs end to end on the tiny model and prints
the product whose factors explain the predictor's ratio to the fp32 limit."""

from __future__ import annotations

import re

import pytest

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
