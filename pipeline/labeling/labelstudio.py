"""Label Studio round trip: export unlabelled sentences as tasks, import annotations back.

Export (`python -m pipeline label --export`): one task per sentence that has neither a gold label nor an
annotation, most uncertain first (active learning), with a pre-annotation from a stance model or from the rules:

    [{"data": {"text", "sentence_id", "article_id", "idx", "context_before", "context_after",
               "rule_label", "rules_fired", "uncertainty"},
      "predictions": [{"model_version": "...", "score": 0.41,
                       "result": [{"from_name": "stance", "to_name": "text", "type": "choices",
                                   "value": {"choices": ["negative"]}}]}]}, ...]

beside `labeling_config.xml`, the project's labeling interface (one <Choices> over the three labels).

Import (`python -m pipeline label labeling.import_file=export.json`) reads Label Studio's JSON export (a list of
tasks, each with `annotations`), validates every annotation (known labels, known sentence ids) before anything is
written, and merges them into `labels/annotations.csv` with the annotator; disagreements with gold, with earlier
annotations or between annotators are listed, never resolved silently. Gold itself is never written.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence
from xml.sax.saxutils import quoteattr

import numpy as np
import pandas as pd

from pipeline import LABELS
from pipeline.core.errors import PipelineError
from pipeline.labeling.gold import check_ids_current, read_label_csv
from pipeline.core.io import CsvStyle, backup_file, read_text_strict, write_table_atomic, write_text_atomic
from pipeline.core.provenance import note_file

log = logging.getLogger(__name__)

ANNOTATION_COLUMNS = ["sentence_id", "article_id", "text", "label", "annotator", "annotated_at", "source_task"]
UNCERTAINTY_METHODS = ("entropy", "least_confidence", "margin")
TASKS_FILE = "tasks.json"
CONFIG_FILE = "labeling_config.xml"


class LabelStudioImportError(PipelineError):
    pass


# ---------------------------------------------------------------- labeling config

def labeling_config(labels: Sequence[str] = LABELS, *, from_name: str = "stance", to_name: str = "text") -> str:
    """The Label Studio labeling interface: the sentence (right to left) with its context and one choice."""
    choices = "\n".join(f"    <Choice value={quoteattr(label)}/>" for label in labels)
    return f"""<View>
  <Header value="$article_id — sentence $idx"/>
  <View style="direction: rtl; text-align: right; color: #777">
    <Text name="context_before" value="$context_before"/>
  </View>
  <View style="direction: rtl; text-align: right; font-size: 1.25em; border: 1px solid #ccc; padding: 8px">
    <Text name={quoteattr(to_name)} value="$text"/>
  </View>
  <View style="direction: rtl; text-align: right; color: #777">
    <Text name="context_after" value="$context_after"/>
  </View>
  <Header value="Stance toward agreement (see labels/GUIDELINES.md)"/>
  <Choices name={quoteattr(from_name)} toName={quoteattr(to_name)} choice="single-radio" required="true" showInLine="true">
{choices}
  </Choices>
</View>
"""


# ---------------------------------------------------------------- uncertainty and export

def uncertainty(probs: np.ndarray, method: str = "entropy") -> np.ndarray:
    """Per-row uncertainty in [0, 1] of class probabilities; higher = the model learns more from a label."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise PipelineError(f"uncertainty needs an (n, k ≥ 2) probability matrix, got shape {probs.shape}")
    if method == "entropy":
        p = np.clip(probs, 1e-12, 1.0)
        return -(p * np.log(p)).sum(axis=1) / np.log(probs.shape[1])
    if method == "least_confidence":
        k = probs.shape[1]
        return (1.0 - probs.max(axis=1)) * k / (k - 1)
    if method == "margin":
        top2 = np.sort(probs, axis=1)[:, -2:]
        return 1.0 - (top2[:, 1] - top2[:, 0])
    raise PipelineError(f"labeling.uncertainty={method!r}: choose one of {', '.join(UNCERTAINTY_METHODS)}")


