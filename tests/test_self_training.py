"""Issue 22 item 2: self-training (`train.self_training`). After the first fit, the model's confident predictions on
the sentences to label join training as pseudo labels (one place: training.fitting.fit_model, any kind), the rounds
are logged, and the held-out gold never enters. A registered "lookup" kind predicts a fixed function of the text, so
the rows each round must add are known exactly; the stage tests run the real tfidf kind."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from pipeline import LABELS
from pipeline.core.io import write_text_atomic
from pipeline.models import kinds
from pipeline.models.base import StancePredictor, write_model_metadata
from test_train_data import make_labelled

CONFIDENCES = (0.5, 0.7, 0.85, 0.95)
FITS: list = []   # the split of every fit of the lookup kind, in order


def lookup_label(text: str) -> tuple[str, float]:
    """What the lookup model predicts for a sentence, whatever it was trained on."""
    return LABELS[len(text) % 3], CONFIDENCES[len(text) % 4]


class LookupPredictor(StancePredictor):
    kind = "lookup"

    def _scores(self, texts, batch_size):
        proba = np.zeros((len(texts), len(LABELS)))
        for i, text in enumerate(texts):
            label, confidence = lookup_label(text)
            proba[i] = (1 - confidence) / (len(LABELS) - 1)
            proba[i, LABELS.index(label)] = confidence
        return proba, np.zeros(len(texts), dtype=bool)


def fit_lookup(cfg, split, work_dir, out, preprocess, *, resume_from=None):
    FITS.append(split)
    write_model_metadata(out, kind="lookup", labels=LABELS, max_length=8, base_model="text length",
                         preprocessor=preprocess)
    write_text_atomic(out / "lookup.json", json.dumps({"rows": len(split.train)}))


LOOKUP = SimpleNamespace(written_kind=lambda cfg: "lookup", fit=fit_lookup,
                         load=lambda d, meta, **_: LookupPredictor(d, meta))
LOOKUP_CFG = ("model=tfidf", "model.kind=lookup", "model.name=lookup", "model.preprocess_as=null")


@pytest.fixture
def lookup_kind():
    kinds.register(kinds.Kind("lookup", LOOKUP))
    FITS.clear()
    try:
        yield
    finally:
        kinds.unregister("lookup")
        FITS.clear()


@pytest.fixture
def weak_labelled(make_cfg, tmp_path):
    """Gold on every other seed sentence, rule labels on the rest (rule labels that disagree with the gold)."""
    return make_labelled(make_cfg, tmp_path / "work" / "labelled.parquet")


def _folds(make_cfg, labelled, *overrides):
    from pipeline.labeling.splits import cv_splits, load_labelled

    cfg = make_cfg("evaluate", *LOOKUP_CFG, f"paths.labelled={labelled}", *overrides)
    data = load_labelled(cfg)
    return cfg, data, cv_splits(data, cfg)


def test_rounds_zero_fits_once_on_the_split_as_it_is(lookup_kind, make_cfg, weak_labelled, tmp_path):
    from pipeline.training.fitting import fit_model

    cfg, _, folds = _folds(make_cfg, weak_labelled)  # the default: rounds 0
    assert int(cfg.train.self_training.rounds) == 0
    fit_model(cfg, folds[0], tmp_path / "fold")
    assert len(FITS) == 1 and FITS[0] is folds[0]
    assert not (tmp_path / "fold" / "self_training").exists()


def test_one_round_adds_exactly_the_confident_pool_rows_with_the_models_labels_and_weight(
        lookup_kind, make_cfg, weak_labelled, tmp_path):
    from pipeline.training.fitting import fit_model

    cfg, _, folds = _folds(make_cfg, weak_labelled, "train.self_training.rounds=1",
                           "train.self_training.min_confidence=0.8", "train.self_training.weight=0.3")
    split = folds[0]
    fit_model(cfg, split, tmp_path / "fold")
    assert len(FITS) == 2 and FITS[0] is split
    second = FITS[1].train
    # The pool: the training articles' sentences without a person's label (here: the rule-labelled ones).
    pool = split.pool
    assert len(pool) and set(pool["source"]) == {"rules"}
    assert not set(pool["group"]) & set(split.test_groups)
    predicted = {sid: lookup_label(text) for sid, text in zip(pool["sentence_id"], pool["text"])}
    confident = {sid for sid, (_, c) in predicted.items() if c >= 0.8}
    assert 0 < len(confident) < len(pool)
    pseudo = second[second["source"] == "pseudo"]
    assert set(pseudo["sentence_id"]) == confident and len(pseudo) == len(confident)
    assert all(label == predicted[sid][0] for sid, label in zip(pseudo["sentence_id"], pseudo["label"]))
    assert set(pseudo["weight"]) == {0.3}
    # The rule label of a pseudo-labelled sentence is replaced; every other row of the first fit is kept as it was.
    kept = split.train[~split.train["sentence_id"].isin(confident)]
    assert not (split.train["source"] != "rules")[split.train["sentence_id"].isin(confident)].any()
    pd.testing.assert_frame_equal(second[second["source"] != "pseudo"].reset_index(drop=True),
                                  kept.reset_index(drop=True))
    assert FITS[1].test is split.test and FITS[1].val is split.val
    assert not (tmp_path / "fold" / "self_training").exists()  # the round's dir is gone, its model in place
    assert json.loads((tmp_path / "fold" / "model" / "lookup.json").read_text())["rows"] == len(second)


def test_the_held_out_gold_never_enters_and_transductive_pools_its_sentences(lookup_kind, make_cfg, tmp_path):
    from pipeline.training.fitting import fit_model
    from pipeline.training.inner_cv import inner_splits

    labelled = make_labelled(make_cfg, tmp_path / "gold.parquet", gold_every=1)  # every sentence gold: as the seeds
    rounds = ("train.self_training.rounds=2", "train.self_training.min_confidence=0.0")
    _, _, plain = _folds(make_cfg, labelled, *rounds)
    assert all(f.pool.empty for f in plain)  # nothing to label without transductive: the first fit stands
    cfg, data, folds = _folds(make_cfg, labelled, *rounds, "train.transductive=true", "train.sources=[gold]")
    gold = data.frame.set_index("sentence_id")["label"]
    for i, split in enumerate(folds):
        held_out = data.frame[data.frame["group"].isin(split.test_groups)]
        assert set(split.pool["sentence_id"]) == set(held_out["sentence_id"])  # the sentences, not their gold
        assert set(split.pool["source"]) == {"rules"}
        FITS.clear()
        fit_model(cfg, split, tmp_path / f"fold-{i}")
        assert len(FITS) == 2  # the second round's pseudo labels repeat the first's: stopped there
        for fitted in FITS:
            test_rows = fitted.train[fitted.train["sentence_id"].isin(split.test["sentence_id"])]
            assert not (test_rows["source"] == "gold").any()
        pseudo = FITS[1].train[FITS[1].train["source"] == "pseudo"]
        assert set(pseudo["sentence_id"]) == set(held_out["sentence_id"])
        assert list(pseudo["label"]) == [lookup_label(t)[0] for t in pseudo["text"]]
        assert (pseudo["label"].to_numpy() != gold.loc[pseudo["sentence_id"]].to_numpy()).any()
        # Inner folds (calibration, nested selection): the outer fold's pool and, transductive, their own held-out
        # article's sentences (never its gold label); without transductive nothing (below).
        for inner in inner_splits(data, split, cfg):
            assert set(inner.pool["sentence_id"]) == set(split.pool["sentence_id"]) | set(inner.test["sentence_id"])
            assert not inner.pool["source"].isin(["gold", "annotation"]).any()
    plain_cfg, plain_data, _ = _folds(make_cfg, labelled, *rounds)
    for split in plain:
        for inner in inner_splits(plain_data, split, plain_cfg):
            assert inner.pool.empty


def test_rounds_are_logged_per_fold_to_mlflow_and_the_stage_log(make_cfg, weak_labelled, caplog):
    import mlflow

    from pipeline.stages.evaluate import evaluate

    cfg = make_cfg("evaluate", "model=tfidf", f"paths.labelled={weak_labelled}", "train.baselines=[majority]",
                   "evaluate.bootstrap=50", "evaluate.cv=kfold", "evaluate.folds=2", "train.self_training.rounds=2",
                   "train.self_training.min_confidence=0.4")
    with caplog.at_level(logging.INFO, logger="pipeline"):
        result = evaluate(cfg)
    assert "self-training round 1/2" in caplog.text and "refitted on" in caplog.text
    client = mlflow.tracking.MlflowClient(str(cfg.tracking.uri))
    parent = client.get_run(result["run_id"])
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 2
    for child in children:
        def history(key):  # {step: value}; the store returns a history in no particular order
            return {m.step: m.value for m in client.get_metric_history(child.info.run_id, key)}

        added = history("self_training_added")
        assert min(added) == 1 and added[1] > 0
        assert sum(history(f"self_training_added_{label}")[1] for label in LABELS) == added[1]
        assert 0.4 <= history("self_training_mean_confidence")[1] <= 1.0
        assert {0, 1} <= set(history("self_training_round_test_macro_f1"))


def test_train_self_trains_the_first_fit_and_the_refit(make_cfg, weak_labelled, caplog):
    import mlflow

    from pipeline.stages.train import train

    cfg = make_cfg("train", "model=tfidf", f"paths.labelled={weak_labelled}", "train.baselines=[majority]",
                   "evaluate.bootstrap=50", "train.self_training.rounds=1", "train.self_training.min_confidence=0.4",
                   "train.calibration_folds=2")
    with caplog.at_level(logging.INFO, logger="pipeline"):
        result = train(cfg)
    assert "holdout: self-training round 1/1" in caplog.text and "refit: self-training round 1/1" in caplog.text
    client = mlflow.tracking.MlflowClient(str(cfg.tracking.uri))
    first, refit = (client.get_metric_history(result["run_id"], f"{p}self_training_added") for p in ("", "refit_"))
    assert [m.step for m in first] == [1] and [m.step for m in refit] == [1] and refit[0].value > 0
    assert (Path(result["model_dir"]) / "calibration.json").exists()
    assert not list(Path(cfg.paths.run_dir).rglob("self_training"))


@pytest.mark.parametrize("override, fragment", [
    ("train.self_training.rounds=-1", "train.self_training.rounds=-1"),
    ("train.self_training.weight=0", "train.self_training.weight=0"),
    ("train.self_training.source=gold", "pseudo labels are not a person's"),
])
def test_bad_settings_are_one_line_naming_the_key(make_cfg, override, fragment):
    from pipeline.core.errors import PipelineError
    from pipeline.training.self_training import settings

    with pytest.raises(PipelineError, match=fragment):
        settings(make_cfg("train", override))


def test_min_confidence_outside_zero_one_is_refused_before_anything_runs(make_cfg):
    from pipeline.core.errors import UsageError

    with pytest.raises(UsageError, match=r"train.self_training.min_confidence=1.5 is outside \[0, 1\]"):
        make_cfg("train", "train.self_training.min_confidence=1.5")


class ContextLookupPredictor(LookupPredictor):
    """The lookup model of a kind that reads sentence context: it records every input it is given."""
    READ: list[str] = []

    @property
    def context_separator(self):
        return " <sep> "

    def _scores(self, texts, batch_size):
        self.READ.extend(texts)
        return super()._scores(texts, batch_size)


def test_the_pool_is_predicted_with_the_context_the_model_reads(make_cfg, weak_labelled, tmp_path):
    """A model trained with model.context reads each pool sentence beside its context, as it is scored and served;
    the sentence alone would be a different input from the one its pseudo label is trained on."""
    from pipeline.text.context import context_column
    from pipeline.training.fitting import fit_model

    kind = SimpleNamespace(written_kind=lambda cfg: "lookup", fit=fit_lookup,
                           load=lambda d, meta, **_: ContextLookupPredictor(d, meta))
    kinds.register(kinds.Kind("lookup", kind))
    ContextLookupPredictor.READ.clear()
    try:
        cfg, _, folds = _folds(make_cfg, weak_labelled, "train.self_training.rounds=1", "model.context=previous")
        split = folds[0]
        fit_model(cfg, split, tmp_path / "fold")
    finally:
        kinds.unregister("lookup")
        FITS.clear()
    contexts = [c for c in split.pool[context_column("previous")] if c]
    assert contexts, "the pool's sentences carry their previous sentence"
    with_context = [t for t in ContextLookupPredictor.READ if " <sep> " in t]
    assert len(with_context) >= len(contexts)


def test_each_rounds_model_is_loaded_once(lookup_kind, make_cfg, weak_labelled, tmp_path, monkeypatch):
    """A round's model scores the held-out gold and predicts the pool from one load (not one per use)."""
    from pipeline.models import base
    from pipeline.training.fitting import fit_model

    loads = []
    real = base.load_predictor
    monkeypatch.setattr(base, "load_predictor", lambda d, *a, **k: loads.append(d) or real(d, *a, **k))
    cfg, _, folds = _folds(make_cfg, weak_labelled, "train.self_training.rounds=1",
                           "train.self_training.min_confidence=0.8")
    fit_model(cfg, folds[0], tmp_path / "fold")
    assert len(FITS) == 2
    assert len(loads) == 2  # the first fit's model (gold + pool), then round 1's (gold)
