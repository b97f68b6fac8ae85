"""predict's outputs: the per-sentence table, the per-article summary and plot, and the errors report.

Sentences are predicted and written in parts (pipeline.prediction.parts) and merged into the output at the end; every
output has the fixed schema of `output_columns` / `conform_dtypes` whatever its format.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from pipeline.core.io import BadInputFile, CsvStyle, atomic_path, parquet_table, write_csv
from pipeline.text.context import contexts_of

log = logging.getLogger(__name__)


def sibling_path(output: str | Path, configured, tail: str, *, replace_suffix: bool) -> str:
    """Where a run writes a file beside its output: `configured` when set; else the output with `tail` in place
    of its suffix (predict: out.csv → out.articles.csv) or after it (spark_predict's output dir: out → out.articles)."""
    if configured:
        return str(configured)
    base = str(output).rstrip("/")
    suffix = Path(base).suffix if replace_suffix else ""
    return base[:len(base) - len(suffix)] + tail


ERROR_COLUMNS = ["source", "article_id", "sentence_id", "reason", "message"]


@dataclass
class ErrorLog:
    rows: list[dict] = field(default_factory=list)

    def add(self, source, reason: str, message: str, article_id: str = "", sentence_id: str = "") -> None:
        self.rows.append({"source": str(source), "article_id": article_id, "sentence_id": sentence_id,
                          "reason": reason, "message": message})

    def file_error(self, exc: BadInputFile) -> None:
        log.warning("skipping %s", exc)
        self.add(exc.path, exc.reason, str(exc))

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=ERROR_COLUMNS)


def output_columns(labels: Sequence[str], extra: Sequence[str] = ()) -> list[str]:
    """The sentence rows' columns; `extra` are the text columns some models add (a hybrid: decided_by, rules_fired)."""
    return ["article_id", "sentence_id", "idx", "text", "label", *[f"p_{x}" for x in labels], "truncated", *extra]


def extra_columns(predictor, added: Sequence[str] = ()) -> list[str]:
    """What a predictor returns beyond the label and the probabilities, then the text columns an enricher `added`
    (prediction.extras.Enricher: rules_fired, top_words) that it does not return itself."""
    extra = [c for c in predictor.output_columns if c not in ("label", *predictor.prob_columns)]
    return extra + [c for c in added if c not in extra]


def conform(df: pd.DataFrame, labels: Sequence[str], extra: Sequence[str] = ()) -> pd.DataFrame:
    """The output schema with fixed dtypes, whatever format the rows were read back from."""
    out = pd.DataFrame({
        "article_id": df["article_id"].astype(str),
        "sentence_id": df["sentence_id"].astype(str),
        "idx": pd.to_numeric(df["idx"]).astype("int64"),
        "text": df["text"].astype(str),
        "label": df["label"].astype(str),
    })
    for x in labels:
        out[f"p_{x}"] = pd.to_numeric(df[f"p_{x}"]).astype("float64")
    truncated = df["truncated"]
    if truncated.dtype != bool:
        truncated = truncated.astype(str).str.lower().isin(["true", "1"])
    out["truncated"] = truncated.astype(bool)
    for column in extra:
        out[column] = df[column].fillna("").astype(str)
    return out


CONFIDENCE_COLUMNS = ["confidence", "confident"]


def conform_rows(df: pd.DataFrame, labels: Sequence[str], extra: Sequence[str], meta: Sequence[str]) -> pd.DataFrame:
    """`conform` plus confidence / confident and the carried metadata columns (text; missing = "")."""
    missing = [c for c in extra if c not in df.columns]  # e.g. an output of an older version, on resume
    out = conform(df.assign(**{c: "" for c in missing}) if missing else df, labels, extra)
    probs = out[[f"p_{x}" for x in labels]].to_numpy(dtype=float)
    confidence = pd.to_numeric(df["confidence"]).astype("float64").to_numpy() if "confidence" in df.columns \
        else (probs.max(axis=1) if len(out) else np.zeros(0))
    out["confidence"] = confidence
    confident = df["confident"] if "confident" in df.columns else pd.Series(False, index=df.index)
    if confident.dtype != bool:
        confident = confident.astype(str).str.lower().isin(["true", "1"])
    out["confident"] = confident.astype(bool).to_numpy()
    for column in meta:
        out[column] = df[column].fillna("").astype(str).to_numpy() if column in df.columns else ""
    return out


