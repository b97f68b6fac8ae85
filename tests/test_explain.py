import itertools

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from pipeline.core.errors import PipelineError
from pipeline.models.explain import format_reasons, top_words, word_weights

SUBJECTS = ["المحادثات", "المفاوضات", "الحوار", "المباحثات"]
PLACES = ["في جنيف", "في بروكسل", "في فيينا", "اليوم", "هذا الأسبوع"]


@pytest.fixture(scope="module")
def model():
    """TF-IDF + logistic regression where «لم» alone turns progress (positive) into no progress (negative)."""
    texts, labels = [], []
    for subject, place in itertools.product(SUBJECTS, PLACES):
        texts += [f"{subject} تتقدم {place}", f"{subject} لم تتقدم {place}", f"{subject} تعقد {place}"]
        labels += ["positive", "negative", "neutral"]
    pipe = make_pipeline(TfidfVectorizer(), LogisticRegression(C=20, max_iter=2000)).fit(texts, labels)
    assert list(pipe.classes_) == ["negative", "neutral", "positive"]  # column order = pipeline.LABELS
    calls = []

    def predict_proba(batch):
        calls.append(len(batch))
        return pipe.predict_proba(list(batch))

    predict_proba.calls = calls
    return pipe, predict_proba


def test_negation_cue_is_top_word(model):
    pipe, predict_proba = model
    texts = ["المفاوضات لم تتقدم في جنيف", "الحوار تتقدم في فيينا", "المحادثات تعقد في بروكسل"]
    labels = list(pipe.predict(texts))
    assert labels == ["negative", "positive", "neutral"]
    predict_proba.calls.clear()
    reasons = top_words(predict_proba, texts, labels, k=3)
    assert len(predict_proba.calls) == 1  # all variants of all sentences in one call
    assert predict_proba.calls[0] == 3 + 5 + 4 + 4
    assert reasons[0][0][0] == "لم"
    assert reasons[1][0][0] == "تتقدم"
    assert reasons[2][0][0] == "تعقد"
    for words in reasons:
        assert 1 <= len(words) <= 3
        weights = [w for _, w in words]
        assert all(w > 0 for w in weights) and weights == sorted(weights, reverse=True)
    # the weight is exactly the drop in p(label) when the word is deleted
    full, without = pipe.predict_proba([texts[0], "المفاوضات تتقدم في جنيف"])
    assert reasons[0][0][1] == pytest.approx(full[0] - without[0])


def test_empty_and_one_word_sentences(model):
    pipe, predict_proba = model
    assert top_words(predict_proba, [], []) == []
    out = top_words(predict_proba, ["", "   ", "تتقدم"], ["neutral", "neutral", "positive"])
    assert out[0] == [] and out[1] == []
    assert [w for w, _ in out[2]] == ["تتقدم"]


def test_weights_by_hand_batching_and_duplicates():
    # p(positive) = 0.2 + 0.3 per "good" (capped), p(negative) = 0.1 per "bad"; the rest neutral.
    def proba(texts):
        rows = []
        for t in texts:
            ws = t.split()
            pos = min(0.2 + 0.3 * ws.count("good"), 0.8)
            neg = 0.1 * ws.count("bad")
            rows.append([neg, 1 - pos - neg, pos])
        return np.array(rows)

    weights = word_weights(proba, ["good day bad", "x"], ["positive", 1], batch_size=2)
    assert weights[0] == [("good", pytest.approx(0.3)), ("day", 0.0), ("bad", 0.0)]
    assert weights[1] == [("x", 0.0)]
    # "good" twice: each copy alone drops 0.3 → listed once; "bad" raises p(positive)? no → not a reason
    assert top_words(proba, ["good good bad", "plain words"], ["positive", "positive"], k=3) == \
        [[("good", pytest.approx(0.3))], []]
    assert format_reasons([("لم", 0.4213), ("تتقدم", 0.1)]) == "لم (+0.42), تتقدم (+0.10)"


def test_bad_arguments():
    def proba(texts):
        return np.full((len(texts), 3), 1 / 3)

    with pytest.raises(PipelineError, match="unknown label"):
        top_words(proba, ["a b"], ["maybe"])
    with pytest.raises(PipelineError, match="labels for"):
        top_words(proba, ["a b"], [])
    with pytest.raises(PipelineError, match="shape"):
        top_words(lambda texts: np.zeros((1, 3)), ["a b"], ["neutral"])
