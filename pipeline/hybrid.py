"""A rules + model hybrid served as one stance model (stance model kind "hybrid").

The cue lexicon decides a sentence where its rules fire with a confidence of at least `min_rule_confidence`;
the learned model decides everywhere else. The directory holds
    hybrid.json        {"min_rule_confidence": c, "lexicon_sha": "...", "inner": "inner"}
    lexicon.yaml       the lexicon the model was trained with (a copy: later edits of labels/ do not change it)
    inner/             the learned stance model directory (any other kind)
so the lexicon travels with the model and every serving path (predict, pyfunc, Spark, serve) applies the same
rules. Predictions say which part decided (`decided_by`: rules | model) and which rules fired (`rules_fired`).

Where the rules decide, the probabilities are the model's pulled toward the rules' label:
p = w·onehot(rule label) + (1 − w)·p_model with w = (1 + confidence) / 2 > 1/2, so the rules' label is always
the most probable one and the model's view of the other labels is kept.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

HYBRID_FILE = "hybrid.json"
LEXICON_FILE = "lexicon.yaml"
INNER_DIR = "inner"
DECIDED_BY = ("rules", "model")


def write_hybrid_dir(out_dir: Path | str, inner_model_dir: Path | str, lexicon_path: Path | str,
                     min_rule_confidence: float) -> Path:
    """Wrap a trained stance model dir and a lexicon into a hybrid model dir (the inner dir is moved in)."""
    from pipeline.tracking import file_digest

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not 0.0 <= float(min_rule_confidence) <= 1.0:
        raise PipelineError(f"train.hybrid.min_rule_confidence={min_rule_confidence} must be within [0, 1]")
    shutil.move(str(inner_model_dir), str(out / INNER_DIR))
    shutil.copyfile(lexicon_path, out / LEXICON_FILE)
    meta = {"min_rule_confidence": float(min_rule_confidence), "lexicon_sha": file_digest(out / LEXICON_FILE),
            "inner": INNER_DIR}
    (out / HYBRID_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return out


def read_hybrid_meta(model_dir: Path | str) -> dict:
    path = Path(model_dir) / HYBRID_FILE
    if not path.exists():
        raise PipelineError(f"{path}: missing; a hybrid stance model needs it (re-train the model)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        float(meta["min_rule_confidence"])
    except (ValueError, KeyError, TypeError) as exc:
        raise PipelineError(f"{path}: unreadable ({exc}); re-train the model") from None
    for name in (LEXICON_FILE, meta.get("inner", INNER_DIR)):
        if not (Path(model_dir) / name).exists():
            raise PipelineError(f"{Path(model_dir) / name}: missing; the hybrid model directory is incomplete")
    return meta


def rule_decisions(lexicon, texts: Sequence[str], min_rule_confidence: float) -> pd.DataFrame:
    """rule_label, rule_confidence, rules_fired and `decides` (the rules are confident enough) per text."""
    table = lexicon.label_texts(texts)
    table["decides"] = table["rule_label"].notna() & (table["rule_confidence"] >= float(min_rule_confidence))
    return table


def combine(model_proba: np.ndarray, rules: pd.DataFrame, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, decided_by) where confident rules override the model (see the module docstring)."""
    proba = np.array(model_proba, dtype=np.float64, copy=True)
    decided_by = np.full(len(proba), "model", dtype=object)
    index = {label: i for i, label in enumerate(labels)}
    for row in np.flatnonzero(rules["decides"].to_numpy()):
        label = rules["rule_label"].iat[row]
        if label not in index:
            continue  # a lexicon class the model does not have: leave the sentence to the model
        w = (1.0 + float(rules["rule_confidence"].iat[row])) / 2.0
        onehot = np.zeros(len(labels))
        onehot[index[label]] = 1.0
        proba[row] = w * onehot + (1.0 - w) * proba[row]
        decided_by[row] = "rules"
    return proba, decided_by
