"""Issue 8: frozen-encoder and pooled heads, the rules + model hybrid, weak labels with weights, the step floor,
the refit that is served, data.unlabelled, and the default model for predict. Tiny encoder only (offline)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import LABELS
from test_train_data import make_labelled


@pytest.fixture
def labelled_weak(make_cfg, tmp_path):
    """Gold on every other seed sentence, rule labels on the rest (test_train_data.make_labelled)."""
    return make_labelled(make_cfg, tmp_path / "work" / "labelled.parquet")


TINY_SETTINGS = ("+model.tiny={vocab_size:3000,hidden_size:32,num_layers:1,num_heads:2,intermediate_size:64,"
                 "max_position:512}")
def uncalibrated(model_dir: Path, tmp_path: Path):
    """The predictor of a copy of `model_dir` without its calibration.json: the raw probabilities."""
    import shutil

    from pipeline.models.base import load_predictor

    copy = tmp_path / "uncalibrated"
    shutil.copytree(model_dir, copy, ignore=shutil.ignore_patterns("calibration.json"))
    return load_predictor(copy)


FROZEN_TINY = ["model=frozen", "model.name_or_path=null", TINY_SETTINGS, "model.text_prefix=''",
               "train.baselines=[majority]", "evaluate.bootstrap=50"]


def test_linear_head_from_logistic_regression_matches_sklearn():
    from sklearn.linear_model import LogisticRegression

    from pipeline.models.calibration import softmax
    from pipeline.models.encoder import LinearHead

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5))
    y = np.array(LABELS)[np.argmax(x[:, :3], axis=1)]
    clf = LogisticRegression(max_iter=2000).fit(x, y)
    head = LinearHead.from_logistic_regression(clf, LABELS, pooling="mean", normalize=False)
    ours = softmax(head.logits(x))
    theirs = clf.predict_proba(x)[:, [list(clf.classes_).index(label) for label in LABELS]]
    assert np.allclose(ours, theirs, atol=1e-9)


def test_linear_head_gives_an_unseen_class_no_probability():
    from sklearn.linear_model import LogisticRegression

    from pipeline.models.calibration import softmax
    from pipeline.models.encoder import LinearHead

    x = np.array([[0.0, 1.0], [1.0, 0.0], [0.1, 0.9], [0.9, 0.1]])
    clf = LogisticRegression().fit(x, ["negative", "positive", "negative", "positive"])
    proba = softmax(LinearHead.from_logistic_regression(clf, LABELS, pooling="cls", normalize=True).logits(x))
    assert proba[:, LABELS.index("neutral")].max() < 1e-9
    assert list(np.array(LABELS)[proba.argmax(axis=1)]) == ["negative", "positive", "negative", "positive"]


def test_training_rows_weigh_sources_and_drop_weak_labels_below_the_floor(make_cfg):
    from pipeline.labeling.splits import training_rows

    rows = pd.DataFrame({
        "sentence_id": list("abcde"), "group": "g", "text": list("abcde"),
        "label": ["positive", "negative", "neutral", "neutral", "positive"],
        "source": ["gold", "rules", "rules", "rules", "annotation"],
        "rule_label": [None, "negative", "neutral", None, None],
        "rule_confidence": [0.0, 0.9, 0.2, 0.0, 0.0],
    })
    cfg = make_cfg("train", "train.source_weights={gold:1.0,annotation:0.8,rules:0.25}",
                   "train.weak.min_confidence=0.5", "train.weak.abstained=drop")
    picked = training_rows(rows, cfg)
    assert list(picked["sentence_id"]) == ["a", "b", "e"]           # c below the floor, d abstained and dropped
    assert list(picked["weight"]) == [1.0, 0.25, 0.8]
    keep = training_rows(rows, make_cfg("train", "train.weak.abstained=keep"))
    assert "d" in set(keep["sentence_id"])


def test_transductive_folds_train_on_the_held_out_articles_rule_labels_not_their_gold(make_cfg, tmp_path):
    from pipeline.labeling.splits import cv_splits, load_labelled

    labelled = make_labelled(make_cfg, tmp_path / "l.parquet", gold_every=1)  # every row gold
    cfg = make_cfg("evaluate", f"paths.labelled={labelled}", "train.transductive=true")
    data = load_labelled(cfg)
    for fold in cv_splits(data, cfg):
        held_out = fold.train[fold.train["group"].isin(fold.test_groups)]
        assert len(held_out) > 0 and set(held_out["source"]) == {"rules"}
        expected = data.frame.set_index("sentence_id").loc[held_out["sentence_id"], "rule_label"]
        assert list(held_out["label"]) == [r if isinstance(r, str) else "neutral" for r in expected]
    plain = cv_splits(data, make_cfg("evaluate", f"paths.labelled={labelled}"))
    assert all(not f.train["group"].isin(f.test_groups).any() for f in plain)


def test_step_floor_raises_epochs_only_when_needed(make_cfg):
    from pipeline.models.transformer import epochs_for

    cfg = make_cfg("train", "model=tiny", "train.epochs=2", "train.batch_size=8", "train.min_steps=40")
    assert epochs_for(cfg, 40) == 8.0       # 5 steps per epoch: 2 epochs = 10 steps < 40
    assert epochs_for(cfg, 400) == 2.0      # 50 steps per epoch: the floor is met already
    assert epochs_for(make_cfg("train", "model=tiny", "train.epochs=2"), 40) == 2.0  # tiny sets no floor


def test_many_short_epochs_are_validated_and_saved_at_most_max_evaluations_times(make_cfg):
    from pipeline.models.trainer import evaluation_interval, training_arguments

    cfg = make_cfg("train", "model=tiny", "train.batch_size=16", "train.max_evaluations=10")
    assert evaluation_interval(cfg, 8.0, 45) is None             # few epochs: once per epoch
    assert evaluation_interval(cfg, 50.0, 45) == 15              # 3 steps per epoch, every 5th epoch
    args = training_arguments(cfg, "unused", has_val=True, epochs=50.0, eval_every=15)
    assert (args.eval_strategy, args.save_strategy, args.eval_steps, args.save_steps) == ("steps", "steps", 15, 15)
    assert evaluation_interval(make_cfg("train", "model=tiny", "train.max_evaluations=0"), 50.0, 45) is None


@pytest.mark.slow
def test_frozen_encoder_model_trains_serves_and_logs_like_the_others(make_cfg, tmp_path):
    import mlflow

    from pipeline.models.base import load_predictor, read_model_metadata
    from pipeline.stages.train import train

    labelled = make_labelled(make_cfg, tmp_path / "work" / "labelled.parquet", separable=True)
    cfg = make_cfg("train", *FROZEN_TINY, f"paths.labelled={labelled}")
    result = train(cfg)
    model_dir = Path(result["model_dir"])
    assert read_model_metadata(model_dir)["kind"] == "encoder"
    assert (model_dir / "head.json").exists() and not list(model_dir.glob("*.joblib"))
    texts = pd.read_parquet(labelled)["text"].head(6).tolist()
    local = load_predictor(model_dir).predict(texts)
    served = mlflow.pyfunc.load_model(result["model_uri"]).predict(pd.DataFrame({"text": texts}))
    assert list(served["label"]) == list(local["label"])
    assert np.allclose(served[[f"p_{x}" for x in LABELS]].to_numpy(), local[[f"p_{x}" for x in LABELS]].to_numpy())
    # The head was fitted (a random tiny encoder says nothing about quality: bench/quality_loao.py measures that).
    head = json.loads((model_dir / "head.json").read_text())
    assert np.abs(np.array(head["weight"])).max() > 0 and head["pooling"] == "mean" and head["normalize"] is True
    assert "test_macro_f1" in result["metrics"]
    # Calibrated at train time; the encoder predictor applies calibration.json like every StancePredictor.
    from pipeline.models.calibration import Calibration

    calibration = Calibration.load(model_dir)
    assert (model_dir / "calibration.json").exists()
    # (the served model is the refit: its own T, fitted on predictions of rows by models that had not seen them)
    assert calibration.temperature == pytest.approx(
        mlflow.get_run(result["run_id"]).data.metrics["served_calibration_temperature"])
    raw = uncalibrated(model_dir, tmp_path).predict_proba(texts)
    assert np.allclose(local[[f"p_{x}" for x in LABELS]].to_numpy(), calibration.apply(raw))


def test_train_max_length_is_the_one_limit_of_frozen_and_tfidf_models(make_cfg, tmp_path, small_encoder):
    """Issue 18 item 4: the frozen and TF-IDF kinds once read model.max_length; train.max_length is the one
    source (model.max_length is only its default), so an override of it reaches the served model."""
    from pipeline.training.fitting import fit_model
    from pipeline.models.base import load_predictor, read_model_metadata
    from pipeline.labeling.splits import holdout_split, load_labelled

    labelled = make_labelled(make_cfg, tmp_path / "work" / "labelled.parquet", separable=True)
    long_text = " ".join(["اتفاق مثمر وبناء"] * 40)
    for kind, extra in (("frozen", [f"model.name_or_path={small_encoder}"]), ("tfidf", [])):
        cfg = make_cfg("train", f"model={kind}", *extra, f"paths.labelled={labelled}", "train.max_length=24",
                       "model.max_length=200")
        model_dir = fit_model(cfg, holdout_split(load_labelled(cfg), cfg), tmp_path / kind)
        assert read_model_metadata(model_dir)["max_length"] == 24, kind
        if kind == "frozen":  # the encoder reads 24 tokens of a longer sentence and says it was cut
            assert load_predictor(model_dir).predict([long_text])["truncated"].tolist() == [True]


@pytest.mark.slow
def test_calibration_never_sees_the_test_rows_and_the_served_refit_gets_its_own(make_cfg, labelled_weak, tmp_path):
    """Issue 18 item 1: without a validation split (the small-data recipe) T was fitted on the test rows, logged
    beside the test metrics, and copied onto the refit. Now: out-of-fold predictions over the training articles
    (each article predicted by a model fitted without it); the test rows measure it; the served refit's T is
    fitted on every prediction of a row by a model that had not seen it."""
    import mlflow

    from pipeline.models.calibration import Calibration
    from pipeline.labeling.splits import holdout_split, load_labelled
    from pipeline.stages.train import train

    cfg = make_cfg("train", "model=tfidf", "train.baselines=[majority]", f"paths.labelled={labelled_weak}",
                   "train.refit=all")
    assert cfg.train.val_size == 0
    split = holdout_split(load_labelled(cfg), cfg)
    result = train(cfg)
    run = mlflow.get_run(result["run_id"])
    fitted_on = pd.read_csv(Path(cfg.paths.run_dir) / "evaluation" / "calibration_rows.csv")
    train_gold = split.train[split.train["source"] == "gold"]
    assert sorted(fitted_on["sentence_id"]) == sorted(train_gold["sentence_id"])       # the training articles' gold
    assert not set(fitted_on["sentence_id"]) & set(split.test["sentence_id"])          # never a test row
    assert fitted_on.groupby("group")["fold"].nunique().max() == 1                     # an article: one inner fold
    n_folds = min(cfg.train.calibration_folds, train_gold["group"].nunique())          # grouped folds, at most one
    assert fitted_on["fold"].nunique() == n_folds                                     # per training article
    first = Calibration.load(Path(cfg.paths.run_dir) / "model")
    assert first.fitted_on.startswith("out-of-fold") and first.n == len(train_gold)
    m = run.data.metrics
    assert {"test_ece_before", "test_ece_after", "calibration_insample_ece_after"} <= set(m)
    assert "calibration_ece_after" not in m and first.temperature == pytest.approx(m["calibration_temperature"])
    served = Calibration.load(result["model_dir"])
    assert served.n == len(train_gold) + len(split.test) and "test" in served.fitted_on
    assert served.temperature == pytest.approx(m["served_calibration_temperature"])
    assert not (Path(cfg.paths.run_dir) / "calibration").exists()                      # inner fits leave nothing


def test_inner_fits_log_nothing_to_the_run(make_cfg):
    """The inner fits of calibration and nested selection (pipeline.training.inner_cv) run inside the train or evaluate run;
    their curves must not land in it."""
    import mlflow

    from pipeline.core import tracking
    from pipeline.models.trainer import log_metrics, log_tags, run_logging_off

    cfg = make_cfg("train")
    with tracking.start_run(cfg, "quiet") as run:
        with run_logging_off():
            log_metrics({"train_loss": 1.0}, step=1)
            log_tags({"refit_sources": "inner"})
        log_metrics({"val_macro_f1": 0.5}, step=1)
    data = mlflow.get_run(run.info.run_id).data
    assert "train_loss" not in data.metrics and "refit_sources" not in data.tags and "val_macro_f1" in data.metrics


@pytest.mark.slow
def test_hybrid_lets_confident_rules_decide_and_says_so(make_cfg, tmp_path):
    import mlflow

    from pipeline.stages.train import train

    labelled = make_labelled(make_cfg, tmp_path / "work" / "labelled.parquet", separable=True)
    cfg = make_cfg("train", "model=tfidf", "train.baselines=[majority]", "train.hybrid.enabled=true",
                   "train.hybrid.min_rule_confidence=0.5", f"paths.labelled={labelled}")
    result = train(cfg)
    cue = "رفضت موسكو المقترح الأمريكي رفضا قاطعا."      # two refusal cues: confident negative
    plain = "عقد الاجتماع في جنيف يوم الاثنين."           # no cue: the model decides
    served = mlflow.pyfunc.load_model(result["model_uri"]).predict(pd.DataFrame({"text": [cue, plain]}))
    assert list(served["decided_by"]) == ["rules", "model"]
    assert served["label"].iloc[0] == "negative" and served["p_negative"].iloc[0] > 0.5
    assert "neg.refusal" in served["rules_fired"].iloc[0] and served["rules_fired"].iloc[1] == ""
    assert np.allclose(served[[f"p_{x}" for x in LABELS]].sum(axis=1), 1.0)
    # The lexicon travels with the model: editing labels/ later does not change what it serves.
    assert (Path(result["model_dir"]) / "lexicon.yaml").exists()
    # The calibration lives with the inner model: where the model decides, the served probabilities are its
    # calibrated ones.
    from pipeline.models.calibration import Calibration

    inner = Path(result["model_dir"]) / "inner"
    assert (inner / "calibration.json").exists() and not (Path(result["model_dir"]) / "calibration.json").exists()
    raw = uncalibrated(inner, tmp_path).predict_proba([plain])
    assert np.allclose(served[[f"p_{x}" for x in LABELS]].to_numpy()[1], Calibration.load(inner).apply(raw)[0])


def test_linear_probe_head_starts_fine_tuning_where_the_frozen_model_ends(make_cfg, tmp_path):
    """train.head_init=linear_probe: before any update, the pooled classifier predicts what a logistic regression
    on its own frozen, normalised embeddings predicts (a random head would not), and the exported head says so."""
    import torch
    from sklearn.linear_model import LogisticRegression

    from pipeline.models.encoder import pooled_classifier
    from pipeline.models.transformer import initialise_head
    from pipeline.models.loading import load_tokenizer_and_model
    from pipeline.text.segmentation import seed_sentences
    from pipeline.models.tiny import build_tiny_bert

    texts = seed_sentences()[:40]
    labels = [LABELS[i % 3] for i in range(len(texts))]
    build_tiny_bert(texts, tmp_path / "tiny", LABELS, seed=0, hidden_size=32, num_layers=1, num_heads=2,
                    intermediate_size=64)
    tokenizer, encoder = load_tokenizer_and_model(tmp_path / "tiny", LABELS, hub_timeout_s=1, encoder_only=True)
    torch.manual_seed(0)
    model = pooled_classifier(encoder, len(LABELS), pooling="mean", dropout=0.0, normalize=True).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.inference_mode():
        features = model.embed(batch["input_ids"], batch["attention_mask"]).numpy()
        random_pred = [LABELS[i] for i in model(**batch).logits.argmax(-1).numpy()]
    assert np.allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)
    expected = list(LogisticRegression(C=1.0, max_iter=5000, random_state=0).fit(features, labels).predict(features))

    cfg = make_cfg("train", f"model.name_or_path={tmp_path / 'tiny'}", "train.class_weights=none", "seed=0")
    initialise_head(cfg, model, tokenizer, texts, pd.DataFrame({"label": labels}), pooled=True)
    with torch.inference_mode():
        probed = [LABELS[i] for i in model(**batch).logits.argmax(-1).numpy()]
    assert probed == expected and random_pred != expected
    exported = model.export_head()
    assert exported.normalize is True and np.abs(exported.weight).max() > 0


@pytest.mark.slow
def test_mean_pooled_fine_tuning_saves_an_encoder_model_and_the_refit_is_served(make_cfg, tmp_path):
    import mlflow

    from pipeline.models.base import load_predictor, read_model_metadata
    from pipeline.stages.train import train

    labelled = make_labelled(make_cfg, tmp_path / "work" / "labelled.parquet", separable=True)
    cfg = make_cfg("train", "model=tiny", "model.pooling=mean", "model.normalize=true", "train.epochs=12",
                   "train.lr=1e-3", "train.head_init=linear_probe", "train.baselines=[majority]",
                   f"paths.labelled={labelled}", "train.refit=all")
    result = train(cfg)
    served = Path(result["model_dir"])
    assert served.parent.name == "final"                     # the refit on every labelled row is what is served
    assert read_model_metadata(served)["kind"] == "encoder"
    texts = pd.read_parquet(labelled)["text"].tolist()
    pred = load_predictor(served).predict(texts)
    assert len(pred) == len(texts) and np.allclose(pred[[f"p_{x}" for x in LABELS]].sum(axis=1), 1.0)
    run = mlflow.get_run(result["run_id"])
    assert run.data.tags["served_model"].startswith("refit")
    # Issue 18 item 4: the refit makes the optimiser steps of the first fit's restored checkpoint, not its epoch
    # count over more rows (more steps per epoch).
    first = json.loads((served.parent.parent / "model" / "training.json").read_text())
    refit = json.loads((served / "training.json").read_text())
    assert refit["steps"] == first["steps"] > 0 and refit["train_rows"] > first["train_rows"]
    per_epoch = lambda rows: -(-rows // int(cfg.train.batch_size))  # noqa: E731
    assert first["best_epoch"] * per_epoch(refit["train_rows"]) != first["steps"]  # what the epoch rule made
    # The served refit carries its own calibration, fitted on the first fit's validation and test predictions.
    assert (served / "calibration.json").exists()
    assert load_predictor(served).calibration.temperature == pytest.approx(
        run.data.metrics["served_calibration_temperature"])


@pytest.mark.slow
def test_unlabelled_articles_get_rule_labels_and_join_training(make_cfg, tmp_path):
    from pipeline.stages.label import label
    from pipeline.stages.segment import segment
    from pipeline.labeling.splits import holdout_split, load_labelled

    new = tmp_path / "new"
    new.mkdir()
    (new / "n1.txt").write_text("رفضت موسكو المقترح الأمريكي رفضا قاطعا.\nعقد الاجتماع في جنيف.\n", encoding="utf-8")
    pd.DataFrame({"article_id": ["t1"], "text": ["نرحب بالتقدم الملموس في المحادثات."]}).to_csv(new / "t.csv", index=False)
    overrides = [f"data.unlabelled=[{new / 'n1.txt'},{new / 't.csv'}]", "labeling.log_mlflow=false"]
    sentences = segment(make_cfg("segment", *overrides))
    extra = sentences[sentences["origin"] == "unlabelled"]
    assert set(extra["article_id"]) == {"n1", "t1"} and len(extra) == 3
    labelled = label(make_cfg("label", *overrides))
    rows = labelled[labelled["article_id"].isin(["n1", "t1"])]
    assert set(rows["source"]) == {"rules"}
    assert rows.set_index("article_id").loc["t1", "label"] == "positive"
    cfg = make_cfg("train", *overrides)
    split = holdout_split(load_labelled(cfg), cfg)
    assert not split.test["sentence_id"].isin(rows["sentence_id"]).any()       # never scored on rule labels
    in_training = pd.concat([split.train, split.val])
    assert in_training["sentence_id"].isin(rows["sentence_id"]).sum() >= 2


def test_an_unlabelled_table_is_read_by_its_own_keys_not_predicts(make_cfg, tmp_path):
    """Issue 19: data.unlabelled_table says how a table of articles to label is read; predict.* is predict's."""
    from pipeline.core.errors import PipelineError
    from pipeline.stages.segment import segment

    table = tmp_path / "body.csv"
    pd.DataFrame({"article_id": ["b1"], "body": ["نرحب بالتقدم الملموس في المحادثات."]}).to_csv(table, index=False)
    sentences = segment(make_cfg("segment", f"data.unlabelled={table}", "data.unlabelled_table.text_column=body",
                                 "predict.text_column=nowhere"))
    assert list(sentences.loc[sentences["origin"] == "unlabelled", "article_id"]) == ["b1"]
    with pytest.raises(PipelineError, match="set data.unlabelled_table.text_column"):
        segment(make_cfg("segment", f"data.unlabelled={table}", "predict.text_column=body"))


