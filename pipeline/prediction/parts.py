"""predict's parts: sentences predicted a chunk at a time, each chunk written atomically as a part file in a hidden
directory beside the output, merged into the output in one rename at the end; what `predict.resume` continues.

The predict stage holds the output's lock (pipeline.core.write_guard) while it writes here, so a parts directory found
by a run is never a live run's: it is what a run that died left behind.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from pipeline.core.errors import PipelineError
from pipeline.core.io import CsvStyle, atomic_path, iter_table_chunks, read_table, write_table_atomic, write_text_atomic
from pipeline.prediction.inputs import with_context
from pipeline.prediction.outputs import (CONFIDENCE_COLUMNS, ERROR_COLUMNS, ErrorLog, Summary, TableWriter,
                                      extra_columns, output_columns, predict_rows, sentence_dtypes, sentence_rows)

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def parts_dir_for(output: Path | str) -> Path:
    """The hidden directory beside `output` that holds an unfinished run's parts."""
    output = Path(output)
    return output.with_name(f".{output.name}.parts")


def check_resume(output: Path | str, model_id: str) -> None:
    """predict.resume=true: refuse to continue parts that another model predicted (before any model is loaded)."""
    manifest = parts_dir_for(output) / MANIFEST
    if not manifest.exists():
        return
    before = json.loads(manifest.read_text(encoding="utf-8")).get("model", "")
    if before != model_id:
        raise PipelineError(
            f"predict.resume=true: the unfinished parts in {manifest.parent} were predicted by model "
            f"{before!r}, not {model_id!r}; resume with that model_uri, or predict.resume=false to start over")


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


def last_article(part: Path) -> str | None:
    """The article of a part's last row: the one a killed run may have left half written."""
    import pyarrow.parquet as pq

    ids = pq.read_table(part, columns=["article_id"]).column("article_id")
    return str(ids[len(ids) - 1]) if len(ids) else None


class PartsWriter:
    """Buffers the sentences of articles, predicts them a chunk of at most `chunk_sentences` at a time (a long
    article is split over several chunks: the predictor never gets more rows at once) and writes each chunk
    atomically as a part file in a hidden directory beside the output; `merge` then writes the output in one rename
    and the per-article summary, accumulated over the chunks.

    An interrupted run leaves only the parts directory, never something that looks like a finished output. With
    `resume`, the articles already in the output or in those parts are `done` and the parts are kept; the last
    article of the parts, which the killed run may have written only in part, is continued from its first missing
    sentence. Parts whose sentences are already in the output (killed after the output's rename, before the parts
    were removed) are dropped, not merged twice. The parts directory's manifest names the model (`model_id`): a
    resume with another model is refused. Each part has its error rows beside it (`errors-<n>.csv`), so a resume
    keeps them.
    """

    def __init__(self, output: Path, predictor, errors: ErrorLog, *, chunk_sentences: int, batch_size: int,
                 resume: bool, model_id: str = "", enrich=None, added: Sequence[str] = (),
                 csv: CsvStyle | None = None, date_column: str = ""):
        self.output = Path(output)
        self.csv = csv or CsvStyle()
        self.date_column = date_column  # the carried column of dates: typed as dates in a parquet output
        self.parts_dir = parts_dir_for(self.output)
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
        self.tail: str | None = None  # resume: the article the parts end with (maybe half written)
        if resume:
            check_resume(self.output, model_id)
            self._drop_merged_parts()
            self.done, self.done_sentences = done_keys(
                [p for p in [self.output] if p.exists()] + self._parts(), chunk_sentences)
            self.tail = last_article(self._parts()[-1]) if self._parts() else None
            log.info("predict: resume: %d articles already done", len(self.done))
        else:
            self.done, self.done_sentences = set(), set()
            if self.parts_dir.exists():
                log.info("predict: removing the parts left by an earlier run that did not finish (no live run "
                         "writes %s) in %s", self.output, self.parts_dir)
                shutil.rmtree(self.parts_dir)
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.parts_dir / MANIFEST, json.dumps({"model": model_id}))
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

    def _row_done(self, article_id: str, row: dict) -> bool:
        return (article_id, str(row["sentence_id"])) in self.done_sentences

    def is_done(self, article) -> bool:
        """An article (or a piece of a long one) that an earlier run already predicted: by its id, or, for the
        article a killed run may have left half written and for a piece of a long table article, every sentence."""
        if not article.rows or article.article_id not in self.done:
            return False
        if getattr(article, "piece", 0) or article.article_id == self.tail:
            return all(self._row_done(article.article_id, row) for row in article.rows)
        return True

    def previous_errors(self) -> pd.DataFrame:
        """The error rows of the interrupted run(s), saved beside their parts."""
        frames = [read_table(p, restore=True) for p in sorted(self.parts_dir.glob("errors-*.csv"))]
        frames = [f for f in frames if len(f)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=ERROR_COLUMNS)

    def add(self, article) -> bool:
        """Buffer one article's sentences (those not done yet), predicting and writing each full chunk on the way;
        True when a chunk was written."""
        rows = with_context(article, self.predictor.context)  # from the whole article, before any chunking
        if article.article_id in self.done:  # resume: the half-written article goes on from its first missing row
            rows = [row for row in rows if not self._row_done(article.article_id, row)]
        self.meta.extend(c for c in article.meta if c not in self.meta)
        flushed = False
        start = 0
        while start < len(rows):
            if len(self._buffer) >= self.chunk_sentences:
                self.flush()
                flushed = True
            piece = rows[start:start + self.chunk_sentences - len(self._buffer)]
            self._sources[article.article_id] = article.source
            self._buffer.extend({**article.meta, "article_id": article.article_id, **row} for row in piece)
            start += len(piece)
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
        try:
            write_table_atomic(new_errors.frame(), self.parts_dir / f"errors-{self._next_part:06d}.csv", csv=self.csv)
            write_table_atomic(self.rows(frame, self.meta), self.parts_dir / f"part-{self._next_part:06d}.parquet")
        except OSError as exc:
            raise PipelineError(f"cannot write the predictions' parts in {self.parts_dir} ({exc.strerror or exc}); "
                                "the parts written so far are kept: make room (or fix the directory) and run the "
                                "same command with predict.resume=true") from None
        self._errors_written = len(self.errors.rows)
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
        """Earlier output (resume) + parts → temp file → rename over the output; returns the per-article summary.
        A failed write (a full disk: OSError) leaves the output as it was and keeps the parts: one PipelineError."""
        merged = ([self.output] if self.resume and self.output.exists() else []) + self._parts()
        meta = self.merged_meta(merged)
        summary = Summary(self.labels, meta)
        try:
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
        except OSError as exc:
            raise PipelineError(f"cannot write {self.output} ({exc.strerror or exc}); nothing is lost: the "
                                f"predictions are kept in {self.parts_dir}: make room (or fix the directory) and "
                                "run the same command with predict.resume=true") from None
        self.discard()
        return summary.frame()