def conform_dtypes(labels: Sequence[str], extra: Sequence[str] = ()) -> dict[str, str]:
    return {"article_id": "object", "sentence_id": "object", "idx": "int64", "text": "object", "label": "object",
            **{f"p_{x}": "float64" for x in labels}, "truncated": "bool", **{c: "object" for c in extra}}


def sentence_dtypes(labels: Sequence[str], extra: Sequence[str], meta: Sequence[str] = ()) -> dict[str, str]:
    """The sentence rows' columns in order with their dtypes: `output_columns`, confidence / confident, the
    carried metadata columns (text) — what `sentence_rows` gives, locally and on Spark."""
    return {**conform_dtypes(labels, extra), "confidence": "float64", "confident": "bool",
            **{c: "object" for c in meta}}


def sentence_rows(df: pd.DataFrame, labels: Sequence[str], extra: Sequence[str], meta: Sequence[str]) -> pd.DataFrame:
    """Predicted (and enriched) rows → the sentence output rows: `conform_rows`, in `sentence_dtypes`' order."""
    return conform_rows(df, labels, extra, meta)[list(sentence_dtypes(labels, extra, meta))]


def predict_rows(predictor, rows: pd.DataFrame, sources: dict[str, str], errors: ErrorLog, *,
                 batch_size: int, enrich=None) -> pd.DataFrame:
    """Sentence rows (article_id, sentence_id, idx, text, any carried columns) → the same rows with the predictions
    (and `enrich`'s columns: confidence, reasons), as every predict path does it (the local stage's parts and the
    Spark job); each sentence cut at the model's max_length becomes a `truncated` row of `errors` naming its
    article's source (`sources`: article id → source). Callers choose and type the output columns."""
    max_length = predictor.max_length
    context = contexts_of(rows, predictor.context)  # only a model that reads sentence context is given one
    scored = predictor.predict(rows["text"].tolist(), batch_size=batch_size,
                               **({} if context is None else {"context": context}))
    frame = pd.concat([rows.reset_index(drop=True), scored], axis=1)
    if enrich is not None:
        frame = enrich(frame)
    for row in frame.loc[frame["truncated"], ["article_id", "sentence_id"]].itertuples(index=False):
        source = sources[row.article_id]
        errors.add(source, "truncated",
                   f"{source}: sentence {row.sentence_id} is longer than the model's max_length={max_length} "
                   f"tokens; predicted from its first {max_length} tokens",
                   article_id=row.article_id, sentence_id=row.sentence_id)
    return frame


class TableWriter:
    """Appends DataFrames to one .csv / .jsonl / .parquet file without holding them all: CSV in `csv`'s style
    (pipeline.core.io.write_csv), the `date_columns` typed as dates in parquet."""

    def __init__(self, path: Path, suffix: str, *, csv: CsvStyle | None = None, date_columns: Sequence[str] = ()):
        self.path = Path(path)
        self.suffix = suffix.lower()
        self.csv = csv or CsvStyle()
        self.date_columns = list(date_columns)
        self._parquet = None
        self._started = False

    def write(self, df: pd.DataFrame) -> None:
        if self.suffix == ".parquet":
            import pyarrow.parquet as pq

            table = parquet_table(df, self.date_columns)
            if self._parquet is None:
                self._parquet = pq.ParquetWriter(self.path, table.schema)
            self._parquet.write_table(table.cast(self._parquet.schema))
        elif self.suffix == ".csv":
            write_csv(df, self.path, self.csv, append=self._started)
        else:
            with open(self.path, "a" if self._started else "w", encoding="utf-8") as fh:
                if len(df):
                    df.to_json(fh, orient="records", lines=True, force_ascii=False)
        self._started = True

    def close(self, empty_like: pd.DataFrame) -> None:
        if not self._started:  # no rows at all: still a valid, empty table with the right columns
            self.write(empty_like)
        if self._parquet is not None:
            self._parquet.close()


