"""predict's outputs: the per-sentence table, the per-article summary and plot, and the errors report.

Sentences are predicted and written in parts (`PartsWriter`) and merged into the output at the end; every output
has the fixed schema of `output_columns` / `conform_dtypes` whatever its format.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError
from pipeline.io import (BadInputFile, CsvStyle, atomic_path, iter_table_chunks, parquet_table, read_table,
                         write_csv, write_table_atomic, write_text_atomic)

log = logging.getLogger(__name__)

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
    (predict_extras.Enricher: rules_fired, top_words) that it does not return itself."""
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
    scored = predictor.predict(rows["text"].tolist(), batch_size=batch_size)
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
    (pipeline.io.write_csv), the `date_columns` typed as dates in parquet."""

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

    Accumulated chunk by chunk as one small table per article, never holding the sentences."""

    def __init__(self, labels: Sequence[str], meta: Sequence[str] = ()):
        self.labels = list(labels)
        self.meta_columns = list(meta)
        self.meta: dict[str, dict] = {}  # article id -> carried values of its first sentence
        self.columns = ["sentences", "truncated", *[f"n_{x}" for x in self.labels], "net_sum",
                        *[f"psum_{x}" for x in self.labels]]
        self.totals = pd.DataFrame(columns=self.columns, dtype="float64")
        self.order: dict[str, None] = {}  # articles in first-seen order

    def add(self, df: pd.DataFrame) -> None:
        if df.empty:
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
        self.order.update(dict.fromkeys(sums.index))
        self.totals = sums if self.totals.empty else self.totals.add(sums, fill_value=0.0)

    def frame(self) -> pd.DataFrame:
        t = self.totals.reindex(list(self.order))
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



def done_keys(paths: Iterable[Path], chunk_rows: int) -> tuple[set[str], set[tuple[str, str]]]:
    """The article ids and (article id, sentence id) pairs already in earlier outputs or parts."""
    articles: set[str] = set()
    sentences: set[tuple[str, str]] = set()
    for path in paths:
        for chunk in iter_table_chunks(path, chunk_rows, restore=True):
            ids = chunk["article_id"].astype(str)
            articles.update(ids)
            sentences.update(zip(ids, chunk["sentence_id"].astype(str)))
    return articles, sentences


MANIFEST = "manifest.json"


