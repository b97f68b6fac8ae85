import json

import numpy as np
import pytest

from pipeline.models.calibration import (CALIBRATION_FILE, Calibration, apply_temperature, expected_calibration_error,
                                  fit_temperature, reliability_diagram)
from pipeline.core.errors import PipelineError


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def overconfident():
    """Gold drawn from softmax(z); the model reports softmax(4 z): four times too sure of itself."""
    rng = np.random.default_rng(0)
    z = rng.normal(scale=1.5, size=(20000, 3))
    true_p = _softmax(z)
    gold = np.array([rng.choice(3, p=p) for p in true_p])
    return _softmax(4 * z), gold, true_p


def test_fits_known_temperature_and_lowers_ece(overconfident):
    model_p, gold, _ = overconfident
    t_from_logprobs = fit_temperature(np.log(model_p), gold)
    assert t_from_logprobs == pytest.approx(4.0, rel=0.08)
    # logits and log-probabilities differ by a per-row constant: same T
    rng = np.random.default_rng(1)
    shifted = np.log(model_p) + rng.normal(size=(len(gold), 1))
    assert fit_temperature(shifted, gold) == pytest.approx(t_from_logprobs, rel=1e-4)

    calibrated = apply_temperature(model_p, t_from_logprobs)
    before = expected_calibration_error(model_p, gold)
    after = expected_calibration_error(calibrated, gold)
    assert before > 0.1
    assert after < 0.03 < before
    np.testing.assert_array_equal(calibrated.argmax(1), model_p.argmax(1))  # labels never change


def test_well_calibrated_model_gets_t_near_one(overconfident):
    _, gold, true_p = overconfident
    assert fit_temperature(np.log(true_p), gold) == pytest.approx(1.0, rel=0.08)


def test_fit_is_deterministic(overconfident):
    model_p, gold, _ = overconfident
    assert fit_temperature(np.log(model_p[:500]), gold[:500]) == fit_temperature(np.log(model_p[:500]), gold[:500])


def test_apply_identity_and_rows_sum_to_one():
    p = np.array([[0.7, 0.2, 0.1], [0.0, 1.0, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    np.testing.assert_array_equal(apply_temperature(p, 1.0), p)
    for t in (0.25, 2.0, 10.0):
        q = apply_temperature(p, t)
        np.testing.assert_allclose(q.sum(axis=1), 1.0)
        assert np.all(np.isfinite(q))
    # T > 1 softens the top probability, T < 1 sharpens it; uniform stays uniform
    assert apply_temperature(p, 2.0)[0, 0] < 0.7 < apply_temperature(p, 0.5)[0, 0]
    np.testing.assert_allclose(apply_temperature(p, 3.0)[2], 1 / 3)
    # the formula itself: softmax(log p / T)
    np.testing.assert_allclose(apply_temperature(p[:1], 2.0), _softmax(np.log(p[:1]) / 2.0))
    with pytest.raises(PipelineError):
        apply_temperature(p, 0.0)


def test_ece_by_hand():
    # bin (0.9, 1.0]: two rows, conf 0.95, one right → |0.5 − 0.95| · 2/4
    # bin (0.5, 0.6]: two rows, conf 0.6, both right → |1 − 0.6| · 2/4
    p = np.array([[0.95, 0.05], [0.95, 0.05], [0.6, 0.4], [0.4, 0.6]])
    gold = np.array([0, 1, 0, 1])
    assert expected_calibration_error(p, gold) == pytest.approx(0.5 * 0.45 + 0.5 * 0.4)
    assert expected_calibration_error(np.array([[1.0, 0.0]]), np.array([0])) == 0.0


def test_bad_gold_is_refused():
    with pytest.raises(PipelineError):
        fit_temperature(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(PipelineError):
        expected_calibration_error(np.zeros((2, 3)), np.array([0]))


def test_record_round_trip_and_absent_file_is_identity(tmp_path, overconfident):
    model_p, gold, _ = overconfident
    assert Calibration.load(tmp_path) == Calibration()
    p = np.array([[0.6, 0.3, 0.1]])
    np.testing.assert_array_equal(Calibration.load(tmp_path).apply(p), p)

    t = fit_temperature(np.log(model_p), gold)
    record = Calibration.from_fit(model_p, gold, t, fitted_on="validation")
    assert record.ece_after < record.ece_before and record.n == len(gold)
    record.save(tmp_path)
    assert json.loads((tmp_path / CALIBRATION_FILE).read_text())["fitted_on"] == "validation"
    loaded = Calibration.load(tmp_path)
    assert loaded == record
    np.testing.assert_allclose(loaded.apply(p), apply_temperature(p, t))

    (tmp_path / CALIBRATION_FILE).write_text("{not json")
    with pytest.raises(PipelineError, match="calibration.json"):
        Calibration.load(tmp_path)


def test_reliability_diagram_writes_png(tmp_path, overconfident):
    model_p, gold, _ = overconfident
    out = reliability_diagram(model_p[:2000], apply_temperature(model_p[:2000], 4.0), gold[:2000],
                              tmp_path / "sub" / "rel.png", title="toy")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["rel.png"]  # no temp file left behind
