"""predict's parts: sentences predicted a chunk at a time, each chunk written atomically as a part file in a hidden
directory beside the output, merged into the output in one rename at the end; what `predict.resume` continues.

The predict stage holds the output's lock (pipeline.core.write_guard) while it writes here, so a parts directory found
by a run is never a live run's: it is what a run that died left behind.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

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


@dataclass
class ResumeState:
    """What an earlier run left done, kept per article, never per sentence: the ids of the articles already in the
    output or the parts, and the last article of the parts (`tail`: the one a killed run may have left half
    written) with the count of its rows written. Articles are written in input order, each one's rows contiguous,
    so every done article but the tail is whole and the tail's written rows are its first `tail_rows`."""

    done: set[str] = field(default_factory=set)
    tail: str | None = None
    tail_rows: int = 0


def resume_state(paths: Sequence[Path], chunk_rows: int) -> ResumeState:
    """One pass over the earlier output and the parts (in order), a chunk at a time: the done article ids and the
    rows of the last article; memory in proportion to the articles, not the sentences."""
    state = ResumeState()
    for path in paths:
        for chunk in iter_table_chunks(path, chunk_rows, restore=True, columns=["article_id"]):
            ids = chunk["article_id"].astype(str)
            if not len(ids):
                continue
            state.done.update(ids.unique())
            last = ids.iloc[-1]
            run = int((ids.to_numpy()[::-1] != last).argmax()) if (ids != last).any() else len(ids)
            state.tail_rows = (state.tail_rows if last == state.tail and run == len(ids) else 0) + run
            state.tail = last
    return state


def first_keys(path: Path) -> tuple[str, str] | None:
    """(article id, sentence id) of a part's first row."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    if not parquet.num_row_groups:
        return None
    first = parquet.read_row_group(0, columns=["article_id", "sentence_id"]).slice(0, 1).to_pylist()
    return (str(first[0]["article_id"]), str(first[0]["sentence_id"])) if first else None


def rows_in(path: Path, keys: set[tuple[str, str]], chunk_rows: int) -> set[tuple[str, str]]:
    """Which of `keys` (article id, sentence id) are rows of `path`, read a chunk at a time."""
    found: set[tuple[str, str]] = set()
    for chunk in iter_table_chunks(path, chunk_rows, restore=True, columns=["article_id", "sentence_id"]):
        found.update(k for k in zip(chunk["article_id"].astype(str), chunk["sentence_id"].astype(str)) if k in keys)
    return found


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
        self.tail: str | None = None  # resume: the article the parts end with (maybe half written) ...
        self.tail_rows = 0  # ... and how many of its rows they hold
        self._tail_seen = 0  # rows of the tail article met so far in this run's input
        if resume:
            check_resume(self.output, model_id)
            self._drop_merged_parts()
            state = resume_state([p for p in [self.output] if p.exists()] + self._parts(), chunk_sentences)
            self.done = state.done
            if self._parts():  # an output alone is a finished run's: whole articles only
                self.tail, self.tail_rows = state.tail, state.tail_rows
            log.info("predict: resume: %d articles already done%s", len(self.done),
                     f" (the last, {self.tail}, with {self.tail_rows} sentences)" if self.tail else "")
        else:
            self.done = set()
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
        """Parts already merged into the output (a run killed after the output's rename, before the parts were
        removed): each part's first row is looked for in the output, one chunk of it at a time."""
        if not self.output.exists() or not self.parts_dir.exists():
            return
        firsts = {part: first_keys(part) for part in self._parts()}
        merged = rows_in(self.output, {k for k in firsts.values() if k}, self.chunk_sentences)
        for part, key in firsts.items():
            if key in merged:
                log.info("predict: resume: %s is already merged into %s; dropped", part.name, self.output)
                part.unlink()

    def _written(self, article) -> int:
        """How many of this article's (or piece's) rows an earlier run wrote: all of a done article, the first
        `tail_rows` of the tail article counted over its pieces in input order, none of any other."""
        if article.article_id not in self.done:
            return 0
        if article.article_id != self.tail:
            return len(article.rows)
        return max(0, min(len(article.rows), self.tail_rows - self._tail_seen))

    def is_done(self, article) -> bool:
        """An article (or a piece of a long one) that an earlier run already predicted, whole."""
        if not article.rows or self._written(article) < len(article.rows):
            return False
        if article.article_id == self.tail:
            self._tail_seen += len(article.rows)
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
        rows = rows[self._written(article):]  # resume: the half-written article goes on where it stopped
        if article.article_id == self.tail:
            self._tail_seen += len(article.rows)
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
