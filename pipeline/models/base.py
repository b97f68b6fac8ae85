"""Loading a trained stance model and predicting with it, fast, the same way everywhere.

A *stance model directory* (written by the train stage) holds:
    stance_model.json  {"format": 1, "kind": "transformer" | "tfidf" | "encoder" | "hybrid", "labels": [...],
                        "max_length": n, "base_model": "<what it was fine-tuned from>"}
    preprocess.json    the text preprocessing the model was trained with (pipeline.text.preprocess)
    calibration.json   optional: the temperature fitted on held-out gold (pipeline.models.calibration), applied to every
                       prediction; a hybrid's lives in its inner model dir
    transformer:       a Hugging Face sequence-classification model + tokenizer (save_pretrained)
    tfidf:             model.skops, a fitted sklearn Pipeline (skops; a legacy model.joblib pickle is read only
                       where pipeline.models.trust allows it)
    encoder:           a Hugging Face encoder + tokenizer and head.json (pipeline.models.encoder)
    hybrid:            the cue lexicon + an inner stance model dir of another kind (pipeline.models.hybrid)

`load_predictor(dir)` gives a `StancePredictor` that takes raw sentences, loaded by the module of the kind the
directory records (pipeline.models.kinds); the batched transformer forward pass is pipeline.models.batching.
pipeline.models.store logs the same predictor as an MLflow pyfunc model and fetches models back from MLflow.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from pipeline.core.errors import PipelineError
from pipeline.models import kinds
from pipeline.text.preprocess import PREPROCESS_FILE, TextPreprocessor

log = logging.getLogger(__name__)

METADATA_FILE = "stance_model.json"
FORMAT_VERSION = 1
TRAINING_FILE = "training.json"  # in a fine-tuned model dir: how it was fitted (epochs, steps), read back by a refit

def write_model_metadata(model_dir, *, kind: str, labels: Sequence[str], max_length: int, base_model: str,
                         preprocessor: TextPreprocessor) -> None:
    """Write stance_model.json and preprocess.json into `model_dir` (the model files are the caller's)."""
    kinds.loader(kind)  # a kind no module loads is refused before anything is written
    if not labels or len(set(labels)) != len(labels):
        raise PipelineError(f"stance model labels must be distinct and non-empty, got {list(labels)}")
    if int(max_length) < 3:
        raise PipelineError(f"max_length={max_length} is too small; it must leave room for [CLS] and [SEP]")
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT_VERSION, "kind": kind, "labels": [str(x) for x in labels],
            "max_length": int(max_length), "base_model": str(base_model)}
    (model_dir / METADATA_FILE).write_text(json.dumps(meta, ensure_ascii=False, indent=2), encoding="utf-8")
    preprocessor.save(model_dir)


def read_model_metadata(model_dir) -> dict:
    """stance_model.json of `model_dir`, validated; PipelineError naming the directory otherwise."""
    model_dir = Path(model_dir)
    path = model_dir / METADATA_FILE
    if not model_dir.is_dir():
        raise PipelineError(f"{model_dir}: no such model directory; give a directory written by `pipeline train` "
                            "or an MLflow model URI (runs:/<run id>/model, models:/<name>@<alias>)")
    if not path.exists():
        raise PipelineError(f"{model_dir}: not a stance model directory ({METADATA_FILE} is missing); "
                            "give a directory written by `pipeline train`")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PipelineError(f"{path}: unreadable ({exc}); re-train or re-download the model") from None
    missing = [k for k in ("format", "kind", "labels", "max_length") if k not in meta]
    if missing:
        raise PipelineError(f"{path}: missing {', '.join(missing)}; this file was not written by `pipeline train`")
    if meta["format"] != FORMAT_VERSION:
        raise PipelineError(f"{path}: format {meta['format']} is not supported (this code reads format "
                            f"{FORMAT_VERSION}); re-train the model with this version")
    if meta["kind"] not in kinds.dir_kinds():
        raise PipelineError(f"{path}: unknown kind {meta['kind']!r}; expected one of {', '.join(kinds.dir_kinds())}")
    if not (model_dir / PREPROCESS_FILE).exists():
        raise PipelineError(f"{model_dir / PREPROCESS_FILE}: missing; this model directory was not written by "
                            "`pipeline train`")
    return meta