def test_unlabelled_article_with_a_corpus_article_id_is_refused(make_cfg, tmp_path):
    from pipeline.core.errors import PipelineError
    from pipeline.stages.segment import segment

    clash = tmp_path / "000_3a8a87f023ec5a5b.txt"
    clash.write_text("نص عربي قصير عن المحادثات.", encoding="utf-8")
    with pytest.raises(PipelineError, match="also an article of data.articles_glob"):
        segment(make_cfg("segment", f"data.unlabelled={clash}"))


def test_broken_model_json_files_are_one_error_naming_the_file(tmp_path):
    from pipeline.models.encoder import LinearHead
    from pipeline.core.errors import PipelineError
    from pipeline.text.preprocess import TextPreprocessor

    (tmp_path / "head.json").write_text('{"weight": [[1.0', encoding="utf-8")   # cut off mid-write by hand
    with pytest.raises(PipelineError, match=r"head\.json: not valid JSON"):
        LinearHead.load(tmp_path)
    with pytest.raises(PipelineError, match=r"preprocess\.json: missing"):
        TextPreprocessor.load(tmp_path)
    TextPreprocessor(None, "query: ").save(tmp_path)
    assert TextPreprocessor.load(tmp_path).prefix == "query: "
    assert not list(tmp_path.glob("*.tmp*"))


