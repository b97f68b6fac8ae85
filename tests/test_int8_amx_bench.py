"""bench/int8_amx.py (no ../shared): its oneDNN int8 layer computes the fp32 layer's function to int8 precision, the
input channels it keeps out of int8 are added back exactly, and the bench runs end to end on the tiny model."""

from __future__ import annotations

import re

import pytest

from conftest import load_bench

torch = pytest.importorskip("torch")
if "onednn" not in torch.backends.quantized.supported_engines:
    pytest.skip("this torch build has no oneDNN quantized engine", allow_module_level=True)

WIDE_CHANNEL = 3


@pytest.fixture(scope="module")
def bench():
    return load_bench("int8_amx")


def _layer_and_input(wide: float):
    generator = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(64, 32)
    x = torch.randn(40, 64, generator=generator)
    x[:, WIDE_CHANNEL] *= wide
    return linear, x


def _relative_error(layer, linear, x) -> float:
    with torch.no_grad():
        expected = linear(x)
        return float((layer(x) - expected).norm() / expected.norm())


def test_the_onednn_int8_layer_is_the_fp32_layer_to_int8_precision(bench):
    linear, x = _layer_and_input(wide=1.0)
    layer = bench.OnednnInt8Linear(linear, float(x.min()), float(x.max()))
    assert _relative_error(layer, linear, x) < 0.02
    assert layer(x.reshape(4, 10, 64)).shape == (4, 10, 32)  # batch and sequence axes kept


def test_channels_kept_out_of_int8_are_added_back_in_fp32(bench):
    linear, x = _layer_and_input(wide=200.0)
    rest = torch.ones(64, dtype=torch.bool)
    rest[WIDE_CHANNEL] = False
    whole = bench.OnednnInt8Linear(linear, float(x.min()), float(x.max()))
    split = bench.OnednnInt8Linear(linear, float(x[:, rest].min()), float(x[:, rest].max()),
                                   outliers=torch.tensor([WIDE_CHANNEL]))
    error_split, error_whole = _relative_error(split, linear, x), _relative_error(whole, linear, x)
    assert error_split < 0.02 and error_split < 0.25 * error_whole, (error_split, error_whole)


def test_the_bench_runs_on_the_tiny_model(bench, capsys):
    assert bench.main(["--shape", "tiny", "--n", "24", "--rounds", "1", "--batch-size", "8"]) == 0
    out = capsys.readouterr().out
    rows = ["fp32", "bf16", "int8 (shipped)", "amx-int8"]
    if bench.pt2e_available() is None:  # torchao installed: the PT2E + inductor row runs too
        rows.append("pt2e-int8")
    else:
        assert "no pt2e-int8 row: torchao is not installed" in out
    for row in rows:
        assert re.search(rf"^  {re.escape(row)}\s+\d+%\s+best \d+%$", out, re.M), (row, out)


def test_the_pt2e_int8_model_computes_the_fp32_models_logits(bench, tmp_path):
    pytest.importorskip("torchao")
    from pipeline.models.base import load_predictor
    from pipeline.text.segmentation import seed_sentences
    from test_inference import make_stance_model

    model_dir = make_stance_model(tmp_path / "model", max_length=32, seed=3)
    reference, quantized = load_predictor(model_dir), bench.pt2e_int8(load_predictor(model_dir))
    assert isinstance(quantized.forward, bench.Pt2eForward)
    errors = []
    for row in reference.encode(seed_sentences()[:12])[0]:  # one sentence at a time: no padding
        ids = torch.tensor([row])
        expected = reference.logits(ids, None)
        errors.append(float((quantized.logits(ids, None) - expected).norm() / expected.norm()))
    assert max(errors) < 0.1, errors