class Summary:
    """Per-article counts and shares per label, mean(p_positive − p_negative), dominant label.

    Accumulated chunk by chunk as one row of sums per article, never holding the sentences: a chunk's rows are
    summed per article (work in proportion to the chunk), then added into the rows of its articles only (an
    article seen before, e.g. a long one over several chunks, is found by its id), so the work per chunk does not
    grow with the articles seen so far. `rows_touched` counts the article rows the last `add` updated."""

    def __init__(self, labels: Sequence[str], meta: Sequence[str] = ()):
        self.labels = list(labels)
        self.meta_columns = list(meta)
        self.meta: dict[str, dict] = {}  # article id -> carried values of its first sentence
        self.columns = ["sentences", "truncated", *[f"n_{x}" for x in self.labels], "net_sum",
                        *[f"psum_{x}" for x in self.labels]]
        self.row_of: dict[str, int] = {}  # article id -> its row in `sums`, in first-seen order
        self.sums = np.zeros((0, len(self.columns)), dtype=np.float64)  # grown by doubling
        self.rows_touched = 0

    def add(self, df: pd.DataFrame) -> None:
        if df.empty:
            self.rows_touched = 0
            return
        ids = df["article_id"].astype(str)
        part = pd.DataFrame({"sentences": 1.0, "truncated": df["truncated"].astype(float)})
        for x in self.labels:
            part[f"n_{x}"] = (df["label"] == x).astype(float)
        net = df["p_positive"] - df["p_negative"] if {"p_positive", "p_negative"} <= set(df.columns) else 0.0
        part["net_sum"] = net
        for x in self.labels:
            part[f"psum_{x}"] = df[f"p_{x}"].astype(float)
        sums = part.groupby(ids.to_numpy(), sort=False).sum()
        if self.meta_columns:
            firsts = df.assign(article_id=ids).drop_duplicates("article_id")
            for record in firsts[["article_id", *self.meta_columns]].to_dict("records"):
                self.meta.setdefault(record.pop("article_id"), record)
        rows = np.fromiter((self.row_of.setdefault(a, len(self.row_of)) for a in sums.index), dtype=np.int64,
                           count=len(sums))
        if len(self.row_of) > len(self.sums):
            grown = np.zeros((max(len(self.row_of), 2 * len(self.sums)), len(self.columns)), dtype=np.float64)
            grown[:len(self.sums)] = self.sums
            self.sums = grown
        # the ids of a groupby are distinct: one += per row; 0 + x is x, so the sums are those of chunk-by-chunk adds
        self.sums[rows] += sums[self.columns].to_numpy(dtype=np.float64)
        self.rows_touched = len(rows)

    @property
    def totals(self) -> pd.DataFrame:
        """The sums per article (one row each, first-seen order)."""
        return pd.DataFrame(self.sums[:len(self.row_of)], index=pd.Index(list(self.row_of), dtype=object),
                            columns=self.columns)

    def frame(self) -> pd.DataFrame:
        t = self.totals
        out = pd.DataFrame({"article_id": t.index.astype(str), "sentences": t["sentences"].astype("int64").to_numpy()})
        for x in self.labels:
            out[f"n_{x}"] = t[f"n_{x}"].astype("int64").to_numpy()
        for x in self.labels:
            out[f"share_{x}"] = (t[f"n_{x}"] / t["sentences"]).to_numpy()
        out["net_stance"] = (t["net_sum"] / t["sentences"]).to_numpy()
        # Most sentences wins; a tie goes to the label with the larger summed probability.
        keys = np.stack([t[f"n_{x}"].to_numpy() + t[f"psum_{x}"].to_numpy() / (t["sentences"].to_numpy() + 1)
                         for x in self.labels], axis=1) if len(t) else np.zeros((0, len(self.labels)))
        out["dominant_label"] = np.asarray(self.labels, dtype=object)[keys.argmax(axis=1)] if len(t) else []
        out["truncated_sentences"] = t["truncated"].astype("int64").to_numpy()
        for column in self.meta_columns:
            out[column] = [self.meta.get(a, {}).get(column, "") for a in out["article_id"]]
        return out


def plot_net_stance(summary: pd.DataFrame, target: Path, max_bars: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = summary.sort_values("net_stance")
    with atomic_path(target) as tmp:
        if len(data) <= max_bars:
            fig, ax = plt.subplots(figsize=(8, max(2.5, 0.28 * len(data) + 1)))
            colors = ["#2a9d8f" if v > 0 else "#e76f51" for v in data["net_stance"]]
            ax.barh(range(len(data)), data["net_stance"], color=colors)
            ax.set_yticks(range(len(data)), data["article_id"], fontsize=7)
            ax.axvline(0, color="black", linewidth=0.8)
            ax.set_xlabel("net stance = mean(p_positive − p_negative)")
        else:  # too many articles for one bar each: their distribution
            fig, ax = plt.subplots(figsize=(8, 4))
            ax.hist(data["net_stance"], bins=40, color="#457b9d")
            ax.set_xlabel("net stance = mean(p_positive − p_negative)")
            ax.set_ylabel("articles")
        ax.set_xlim(-1, 1)
        ax.set_title(f"Net stance toward agreement, {len(data)} articles")
        fig.tight_layout()
        fig.savefig(tmp, format="png", dpi=120)
        plt.close(fig)
    return target