class PartsWriter:
    """Buffers the sentences of articles, predicts them a chunk at a time and writes each chunk atomically as a
    part file in a hidden directory beside the output; `merge` then writes the output in one rename.

    An interrupted run leaves only the parts directory, never something that looks like a finished output. With
    `resume`, the articles already in the output or in those parts are `done` and the parts are kept; parts whose
    sentences are already in the output (killed after the output's rename, before the parts were removed) are
    dropped, not merged twice. The parts directory's manifest names the model (`model_id`): a resume with another
    model is refused. Each part has its error rows beside it (`errors-<n>.csv`), so a resume keeps them.
    """

    def __init__(self, output: Path, predictor, errors: ErrorLog, *, chunk_sentences: int, batch_size: int,
                 resume: bool, model_id: str = "", enrich=None, added: Sequence[str] = (),
                 csv: CsvStyle | None = None, date_column: str = ""):
        self.output = Path(output)
        self.csv = csv or CsvStyle()
        self.date_column = date_column  # the carried column of dates: typed as dates in a parquet output
        self.parts_dir = self.output.with_name(f".{self.output.name}.parts")
        self.predictor = predictor
        self.labels = list(predictor.labels)
        # `enrich(frame)` adds confidence / confident and the text columns `added` (rules_fired, top_words).
        self.enrich = enrich
        self.extra = extra_columns(predictor, added)
        self.meta: list[str] = []  # carried input columns, in first-seen order
        self.columns = output_columns(self.labels, self.extra)
        self.errors = errors
        self.chunk_sentences = chunk_sentences
        self.batch_size = batch_size
        self.resume = resume
        self.sentences = 0
        self.truncated = 0
        self._buffer: list[dict] = []
        self._sources: dict[str, str] = {}  # article id -> source, for the chunk being buffered
        self._errors_written = len(errors.rows)
        manifest = self.parts_dir / MANIFEST
        if resume:
            if manifest.exists():
                before = json.loads(manifest.read_text(encoding="utf-8")).get("model", "")
                if before != model_id:
                    raise PipelineError(
                        f"predict.resume=true: the unfinished parts in {self.parts_dir} were predicted by model "
                        f"{before!r}, not {model_id!r}; resume with that model_uri, or predict.resume=false to start over")
            self._drop_merged_parts()
            self.done, self.done_sentences = done_keys(
                [p for p in [self.output] if p.exists()] + self._parts(), chunk_sentences)
            log.info("predict: resume: %d articles already done", len(self.done))
        else:
            self.done, self.done_sentences = set(), set()
            if self.parts_dir.exists():
                log.info("predict: removing the parts of an earlier, unfinished run in %s", self.parts_dir)
                shutil.rmtree(self.parts_dir)
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(manifest, json.dumps({"model": model_id}))
        self._next_part = 1 + max((int(p.stem.split("-")[1]) for p in self._parts()), default=0)

    def _parts(self) -> list[Path]:
        return sorted(self.parts_dir.glob("part-*.parquet"))

    def _drop_merged_parts(self) -> None:
        if not self.output.exists() or not self.parts_dir.exists():
            return
        _, in_output = done_keys([self.output], self.chunk_sentences)
        for part in self._parts():
            _, keys = done_keys([part], self.chunk_sentences)
            if keys & in_output:
                log.info("predict: resume: %s is already merged into %s; dropped", part.name, self.output)
                part.unlink()

    def is_done(self, article) -> bool:
        """An article (or a piece of a long one, by its first sentence) that an earlier run already predicted."""
        if getattr(article, "piece", 0) or not article.rows:
            return bool(article.rows) and (article.article_id, str(article.rows[0]["sentence_id"])) in self.done_sentences
        return article.article_id in self.done

    def previous_errors(self) -> pd.DataFrame:
        """The error rows of the interrupted run(s), saved beside their parts."""
        frames = [read_table(p, restore=True) for p in sorted(self.parts_dir.glob("errors-*.csv"))]
        frames = [f for f in frames if len(f)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=ERROR_COLUMNS)

    def add(self, article) -> bool:
        """Buffer one article's sentences; True when a full buffer was predicted and written first."""
        flushed = len(self._buffer) >= self.chunk_sentences
        if flushed:
            self.flush()
        self._sources[article.article_id] = article.source
        self.meta.extend(c for c in article.meta if c not in self.meta)
        self._buffer.extend({**article.meta, "article_id": article.article_id, **row} for row in article.rows)
        return flushed

    def flush(self) -> None:
        """Predict the buffered sentences and write them as the next part; truncated sentences become error rows."""
        if not self._buffer:
            return
        frame = pd.DataFrame(self._buffer)
        sources = self._sources
        self._buffer, self._sources = [], {}
        frame = predict_rows(self.predictor, frame, sources, self.errors,
                             batch_size=self.batch_size, enrich=self.enrich)
        self.sentences += len(frame)
        self.truncated += int(frame["truncated"].sum())
        new_errors = ErrorLog(self.errors.rows[self._errors_written:])
        write_table_atomic(new_errors.frame(), self.parts_dir / f"errors-{self._next_part:06d}.csv", csv=self.csv)
        self._errors_written = len(self.errors.rows)
        write_table_atomic(self.rows(frame, self.meta), self.parts_dir / f"part-{self._next_part:06d}.parquet")
        self._next_part += 1

    def rows(self, frame: pd.DataFrame, meta: Sequence[str]) -> pd.DataFrame:
        return sentence_rows(frame, self.labels, self.extra, meta)

    def merged_meta(self, paths: Sequence[Path]) -> list[str]:
        """The carried columns of everything merged (parts of an interrupted run, an earlier output)."""
        known = set(self.columns) | set(CONFIDENCE_COLUMNS)
        meta = list(self.meta)
        for path in paths:
            if path.suffix == ".parquet":
                import pyarrow.parquet as pq

                names = pq.read_schema(path).names
            else:
                names = list(next(iter(iter_table_chunks(path, 1, restore=True)), pd.DataFrame()).columns)
            meta += [c for c in names if c not in known and c not in meta]
        return meta

    def discard(self) -> None:
        shutil.rmtree(self.parts_dir, ignore_errors=True)

    def merge(self) -> pd.DataFrame:
        """Earlier output (resume) + parts → temp file → rename over the output; returns the per-article summary."""
        merged = ([self.output] if self.resume and self.output.exists() else []) + self._parts()
        meta = self.merged_meta(merged)
        summary = Summary(self.labels, meta)
        with atomic_path(self.output) as tmp:
            writer = TableWriter(tmp, self.output.suffix, csv=self.csv,
                                 date_columns=[self.date_column] if self.date_column in meta else [])
            for path in merged:
                for chunk in iter_table_chunks(path, self.chunk_sentences, restore=True):
                    chunk = self.rows(chunk, meta)
                    writer.write(chunk)
                    summary.add(chunk)
            dtypes = sentence_dtypes(self.labels, self.extra, meta)
            writer.close(pd.DataFrame({c: pd.Series(dtype=t) for c, t in dtypes.items()}))
        self.discard()
        return summary.frame()
