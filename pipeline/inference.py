"""Loading a trained stance model and predicting with it, fast, the same way everywhere.

A *stance model directory* (written by the train stage) holds:
    stance_model.json  {"format": 1, "kind": "transformer" | "tfidf" | "encoder" | "hybrid", "labels": [...],
                        "max_length": n, "base_model": "<what it was fine-tuned from>"}
    preprocess.json    the text preprocessing the model was trained with (pipeline.preprocess)
    calibration.json   optional: the temperature fitted on held-out gold (pipeline.calibration), applied to every
                       prediction; a hybrid's lives in its inner model dir
    transformer:       a Hugging Face sequence-classification model + tokenizer (save_pretrained)
    tfidf:             model.skops, a fitted sklearn Pipeline (skops; a legacy model.joblib pickle is read only
                       where pipeline.model_trust allows it)
    encoder:           a Hugging Face encoder + tokenizer and head.json (pipeline.encoder_head)
    hybrid:            the cue lexicon + an inner stance model dir of another kind (pipeline.hybrid)

`load_predictor(dir)` gives a `StancePredictor` that takes raw sentences. The transformer path tokenises
once, sorts by length and pads each batch only to its own longest sentence, under `torch.inference_mode`:
on CPU that is what gets close to the machine's matmul limit (see bench/predict_speed.py).
pipeline.model_store logs the same predictor as an MLflow pyfunc model and fetches models back from MLflow.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError
from pipeline.model_trust import load_error, load_sklearn, sklearn_file, weights_errors
from pipeline.preprocess import PREPROCESS_FILE, TextPreprocessor

log = logging.getLogger(__name__)

METADATA_FILE = "stance_model.json"
FORMAT_VERSION = 1
KINDS = ("transformer", "tfidf", "encoder", "hybrid")

# Batching: a batch is cut where the next (shorter) sentence would be padded by more than PAD_TOLERANCE
# of the batch's width, once the batch holds MIN_BATCH_TOKENS tokens (enough rows for the matrix
# multiplications to run at full speed); never more than batch_size sentences.
PAD_TOLERANCE = 0.08
MIN_BATCH_TOKENS = 768

# glibc allocator thresholds for keep_freed_memory: freed blocks up to 512 MiB stay in the heap (above the largest
# batch's activation buffers), and the heap is given back to the kernel only when 1 GiB of it is free at the top.
MMAP_THRESHOLD_BYTES = 512 << 20
TRIM_THRESHOLD_BYTES = 1 << 30


def write_model_metadata(model_dir, *, kind: str, labels: Sequence[str], max_length: int, base_model: str,
                         preprocessor: TextPreprocessor) -> None:
    """Write stance_model.json and preprocess.json into `model_dir` (the model files are the caller's)."""
    if kind not in KINDS:
        raise PipelineError(f"unknown stance model kind {kind!r}; choose one of {', '.join(KINDS)}")
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
    if meta["kind"] not in KINDS:
        raise PipelineError(f"{path}: unknown kind {meta['kind']!r}; expected one of {', '.join(KINDS)}")
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
        from pipeline.calibration import Calibration

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

    def predict_proba_truncated(self, texts: Sequence[str], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        texts = [("" if t is None else str(t)) for t in texts]
        if not texts:
            return np.zeros((0, len(self.labels))), np.zeros(0, dtype=bool)
        if int(batch_size) < 1:
            raise PipelineError(f"batch_size={batch_size} must be at least 1")
        probs, truncated = self._scores(self.preprocessor(texts), int(batch_size))
        if self.calibration.temperature != 1.0:
            probs = self.calibration.apply(probs)
        return probs, truncated

    def predict_proba(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """(n, len(labels)) probabilities, rows summing to 1, columns in `labels` order."""
        return self.predict_proba_truncated(texts, batch_size)[0]

    def predict(self, texts: Sequence[str], batch_size: int = 64) -> pd.DataFrame:
        """label, p_<label> per label, truncated (the sentence was longer than max_length tokens)."""
        probs, truncated = self.predict_proba_truncated(texts, batch_size)
        return self.frame(probs, truncated)

    def frame(self, probs: np.ndarray, truncated: np.ndarray) -> pd.DataFrame:
        labels = np.asarray(self.labels, dtype=object)
        out = pd.DataFrame({"label": labels[probs.argmax(axis=1)] if len(probs) else np.array([], dtype=object)})
        for j, col in enumerate(self.prob_columns):
            out[col] = probs[:, j].astype(np.float64)
        out["truncated"] = np.asarray(truncated, dtype=bool)
        return out


class TransformerPredictor(StancePredictor):
    kind = "transformer"

    def __init__(self, model_dir: Path, meta: dict, *, quantize: str | None = None, device: str = "auto",
                 max_batch_tokens: int | None = None):
        super().__init__(model_dir, meta)
        from transformers import AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
            model = self.load_model(Path(model_dir))
        except weights_errors() as exc:  # a pickled .bin torch refused, a truncated safetensors file, ...
            raise load_error(model_dir, exc) from None
        model.eval()
        positions = getattr(model.config, "max_position_embeddings", None)
        if positions and self.max_length > positions:
            log.warning("%s: max_length %d exceeds the model's %d positions; using %d",
                        model_dir, self.max_length, positions, positions)
            self.max_length = int(positions)
        self.quantize = quantize
        self.device = resolve_device(device, quantize)
        if quantize == "int8":
            model = quantize_encoder(model)
        elif quantize not in (None, "", "none"):
            raise PipelineError(f"predict.quantize={quantize!r}: choose null or int8")
        self.model = model.to(self.device)
        self.max_batch_tokens = batch_token_budget(max_batch_tokens, self.device)
        keep_freed_memory()
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self._backend = None
        if getattr(self.tokenizer, "backend_tokenizer", None) is not None:
            from tokenizers import Tokenizer

            # A private copy of the Rust tokenizer, set to truncate only (padding is done per batch).
            self._backend = Tokenizer.from_str(self.tokenizer.backend_tokenizer.to_str())
            self._backend.no_padding()
            self._backend.enable_truncation(self.max_length)

    def load_model(self, model_dir: Path):
        """The sequence-classification model, checked against the labels of stance_model.json."""
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(str(model_dir))
        if model.config.num_labels != len(self.labels):
            raise PipelineError(f"{model_dir}: the model has {model.config.num_labels} outputs but "
                                f"{METADATA_FILE} lists {len(self.labels)} labels; the directory is inconsistent")
        id2label = {int(k): str(v) for k, v in (model.config.id2label or {}).items()}
        if id2label and [id2label.get(i) for i in range(len(self.labels))] != self.labels \
                and not all(v.startswith("LABEL_") for v in id2label.values()):
            raise PipelineError(f"{model_dir}: config.id2label {id2label} disagrees with the labels "
                                f"{self.labels} of {METADATA_FILE}")
        return model

    def logits(self, input_ids, attention_mask):
        """Class logits of one padded batch (torch tensors)."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    def encode(self, texts: list[str]) -> tuple[list[list[int]], np.ndarray]:
        """Token ids with special tokens, cut to max_length: the ids of tokenizer(truncation=True), with
        per-sentence truncation flags, from one pass of the Rust tokenizer."""
        if self._backend is not None:
            encodings = self._backend.encode_batch(texts)
            return [e.ids for e in encodings], np.fromiter((bool(e.overflowing) for e in encodings), bool, len(encodings))
        full = self.tokenizer(texts, truncation=False, verbose=False)["input_ids"]
        cut = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        return cut, np.fromiter((len(f) > self.max_length for f in full), bool, len(full))

    def _scores(self, texts: list[str], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        ids, truncated = self.encode(texts)
        return self.scores_from_ids(ids, batch_size), truncated

    def batches(self, lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
        """Row indices per batch: longest first, each batch of similar lengths, at most `batch_size` sentences and
        (with a token budget) at most `max_batch_tokens` padded tokens."""
        order = np.argsort(-lengths, kind="stable")
        out, start, n = [], 0, len(order)
        budget = getattr(self, "max_batch_tokens", None)
        while start < n:
            width = int(lengths[order[start]])
            end = start + 1
            cap = batch_size if not budget else max(1, min(batch_size, budget // max(width, 1)))
            while end < n and end - start < cap:
                if lengths[order[end]] < width * (1 - PAD_TOLERANCE) and (end - start) * width >= MIN_BATCH_TOKENS:
                    break
                end += 1
            out.append(order[start:end])
            start = end
        return out

    def scores_from_ids(self, ids: list[list[int]], batch_size: int) -> np.ndarray:
        import torch

        return self.outputs_from_ids(ids, batch_size, len(self.labels),
                                     lambda i, a: torch.softmax(self.logits(i, a).double(), dim=-1))

    def outputs_from_ids(self, ids: list[list[int]], batch_size: int, width: int, forward) -> np.ndarray:
        """(n, width) float64: `forward(input_ids, attention_mask)` over length-sorted, tightly padded batches."""
        import torch

        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        probs = np.empty((len(ids), width), dtype=np.float64)
        with torch.inference_mode():
            # Longest first: padding stays small, and a batch too big for memory fails at once.
            for rows in self.batches(lengths, batch_size):
                width = int(lengths[rows].max())
                batch = np.full((len(rows), width), self.pad_id, dtype=np.int64)
                mask = np.zeros((len(rows), width), dtype=np.int64)
                for i, r in enumerate(rows):
                    batch[i, :lengths[r]] = ids[r]
                    mask[i, :lengths[r]] = 1
                # No padding in the batch: no mask, so attention can take its unmasked fast path.
                attention = None if mask.all() else torch.from_numpy(mask).to(self.device)
                probs[rows] = forward(torch.from_numpy(batch).to(self.device), attention).double().cpu().numpy()
        return probs


class TfidfPredictor(StancePredictor):
    kind = "tfidf"

    def __init__(self, model_dir: Path, meta: dict):
        super().__init__(model_dir, meta)
        path = sklearn_file(model_dir)
        self.pipeline = load_sklearn(model_dir)
        classes = [str(c) for c in getattr(self.pipeline, "classes_", [])]
        if sorted(classes) == sorted(self.labels):
            self.columns = [classes.index(label) for label in self.labels]
        elif classes == [str(i) for i in range(len(self.labels))]:
            self.columns = list(range(len(self.labels)))  # trained on class ids
        else:
            raise PipelineError(f"{path}: classes {classes} do not match the labels {self.labels} of {METADATA_FILE}")

    def _scores(self, texts: list[str], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        probs = np.asarray(self.pipeline.predict_proba(texts), dtype=np.float64)[:, self.columns]
        probs /= probs.sum(axis=1, keepdims=True)
        return probs, np.zeros(len(texts), dtype=bool)


def load_predictor(model_dir, *, quantize: str | None = None, device: str = "auto",
                   max_batch_tokens: int | None = None) -> StancePredictor:
    """The predictor of a stance model directory; PipelineError if it is not one. `device`: auto (the GPU when
    there is one), cpu, cuda or cuda:<n>; `max_batch_tokens`: the token budget of a batch (see batch_token_budget)."""
    model_dir = Path(model_dir)
    meta = read_model_metadata(model_dir)
    options = {"quantize": quantize, "device": device, "max_batch_tokens": max_batch_tokens}
    if meta["kind"] == "tfidf":
        if quantize not in (None, "", "none"):
            raise PipelineError(f"predict.quantize={quantize!r} applies to transformer models only; this one is tfidf")
        return TfidfPredictor(model_dir, meta)
    if meta["kind"] == "encoder":
        from pipeline.encoder_head import EncoderHeadPredictor

        return EncoderHeadPredictor(model_dir, meta, **options)
    if meta["kind"] == "hybrid":
        from pipeline.hybrid import HybridPredictor

        return HybridPredictor(model_dir, meta, **options)
    return TransformerPredictor(model_dir, meta, **options)


# A batch on a GPU holds up to this many padded tokens (rows x width) unless predict.max_batch_tokens says
# otherwise: BERT-base activations for 65,536 tokens take well under 2 GiB in fp32.
GPU_BATCH_TOKENS = 65536


def resolve_device(requested: str | None, quantize: str | None = None, *, cuda: bool | None = None) -> str:
    """`predict.device`: auto = the GPU when torch sees one (the CPU for an int8 model: dynamic int8 is a CPU
    kernel), else the CPU; cpu / cuda / cuda:<n> as asked (cuda without a GPU is refused)."""
    import torch

    requested = str(requested or "auto")
    if cuda is None:
        cuda = torch.cuda.is_available()
    if requested == "auto":
        return "cuda" if cuda and quantize != "int8" else "cpu"
    if requested.startswith("cuda"):
        if not cuda:
            raise PipelineError(f"predict.device={requested}: no GPU is visible to torch; use auto or cpu")
        if quantize == "int8":
            raise PipelineError("predict.quantize=int8 runs on the CPU; drop it, or set predict.device=cpu")
        return requested
    if requested != "cpu":
        raise PipelineError(f"predict.device={requested!r}: choose auto, cpu, cuda or cuda:<n>")
    return "cpu"


def batch_token_budget(configured: int | None, device: str) -> int | None:
    """Padded tokens per batch: `predict.max_batch_tokens` when set; else none on the CPU (batch_size and the
    length sorting decide) and GPU_BATCH_TOKENS on a GPU."""
    if configured:
        if int(configured) < 1:
            raise PipelineError(f"predict.max_batch_tokens={configured} must be at least 1")
        return int(configured)
    return GPU_BATCH_TOKENS if str(device).startswith("cuda") else None


def quantize_encoder(model):
    """Dynamic int8 quantisation of the encoder's Linear layers (CPU): weights in int8, activations quantised on
    the fly. A classification head stays fp32, where int8 rounding of its few weights would move decision
    boundaries for nothing in speed."""
    import torch

    with warnings.catch_warnings():  # torch marks torch.ao as deprecated; it is still the CPU int8 path
        warnings.simplefilter("ignore")
        base = getattr(model, model.base_model_prefix, None)
        if base is None:  # a bare encoder (AutoModel): all of it is the encoder
            return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        setattr(model, model.base_model_prefix,
                torch.ao.quantization.quantize_dynamic(base, {torch.nn.Linear}, dtype=torch.qint8))
        return model


_ALLOCATOR_TUNED = False


def keep_freed_memory() -> None:
    """Let glibc reuse freed activation buffers instead of unmapping and re-faulting them every batch.

    By default every activation tensor above the mmap threshold gets fresh pages from the kernel, zeroed and
    faulted in one by one (about a million page faults per 128 BERT-base sentences, ~10% of the time). Raising
    the mmap and trim thresholds keeps those buffers in the heap for the next batch. Linux/glibc only; once
    per process; the memory kept is bounded by the largest batch's activations.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED or not sys.platform.startswith("linux") or os.environ.get("PIPELINE_KEEP_MALLOC") == "0":
        return
    _ALLOCATOR_TUNED = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameter numbers from <malloc.h>
        libc.mallopt(m_mmap_threshold, MMAP_THRESHOLD_BYTES)
        libc.mallopt(m_trim_threshold, TRIM_THRESHOLD_BYTES)
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        pass


def set_threads(threads: int | None) -> int:
    """Use `threads` intra-op threads, or, when unset, every core this process may run on
    (unless OMP_NUM_THREADS already says otherwise). Returns the number in use."""
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    elif "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    return torch.get_num_threads()
