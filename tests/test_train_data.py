"""Labelled data, grouped splits, class weights, metrics and baselines of the train/evaluate stages.

Also holds the helpers the other train/evaluate test files import: a labelled.parquet built from the
seed corpus (segment stage + assigned labels), so these tests never depend on the label stage or gold.csv.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import ARSARCASM_LABEL_MAP, ARSARCASM_LABEL_MAP_OVERRIDE
from pipeline import LABELS
from pipeline.core.errors import PipelineError

# Marker phrases that make the synthetic task separable: the label is readable from the text.
MARKERS = {"negative": "رفض قاطع للمقترح", "neutral": "ذكرت الوكالة اليوم", "positive": "اتفاق مثمر وبناء"}


def seed_sentences(make_cfg) -> pd.DataFrame:
    from pipeline.stages.segment import segment

    return segment(make_cfg("segment"))


def make_labelled(make_cfg, out: Path, *, separable: bool = False, gold_every: int = 2) -> Path:
    """labelled.parquet (contract columns) from the seed sentences.

    separable: each sentence starts with its class's marker phrase and every row is gold.
    otherwise: labels cycle through the classes; every `gold_every`-th row is gold, the rest come from
    "rules" whose rule_label disagrees with the label (so a leak of rule labels into the test is visible).
    """
    s = seed_sentences(make_cfg)
    labels = [LABELS[i % 3] for i in range(len(s))]
    df = s[["article_id", "sentence_id", "idx", "text"]].copy()
    if separable:
        df["text"] = [f"{MARKERS[lab]} {t}" for lab, t in zip(labels, df["text"])]
        sources = ["gold"] * len(df)
        rule_labels = [None] * len(df)
    else:
        sources = ["gold" if i % gold_every == 0 else "rules" for i in range(len(df))]
        rule_labels = [None if i % 5 == 0 else LABELS[(i + 1) % 3] for i in range(len(df))]
    df["label"] = labels
    df["source"] = sources
    df["rule_label"] = rule_labels
    df["rule_confidence"] = [0.0 if r is None else 0.7 for r in rule_labels]
    df["rules_fired"] = ["" if r is None else "r1" for r in rule_labels]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(out, index=False)
    return out


@pytest.fixture
def labelled(make_cfg, tmp_path):
    return make_labelled(make_cfg, tmp_path / "work" / "labelled.parquet")


def test_holdout_split_is_grouped_by_article_and_tests_on_gold_only(make_cfg, labelled):
    from pipeline.labeling.splits import holdout_split, load_labelled, overlap_groups

    for seed in (0, 1, 2, 42):
        cfg = make_cfg("train", f"paths.labelled={labelled}", f"seed={seed}")
        data = load_labelled(cfg)
        split = holdout_split(data, cfg)
        assert not overlap_groups(split), "an article contributes sentences to both train and test"
        assert set(split.test["group"]) == set(split.test_groups) and split.test_groups
        assert set(split.test["source"]) == {"gold"}
        # Every gold sentence of the test articles is tested, and nothing else.
        frame = data.frame
        expected = frame[frame["group"].isin(split.test_groups) & (frame["source"] == "gold")]
        assert sorted(split.test["sentence_id"]) == sorted(expected["sentence_id"])
        # Train rows never come from test or validation articles.
        assert not set(split.train["group"]) & set(split.val["group"])
        assert set(split.train["source"]) <= {"gold", "annotation", "rules"}


def test_no_validation_split_trains_on_every_non_test_article(make_cfg, labelled):
    """train.val_size=0 (e5-small: the step count is chosen by CV, not by early stopping on one small article)."""
    from pipeline.labeling.splits import holdout_split, load_labelled

    cfg = make_cfg("train", f"paths.labelled={labelled}", "train.val_size=0")
    data = load_labelled(cfg)
    split = holdout_split(data, cfg)
    assert split.val.empty
    trainable = data.frame[~data.frame["group"].isin(split.test_groups) & data.frame["label"].notna()]
    assert set(split.train["group"]) == set(trainable["group"])
    assert make_cfg("train", "model=e5-small").train.val_size == 0


def test_train_sources_are_configurable(make_cfg, labelled):
    from pipeline.labeling.splits import holdout_split, load_labelled

    cfg = make_cfg("train", f"paths.labelled={labelled}", "train.sources=[gold]")
    split = holdout_split(load_labelled(cfg), cfg)
    assert set(split.train["source"]) == {"gold"}


def test_loao_folds_hold_out_one_article_each(make_cfg, labelled):
    from pipeline.labeling.splits import cv_splits, load_labelled, overlap_groups

    cfg = make_cfg("evaluate", f"paths.labelled={labelled}", "evaluate.cv=loao")
    data = load_labelled(cfg)
    folds = cv_splits(data, cfg)
    assert len(folds) == data.frame["group"].nunique() == 5
    assert sorted(g for f in folds for g in f.test_groups) == sorted(data.frame["group"].unique())
    for fold in folds:
        assert len(fold.test_groups) == 1 and not overlap_groups(fold)
        assert set(fold.test["source"]) == {"gold"}
    # Out of fold: every gold sentence is tested exactly once.
    tested = pd.concat([f.test for f in folds])["sentence_id"]
    assert tested.is_unique and set(tested) == set(data.gold["sentence_id"])


def test_grouped_kfold(make_cfg, labelled):
    from pipeline.labeling.splits import cv_splits, load_labelled, overlap_groups

    cfg = make_cfg("evaluate", f"paths.labelled={labelled}", "evaluate.cv=kfold", "evaluate.folds=3")
    folds = cv_splits(load_labelled(cfg), cfg)
    assert len(folds) == 3
    assert all(not overlap_groups(f) for f in folds)


def test_no_gold_is_a_clear_error(make_cfg, tmp_path):
    from pipeline.labeling.splits import holdout_split, load_labelled

    path = make_labelled(make_cfg, tmp_path / "l.parquet")
    df = pd.read_parquet(path)
    df["source"] = "rules"
    df.to_parquet(path, index=False)
    cfg = make_cfg("train", f"paths.labelled={path}")
    with pytest.raises(PipelineError, match="gold"):
        holdout_split(load_labelled(cfg), cfg)


def test_missing_labelled_file_says_run_label(make_cfg, tmp_path):
    from pipeline.labeling.splits import load_labelled

    with pytest.raises(PipelineError, match="pipeline label"):
        load_labelled(make_cfg("train", f"paths.labelled={tmp_path}/nope.parquet"))


def write_table(path: Path, n: int = 60, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    raw = {ours: theirs for theirs, ours in ARSARCASM_LABEL_MAP.items()}
    rows = []
    for i in range(n):
        label = LABELS[i % 3]
        filler = " ".join(rng.choice(["الخبر", "الوزير", "موسكو", "واشنطن", "اليوم", "الأمن"], 4))
        rows.append({"tweet": f"{MARKERS[label]} {filler}", "sentiment": raw[label], "other": i})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_table_data_with_label_map(make_cfg, tmp_path):
    from pipeline.labeling.splits import holdout_split, load_labelled

    path = write_table(tmp_path / "t.csv")
    cfg = make_cfg("train", "data=table", f"data.path={path}", "data.text_column=tweet", "data.label_column=sentiment",
                   ARSARCASM_LABEL_MAP_OVERRIDE)
    data = load_labelled(cfg)
    assert set(data.frame["label"]) == set(LABELS) and not data.grouped
    split = holdout_split(data, cfg)
    assert len(split.test) == 12 and split.test["label"].value_counts().min() == 4  # stratified 20%
    assert not set(split.test["sentence_id"]) & set(split.train["sentence_id"])


def test_label_string_none_is_a_label_and_a_plain_label_map_override_works(make_cfg, tmp_path):
    from pipeline.labeling.splits import load_labelled

    path = tmp_path / "mawqif.csv"
    pd.DataFrame({"text": [f"جملة {i}" for i in range(6)],
                  "stance": ["None", "Favor", "Against", "None", "Favor", "Against"]}).to_csv(path, index=False)
    cfg = make_cfg("train", "data=table", f"data.path={path}", "data.label_column=stance",
                   "data.label_map={None: neutral, Favor: positive, Against: negative}")
    data = load_labelled(cfg)
    assert data.frame["label"].tolist() == ["neutral", "positive", "negative"] * 2
    # A real null (JSON null) is a missing label, not the string "None".
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text('{"text": "a", "stance": null}\n{"text": "b", "stance": "None"}\n', encoding="utf-8")
    cfg = make_cfg("train", "data=table", f"data.path={jsonl}", "data.label_column=stance",
                   "data.label_map={None: neutral}")
    with pytest.raises(PipelineError, match="label\\(s\\) '' \\(1 rows\\)"):
        load_labelled(cfg)


def test_table_data_unknown_label_is_explained(make_cfg, tmp_path):
    from pipeline.labeling.splits import load_labelled

    path = write_table(tmp_path / "t.csv")
    cfg = make_cfg("train", "data=table", f"data.path={path}", "data.text_column=tweet", "data.label_column=sentiment")
    with pytest.raises(PipelineError, match="label_map"):
        load_labelled(cfg)
    cfg = make_cfg("train", "data=table", f"data.path={path}", "data.text_column=nope")
    with pytest.raises(PipelineError, match="no column 'nope'"):
        load_labelled(cfg)


def test_class_weights_balance_the_classes():
    from pipeline.labeling.splits import class_weights

    labels = pd.Series(["neutral"] * 6 + ["positive"] * 3 + ["negative"] * 1)
    w = class_weights(labels, "balanced")
    counts = np.array([1, 6, 3])
    assert np.allclose(w * counts, (w * counts)[0])  # every class carries the same total weight
    assert np.isclose((w * counts).sum(), counts.sum())
    assert class_weights(labels, "none") is None


def test_metrics_and_bootstrap_interval():
    from pipeline.models.metrics import bootstrap_macro_f1, classification_metrics, confusion

    y_true = ["negative", "neutral", "positive", "positive", "neutral", "negative"] * 5
    y_pred = ["negative", "neutral", "positive", "neutral", "neutral", "positive"] * 5
    m = classification_metrics(y_true, y_pred)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["recall_negative"] == pytest.approx(0.5) and m["precision_neutral"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx(np.mean([m[f"f1_{x}"] for x in LABELS]))
    lo, hi = bootstrap_macro_f1(y_true, y_pred, n_resamples=500, seed=1)
    assert lo < m["macro_f1"] < hi and (lo, hi) == bootstrap_macro_f1(y_true, y_pred, n_resamples=500, seed=1)
    cm = confusion(y_true, y_pred)
    assert cm.loc["true_negative", "pred_positive"] == 5 and cm.to_numpy().sum() == 30


def test_fold_without_positives_scores_over_the_labels_it_has():
    from pipeline.models.metrics import bootstrap_macro_f1, classification_metrics, macro_f1

    y_true = ["negative", "neutral", "neutral", "negative", "neutral"]
    m = classification_metrics(y_true, y_true)
    assert m["macro_f1"] == 1.0 and macro_f1(y_true, y_true) == 1.0      # not capped at 2/3 by the absent class
    assert m["macro_f1_all_labels"] == pytest.approx(2 / 3)
    assert bootstrap_macro_f1(y_true, y_true, n_resamples=50, seed=0) == (1.0, 1.0)


def test_cluster_bootstrap_resamples_groups():
    from pipeline.models.metrics import bootstrap_macro_f1

    # Article "a" is predicted perfectly, article "b" all wrong: drawing whole articles gives resamples of
    # only a (1.0), only b (0.0) or both; drawing sentences mixes them in every resample.
    y_true = ["negative", "neutral", "positive"] * 4 + ["negative", "neutral", "positive"] * 4
    y_pred = ["negative", "neutral", "positive"] * 4 + ["positive", "negative", "neutral"] * 4
    groups = ["a"] * 12 + ["b"] * 12
    by_sentence = bootstrap_macro_f1(y_true, y_pred, n_resamples=400, seed=3)
    by_article = bootstrap_macro_f1(y_true, y_pred, n_resamples=400, seed=3, groups=groups)
    assert by_article == (0.0, 1.0)
    assert by_sentence != by_article and 0.2 < by_sentence[0] < by_sentence[1] < 0.8
    assert by_article == bootstrap_macro_f1(y_true, y_pred, n_resamples=400, seed=3, groups=groups)


def test_one_article_gets_no_interval_not_a_sentence_bootstrap(tmp_path, caplog):
    """Issue 18 item 2: the test rows of a train run on the seeds are one article. A "cluster" bootstrap over one
    cluster used to resample its sentences as if they were independent and print a narrow interval."""
    import logging
    import math

    from pipeline.models.metrics import bootstrap_macro_f1, interval_text, write_report

    y_true = ["negative", "neutral", "positive"] * 6
    y_pred = ["negative", "neutral", "neutral"] * 6
    with caplog.at_level(logging.INFO, logger="pipeline.models.metrics"):
        low, high = bootstrap_macro_f1(y_true, y_pred, n_resamples=200, seed=0, groups=["a"] * 18)
    assert math.isnan(low) and math.isnan(high)
    assert "one article" in caplog.text
    # Without groups (a plain table) sentences are the unit: an interval.
    assert not math.isnan(bootstrap_macro_f1(y_true, y_pred, n_resamples=200, seed=0)[0])
    test = pd.DataFrame({"sentence_id": [f"s{i}" for i in range(18)], "group": ["a"] * 18, "text": ["x"] * 18,
                         "label": y_true})
    metrics, _ = write_report(tmp_path, test, np.eye(3)[[LABELS.index(x) for x in y_pred]], title="t",
                              n_resamples=200, ci=0.95, seed=0, max_errors=10)
    assert math.isnan(metrics["macro_f1_ci_low"]) and interval_text(metrics) == "(no interval)"


def test_write_report_bootstraps_articles(tmp_path):
    from pipeline.models.metrics import write_report

    labels = ["negative", "neutral", "positive"]
    test = pd.DataFrame({"sentence_id": [f"s{i}" for i in range(24)], "group": ["a"] * 12 + ["b"] * 12,
                         "text": ["x"] * 24, "label": labels * 8})
    pred = labels * 4 + ["positive", "negative", "neutral"] * 4
    proba = np.eye(3)[[labels.index(x) for x in pred]]
    metrics, _ = write_report(tmp_path, test, proba, title="t", n_resamples=400, ci=0.95, seed=3, max_errors=10)
    assert (metrics["macro_f1_ci_low"], metrics["macro_f1_ci_high"]) == (0.0, 1.0)


def test_rules_and_majority_baselines(make_cfg, labelled):
    from pipeline.training.baselines import majority_proba, rules_proba

    test = pd.DataFrame({"rule_label": ["positive", None, "negative"], "label": ["positive"] * 3})
    proba = rules_proba(test, "neutral")
    assert [LABELS[i] for i in proba.argmax(1)] == ["positive", "neutral", "negative"]
    maj = majority_proba(pd.Series(["neutral", "positive", "neutral"]), 2)
    assert [LABELS[i] for i in maj.argmax(1)] == ["neutral", "neutral"]


def test_weighted_loss_by_hand_and_split_over_micro_batches_and_processes():
    """One loss: Σ s·c·CE / Σ s·c over the rows of an optimiser step (s: sample weight, c: class weight). Pieces of
    the step (micro-batches of gradient accumulation, processes of DDP) add up to it given the step's total."""
    import math

    import torch

    from pipeline.models.trainer import weighted_loss

    logits = [[2.0, 0.0, -1.0], [0.5, 1.5, 0.0], [0.0, 0.0, 3.0], [1.0, 1.0, 1.0]]
    labels = [0, 2, 2, 1]
    class_w = np.array([3.0, 1.5, 0.5])
    sample_w = [1.0, 0.5, 0.25, 1.0]
    ce = [math.log(sum(math.exp(v) for v in row)) - row[y] for row, y in zip(logits, labels)]
    w = [s * class_w[y] for s, y in zip(sample_w, labels)]
    expected = sum(wi * c for wi, c in zip(w, ce)) / sum(w)
    t_logits, t_labels, t_sample = torch.tensor(logits), torch.tensor(labels), torch.tensor(sample_w)

    whole = weighted_loss(t_logits, t_labels, class_weight=class_w, sample_weight=t_sample)
    assert whole.item() == pytest.approx(expected, rel=1e-5)
    # Two micro-batches of two rows, normalised by the step's total weight, add up to the same loss...
    halves = [weighted_loss(t_logits[i:i + 2], t_labels[i:i + 2], class_weight=class_w,
                            sample_weight=t_sample[i:i + 2], step_weight=sum(w)) for i in (0, 2)]
    assert sum(halves).item() == pytest.approx(expected, rel=1e-5)
    # ... and over two DDP processes, whose gradients are averaged, each piece counts twice.
    ranks = [weighted_loss(t_logits[i:i + 2], t_labels[i:i + 2], class_weight=class_w, sample_weight=t_sample[i:i + 2],
                           step_weight=sum(w), processes=2) for i in (0, 2)]
    assert (sum(ranks) / 2).item() == pytest.approx(expected, rel=1e-5)
    # The sample weights matter.
    assert weighted_loss(t_logits, t_labels, class_weight=class_w).item() != pytest.approx(expected, rel=1e-3)


