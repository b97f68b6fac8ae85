"""Issue 22 item 1: the contrastive few-shot kind (model=contrastive): the encoder tuned on sentence pairs, then
the logistic-regression head; an ordinary "encoder" model dir. A small local BERT stands in for the encoder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import LABELS
from test_train_data import MARKERS, make_labelled

FAST = ["train.contrastive.pairs_per_sentence=4", "train.baselines=[majority]", "train.calibration_folds=2",
        "model.text_prefix=''"]


def contrastive_cfg(make_cfg, encoder, labelled, *extra):
    return make_cfg("train", "model=contrastive", f"model.name_or_path={encoder}", f"paths.labelled={labelled}",
                    *FAST, *extra)


def embeddings_gap(predictor, texts, labels) -> float:
    """Mean cosine similarity of same-stance pairs minus that of other-stance pairs (all pairs of rows)."""
    x = predictor.embed(texts)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = x @ x.T
    y = np.asarray(labels)
    same, off = y[:, None] == y[None, :], ~np.eye(len(y), dtype=bool)
    return float(sim[same & off].mean() - sim[~same].mean())


def test_contrastive_kind_is_registered_and_writes_an_encoder_dir(make_cfg):
    from pipeline.core.errors import PipelineError
    from pipeline.models import kinds
    from pipeline.training.fitting import preflight

    cfg = make_cfg("train", "model=contrastive", "model.name_or_path=/nowhere")
    assert "contrastive" in kinds.config_kinds() and "contrastive" not in kinds.dir_kinds()
    assert kinds.written_kind(cfg) == "encoder" and kinds.fit_method(cfg) == "contrastive"
    assert cfg.model.pooling == "mean" and cfg.model.text_prefix == "query: "  # the frozen model file's settings
    with pytest.raises(PipelineError, match=r"model=contrastive tunes a pretrained encoder: set model.name_or_path"):
        preflight(make_cfg("train", "model=contrastive"))
    with pytest.raises(PipelineError, match=r"train.contrastive.loss='hinge': choose one of cosine, contrastive"):
        preflight(make_cfg("train", "model=contrastive", "model.name_or_path=/nowhere", "train.contrastive.loss=hinge"))


def test_pairs_are_seeded_half_same_stance_and_weigh_both_sentences(make_cfg, tmp_path):
    """Gold and weak rows are weighted as every kind weighs them (train.source_weights through training_rows): a
    pair weighs the product of its sentences' weights, so a gold pair 1, gold-rules 0.25, rules-rules 0.0625."""
    from pipeline.labeling.splits import load_labelled, training_rows
    from pipeline.models.contrastive import sample_pairs

    labelled = make_labelled(make_cfg, tmp_path / "l.parquet")          # every other row rule-labelled
    cfg = make_cfg("train", f"paths.labelled={labelled}", "train.source_weights={gold:1.0,annotation:1.0,rules:0.25}")
    rows = training_rows(load_labelled(cfg).frame, cfg).reset_index(drop=True)
    assert set(rows["source"]) == {"gold", "rules"}
    pairs, targets, weights = sample_pairs(rows["label"], rows["weight"], 6, seed=3)
    assert len(pairs) == 6 * len(rows) and targets.mean() == 0.5
    labels, sources = rows["label"].to_numpy(), rows["source"].to_numpy()
    assert ((labels[pairs[:, 0]] == labels[pairs[:, 1]]) == (targets == 1)).all()
    assert (pairs[:, 0] != pairs[:, 1]).all()
    gold = sources[pairs] == "gold"
    assert np.allclose(weights, np.where(gold[:, 0], 1.0, 0.25) * np.where(gold[:, 1], 1.0, 0.25))
    again = sample_pairs(rows["label"], rows["weight"], 6, seed=3)
    assert (again[0] == pairs).all() and (sample_pairs(rows["label"], rows["weight"], 6, seed=4)[0] != pairs).any()


def test_a_zero_weight_pair_adds_nothing_to_the_loss():
    import torch

    from pipeline.models.contrastive import pair_loss

    sim, target = torch.tensor([0.9, 0.8, -0.2]), torch.tensor([1.0, 0.0, 0.0])
    for loss in ("cosine", "contrastive"):
        weighted = pair_loss(sim, target, torch.tensor([1.0, 0.0, 1.0]), loss=loss, margin=0.5)
        kept = pair_loss(sim[[0, 2]], target[[0, 2]], torch.tensor([1.0, 1.0]), loss=loss, margin=0.5)
        assert float(weighted) == pytest.approx(float(kept))
    assert float(pair_loss(sim, target, torch.ones(3), loss="cosine", margin=0.5)) == \
        pytest.approx(((0.9 - 1) ** 2 + 0.8 ** 2 + 0.2 ** 2) / 3)


