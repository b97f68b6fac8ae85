"""Sentence context (`model.context`): the text a model reads beside each sentence, built in one place.

A sentence's context comes from its own article, in article order:
    none            no context: the model reads the sentence alone (the inputs of a model without the option)
    previous        the sentence just before it ("" for an article's first sentence)
    first           the article's first sentence ("" for the first sentence itself)
    previous+first  the first sentence, then the previous one (once when they are the same sentence)
The mode is recorded in the model dir with the preprocessing (pipeline.text.preprocess: preprocess.json), so predict,
the pyfunc model, Spark, serve and a hybrid's inner model build the same inputs without being told again.

`article_contexts` gives the contexts of one article's sentences (or of a later piece of it: its first sentence and
the sentence before the piece are passed in); `table_contexts` does it for a sentence table of many articles, in
each article's `idx` order. Train and evaluate (pipeline.labeling.splits), predict's parts, the Spark job and the
pyfunc model all go through them; the joined model input is `TextPreprocessor.inputs`.
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd

from pipeline.core.errors import PipelineError

MODES = ("none", "previous", "first", "previous+first")
# The pyfunc model's optional input column of ready contexts (pipeline.models.store).
CONTEXT_COLUMN = "sentence_context"


def context_column(mode: str) -> str:
    """The column of a sentence table holding each sentence's context in `mode`: the labelled set carries one per
    mode (so a fit of any `model.context`, nested selection's included, finds its own), predict's rows the model's."""
    return f"{CONTEXT_COLUMN}_{check_mode(mode)}"


def check_mode(mode, key: str = "model.context") -> str:
    """`mode` as one of MODES (null = none); a one-line error naming `key` otherwise."""
    mode = "none" if mode is None else str(mode)
    if mode not in MODES:
        raise PipelineError(f"{key}={mode!r}: choose one of {', '.join(MODES)}")
    return mode


def article_contexts(texts: Sequence[str], mode: str, *, offset: int = 0, first: str = "",
                     previous: str = "") -> list[str]:
    """The context of each of one article's sentences `texts`, in article order. `texts` may be a later piece of
    the article (a long sentence table is read in pieces): `offset` is then the position of `texts[0]` in the
    article, `first` the article's first sentence and `previous` the sentence just before `texts[0]`."""
    mode = check_mode(mode)
    texts = [str(t) for t in texts]
    if mode == "none":
        return [""] * len(texts)
    head = first if offset else (texts[0] if texts else "")
    out = []
    for i, _ in enumerate(texts):
        position = offset + i
        prev = texts[i - 1] if i else (previous if position else "")
        lead = head if position else ""
        if mode == "previous":
            out.append(prev)
        elif mode == "first":
            out.append(lead)
        else:  # previous+first: the first sentence, then the previous one unless that is the first sentence
            out.append(" ".join(t for t in (lead, prev if position > 1 else "") if t))
    return out


def table_contexts(frame: pd.DataFrame, mode: str, *, article: str = "article_id", order: str = "idx") -> list[str]:
    """The context of every row of a sentence table of whole articles, aligned with its rows: each article's
    sentences in `order` (the table's own row order where that column is missing or ties)."""
    mode = check_mode(mode)
    out = [""] * len(frame)
    if mode == "none" or not len(frame):
        return out
    keys = frame[article].astype(str).to_numpy() if article in frame.columns else [""] * len(frame)
    position = (pd.to_numeric(frame[order], errors="coerce").fillna(-1).to_numpy() if order in frame.columns
                else range(len(frame)))
    members: dict[str, list[int]] = {}
    for row, key in enumerate(keys):
        members.setdefault(key, []).append(row)
    texts = frame["text"].astype(str).to_numpy()
    for rows in members.values():
        rows = sorted(rows, key=lambda r: (position[r], r))
        for row, context in zip(rows, article_contexts([texts[r] for r in rows], mode)):
            out[row] = context
    return out


def contexts_of(frame: pd.DataFrame, mode: str) -> list[str] | None:
    """The contexts a table carries for a model reading `mode` (its `context_column`), or None: a model without
    context, or a table without them (rows of a `data=table` corpus, which have no article order)."""
    mode = check_mode(mode)
    column = context_column(mode)
    if mode == "none" or column not in frame.columns:
        return None
    return frame[column].fillna("").astype(str).tolist()


def with_table_contexts(frame: pd.DataFrame, *, article: str = "article_id", order: str = "idx") -> pd.DataFrame:
    """`frame` with the context of every row in every mode (`context_column`), as train and evaluate read it."""
    return frame.assign(**{context_column(mode): table_contexts(frame, mode, article=article, order=order)
                           for mode in MODES if mode != "none"})


def join_inputs(texts: Sequence[str], contexts: Sequence[str], separator: str) -> list[str]:
    """`sentence <separator> context` per row (already preprocessed), the sentence alone where there is no context.

    The sentence comes first: truncation at max_length (from the end) cuts the context before the sentence, and the
    tokenizer's own separator token makes the pair look like the sentence pairs the encoder was pretrained on."""
    if len(texts) != len(contexts):
        raise PipelineError(f"{len(texts)} sentences but {len(contexts)} contexts; give one context per sentence")
    return [t if not c else f"{t} {separator} {c}" for t, c in zip(texts, contexts)]
