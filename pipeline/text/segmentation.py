"""Sentence segmentation shared by the segment and predict stages: rules, splitting, stable ids, article rows.

`split_sentences(text, rules)` cuts one article into sentences with character offsets and drops page furniture
(repeated lines, boilerplate patterns, punctuation-only pieces); `article_rows` adds the stable sentence ids
(`<article_id>:<12 hex>`) and positions that make up the rows of `sentences.parquet`.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from pipeline.text.arabic import is_invisible, normalise_for_id, squeeze_spaces, strip_invisible
from pipeline.core.errors import PipelineError
from pipeline.core.io import glob_files, read_text_strict

# The seed corpus the project ships with (conf/data/seeds.yaml): bench scripts and tests take sentences from it.
SEEDS_DIR = Path(__file__).resolve().parents[2] / "seeds"

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
    """True when the single '.' at `pos` is inside a number/date or ends an abbreviation (invisible format
    characters around it do not count)."""
    before = strip_invisible(line[:pos])[-1:]
    after = strip_invisible(line[pos + 1:])[:1]
    if before.isdigit() and after.isdigit():  # 2.5, 22.7.2020
        return True
    token = re.search(r"(\S+)$", strip_invisible(line[:pos]))
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
        while stop < len(para) and (para[stop] in CLOSERS + TERMINATORS or is_invisible(para[stop])):
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


def sentence_ids(article_id: str, texts: Sequence[str], seen: Counter | None = None) -> list[str]:
    """Ids from the article id, the normalised text and the occurrence number of that text in the article.

    `seen` carries the occurrence counts over the pieces of an article read in several parts (a long sentence
    table), so a text repeated in two pieces gets two ids; it is updated in place."""
    seen = Counter() if seen is None else seen
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
    return glob_files(pattern)


def article_id_for(path: Path) -> str:
    return path.stem


def seed_sentences(rules: SegmentRules = SegmentRules(), folder: Path | str = SEEDS_DIR) -> list[str]:
    """The sentences of the seed articles (every .txt file of `folder`, in name order), split with `rules`."""
    return [s.text for path in sorted(Path(folder).glob("*.txt"))
            for s in split_sentences(read_text_strict(path), rules).sentences]