def _context(sentences: pd.DataFrame, n: int) -> tuple[list[str], list[str]]:
    """The `n` sentences before and after each row, within its own article, in the frame's row order."""
    by_key: dict[tuple[Any, Any], tuple[str, str]] = {}
    for article_id, group in sentences.groupby("article_id", sort=False):
        ordered = group.sort_values("idx", kind="stable")
        texts, idxs = ordered["text"].tolist(), ordered["idx"].tolist()
        for i, idx in enumerate(idxs):
            # Keyed by the article's own id, never by position: the frame may list articles in any order.
            by_key[(article_id, idx)] = (" ".join(texts[max(0, i - n):i]), " ".join(texts[i + 1:i + 1 + n]))
    pairs = [by_key[(a, i)] for a, i in zip(sentences["article_id"], sentences["idx"])]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def build_tasks(
    labelled: pd.DataFrame,
    candidates: pd.Series,
    *,
    probs: np.ndarray | None = None,
    model_version: str,
    method: str = "entropy",
    size: int | None = None,
    context_sentences: int = 1,
    labels: Sequence[str] = LABELS,
    from_name: str = "stance",
    to_name: str = "text",
) -> list[dict[str, Any]]:
    """Tasks for the `candidates` rows of the labelled table, most uncertain first.

    With `probs` (one row per labelled row, columns in `labels` order) the model's argmax is the pre-annotation
    and `method` its uncertainty; without, the rule label is, and uncertainty = 1 - rule confidence (a sentence
    where no rule fired is the most uncertain and gets no pre-annotation).
    """
    frame = labelled.reset_index(drop=True).copy()
    mask = candidates.reset_index(drop=True).to_numpy(dtype=bool)
    frame["context_before"], frame["context_after"] = _context(frame, max(0, int(context_sentences)))
    if probs is not None:
        probs = np.asarray(probs, dtype=np.float64)
        if probs.shape != (len(frame), len(labels)):
            raise PipelineError(f"model probabilities have shape {probs.shape}, expected {(len(frame), len(labels))}")
        frame["uncertainty"] = uncertainty(probs, method)
        frame["pre_label"] = [labels[j] for j in probs.argmax(axis=1)]
        frame["pre_score"] = probs.max(axis=1)
    else:
        frame["uncertainty"] = 1.0 - frame["rule_confidence"].astype(float)
        frame["pre_label"] = frame["rule_label"]
        frame["pre_score"] = frame["rule_confidence"].astype(float)
    picked = frame[mask].sort_values(["uncertainty", "article_id", "idx"], ascending=[False, True, True], kind="stable")
    if size is not None:
        picked = picked.head(int(size))
    tasks = []
    for row in picked.itertuples(index=False):
        task: dict[str, Any] = {
            "data": {
                "text": row.text,
                "sentence_id": row.sentence_id,
                "article_id": row.article_id,
                "idx": int(row.idx),
                "context_before": row.context_before,
                "context_after": row.context_after,
                "rule_label": row.rule_label if isinstance(row.rule_label, str) else "",
                "rules_fired": row.rules_fired,
                "uncertainty": round(float(row.uncertainty), 4),
            },
            "predictions": [],
        }
        if isinstance(row.pre_label, str) and row.pre_label:
            task["predictions"].append({
                "model_version": model_version,
                "score": round(float(row.pre_score), 4),
                "result": [{"from_name": from_name, "to_name": to_name, "type": "choices",
                            "value": {"choices": [row.pre_label]}}],
            })
        tasks.append(task)
    return tasks


def write_export(tasks: list[dict], out_dir: Path | str, config_xml: str) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    tasks_path = write_text_atomic(out_dir / TASKS_FILE, json.dumps(tasks, ensure_ascii=False, indent=2))
    config_path = write_text_atomic(out_dir / CONFIG_FILE, config_xml)
    return tasks_path, config_path


# ---------------------------------------------------------------- annotations store

def empty_annotations() -> pd.DataFrame:
    return pd.DataFrame(columns=ANNOTATION_COLUMNS + ["line"])


