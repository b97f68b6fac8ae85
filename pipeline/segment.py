"""segment stage: articles → clean sentences with stable ids and character offsets.

Output schema (`sentences.parquet`), one row per kept sentence:
    article_id  file stem of the article
    sentence_id `<article_id>:<12 hex>`, a hash of the article id, the normalised sentence text and its
                occurrence number, so it survives re-runs, re-ordering and edits of other sentences
    idx         0-based position among the article's kept sentences
    text        the sentence with runs of whitespace squeezed to one space
    start, end  character offsets into the file's decoded text (BOM excluded, line endings kept):
                squeeze_spaces(original[start:end]) == text
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd
from tqdm.auto import tqdm

from pipeline.arabic import has_arabic, normalise_for_id, squeeze_spaces
from pipeline.errors import PipelineError
from pipeline.io import BadInputFile, read_text_strict, write_table_atomic, write_text_atomic

log = logging.getLogger(__name__)

SENTENCE_COLUMNS = ["article_id", "sentence_id", "idx", "text", "start", "end"]

TERMINATORS = ".!?؟…"
# A run of terminators ends a sentence ("؟!", "..."), with closing quotes/brackets kept on its side.
TERMINATOR_RUN = re.compile(r"[.!?؟…]+")
CLOSERS = "\"'”’»›)]}"
HAS_WORD_CHAR = re.compile(r"\w")


@dataclass(frozen=True)
class SegmentRules:
    """Knobs of segmentation; built from the `segment` config group."""

    paragraph_break: str = "line"  # "line": every line break ends a sentence; "blank_line": only empty lines do
    boilerplate_patterns: Sequence[str] = ()
    repeated_line_max_words: int = 12
    abbreviations: Sequence[str] = ()

    @classmethod
    def from_cfg(cls, cfg) -> "SegmentRules":
        return cls(
            paragraph_break=str(cfg.paragraph_break),
            boilerplate_patterns=tuple(cfg.boilerplate_patterns),
            repeated_line_max_words=int(cfg.repeated_line_max_words),
            abbreviations=tuple(cfg.abbreviations),
        )

    def __post_init__(self):
        if self.paragraph_break not in ("line", "blank_line"):
            raise PipelineError(
                f"segment.paragraph_break={self.paragraph_break!r}: choose 'line' or 'blank_line'"
            )
        for pattern in self.boilerplate_patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise PipelineError(f"segment.boilerplate_patterns: bad regex {pattern!r}: {exc}") from None


@dataclass
class Sentence:
    start: int
    end: int
    text: str


@dataclass
class ArticleSegmentation:
    sentences: list[Sentence] = field(default_factory=list)
    removed: Counter = field(default_factory=Counter)


def _paragraphs(text: str, mode: str) -> Iterable[tuple[int, int]]:
    if mode == "line":
        pattern = r"[^\r\n]+"
    else:  # a paragraph runs until a line that holds only whitespace
        pattern = r"\S(?:[^\r\n]|\r?\n(?![ \t]*(?:\r?\n|\r|$))|\r(?![\n \t]*(?:\n|\r|$)))*"
    for m in re.finditer(pattern, text):
        yield m.start(), m.end()


def _is_protected_period(line: str, pos: int, abbreviations: Sequence[str]) -> bool:
    """True when the single '.' at `pos` is inside a number/date or ends an abbreviation."""
    before = line[pos - 1] if pos > 0 else ""
    after = line[pos + 1] if pos + 1 < len(line) else ""
    if before.isdigit() and after.isdigit():  # 2.5, 22.7.2020
        return True
    token = re.search(r"(\S+)$", line[:pos])
    if token is None:
        return False
    word = token.group(1).lstrip("\"'“‘«(‹[{")
    if len(word) == 1 and word.isalpha():  # single-letter abbreviation: د. م. أ.
        return True
    return word + "." in abbreviations or word in abbreviations


def _split_paragraph(text: str, start: int, end: int, rules: SegmentRules) -> Iterable[tuple[int, int]]:
    para = text[start:end]
    cut = 0
    for m in TERMINATOR_RUN.finditer(para):
        if m.group() == "." and _is_protected_period(para, m.start(), rules.abbreviations):
            continue
        stop = m.end()
        while stop < len(para) and para[stop] in CLOSERS + TERMINATORS:
            stop += 1
        if stop > cut:
            yield start + cut, start + stop
            cut = stop
    if cut < len(para):
        yield start + cut, end


def split_sentences(text: str, rules: SegmentRules = SegmentRules()) -> ArticleSegmentation:
    """Split one article's text into sentences, removing boilerplate; offsets index `text`."""
    result = ArticleSegmentation()
    paragraphs = list(_paragraphs(text, rules.paragraph_break))
    line_keys = [normalise_for_id(text[a:b]) for a, b in paragraphs]
    line_counts = Counter(line_keys)
    seen_lines: set[str] = set()
    patterns = [re.compile(p) for p in rules.boilerplate_patterns]

    for (p_start, p_end), key in zip(paragraphs, line_keys):
        if line_counts[key] > 1:
            # A short line printed more than once is page furniture (site header, byline);
            # a long one is a scraped duplicate: keep its first copy.
            if len(key.split()) <= rules.repeated_line_max_words:
                result.removed["repeated_line"] += 1
                continue
            if key in seen_lines:
                result.removed["duplicate_line"] += 1
                continue
            seen_lines.add(key)
        for s_start, s_end in _split_paragraph(text, p_start, p_end, rules):
            raw = text[s_start:s_end]
            stripped = raw.strip()
            if not stripped:
                continue
            s_start += len(raw) - len(raw.lstrip())
            s_end = s_start + len(stripped)
            if not HAS_WORD_CHAR.search(stripped):
                result.removed["punctuation_only"] += 1
                continue
            clean = squeeze_spaces(stripped)
            normalised = normalise_for_id(clean)
            if any(p.search(normalised) for p in patterns):
                result.removed["boilerplate_pattern"] += 1
                continue
            result.sentences.append(Sentence(s_start, s_end, clean))
    return result


def sentence_ids(article_id: str, texts: Sequence[str]) -> list[str]:
    """Ids from the article id, the normalised text and the occurrence number of that text."""
    seen: Counter = Counter()
    ids = []
    for text in texts:
        key = normalise_for_id(text)
        occurrence = seen[key]
        seen[key] += 1
        digest = hashlib.sha1(f"{article_id}\x1f{key}\x1f{occurrence}".encode("utf-8")).hexdigest()
        ids.append(f"{article_id}:{digest[:12]}")
    return ids


def article_rows(article_id: str, text: str, rules: SegmentRules) -> tuple[list[dict], Counter]:
    seg = split_sentences(text, rules)
    ids = sentence_ids(article_id, [s.text for s in seg.sentences])
    rows = [
        {"article_id": article_id, "sentence_id": sid, "idx": i, "text": s.text, "start": s.start, "end": s.end}
        for i, (sid, s) in enumerate(zip(ids, seg.sentences))
    ]
    return rows, seg.removed


def find_articles(pattern: str) -> list[Path]:
    paths = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
    return paths


def article_id_for(path: Path) -> str:
    return path.stem


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
    for path in tqdm(paths, desc="segment", unit="article", disable=len(paths) < 20):
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
    table = table.astype({"idx": "int64", "start": "int64", "end": "int64"})
    out = write_table_atomic(table, cfg.paths.sentences)
    write_text_atomic(Path(cfg.paths.run_dir) / "segment_report.json", json.dumps(report.as_dict(), ensure_ascii=False, indent=2))
    log.info("segment: %s", report.summary())
    log.info("segment: wrote %s", out)
    return table