@pytest.mark.slow
def test_predict_without_model_uri_serves_the_champion_of_its_own_data_set(make_cfg, tmp_path):
    """Issue 18 item 7: predict's default model is `stance-<data.name>@champion`. Two data sets trained one after
    the other: each predict serves its own data set's model (not the one trained last), and a data set with no
    trained model gets one error line naming its registered name, not another data set's model."""
    from conftest import ARSARCASM_LABEL_MAP_OVERRIDE
    from test_train_data import MARKERS, write_table

    from pipeline.core.errors import PipelineError
    from pipeline.stages.predict import predict
    from pipeline.stages.train import train

    alpha = write_table(tmp_path / "alpha.csv", n=60)
    rotated = pd.read_csv(alpha)
    rotated["sentiment"] = rotated["sentiment"].map({"POS": "NEG", "NEG": "NEU", "NEU": "POS"})
    beta = tmp_path / "beta.csv"
    rotated.to_csv(beta, index=False)                    # the same texts, other labels: the models disagree
    common = ["model=tfidf", "data=table", "data.text_column=tweet", "data.label_column=sentiment",
              ARSARCASM_LABEL_MAP_OVERRIDE, "train.baselines=[majority]", f"paths.sentences={tmp_path}/never.parquet"]
    runs = {name: train(make_cfg("train", *common, f"data.path={path}", f"data.name={name}"))["run_id"]
            for name, path in (("alpha", alpha), ("beta", beta))}
    articles = tmp_path / "new.csv"
    pd.DataFrame({"article_id": ["x"], "text": [f"{MARKERS['positive']} في موسكو اليوم."]}).to_csv(articles, index=False)
    served = {}
    for name in ("alpha", "beta"):
        out = tmp_path / f"{name}.csv"
        report = predict(make_cfg("predict", f"data.name={name}", f"input={articles}", f"output={out}"))
        assert report["model_uri"] == f"models:/stance-{name}@champion"
        served[name] = pd.read_csv(out)["label"].tolist()
    assert served == {"alpha": ["positive"], "beta": ["negative"]}
    import mlflow

    assert {name: mlflow.MlflowClient().get_model_version_by_alias(f"stance-{name}", "champion").run_id
            for name in runs} == runs
    with pytest.raises(PipelineError, match="stance-seeds@champion"):      # the default data set: nothing trained
        predict(make_cfg("predict", f"input={articles}", f"output={tmp_path}/seeds.csv"))
