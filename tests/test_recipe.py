"""One small-data recipe for every pretrained transformer (issue 16): training policy lives in conf/train, a model
file holds only what is the encoder's own, so `model=arabert` with e5's encoder settings trains exactly as
`model=e5-small`; a model built from scratch never has frozen embeddings; a linear-probe head is applied to the
checkpoint's own classification layer when there is no pooling, never ignored."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf

from pipeline import LABELS

REPO = Path(__file__).resolve().parent.parent
ENCODER_MODELS = ("arabert", "arabert-large", "e5-small", "frozen", "tiny")
AS_E5 = ["model=arabert", "model.preprocess_as=null", "model.pooling=mean", "model.text_prefix='query: '"]


def model_file(name: str) -> dict:
    data = yaml.safe_load((REPO / "conf" / "model" / f"{name}.yaml").read_text(encoding="utf-8"))
    data.pop("defaults", None)
    return data


def test_every_encoder_model_file_has_the_same_keys_and_no_training_policy():
    keys = {name: set(model_file(name)) for name in ENCODER_MODELS}
    assert keys["tiny"] - keys["arabert"] == {"tiny"}                      # how to build it from scratch
    assert all(keys[name] == keys["arabert"] for name in ENCODER_MODELS if name != "tiny")
    train_keys = set(OmegaConf.load(REPO / "conf" / "train" / "default.yaml"))
    for name in (*ENCODER_MODELS, "tfidf"):
        assert not set(model_file(name)) & (train_keys - {"max_length"}), name
    assert "${" not in (REPO / "conf" / "train" / "default.yaml").read_text(encoding="utf-8").replace(
        "${model.max_length}", "")                                         # no policy read from model files


def test_arabert_with_e5_settings_composes_the_same_recipe_as_e5_small(make_cfg, small_encoder):
    arabert = make_cfg("train", *AS_E5, f"model.name_or_path={small_encoder}")
    e5 = make_cfg("train", "model=e5-small", f"model.name_or_path={small_encoder}")
    assert OmegaConf.to_container(arabert.train, resolve=True) == OmegaConf.to_container(e5.train, resolve=True)
    differ = {k for k in e5.model if OmegaConf.to_container(e5.model)[k] != OmegaConf.to_container(arabert.model)[k]}
    assert differ == {"name"}
    assert e5.train.head_init == "linear_probe" and e5.train.min_steps > 0 and e5.train.freeze_embeddings
    assert make_cfg("train", "model=tiny").train.head_init == "random"       # train=scratch


@pytest.mark.slow
def test_arabert_with_e5_settings_trains_exactly_as_e5_small(make_cfg, small_encoder, tmp_path, monkeypatch):
    """Same optimiser steps, same head initialisation, same frozen weights: the same fitted model."""
    from transformers import TrainerCallback

    from pipeline.models import transformer
    from pipeline.training import fitting
    from pipeline.labeling.splits import holdout_split, load_labelled
    from test_train_data import make_labelled

    seen: list[dict] = []

    class Record(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            seen.append({"frozen": sorted(n for n, p in model.named_parameters() if not p.requires_grad),
                         "head": model.head.weight.detach().clone().numpy()})

        def on_train_end(self, args, state, control, **kwargs):
            seen[-1]["steps"] = state.global_step

    monkeypatch.setattr(transformer, "extra_callbacks", lambda: [Record()])
    labelled = make_labelled(make_cfg, tmp_path / "work" / "labelled.parquet", separable=True)
    common = [f"model.name_or_path={small_encoder}", f"paths.labelled={labelled}", "train.min_steps=12"]
    heads = []
    for overrides in ([*AS_E5, *common], ["model=e5-small", *common]):
        cfg = make_cfg("train", *overrides)
        split = holdout_split(load_labelled(cfg), cfg)
        model_dir = fitting.fit_model(cfg, split, tmp_path / cfg.model.name)
        heads.append(json.loads((model_dir / "head.json").read_text()))
    arabert, e5 = seen
    assert arabert["steps"] == e5["steps"] >= 12
    assert arabert["frozen"] == e5["frozen"] and any("word_embeddings" in n for n in e5["frozen"])
    np.testing.assert_allclose(arabert["head"], e5["head"])                 # the same probed head to start from
    assert np.abs(e5["head"]).max() > 0
    np.testing.assert_allclose(heads[0]["weight"], heads[1]["weight"], atol=1e-6)


def test_a_model_built_from_scratch_never_has_frozen_embeddings(make_cfg, small_encoder):
    from pipeline.models.transformer import frozen_parameters
    from pipeline.models.loading import load_tokenizer_and_model

    _, model = load_tokenizer_and_model(str(small_encoder), LABELS, hub_timeout_s=1)
    scratch = make_cfg("train", "model=tiny", "train.freeze_embeddings=true")
    pretrained = make_cfg("train", f"model.name_or_path={small_encoder}")
    assert frozen_parameters(scratch, model, pooled=False) == []
    frozen = frozen_parameters(pretrained, model, pooled=False)
    assert frozen and all(p is q for p, q in zip(frozen, model.get_input_embeddings().parameters()))


def test_linear_probe_without_pooling_starts_the_checkpoints_own_head(make_cfg, small_encoder):
    """pooling=null (AraBERT's own [CLS]-pooler head) with head_init=linear_probe: before any update the model
    predicts what a logistic regression on its classification layer's inputs predicts."""
    import torch
    from sklearn.linear_model import LogisticRegression

    from pipeline.models.transformer import initialise_head
    from pipeline.models.loading import load_tokenizer_and_model
    from pipeline.text.segmentation import seed_sentences
    import pandas as pd

    texts = seed_sentences()[:40]
    labels = [LABELS[i % 3] for i in range(len(texts))]
    tokenizer, model = load_tokenizer_and_model(str(small_encoder), LABELS, hub_timeout_s=1)
    cfg = make_cfg("train", f"model.name_or_path={small_encoder}", "train.class_weights=none")
    batch = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    model.eval()
    with torch.inference_mode():
        pooled = model.bert.pooler(model.bert(**batch).last_hidden_state).numpy()
        before = model(**batch).logits.argmax(-1).tolist()
    expected = LogisticRegression(C=1.0, max_iter=5000, random_state=int(cfg.seed)).fit(pooled, labels).predict(pooled)
    initialise_head(cfg, model, tokenizer, texts, pd.DataFrame({"label": labels}), pooled=False)
    model.eval()
    with torch.inference_mode():
        after = [LABELS[i] for i in model(**batch).logits.argmax(-1).tolist()]
    assert after == list(expected) and [LABELS[i] for i in before] != list(expected)


def test_an_unknown_head_init_is_refused(make_cfg, small_encoder):
    from pipeline.core.errors import PipelineError
    from pipeline.models.transformer import initialise_head

    cfg = make_cfg("train", f"model.name_or_path={small_encoder}", "train.head_init=probe")
    with pytest.raises(PipelineError, match="train.head_init='probe'"):
        initialise_head(cfg, None, None, [], None, pooled=False)