def read_annotations(path: Path | str, sentences: pd.DataFrame | None = None) -> pd.DataFrame:
    """labels/annotations.csv, validated like gold (labels, duplicates, stale ids); empty if it does not exist."""
    path = Path(path)
    note_file(path)  # absent today: a stage that used none is stale once it appears
    if not path.exists():
        return empty_annotations()
    table = read_label_csv(path, ANNOTATION_COLUMNS)
    if sentences is not None:
        check_ids_current(table, sentences, path)
    return table


def write_annotations(table: pd.DataFrame, path: Path | str, csv: CsvStyle | None = None) -> Path | None:
    """Back up the current file, then replace it atomically (CSV in `csv`; `gold.read_label_csv` restores the
    neutralised cells); returns the backup path (None for a new file)."""
    backup = backup_file(path)
    out = table[ANNOTATION_COLUMNS].sort_values(["article_id", "sentence_id"], kind="stable")
    write_table_atomic(out, path, csv=csv)
    return backup


# ---------------------------------------------------------------- import

@dataclass
class ImportReport:
    tasks: int = 0
    annotations: int = 0
    cancelled_or_empty: int = 0
    added: int = 0
    replaced: int = 0
    unchanged: int = 0
    already_gold: int = 0
    conflicts: list[dict] = field(default_factory=list)   # kind, sentence_id, existing, imported, who, text
    backup: str | None = None

    def summary(self) -> str:
        return (f"{self.tasks} tasks, {self.annotations} annotations ({self.cancelled_or_empty} cancelled/empty): "
                f"{self.added} added, {self.replaced} replaced, {self.unchanged} unchanged, "
                f"{self.already_gold} already gold, {len(self.conflicts)} conflicts")


def _annotator(annotation: dict) -> str:
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        return str(who.get("email") or who.get("username") or f"user:{who.get('id')}")
    username = annotation.get("created_username")
    if username:  # "email, id" in Label Studio's export
        return str(username).split(",")[0].strip()
    return f"user:{who}" if who is not None else "unknown"


def _choices(annotation: dict, from_name: str) -> list[str]:
    picked: list[str] = []
    for item in annotation.get("result") or []:
        if item.get("from_name") == from_name and item.get("type") == "choices":
            picked.extend(str(c) for c in (item.get("value") or {}).get("choices") or [])
    return picked


def parse_export(path: Path | str, sentences: pd.DataFrame, *, labels: Sequence[str] = LABELS,
                 from_name: str = "stance") -> tuple[pd.DataFrame, ImportReport]:
    """Annotations of a Label Studio JSON export, one row per (sentence, annotation); raises on any problem."""
    path = Path(path)
    try:
        data = json.loads(read_text_strict(path))
    except json.JSONDecodeError as exc:
        raise LabelStudioImportError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); export the project "
                                     "from Label Studio as JSON (Export → JSON)") from None
    except PipelineError as exc:
        raise LabelStudioImportError(f"{exc}; labeling.import_file must be a Label Studio JSON export") from None
    if isinstance(data, dict) and "data" in data:
        data = [data]
    if not isinstance(data, list):
        raise LabelStudioImportError(f"{path}: expected a JSON list of tasks (Label Studio's JSON export), "
                                     f"got {type(data).__name__}")
    by_id = sentences.set_index("sentence_id")
    allowed = {label.lower(): label for label in labels}
    report = ImportReport(tasks=len(data))
    rows, problems = [], []
    for n, task in enumerate(data):
        if not isinstance(task, dict):
            problems.append(f"task #{n}: not a JSON object")
            continue
        task_ref = f"{path.name}#task{task.get('id', n)}"
        sid = str((task.get("data") or {}).get("sentence_id", "")).strip()
        if not sid:
            problems.append(f"{task_ref}: no data.sentence_id (tasks must come from `pipeline label --export`)")
            continue
        annotations = task.get("annotations") or task.get("completions") or []
        for annotation in annotations:
            report.annotations += 1
            picked = _choices(annotation, from_name)
            if annotation.get("was_cancelled") or not picked:
                report.cancelled_or_empty += 1
                continue
            who = _annotator(annotation)
            if len(picked) > 1:
                problems.append(f"{task_ref}: {who} chose {len(picked)} labels {picked}; a sentence takes one")
                continue
            label = allowed.get(picked[0].strip().lower())
            if label is None:
                problems.append(f"{task_ref}: unknown label {picked[0]!r} by {who}; use one of {', '.join(labels)} "
                                f"(does the Label Studio config match labeling_config.xml?)")
                continue
            if sid not in by_id.index:
                problems.append(f"{task_ref}: unknown sentence id {sid} (not in the current sentences.parquet; "
                                f"the articles or the segmenter changed since the export)")
                continue
            rows.append({
                "sentence_id": sid,
                "article_id": str(by_id.at[sid, "article_id"]),
                "text": str(by_id.at[sid, "text"]),
                "label": label,
                "annotator": who,
                "annotated_at": str(annotation.get("updated_at") or annotation.get("created_at") or ""),
                "source_task": task_ref,
            })
    if problems:
        raise LabelStudioImportError(f"{path}: {len(problems)} problem(s); nothing was imported:\n  "
                                     + "\n  ".join(problems))
    return pd.DataFrame(rows, columns=ANNOTATION_COLUMNS), report


