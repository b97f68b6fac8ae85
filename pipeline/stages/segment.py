"""segment stage: articles → clean sentences with stable ids and character offsets.

Output schema (`sentences.parquet`), one row per kept sentence:
    article_id  file stem of the article
    sentence_id `<article_id>:<12 hex>`, a hash of the article id, the normalised sentence text and its
                occurrence number, so it survives re-runs, re-ordering and edits of other sentences
    idx         0-based position among the article's kept sentences
    text        the sentence with runs of whitespace squeezed to one space
    start, end  character offsets into the file's decoded text (BOM excluded, line endings kept):
                squeeze_spaces(original[start:end]) == text

The segmentation itself (rules, sentence splitting, ids) is in pipeline.text.segmentation, shared with predict.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from pipeline.text.arabic import has_arabic
from pipeline.core.errors import PipelineError
from pipeline.core.progress import bar_disabled
from pipeline.core.io import BadInputFile, read_text_strict, write_table_atomic, write_text_atomic
from pipeline.text.segmentation import SENTENCE_COLUMNS, SegmentRules, article_id_for, article_rows, find_articles

log = logging.getLogger(__name__)

SEGMENT_BAR_FROM = 20  # articles: fewer are segmented in a blink, not worth a bar


@dataclass
class SegmentReport:
    articles_read: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # path -> reason message
    sentences_kept: int = 0
    removed: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {
            "articles_read": self.articles_read,
            "articles_skipped": len(self.skipped),
            "skipped": self.skipped,
            "sentences_kept": self.sentences_kept,
            "sentences_removed": dict(sorted(self.removed.items())),
        }

    def summary(self) -> str:
        removed = ", ".join(f"{k}={v}" for k, v in sorted(self.removed.items())) or "none"
        return (
            f"articles read: {self.articles_read}, skipped: {len(self.skipped)}; "
            f"sentences kept: {self.sentences_kept}, removed: {sum(self.removed.values())} ({removed})"
        )


def segment_files(paths: Sequence[Path], rules: SegmentRules) -> tuple[pd.DataFrame, SegmentReport]:
    """Segment many articles; unusable files are reported and skipped, never fatal one by one."""
    report = SegmentReport()
    rows: list[dict] = []
    owners: dict[str, Path] = {}
    bar = bar_disabled(len(paths), at_least=SEGMENT_BAR_FROM)
    for path in tqdm(paths, desc="segment", unit="article", disable=bar):
        try:
            text = read_text_strict(path)
            if not has_arabic(text):
                raise BadInputFile(path, "no_arabic", "holds no Arabic text")
        except BadInputFile as exc:
            log.warning("skipping %s", exc)
            report.skipped[str(path)] = exc.reason
            continue
        article_id = article_id_for(path)
        if article_id in owners:
            raise PipelineError(
                f"{path}: article id {article_id!r} already taken by {owners[article_id]}; "
                "article ids are file stems, rename one of the files"
            )
        owners[article_id] = path
        article, removed = article_rows(article_id, text, rules)
        report.articles_read += 1
        report.sentences_kept += len(article)
        report.removed.update(removed)
        rows.extend(article)
    return pd.DataFrame(rows, columns=SENTENCE_COLUMNS), report


def unlabelled_sentences(cfg, rules: SegmentRules, corpus_ids: set[str]) -> pd.DataFrame:
    """`data.unlabelled` (files, directories, globs, or tables read as `data.unlabelled_table` says): the sentences of
    the articles a user wants labelled, without gold. The label stage gives them rule labels, training uses them
    as weak labels (`train.source_weights.rules`). Offsets are -1 where the input was a table of sentences."""
    from pipeline.prediction.inputs import ArticleReader, as_list, expand_inputs
    from pipeline.prediction.outputs import ErrorLog

    inputs = as_list(OmegaConf.select(cfg, "data.unlabelled", default=None))
    errors = ErrorLog()
    rows = []
    reader = ArticleReader(cfg, rules, errors, section="data.unlabelled_table")
    for article in reader.read(expand_inputs(inputs, errors)):
        if article.article_id in corpus_ids:
            raise PipelineError(f"{article.source}: article id {article.article_id!r} of data.unlabelled is also an "
                                "article of data.articles_glob; rename one of them")
        rows.extend({"article_id": article.article_id, "sentence_id": r["sentence_id"], "idx": r["idx"],
                     "text": r["text"], "start": r.get("start", -1), "end": r.get("end", -1), "origin": "unlabelled"}
                    for r in article.rows)
    for problem in errors.rows:
        log.warning("segment: data.unlabelled: %s", problem["message"])
    if not rows:
        raise PipelineError(f"data.unlabelled={', '.join(inputs)}: no usable sentence "
                            f"({'; '.join(p['message'] for p in errors.rows) or 'nothing found'})")
    log.info("segment: %d unlabelled sentences from %d input(s) (data.unlabelled)", len(rows), len(inputs))
    return pd.DataFrame(rows)


def segment(cfg) -> pd.DataFrame:
    """Stage entry: read `data.articles_glob`, write `paths.sentences` and a report in the run dir."""
    pattern = str(cfg.data.articles_glob)
    paths = find_articles(pattern)
    if not paths:
        raise PipelineError(f"no article matches data.articles_glob={pattern!r}; point it at your .txt files")
    rules = SegmentRules.from_cfg(cfg.segment)
    table, report = segment_files(paths, rules)
    if report.articles_read == 0:
        raise PipelineError(
            f"none of the {len(paths)} files matching {pattern!r} is usable "
            f"({', '.join(f'{p}: {r}' for p, r in report.skipped.items())})"
        )
    if OmegaConf.select(cfg, "data.unlabelled", default=None):
        # `origin` says which rows are the articles to label; the column exists only when there are some.
        table["origin"] = "corpus"
        table = pd.concat([table, unlabelled_sentences(cfg, rules, set(table["article_id"]))], ignore_index=True)
    table = table.astype({"idx": "int64", "start": "int64", "end": "int64"})
    out = write_table_atomic(table, cfg.paths.sentences)
    write_text_atomic(Path(cfg.paths.run_dir) / "segment_report.json", json.dumps(report.as_dict(), ensure_ascii=False, indent=2))
    log.info("segment: %s", report.summary())
    log.info("segment: wrote %s", out)
    print(f"segment: {len(table)} sentences of {table['article_id'].nunique()} articles "
          f"({sum(report.removed.values())} removed, {len(report.skipped)} files skipped) → {out}; "
          "next: python -m pipeline label")
    return table
