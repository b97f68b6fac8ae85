"""predict's inputs: the files named by `input=` (paths, directories, globs) read into articles of sentences.

A text file is one article, segmented with the model's segmentation rules; a table (.csv / .jsonl / .parquet) holds
whole articles or ready sentences (see pipeline.stages.predict). Unusable inputs become rows of the errors report.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf

import pandas as pd

from pipeline.prediction.analytics import parse_dates
from pipeline.text.arabic import has_arabic, squeeze_spaces
from pipeline.text.context import MODES, article_contexts, context_column
from pipeline.core.errors import PipelineError
from pipeline.core.io import (TABLE_SUFFIXES, BadInputFile, dir_files, glob_files, iter_table_chunks, read_text_strict,
                         refuse_empty)
from pipeline.core.provenance import note_file
from pipeline.prediction.outputs import ErrorLog
from pipeline.text.segmentation import SegmentRules, article_id_for, article_rows, sentence_ids

log = logging.getLogger(__name__)

GLOB_CHARS = set("*?[")
# Columns the stage itself writes: a carried input column of one of these names is left out (with a warning).
RESERVED = {"article_id", "sentence_id", "idx", "text", "label", "truncated", "confidence", "confident",
            "decided_by", "rules_fired", "top_words", "sentences", "net_stance", "dominant_label",
            *(context_column(m) for m in MODES if m != "none")}


def carry_setting(cfg: DictConfig, section: str = "predict") -> list[str] | None:
    """<section>.carry_columns (predict's by default): None = every column but the text (`all`), else the list
    ([] for none / false)."""
    carry = OmegaConf.select(cfg, f"{section}.carry_columns", default="all")
    if carry is None or (isinstance(carry, str) and carry == "all"):
        return None
    return [] if carry in (False, "none") else [str(c) for c in as_list(carry)]


def carried_columns(columns, text_column: str, carry: Sequence[str] | None, warned: set | None = None) -> list[str]:
    """The input columns carried into the outputs (`carry`: None = all but the text); one that clashes with an
    output column is not carried (a warning, once per name in `warned`)."""
    wanted = [c for c in columns if c != text_column] if carry is None else [c for c in carry if c in columns]
    warned = set() if warned is None else warned
    out = []
    for c in map(str, wanted):
        if c in RESERVED or c.startswith("p_") or c.startswith(("n_", "share_")):
            if c not in ("article_id", "sentence_id", "idx") and c not in warned:
                warned.add(c)
                log.warning("predict: input column %r clashes with an output column; not carried", c)
            continue
        out.append(c)
    return out


def carried_values(record: dict, columns: Sequence[str], date_column: str, where: str, source: str,
                   article_id: str, errors: ErrorLog, row_number: int = 0) -> dict:
    """The carried values of one input row, as text; the date normalised to ISO (a `bad_date` error row naming
    `source`, its message `where`, if unreadable)."""
    meta = {c: "" if record.get(c) is None or (not isinstance(record.get(c), str) and pd.isna(record.get(c)))
            else str(record[c]) for c in columns}
    if date_column in meta and meta[date_column].strip():
        parsed, messages = parse_dates(pd.Series([meta[date_column]], index=[row_number]), source=where)
        for message in messages:
            errors.add(source, "bad_date", message, article_id=article_id)
        stamp = parsed.iloc[0]
        meta[date_column] = "" if pd.isna(stamp) else (
            stamp.strftime("%Y-%m-%d") if stamp == stamp.normalize() else stamp.isoformat())
    return meta


@dataclass
class Article:
    article_id: str
    source: str
    rows: list[dict]  # sentence_id, idx, text
    meta: dict = field(default_factory=dict)  # carried columns (table inputs) or the path (text files), as text
    piece: int = 0    # >0: a later run of predict.chunk_sentences rows of one long article (sentence tables)
    offset: int = 0   # a later piece: the position of its first row in the article,
    first_text: str = ""     # the article's first sentence
    previous_text: str = ""  # and the sentence just before this piece (what sentence context needs)


def with_context(article: Article, mode: str) -> list[dict]:
    """The article's rows, each with its sentence context (`context_column(mode)`) when the model reads one (`mode`, the
    predictor's `context`): built from the whole article before predict splits it into chunks, so a sentence
    opening a chunk still has the one before it (pipeline.text.context)."""
    if mode == "none" or not article.rows:
        return article.rows
    contexts = article_contexts([r["text"] for r in article.rows], mode, offset=article.offset,
                                first=article.first_text, previous=article.previous_text)
    column = context_column(mode)
    return [{**row, column: context} for row, context in zip(article.rows, contexts)]


def as_list(value) -> list[str]:
    """An `input=`-style config value (one path or a list of them) as a list of strings."""
    if value is None:
        return []
    if isinstance(value, (list, tuple, ListConfig)):
        return [str(v) for v in value]
    return [str(value)]


def expand_inputs(inputs: Sequence[str], errors: ErrorLog) -> list[Path]:
    """Files named by paths, directories (recursively, hidden files skipped) and glob patterns."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        listing = None  # (files, source, reason, message) of a glob or a directory
        if GLOB_CHARS & set(item) and not path.exists():
            listing = glob_files(item), item, "missing", f"{item}: no file matches this pattern"
        elif path.is_dir():
            listing = dir_files(path), path, "empty", f"{path}: directory holds no files"
        if listing is not None:
            listed, source, reason, message = listing
            if not listed:
                errors.add(source, reason, message)
                log.warning("predict: %s", message)
            files.extend(listed)
        elif path.is_file():
            files.append(path)
        else:
            note_file(path)  # a stage that read nothing here is stale once the file appears
            errors.add(path, "missing", f"{path}: no such file or directory")
            log.warning("predict: input %s does not exist", path)
    return files


def drop_empty(files: Iterable[Path], errors: ErrorLog) -> list[Path]:
    """The files worth loading a model for: an empty one (0 bytes) is its error row now, as its reader would
    make it, so that a run given only empty files fails before the model loads."""
    kept = []
    for path in files:
        try:
            refuse_empty(path)
        except BadInputFile as exc:
            errors.file_error(exc)
            continue
        kept.append(path)
    return kept


def no_usable_article(inputs: Sequence[str], problems: Sequence[str], errors_path) -> PipelineError:
    """The one error of a predict or spark_predict run with no article to predict: the first problem found (the
    message of an error row), how many more, and where they all are."""
    first = problems[0] if problems else "nothing to read there"
    more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
    return PipelineError(f"no usable article in input={', '.join(map(str, inputs))}: {first}{more}; "
                         f"see {errors_path} for why")


def segment_article(article_id: str, text: str, source: str, rules: SegmentRules, errors: ErrorLog) -> Article | None:
    """One article's text → its sentences (ids, positions), as every predict path does it (the local stage and the
    Spark job, pipeline.prediction.spark_articles). Raises BadInputFile (`no_arabic`) for text without Arabic; an article left
    with no sentence (only boilerplate or punctuation) is a `no_sentences` row of `errors` and gives None."""
    if not has_arabic(text):
        raise BadInputFile(source, "no_arabic", "holds no Arabic text; is it the right file?")
    rows, _removed = article_rows(article_id, text, rules)
    if not rows:
        errors.add(source, "no_sentences", f"{source}: no sentence left after segmentation "
                   "(only boilerplate or punctuation)", article_id=article_id)
        return None
    return Article(article_id, source, [{k: r[k] for k in ("sentence_id", "idx", "text")} for r in rows])


class ArticleReader:
    """Yields the articles of all inputs one at a time; unusable ones become error rows."""

    def __init__(self, cfg: DictConfig, rules: SegmentRules, errors: ErrorLog, section: str = "predict"):
        """`section`: the config section saying how tables are read (text_column, table_rows, chunk_sentences,
        carry_columns, date_column): predict's for predict, `data.unlabelled_table` for segment's data.unlabelled."""
        self.rules = rules
        self.errors = errors
        self.section = section
        keys = OmegaConf.select(cfg, section)
        self.text_column = str(keys.text_column)
        self.table_rows = str(keys.table_rows)
        self.chunk_rows = int(keys.chunk_sentences)
        if self.table_rows not in ("auto", "articles", "sentences"):
            raise PipelineError(f"{section}.table_rows={self.table_rows!r}: choose auto, articles or sentences")
        self.owners: dict[str, str] = {}
        carry = carry_setting(cfg, section)
        self.carry_all = carry is None
        self.carry = carry or []
        self.date_column = str(keys.get("date_column", "date") or "")
        self._warned: set[str] = set()
        self._occurrences: Counter = Counter()  # the current sentence-table article's texts, over all its pieces
        self._lead = ("", "")  # the current sentence-table article's first sentence and the last one read so far

    def _carried(self, columns) -> list[str]:
        """The input columns carried into the outputs."""
        return carried_columns(columns, self.text_column, None if self.carry_all else self.carry, self._warned)

    def _meta(self, record: dict, columns: list[str], path: Path, row_number: int, article_id: str) -> dict:
        return carried_values(record, columns, self.date_column, str(path), f"{path}#{article_id}", article_id,
                              self.errors, row_number)

    def read(self, files: Iterable[Path]) -> Iterator[Article]:
        for path in files:
            try:
                if path.suffix.lower() in TABLE_SUFFIXES:
                    yield from self._table(path)
                else:
                    article = self._text_file(path)
                    if article is not None:
                        yield article
            except BadInputFile as exc:
                self.errors.file_error(exc)

    def _claim(self, article_id: str, source: str) -> bool:
        if article_id in self.owners:
            message = (f"{source}: article id {article_id!r} already used by {self.owners[article_id]}; "
                       "skipped (ids are file stems or the table's article_id: make them unique)")
            log.warning("predict: %s", message)
            self.errors.add(source, "duplicate_article", message, article_id=article_id)
            return False
        self.owners[article_id] = source
        return True

    def _segmented(self, article_id: str, text: str, source: str) -> Article | None:
        article = segment_article(article_id, text, source, self.rules, self.errors)
        if article is None or not self._claim(article_id, source):
            return None
        return article

    def _text_file(self, path: Path) -> Article | None:
        article = self._segmented(article_id_for(path), read_text_strict(path), str(path))
        if article is not None:
            article.meta = {"path": str(path)}
        return article

    def _table(self, path: Path) -> Iterator[Article]:
        sentences_mode: bool | None = None
        pending: tuple | None = None  # article id, texts, sentence ids, carried values of its first row
        row_number = 0
        for chunk in iter_table_chunks(path, self.chunk_rows, as_text=True):
            if self.text_column not in chunk.columns:
                raise BadInputFile(path, "bad_table", f"has no {self.text_column!r} column (columns: "
                                   f"{', '.join(map(str, chunk.columns))}); set {self.section}.text_column")
            if sentences_mode is None:
                sentences_mode = (self.table_rows == "sentences"
                                  or (self.table_rows == "auto" and "sentence_id" in chunk.columns))
            has_ids = "article_id" in chunk.columns
            carried = self._carried(list(chunk.columns))
            for record in chunk.to_dict("records"):
                row_number += 1
                text = str(record[self.text_column])
                if sentences_mode:
                    article_id = str(record["article_id"]) if has_ids and record["article_id"] else path.stem
                else:
                    article_id = str(record["article_id"]) if has_ids and record["article_id"] else f"{path.stem}:{row_number}"
                if pending is not None and pending[0] != article_id:
                    # the last piece of a long article is still a piece of it: its id was claimed by piece 0
                    yield from self._finish_table_article(pending, path, sentences_mode, piece, offset)
                    pending = None
                if pending is None:
                    pending = (article_id, [], [], self._meta(record, carried, path, row_number, article_id))
                    piece, offset = 0, 0
                elif sentences_mode and len(pending[1]) >= self.chunk_rows:
                    # One long article (e.g. a sentence table without article_id): flushed by rows, in pieces,
                    # never held whole; every piece carries the article's first-row values.
                    for article in self._finish_table_article(pending, path, True, piece, offset):
                        offset += len(article.rows)
                        yield article
                    pending, piece = (article_id, [], [], pending[3]), piece + 1
                pending[1].append(text)
                pending[2].append(str(record.get("sentence_id", "") or ""))
        if sentences_mode is None:
            raise BadInputFile(path, "empty", "table has a header but no rows")
        if pending is not None:
            yield from self._finish_table_article(pending, path, sentences_mode, piece, offset)

    def _finish_table_article(self, pending, path: Path, sentences_mode: bool, piece: int = 0,
                              offset: int = 0) -> Iterator[Article]:
        article_id, texts, given_ids, meta = pending
        source = f"{path}#{article_id}"
        if not sentences_mode:
            if not any(t.strip() for t in texts):
                self.errors.add(source, "empty", f"{source}: the {self.text_column!r} cell is empty; skipped",
                                article_id=article_id)
                return
            try:
                article = self._segmented(article_id, "\n".join(texts), source)
            except BadInputFile as exc:
                self.errors.file_error(exc)
                return
            if article is not None:
                article.meta = meta
                yield article
            return
        if piece == 0:
            self._occurrences = Counter()
        keep = [i for i, t in enumerate(texts) if squeeze_spaces(t)]
        for i in set(range(len(texts))) - set(keep):
            self.errors.add(source, "empty_sentence", f"{source}: sentence row {i} is empty; skipped",
                            article_id=article_id, sentence_id=given_ids[i])
        if not keep or (not self._claim(article_id, str(path)) if piece == 0 else self.owners.get(article_id) != str(path)):
            return
        texts = [squeeze_spaces(texts[i]) for i in keep]
        ids = [given_ids[i] for i in keep]
        made = sentence_ids(article_id, texts, self._occurrences)  # counted over every piece: ids stay unique
        ids = [given or generated for given, generated in zip(ids, made)]
        first, previous = self._lead if offset else (texts[0], "")
        self._lead = (first, texts[-1])
        yield Article(article_id, str(path), [{"sentence_id": s, "idx": offset + i, "text": t}
                                              for i, (s, t) in enumerate(zip(ids, texts))], meta, piece,
                      offset, first, previous)