def test_weighted_loss_matches_torch_cross_entropy():
    import torch

    from pipeline.models.trainer import weighted_loss

    torch.manual_seed(0)
    logits = torch.randn(6, 3)
    labels = torch.tensor([0, 1, 1, 2, 2, 2])
    weights = np.array([3.0, 1.5, 1.0])
    expected = torch.nn.functional.cross_entropy(logits, labels, weight=torch.tensor(weights, dtype=torch.float32))
    assert torch.isclose(weighted_loss(logits, labels, class_weight=weights), expected)
    assert torch.isclose(weighted_loss(logits, labels), torch.nn.functional.cross_entropy(logits, labels))


def test_gradient_accumulation_with_sample_weights_gives_the_one_batch_gradient(make_cfg, small_encoder, tmp_path):
    """Issue 18 item 4: with sample weights (any data.unlabelled run) and train.grad_accumulation=2, each micro-batch
    was a batch mean that the Trainer did not divide (a custom loss counts as already scaled): twice the gradient.
    Batch 4 × 2 micro-batches must give the gradient of one batch of 8, and both that of the weighted loss on the
    8 rows computed by hand (dropout off, clipping off, so the gradients are exactly comparable)."""
    import copy

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback

    from pipeline.labeling.splits import class_weights
    from pipeline.models.trainer import build_trainer

    texts = [f"{MARKERS[LABELS[i % 3]]} جملة رقم {i}" for i in range(8)]
    labels = [LABELS[i % 3] for i in range(8)]
    sample_weight = [1.0, 0.5, 0.5, 1.0, 0.25, 1.0, 0.5, 1.0]
    tokenizer = AutoTokenizer.from_pretrained(small_encoder)
    start = AutoModelForSequenceClassification.from_pretrained(
        small_encoder, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)

    class Grads(TrainerCallback):
        def __init__(self):
            self.seen = None

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            self.seen = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).clone()

    grads = {}
    for batch, accumulation in ((8, 1), (4, 2)):
        cfg = make_cfg("train", "model=tiny", f"train.batch_size={batch}", f"train.grad_accumulation={accumulation}",
                       "train.group_by_length=false")
        record = Grads()
        trainer = build_trainer(cfg, copy.deepcopy(start), tokenizer, texts, labels, [], [], tmp_path / f"c{batch}",
                                max_steps=1, callbacks=[record], save=False, sample_weight=sample_weight)
        trainer.args.max_grad_norm = 0.0  # compare the raw gradients
        trainer.train()
        grads[batch] = record.seen

    model = copy.deepcopy(start)
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    target = torch.tensor([LABELS.index(x) for x in labels])
    class_w = torch.tensor(class_weights(pd.Series(labels), "balanced"), dtype=torch.float32)
    w = torch.tensor(sample_weight) * class_w[target]
    per_row = torch.nn.functional.cross_entropy(model(**enc).logits, target, reduction="none")
    ((per_row * w).sum() / w.sum()).backward()
    by_hand = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    torch.testing.assert_close(grads[8], by_hand, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grads[4], by_hand, rtol=1e-4, atol=1e-6)
