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

from pipeline.core.errors import PipelineError
from pipeline.core.io import file_digest

log = logging.getLogger(__name__)

HYBRID_FILE = "hybrid.json"
LEXICON_FILE = "lexicon.yaml"
INNER_DIR = "inner"
DECIDED_BY = ("rules", "model")


def rule_weight(confidence: float) -> float:
    """The rules' share w of a sentence they decide: (1 + confidence) / 2, always above 1/2 so that the rules'
    label stays the most probable one whatever the model says, rising to 1 for a rule of confidence 1."""
    return (1.0 + float(confidence)) / 2.0


def write_hybrid_dir(out_dir: Path | str, inner_model_dir: Path | str, lexicon_path: Path | str,
                     min_rule_confidence: float) -> Path:
    """Wrap a trained stance model dir and a lexicon into a hybrid model dir (the inner dir is moved in)."""
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
    for path in (Path(model_dir) / LEXICON_FILE, inner_model_dir(model_dir, meta)):
        if not path.exists():
            raise PipelineError(f"{path}: missing; the hybrid model directory is incomplete")
    return meta


def inner_model_dir(model_dir: Path | str, meta: dict | None = None) -> Path:
    """The learned model of a hybrid dir (hybrid.json's "inner"): refused unless it lies inside the hybrid dir."""
    from pipeline.models.trust import nested_dir

    if meta is None:
        meta = read_hybrid_meta(model_dir)
    return nested_dir(model_dir, meta.get("inner", INNER_DIR), source=HYBRID_FILE)


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
        w = rule_weight(rules["rule_confidence"].iat[row])
        onehot = np.zeros(len(labels))
        onehot[index[label]] = 1.0
        proba[row] = w * onehot + (1.0 - w) * proba[row]
        decided_by[row] = "rules"
    return proba, decided_by


class HybridPredictor:
    """Rules where they are confident, the inner model elsewhere; see the module docstring."""

    kind = "hybrid"

    def __init__(self, model_dir: Path, meta: dict, *, quantize: str | None = None, **options):
        from pipeline.models.base import load_predictor
        from pipeline.labeling.rules import load_lexicon

        self.model_dir = Path(model_dir)
        hybrid = read_hybrid_meta(model_dir)
        self.min_rule_confidence = float(hybrid["min_rule_confidence"])
        self.inner = load_predictor(inner_model_dir(self.model_dir, hybrid), quantize=quantize, **options)
        self.lexicon = load_lexicon(self.model_dir / LEXICON_FILE)
        self.labels: list[str] = list(meta["labels"])
        if self.labels != list(self.inner.labels):
            raise PipelineError(f"{model_dir}: labels {self.labels} differ from the inner model's {self.inner.labels}")
        self.max_length = self.inner.max_length
        self.base_model = f"rules + {self.inner.base_model}"
        self.preprocessor = self.inner.preprocessor
        self.quantize = getattr(self.inner, "quantize", quantize)

    @property
    def prob_columns(self) -> list[str]:
        return self.inner.prob_columns

    @property
    def calibration(self):
        """The inner model's calibration (calibration.json in the inner dir): its probabilities are calibrated
        before the rules pull them toward the rules' label."""
        return self.inner.calibration

    @property
    def output_columns(self) -> list[str]:
        return ["label", *self.prob_columns, "decided_by", "rules_fired"]

    @property
    def context(self) -> str:
        """The inner model's sentence context: the rules read the sentence alone."""
        return self.inner.context

    def predict(self, texts: Sequence[str], batch_size: int = 64, context: Sequence[str] | None = None) -> pd.DataFrame:
        texts = [("" if t is None else str(t)) for t in texts]
        probs, truncated = self.inner.predict_proba_truncated(texts, batch_size, context)
        rules = rule_decisions(self.lexicon, texts, self.min_rule_confidence)
        probs, decided_by = combine(probs, rules, self.labels)
        out = self.inner.frame(probs, truncated)
        out["decided_by"] = pd.Series(decided_by, dtype=object)
        out["rules_fired"] = rules["rules_fired"].astype(object).to_numpy()
        return out

    def predict_proba_truncated(self, texts: Sequence[str], batch_size: int = 64,
                                context: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        out = self.predict(texts, batch_size, context)
        return out[self.prob_columns].to_numpy(dtype=np.float64), out["truncated"].to_numpy(dtype=bool)

    def predict_proba(self, texts: Sequence[str], batch_size: int = 64,
                      context: Sequence[str] | None = None) -> np.ndarray:
        return self.predict_proba_truncated(texts, batch_size, context)[0]

    def frame(self, probs: np.ndarray, truncated: np.ndarray) -> pd.DataFrame:
        return self.inner.frame(probs, truncated)


def wrap(out_dir: Path, learned_dir: Path, cfg) -> Path:
    """Turn `out_dir` (holding the learned model in `learned_dir`) into a hybrid model dir with the config's lexicon."""
    from omegaconf import OmegaConf

    from pipeline.models.base import read_model_metadata, write_model_metadata
    from pipeline.text.preprocess import TextPreprocessor

    inner = read_model_metadata(learned_dir)
    threshold = float(OmegaConf.select(cfg, "train.hybrid.min_rule_confidence", default=0.0))
    write_hybrid_dir(out_dir, learned_dir, cfg.labeling.lexicon, threshold)
    write_model_metadata(out_dir, kind="hybrid", labels=inner["labels"], max_length=int(inner["max_length"]),
                         base_model=f"rules (min confidence {threshold}) + {inner.get('base_model', '')}",
                         preprocessor=TextPreprocessor.load(Path(out_dir) / INNER_DIR))
    return Path(out_dir)


# ---------------------------------------------------------------- the kind (pipeline.models.kinds)

def preflight(cfg) -> None:
    """The lexicon the hybrid will carry is read before any run is opened."""
    from pipeline.labeling.rules import load_lexicon

    load_lexicon(cfg.labeling.lexicon)


def load(model_dir: Path, meta: dict, **options) -> HybridPredictor:
    return HybridPredictor(model_dir, meta, **options)


def unpickled_files(model_dir: Path) -> list[Path]:
    from pipeline.models.trust import unpickled_files as inner_files

    return inner_files(inner_model_dir(model_dir))


def calibration_dir(model_dir: Path | str) -> Path:
    """The dir whose predictor produces the probabilities: the inner model's (the rules only pull them)."""
    return inner_model_dir(model_dir)