def test_the_contrastive_stage_moves_the_encoder_and_brings_same_stance_sentences_closer(make_cfg, tmp_path,
                                                                                         small_encoder):
    from safetensors.numpy import load_file

    from pipeline.labeling.splits import holdout_split, load_labelled
    from pipeline.models.base import load_predictor
    from pipeline.models.frozen import frozen_encoder
    from pipeline.text.preprocess import TextPreprocessor

    labelled = make_labelled(make_cfg, tmp_path / "l.parquet", separable=True)
    cfg = contrastive_cfg(make_cfg, small_encoder, labelled, "train.contrastive.lr=1e-3",
                          "train.contrastive.epochs=3", "train.freeze_embeddings=false")
    split = holdout_split(load_labelled(cfg), cfg)
    # Unmarked texts: the marker phrases would make the classes separable before any tuning.
    texts = split.train["text"].str.split(" ", n=len(MARKERS["positive"].split())).str[-1].tolist()
    labels = split.train["label"].tolist()
    predictor, *_ = frozen_encoder(cfg, texts, tmp_path, tmp_path / "untouched", TextPreprocessor.from_cfg(cfg))
    before = embeddings_gap(predictor, texts, labels)
    from pipeline.models.contrastive import tune_encoder

    losses = tune_encoder(cfg, predictor, texts, labels, np.ones(len(texts)))
    after = embeddings_gap(predictor, texts, labels)
    assert after > before + 0.05, (before, after)                    # same stance closer than other stances
    assert losses[-1] < losses[0]
    predictor.model.save_pretrained(tmp_path / "tuned")
    start, tuned = load_file(small_encoder / "model.safetensors"), load_file(tmp_path / "tuned" / "model.safetensors")
    start = {k.removeprefix("bert."): v for k, v in start.items()}  # saved as a classifier, tuned as an encoder
    moved = [k for k in tuned if not np.allclose(start[k], tuned[k])]
    assert any(k.startswith("encoder.layer.0.") for k in moved), sorted(tuned)
    assert embeddings_gap(load_predictor(tmp_path / "untouched"), texts, labels) == pytest.approx(before)


@pytest.mark.slow
def test_contrastive_model_trains_predicts_through_the_stages_and_is_deterministic(make_cfg, tmp_path, small_encoder):
    import mlflow

    from pipeline.models.base import read_model_metadata
    from pipeline.stages.predict import predict
    from pipeline.stages.train import train

    labelled = make_labelled(make_cfg, tmp_path / "work" / "labelled.parquet", separable=True)
    results = [train(contrastive_cfg(make_cfg, small_encoder, labelled, "train.contrastive.lr=1e-3",
                                     f"paths.run_dir={tmp_path / f'run{i}'}")) for i in range(2)]
    model_dir = Path(results[0]["model_dir"])
    meta = read_model_metadata(model_dir)
    assert meta["kind"] == "encoder" and "contrastive-tuned" in meta["base_model"]
    run = mlflow.get_run(results[0]["run_id"])
    assert run.data.tags["model_kind"] == "contrastive" and "contrastive_loss" in run.data.metrics
    assert "test_macro_f1" in results[0]["metrics"]
    # The same seed: the same encoder, head and test scores.
    heads = [json.loads((Path(r["model_dir"]) / "head.json").read_text()) for r in results]
    assert heads[0] == heads[1] and results[0]["metrics"]["test_macro_f1"] == results[1]["metrics"]["test_macro_f1"]
    articles = tmp_path / "new.csv"
    pd.DataFrame({"article_id": ["x", "y"],
                  "text": [f"{MARKERS['positive']} في موسكو اليوم.", f"{MARKERS['negative']} في جنيف أمس."]}
                 ).to_csv(articles, index=False)
    out = tmp_path / "predictions.csv"
    predict(make_cfg("predict", f"input={articles}", f"output={out}", f"model_uri={results[1]['model_uri']}"))
    predicted = pd.read_csv(out)
    assert len(predicted) == 2 and set(predicted["label"]) <= set(LABELS)


def test_a_model_reading_context_is_tuned_on_the_inputs_it_serves(make_cfg, tmp_path, small_encoder, monkeypatch):
    """With model.context the pairs are the sentences beside their contexts, as the head and serving read them."""
    from pipeline.labeling.splits import holdout_split, load_labelled
    from pipeline.models import contrastive
    from pipeline.models.batching import TransformerPredictor

    labelled = make_labelled(make_cfg, tmp_path / "l.parquet")
    cfg = contrastive_cfg(make_cfg, small_encoder, labelled, "model.context=previous", "train.contrastive.epochs=1")
    split = holdout_split(load_labelled(cfg), cfg)
    encoded: list[list[str]] = []
    real = TransformerPredictor.encode

    def recording(self, texts, *args, **kwargs):
        encoded.append(list(texts))
        return real(self, texts, *args, **kwargs)

    monkeypatch.setattr(TransformerPredictor, "encode", recording)
    from pipeline.text.preprocess import TextPreprocessor

    contrastive.fit(cfg, split, tmp_path / "work", tmp_path / "model", TextPreprocessor.from_cfg(cfg))
    tuned = encoded[0]  # the first encode of the fit: the pairs' sentences
    assert len(tuned) == len(split.train)
    separated = [t for t in tuned if "[SEP]" in t or "</s>" in t]
    assert separated, "the sentences were tuned without their contexts"
