"""Which words pushed the model toward its label: occlusion over whitespace words.

For a sentence of n words, n variants each delete one word; the weight of a word is how much the probability of
the sentence's label drops without it (p(label | sentence) − p(label | sentence without the word)). Positive weight
= the word supported the label. This needs nothing but `predict_proba(texts) -> (n, k)`, so it works the same for
the fine-tuned transformer, the frozen encoder and TF-IDF + logistic regression, and it explains whole words as the
reader sees them (word pieces never need merging back). Cost: one forward pass per word, batched — all variants of
all sentences go through `predict_proba` in a few large calls.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import numpy as np

from pipeline import LABELS
from pipeline.core.errors import PipelineError

log = logging.getLogger(__name__)

PredictProba = Callable[[list[str]], np.ndarray]


def _label_indices(labels: Sequence, n: int, classes: Sequence[str]) -> np.ndarray:
    if len(labels) != n:
        raise PipelineError(f"explain: {len(labels)} labels for {n} texts")
    out = []
    for label in labels:
        if isinstance(label, (int, np.integer)):
            out.append(int(label))
        elif label in classes:
            out.append(list(classes).index(label))
        else:
            raise PipelineError(f"explain: unknown label {label!r}; expected one of {list(classes)} or an index")
    return np.asarray(out, dtype=np.int64)


def word_weights(predict_proba: PredictProba, texts: Sequence[str], labels: Sequence, *,
                 classes: Sequence[str] = LABELS, batch_size: int = 4096,
                 context: Sequence[str] | None = None) -> list[list[tuple[str, float]]]:
    """Every whitespace word of every text with its occlusion weight, in text order.

    `labels` are the labels to explain (names from `classes`, or column indices), usually the predicted ones.
    `batch_size` caps the texts per `predict_proba` call (the original sentences are scored in the same calls).
    `context`: each text's sentence context (a model that reads one); every variant of a text keeps its context,
    and `predict_proba(variants, contexts)` is then called with both.
    """
    texts = [str(t) for t in texts]
    targets = _label_indices(labels, len(texts), classes)
    words = [t.split() for t in texts]
    # One flat list: each original sentence followed by its one-word-deleted variants.
    variants: list[str] = []
    owners: list[int] = []
    for i, ws in enumerate(words):
        variants.append(" ".join(ws))
        owners.append(i)
        for j in range(len(ws)):
            variants.append(" ".join(ws[:j] + ws[j + 1:]))
            owners.append(i)
    if not variants:
        return []
    if context is None:
        chunks = [np.asarray(predict_proba(variants[s:s + batch_size]), dtype=np.float64)
                  for s in range(0, len(variants), batch_size)]
    else:
        contexts = [str(context[i]) for i in owners]
        chunks = [np.asarray(predict_proba(variants[s:s + batch_size], contexts[s:s + batch_size]), dtype=np.float64)
                  for s in range(0, len(variants), batch_size)]
    proba = np.concatenate(chunks, axis=0)
    if proba.shape[0] != len(variants) or proba.ndim != 2:
        raise PipelineError(f"explain: predict_proba returned shape {proba.shape} for {len(variants)} texts")
    log.debug("occlusion: %d sentences, %d variants", len(texts), len(variants))
    out: list[list[tuple[str, float]]] = []
    pos = 0
    for i, ws in enumerate(words):
        base = proba[pos, targets[i]]
        drops = base - proba[pos + 1:pos + 1 + len(ws), targets[i]]
        out.append([(w, float(d)) for w, d in zip(ws, drops)])
        pos += 1 + len(ws)
    return out


def top_words(predict_proba: PredictProba, texts: Sequence[str], labels: Sequence, k: int = 3, *,
              classes: Sequence[str] = LABELS, batch_size: int = 4096,
              context: Sequence[str] | None = None) -> list[list[tuple[str, float]]]:
    """Per text, up to `k` (word, weight) pairs with the largest positive drop in p(label), strongest first.

    Words are as written in the text (punctuation attached). A word that occurs twice is listed once, with its
    larger weight. Words whose removal does not lower p(label) are not reasons and are left out, so a list can be
    shorter than k — empty for an empty text or one the model does not lean on any word for.
    """
    if k < 1:
        raise PipelineError(f"explain: k must be at least 1, got {k}")
    result = []
    for weights in word_weights(predict_proba, texts, labels, classes=classes, batch_size=batch_size,
                                context=context):
        best: dict[str, float] = {}
        for word, weight in weights:
            if weight > 0 and weight > best.get(word, 0.0):
                best[word] = weight
        # stable order for ties: first occurrence in the text
        ranked = sorted(best.items(), key=lambda item: -item[1])
        result.append(ranked[:k])
    return result


def format_reasons(words: list[tuple[str, float]]) -> str:
    """'word (+0.42), word (+0.10)': the form a `top_words` column takes in a table or report."""
    return ", ".join(f"{w} (+{weight:.2f})" for w, weight in words)
