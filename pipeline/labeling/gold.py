"""Hand-checked gold labels (`labels/gold.csv`): loading and validation.

Columns: sentence_id, article_id, text, label, note. Every problem names the file and line, and
ids that no longer match the current segmentation are listed all at once, so a segmenter change
can never silently drop labels.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

import pandas as pd

from pipeline import LABELS
from pipeline.core.errors import PipelineError
from pipeline.core.io import BadInputFile, read_text_strict, restore_cell

GOLD_COLUMNS = ["sentence_id", "article_id", "text", "label", "note"]


class GoldLabelError(PipelineError):
    pass


def read_label_csv(path: Path | str, required: Sequence[str], labels: Sequence[str] = LABELS) -> pd.DataFrame:
    """Read a label CSV strictly: required columns, known labels, consistent duplicates.

    Returns one row per sentence_id with a `line` column (the CSV line the label came from).
    """
    path = Path(path)
    try:
        text = read_text_strict(path)
    except BadInputFile as exc:
        raise GoldLabelError(f"{exc}; the label file must be a UTF-8 CSV with columns {', '.join(required)}") from None
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in required if c not in (reader.fieldnames or [])]
    if missing:
        raise GoldLabelError(
            f"{path}:1: missing column(s) {', '.join(missing)}; the header must hold {', '.join(required)}"
        )
    rows, problems = [], []
    first_seen: dict[str, tuple[int, str]] = {}
    allowed = set(labels)
    for row in reader:
        line = reader.line_num
        # cells the pipeline neutralised when it wrote the file (labels/annotations.csv: pipeline.core.io.CsvStyle)
        row = {k: restore_cell(v) if isinstance(v, str) else v for k, v in row.items()}
        sid = (row.get("sentence_id") or "").strip()
        label = (row.get("label") or "").strip().lower()
        if not sid:
            problems.append(f"{path}:{line}: empty sentence_id")
            continue
        if label not in allowed:
            problems.append(f"{path}:{line}: unknown label {row.get('label')!r} for {sid}; use one of {', '.join(labels)}")
            continue
        if sid in first_seen:
            prev_line, prev_label = first_seen[sid]
            if prev_label != label:
                problems.append(
                    f"{path}:{line}: {sid} is labelled {label!r} here but {prev_label!r} on line {prev_line}; keep one"
                )
            continue  # an exact repeat adds nothing
        first_seen[sid] = (line, label)
        rows.append({**{c: (row.get(c) or "").strip() for c in row if c}, "sentence_id": sid, "label": label, "line": line})
    if problems:
        raise GoldLabelError("invalid labels:\n  " + "\n  ".join(problems))
    columns = list(dict.fromkeys([*required, *(reader.fieldnames or []), "line"]))
    return pd.DataFrame(rows, columns=columns)


def check_ids_current(labels: pd.DataFrame, sentences: pd.DataFrame, path: Path | str) -> None:
    """Every labelled id must name a sentence of the current segmentation; list all that do not."""
    known = set(sentences["sentence_id"])
    stale = labels[~labels["sentence_id"].isin(known)]
    if len(stale):
        listing = "\n  ".join(f"{path}:{r.line}: {r.sentence_id}  {str(r.text)[:60]}" for r in stale.itertuples())
        raise GoldLabelError(
            f"{path}: {len(stale)} labelled sentence id(s) no longer match the current segmentation "
            f"(the segmenter or the articles changed). Re-map them to the new ids (see `sentences.parquet`) "
            f"or remove them:\n  {listing}"
        )


def load_gold(path: Path | str, sentences: pd.DataFrame | None = None) -> pd.DataFrame:
    """Load and validate gold labels; with `sentences`, also refuse stale ids."""
    gold = read_label_csv(path, GOLD_COLUMNS)
    if gold.empty:  # (an annotations file may start empty; a gold file without labels is a mistake)
        raise GoldLabelError(f"{path}: no labelled rows, only the header; add labelled sentences "
                             f"({', '.join(GOLD_COLUMNS)}) or set paths.gold to the right file")
    if sentences is not None:
        check_ids_current(gold, sentences, path)
    return gold


def label_distribution(labels: pd.Series) -> pd.DataFrame:
    counts = labels.value_counts().reindex(LABELS, fill_value=0)
    return pd.DataFrame({"count": counts, "share": (counts / max(len(labels), 1)).round(3)})