def merge_annotations(existing: pd.DataFrame, imported: pd.DataFrame, gold: pd.DataFrame | None,
                      report: ImportReport, *, on_conflict: str = "keep") -> pd.DataFrame:
    """Existing annotations plus the imported ones; conflicts go to `report.conflicts`, never silently."""
    if on_conflict not in ("keep", "replace"):
        raise PipelineError(f"labeling.import_on_conflict={on_conflict!r}: choose keep or replace")
    gold_label = dict(zip(gold["sentence_id"], gold["label"])) if gold is not None else {}
    merged = {r["sentence_id"]: {c: r[c] for c in ANNOTATION_COLUMNS} for r in existing.to_dict("records")}
    for sid, group in imported.groupby("sentence_id", sort=False):
        first = group.iloc[0]
        who = ";".join(dict.fromkeys(group["annotator"]))
        if group["label"].nunique() > 1:
            votes = ", ".join(f"{a}={lab}" for a, lab in zip(group["annotator"], group["label"]))
            report.conflicts.append({"kind": "annotators_disagree", "sentence_id": sid, "existing": "",
                                     "imported": votes, "who": who, "text": first["text"]})
            continue
        label = first["label"]
        if sid in gold_label:
            if gold_label[sid] == label:
                report.already_gold += 1
            else:
                report.conflicts.append({"kind": "gold", "sentence_id": sid, "existing": gold_label[sid],
                                         "imported": label, "who": who, "text": first["text"]})
            continue
        row = {**{c: first[c] for c in ANNOTATION_COLUMNS}, "annotator": who,
               "annotated_at": max(group["annotated_at"])}
        if sid not in merged:
            merged[sid] = row
            report.added += 1
        elif merged[sid]["label"] == label:
            report.unchanged += 1
        else:
            report.conflicts.append({"kind": "annotation", "sentence_id": sid, "existing": merged[sid]["label"],
                                     "imported": label, "who": who, "text": first["text"],
                                     "resolution": "replaced" if on_conflict == "replace" else "kept existing"})
            if on_conflict == "replace":
                merged[sid] = row
                report.replaced += 1
    return pd.DataFrame(list(merged.values()), columns=ANNOTATION_COLUMNS)


def import_export_file(path: Path | str, sentences: pd.DataFrame, annotations_path: Path | str,
                       gold: pd.DataFrame | None, *, on_conflict: str = "keep", from_name: str = "stance",
                       labels: Sequence[str] = LABELS, csv: CsvStyle | None = None) -> ImportReport:
    """Validate a Label Studio export and merge it into the annotations file (backup, then atomic write)."""
    imported, report = parse_export(path, sentences, labels=labels, from_name=from_name)
    existing = read_annotations(annotations_path, sentences)
    merged = merge_annotations(existing, imported, gold, report, on_conflict=on_conflict)
    if report.added or report.replaced:
        backup = write_annotations(merged, annotations_path, csv)
        report.backup = str(backup) if backup else None
    return report
