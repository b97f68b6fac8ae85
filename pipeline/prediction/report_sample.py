"""What the HTML report shows, gathered from predict's output one chunk at a time (issue 21).

    sample = ReportSample(labels, per_article=5, top_n=10)
    for chunk in iter_table_chunks(output, 2048, restore=True):
        sample.add(chunk)

The report never holds every sentence: per article it keeps the `per_article` most positive, the `per_article`
most negative and the `per_article` least confident sentences (net stance = p_positive − p_negative; confidence =
the `confidence` column, else the highest probability), plus running counts (sentences, net stance sum, the first
sentence's text for a heading); over the corpus the `top_n` most positive and most negative sentences and the label
counts. Memory and the page then grow with the number of articles only, never with sentences per article.

Ties go to the sentence that came first in the output, so reading in chunks of any size keeps the same sentences:
the order is that of a stable pandas sort of the whole output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from pipeline.core.errors import PipelineError

# the sample's size when no config gives one (render_html on a frame); predict passes
# predict.report_sentences_per_article and predict.report_top_sentences
PER_ARTICLE, TOP_N = 5, 10
NEEDED = ("article_id", "text", "label", "p_negative", "p_positive")
_NET, _CONF, _SEQ, _ART = "_net", "_conf", "_seq", "_article"


def low_confidence(value) -> bool:
    """A `confident` cell that says false (bool, "false", "0")."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return False
    return str(value).strip().lower() in ("false", "0")


def _ranked(frame: pd.DataFrame, key: str, ascending: bool, n: int, by: str | None = _ART) -> pd.Index:
    """Index labels of the first `n` rows by `key` (then output order), per `by` group or over the whole frame."""
    order = frame.sort_values([key, _SEQ], ascending=[ascending, True], kind="stable")
    if by is None:
        return order.index[:n]
    return order.index[(order.groupby(by, sort=False).cumcount() < n).to_numpy()]


@dataclass
class ArticleCounts:
    sentences: int = 0
    net_sum: float = 0.0
    first: tuple = field(default_factory=tuple)  # (idx, seq, text) of its first sentence


