"""Model loading: an unreachable hub fails within seconds with the three remedies; local dirs load."""

from __future__ import annotations

import time

import pytest

from pipeline import LABELS
from pipeline.core.errors import PipelineError
from test_train_data import labelled  # noqa: F401 (fixture)

REMEDIES = ("hf download aubmindlab/bert-base-arabertv02", "model.name_or_path=", "model=tiny")


def test_hub_model_offline_fails_fast_with_remedies(make_cfg, labelled, monkeypatch):
    """The real default model through the real stage: no hub here, so a fast, actionable failure."""
    from pipeline.stages.train import train

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = make_cfg("train", f"paths.labelled={labelled}")  # model=arabert, the default
    started = time.monotonic()
    with pytest.raises(PipelineError) as info:
        train(cfg)
    elapsed = time.monotonic() - started
    message = str(info.value)
    assert all(r in message for r in REMEDIES), message
    assert elapsed < 10, f"took {elapsed:.1f} s to fail"


def test_unreachable_hub_fails_fast_without_offline_flag(monkeypatch):
    """Not flagged offline, but nothing listens at the endpoint: a short connect check, not minutes of retries."""
    from pipeline.models.loading import ModelUnavailable, resolve_source

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: connection refused at once
    started = time.monotonic()
    with pytest.raises(ModelUnavailable, match="model=tiny"):
        resolve_source("aubmindlab/bert-large-arabertv02", hub_timeout_s=2)
    assert time.monotonic() - started < 10


def test_local_directory_and_bad_paths(tmp_path):
    from pipeline.models.loading import load_tokenizer_and_model, resolve_source
    from pipeline.models.tiny import build_tiny_bert

    model_dir = build_tiny_bert(["اتفاق بين الجانبين", "رفض المقترح"], tmp_path / "m", LABELS)
    tokenizer, model = load_tokenizer_and_model(str(model_dir), LABELS)
    assert model.config.id2label == dict(enumerate(LABELS))
    with pytest.raises(PipelineError, match="not found"):
        resolve_source(str(tmp_path / "missing" / "dir"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PipelineError, match="config.json"):
        resolve_source(str(tmp_path / "empty"))


def test_farasa_model_is_refused_before_training(make_cfg, labelled):
    from pipeline.stages.train import train

    cfg = make_cfg("train", "model=tiny", f"paths.labelled={labelled}", "model.preprocess_as=bert-base-arabert")
    with pytest.raises(PipelineError, match="Farasa"):
        train(cfg)


def test_farasa_model_name_is_refused_too(make_cfg, labelled):
    from pipeline.stages.train import train

    cfg = make_cfg("train", f"paths.labelled={labelled}", "model.name_or_path=aubmindlab/bert-base-arabertv2")
    with pytest.raises(PipelineError, match="Farasa"):
        train(cfg)
