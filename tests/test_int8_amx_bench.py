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


def test_the_bench_runs_on_the_tiny_model(bench, capsys, stance_dir):
    from pipeline.models import batching

    assert bench.main(["--shape", "tiny", "--n", "24", "--rounds", "1", "--batch-size", "8", "--model", str(stance_dir),
                       "--agreement-n", "24", "--recheck-margin", "0.5/0.5", "--recheck-margin", "0.2/0"]) == 0
    out = capsys.readouterr().out
    rows = ["fp32", "bf16", "int8 (shipped)", "amx-int8"]
    if bench.pt2e_available() is None:  # torchao and a C++ compiler: predict.backend=inductor's int8 row too
        rows.append("int8 (inductor)")
    else:
        assert "no int8 (inductor) row: predict.backend=inductor" in out
    for row in rows:
        assert re.search(rf"^  {re.escape(row)}\s+\d+%\s+best \d+%$", out, re.M), (row, out)
    part2 = out[out.index("2. label agreement"):out.index("3. predictors")]
    for row in ("bf16", "int8 (shipped)", "amx-int8"):
        assert re.search(rf"^  {re.escape(row)}\s+\d+\.\d%\s+max \|p - p_fp32\| \d\.\d+$", part2, re.M), (row, part2)
    if bench.pt2e_available() is None:
        for setting in ("0.5/0.5", "0.2/0"):  # agreement and shares on --model, then timed at those shares
            assert re.search(rf"int8 \(inductor\), re-check {setting}\s+\d+\.\d%.*scored again in bf16", part2), part2
            if batching.bf16_runs_fast("cpu"):
                assert re.search(rf"^  int8 \(inductor\), re-check {setting}\s+\d+%\s+best \d+%\s+[\d.]+% / [\d.]+%$",
                                 out, re.M), out


@pytest.fixture(scope="module")
def stance_dir(tmp_path_factory):
    from test_inference import make_stance_model

    return make_stance_model(tmp_path_factory.mktemp("amx") / "model", max_length=48, seed=2)


def test_the_recheck_ladder_is_timed_at_the_shares_it_is_given(bench, stance_dir, monkeypatch):
    """A random-weight model's margins say nothing: part 3 times int8's re-check ladder with its margins set so that
    the shares a fine-tuned model sent to bf16 and fp32 (part 2) climb; the int8 predictor itself is left as it was."""
    from pipeline.models import batching
    from pipeline.models.base import load_predictor
    from pipeline.text.segmentation import seed_sentences

    monkeypatch.setattr(batching, "bf16_runs_fast", lambda device: True)
    texts = list(dict.fromkeys(seed_sentences()))[:60]
    int8 = load_predictor(stance_dir, quantize="int8", recheck_margin=0)
    ladder = bench.full_ladder(load_predictor(stance_dir).model, int8.device, int8.output)
    timed = bench.at_shares(int8, ladder, texts, (0.3, 0.1), 8)
    timed.predict_proba(texts, batch_size=8)  # as the bench times it (dynamic int8's scales follow the batches)
    assert timed.rechecked == {"scored": 60, "bf16": 18, "fp32": 6}
    assert [(s.below, s.precision) for s in timed.ladder] == [("int8", "bf16"), ("bf16", "fp32")]
    assert not int8.ladder and not int8.rechecked
    monkeypatch.setattr(batching, "bf16_runs_fast", lambda device: False)
    assert bench.full_ladder(load_predictor(stance_dir).model, int8.device, int8.output) is None  # straight to fp32