class ReportSample:
    """The bounded sample and the counts the report is drawn from; `add` each chunk of the output in order."""

    def __init__(self, labels: Sequence[str], *, per_article: int = PER_ARTICLE, top_n: int = TOP_N):
        if int(per_article) < 1:
            raise PipelineError(f"predict.report_sentences_per_article={per_article}: give a whole number ≥ 1")
        self.labels = list(labels)
        self.per_article = int(per_article)
        self.top_n = int(top_n)
        self.kept = pd.DataFrame()          # the per-article sample
        self.extremes = pd.DataFrame()      # the corpus-wide most positive / most negative
        self.articles: dict[str, ArticleCounts] = {}  # in first-seen order
        self.label_counts: dict[str, int] = {}
        self.n_sentences = 0
        self.net_sum = 0.0
        self.n_low = 0
        self.has_confident = False
        self.columns: list[str] = []

    def add(self, chunk: pd.DataFrame) -> None:
        if missing := sorted(set(NEEDED) - set(chunk.columns)):
            raise PipelineError(f"report: sentence rows lack column(s) {missing}; expected the predict stage's output")
        if chunk.empty:
            return
        if not self.columns:
            self.columns = list(chunk.columns)
        frame = chunk.reset_index(drop=True)
        net = frame["p_positive"].astype(float) - frame["p_negative"].astype(float)
        probs = [f"p_{x}" for x in self.labels if f"p_{x}" in frame.columns]
        conf = (frame["confidence"].astype(float) if "confidence" in frame.columns
                else frame[probs].astype(float).max(axis=1))
        frame = frame.assign(**{_NET: net.to_numpy(), _CONF: conf.to_numpy(),
                                _SEQ: np.arange(self.n_sentences, self.n_sentences + len(frame)),
                                _ART: frame["article_id"].astype(str).to_numpy()})
        self._count(frame)
        self._keep(frame)

    def _count(self, frame: pd.DataFrame) -> None:
        self.n_sentences += len(frame)
        self.net_sum += float(frame[_NET].sum())
        for label, n in frame["label"].astype(str).value_counts().items():
            self.label_counts[label] = self.label_counts.get(label, 0) + int(n)
        if "confident" in frame.columns:
            self.has_confident = True
            self.n_low += int(sum(low_confidence(v) for v in frame["confident"]))
        idx = frame["idx"].astype(float) if "idx" in frame.columns else frame[_SEQ].astype(float)
        firsts = frame.assign(_idx=idx.to_numpy()).sort_values(["_idx", _SEQ], kind="stable").drop_duplicates(_ART)
        first_of = {a: (i, s, t) for a, i, s, t in
                    zip(firsts[_ART], firsts["_idx"], firsts[_SEQ], firsts["text"].astype(str))}
        sums = frame.groupby(_ART, sort=False)[_NET].agg(["size", "sum"])
        for article, (size, total) in zip(sums.index, sums.to_numpy()):
            counts = self.articles.setdefault(article, ArticleCounts())
            counts.sentences += int(size)
            counts.net_sum += float(total)
            if not counts.first or first_of[article][:2] < counts.first[:2]:
                counts.first = first_of[article]

    def _keep(self, frame: pd.DataFrame) -> None:
        n = self.per_article
        earlier = self.kept[self.kept[_ART].isin(frame[_ART].unique())] if len(self.kept) else self.kept
        rest = self.kept.drop(earlier.index) if len(self.kept) else self.kept
        cand = pd.concat([earlier, frame], ignore_index=True) if len(earlier) else frame
        chosen = (_ranked(cand, _NET, False, n).union(_ranked(cand, _NET, True, n))
                  .union(_ranked(cand, _CONF, True, n)))
        self.kept = pd.concat([rest, cand.loc[chosen]], ignore_index=True) if len(rest) else \
            cand.loc[chosen].reset_index(drop=True)
        pos = frame[frame[_NET] > 0]
        neg = frame[frame[_NET] < 0]
        both = pd.concat([x for x in (self.extremes, pos, neg) if len(x)], ignore_index=True) \
            if len(self.extremes) or len(pos) or len(neg) else pd.DataFrame()
        if len(both):
            top = both[both[_NET] > 0]
            bottom = both[both[_NET] < 0]
            self.extremes = pd.concat([top.loc[_ranked(top, _NET, False, self.top_n, by=None)],
                                       bottom.loc[_ranked(bottom, _NET, True, self.top_n, by=None)]],
                                      ignore_index=True)

    # ------------------------------------------------------------ what the page reads

    def most(self, sign: int) -> pd.DataFrame:
        """The corpus's top_n most positive (sign=1) or most negative (sign=-1) sentences, most extreme first."""
        if self.extremes.empty:
            return self.extremes
        frame = self.extremes[np.sign(self.extremes[_NET]) == sign]
        return frame.loc[_ranked(frame, _NET, sign < 0, self.top_n, by=None)]

    def by_article(self) -> dict[str, pd.DataFrame]:
        """{article: its sampled sentences in reading order}, one groupby over the sample."""
        if self.kept.empty:
            return {}
        keys = ["idx", _SEQ] if "idx" in self.kept.columns else [_SEQ]
        ordered = self.kept.sort_values(keys, kind="stable")
        return {k: g for k, g in ordered.groupby(_ART, sort=False)}


def sample_of(sentences: pd.DataFrame, labels: Sequence[str], *, per_article: int, top_n: int) -> ReportSample:
    """A ReportSample of a frame held whole (one chunk)."""
    sample = ReportSample(labels, per_article=per_article, top_n=top_n)
    sample.add(sentences)
    sample.columns = list(sentences.columns)
    return sample