class StancePredictor:
    """Raw sentences in, stance probabilities out. Subclasses implement `_scores`."""

    kind: str = ""

    def __init__(self, model_dir: Path, meta: dict):
        self.model_dir = Path(model_dir)
        self.labels: list[str] = list(meta["labels"])
        self.max_length: int = int(meta["max_length"])
        self.base_model: str = str(meta.get("base_model", ""))
        self.preprocessor = TextPreprocessor.load(model_dir)
        from pipeline.models.calibration import Calibration

        # Temperature scaling fitted at train time (calibration.json); none = T=1. Every serving path goes through
        # predict_proba_truncated, so predict, the pyfunc model, Spark and serve all give calibrated probabilities.
        self.calibration = Calibration.load(model_dir)

    @property
    def prob_columns(self) -> list[str]:
        return [f"p_{label}" for label in self.labels]

    @property
    def output_columns(self) -> list[str]:
        """What the served model returns per sentence (the hybrid adds who decided and the rules that fired)."""
        return ["label", *self.prob_columns]

    def _scores(self, texts: list[str], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities (n, k) float64, truncated (n,) bool) for preprocessed texts."""
        raise NotImplementedError

    @property
    def context(self) -> str:
        """The sentence context this model reads (pipeline.text.context), as recorded in its preprocess.json."""
        return self.preprocessor.context

    @property
    def context_separator(self) -> str | None:
        """The token between a sentence and its context (a tokenizer's separator); None: no context possible."""
        return None

    def _truncated(self, texts: list[str]) -> np.ndarray:
        """Whether each preprocessed sentence alone is longer than the model reads (a model that truncates)."""
        return np.zeros(len(texts), dtype=bool)

    def predict_proba_truncated(self, texts: Sequence[str], batch_size: int = 64,
                                context: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`context`: each sentence's context (pipeline.text.context), read only by a model trained with it."""
        texts = [("" if t is None else str(t)) for t in texts]
        if not texts:
            return np.zeros((0, len(self.labels))), np.zeros(0, dtype=bool)
        if int(batch_size) < 1:
            raise PipelineError(f"batch_size={batch_size} must be at least 1")
        if self.context != "none" and context is None and not getattr(self, "_context_warned", False):
            self._context_warned = True
            log.warning("%s reads sentence context (%s) but none was given: the sentences are read alone",
                        self.model_dir, self.context)
        probs, truncated = self._scores(self.preprocessor.inputs(texts, context, self.context_separator),
                                        int(batch_size))
        if self.context != "none" and context is not None and truncated.any():
            # A cut context is no truncated sentence: only the sentence alone says whether it was cut.
            rows = np.flatnonzero(truncated)
            truncated[rows] = self._truncated(self.preprocessor([texts[i] for i in rows]))
        if self.calibration.temperature != 1.0:
            probs = self.calibration.apply(probs)
        return probs, truncated

    def predict_proba(self, texts: Sequence[str], batch_size: int = 64,
                      context: Sequence[str] | None = None) -> np.ndarray:
        """(n, len(labels)) probabilities, rows summing to 1, columns in `labels` order."""
        return self.predict_proba_truncated(texts, batch_size, context)[0]

    def predict(self, texts: Sequence[str], batch_size: int = 64, context: Sequence[str] | None = None) -> pd.DataFrame:
        """label, p_<label> per label, truncated (the sentence was longer than max_length tokens)."""
        probs, truncated = self.predict_proba_truncated(texts, batch_size, context)
        return self.frame(probs, truncated)

    def frame(self, probs: np.ndarray, truncated: np.ndarray) -> pd.DataFrame:
        labels = np.asarray(self.labels, dtype=object)
        out = pd.DataFrame({"label": labels[probs.argmax(axis=1)] if len(probs) else np.array([], dtype=object)})
        for j, col in enumerate(self.prob_columns):
            out[col] = probs[:, j].astype(np.float64)
        out["truncated"] = np.asarray(truncated, dtype=bool)
        return out


def load_predictor(model_dir, *, quantize: str | None = None, device: str = "auto",
                   max_batch_tokens: int | None = None, backend=None,
                   recheck_margin: float | dict | None = None) -> StancePredictor:
    """The predictor of a stance model directory; PipelineError if it is not one. `device`: auto (the GPU when
    there is one), cpu, cuda or cuda:<n>; `max_batch_tokens`: the token budget of a batch (see
    batching.batch_token_budget); `backend`: how the encoder's forward pass runs (a name or a backends.Backend, with the onnx cache; None = eager;
    pipeline.models.backends); `quantize`: None (fp32), int8 or bf16 (batching.QUANTIZE);
    `recheck_margin`: with int8 or bf16, sentences whose top-two margin is below it are scored again in fp32
    (None = no re-check).
    The kind the directory records chooses the module that loads it (kinds.py)."""
    model_dir = Path(model_dir)
    meta = read_model_metadata(model_dir)
    options = {"recheck_margin": recheck_margin} if recheck_margin else {}
    return kinds.loader(meta["kind"]).load(model_dir, meta, quantize=quantize, device=device,
                                           max_batch_tokens=max_batch_tokens, backend=backend, **options)
