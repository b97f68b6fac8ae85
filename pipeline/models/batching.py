"""The transformer predictor's fast path, shared by every kind that runs an encoder (transformer, encoder): it
tokenises once, sorts by length and pads each batch only to its own longest sentence, under
`torch.inference_mode`: on CPU that is what gets close to the machine's matmul limit (bench/predict_speed.py).
Also the device (`predict.device`), the token budget of a batch, the intra-op threads and the lower precisions
(`predict.quantize`): bf16 here, int8 in pipeline.models.int8."""

from __future__ import annotations

import logging
import os
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.errors import PipelineError
from pipeline.models.base import METADATA_FILE, StancePredictor
from pipeline.models.trust import load_error, weights_errors

log = logging.getLogger(__name__)

# Batching: a batch is cut where the next (shorter) sentence would be padded by more than PAD_TOLERANCE
# of the batch's width, once the batch holds MIN_BATCH_TOKENS tokens (enough rows for the matrix
# multiplications to run at full speed); never more than batch_size sentences.
PAD_TOLERANCE = 0.08
MIN_BATCH_TOKENS = 768
# bf16 on AMX runs its matrix products ~7x fp32's and needs more rows to do so: batches of at least this many tokens
# took BERT-base from 2.0x to 2.8x the fp32 limit (pad tolerance kept; docs/predict.md, Speed); fp32 gained nothing.
BF16_MIN_BATCH_TOKENS = 2048
# Each precision's speed over the fp32 predictor on the BERT-base shape (bench/int8_amx.py, docs/predict.md,
# Headroom), for the stage's warning that a re-check ate the gain (recheck_cost): a warning, not a measurement.
SPEED_UP = {"fp32": 1.0, "int8": 1.7, "int8-compiled": 4.6, "bf16": 3.4}

# glibc allocator thresholds for keep_freed_memory: freed blocks up to 512 MiB stay in the heap (above the largest
# batch's activation buffers), and the heap is given back to the kernel only when 1 GiB of it is free at the top.
MMAP_THRESHOLD_BYTES = 512 << 20
TRIM_THRESHOLD_BYTES = 1 << 30


class TransformerPredictor(StancePredictor):
    kind = "transformer"

    output = "logits"  # what the forward pass reads from the model's output (pipeline.models.backends)

    def __init__(self, model_dir: Path, meta: dict, *, quantize: str | None = None, device: str = "auto",
                 max_batch_tokens: int | None = None, backend=None, recheck_margin: float | dict | None = None):
        super().__init__(model_dir, meta)
        from transformers import AutoTokenizer

        from pipeline.models import backends, reuse

        quantize = check_quantize(quantize)
        self.device = resolve_device(device, quantize)
        if quantize == "bf16" and not bf16_runs_fast(self.device):
            log.warning("predict.quantize=bf16: this %s has no bf16 matrix unit (AMX or AVX512-BF16; a GPU with "
                        "bf16), where bf16 runs slower than fp32: running fp32", self.device)
            quantize = None
        self.backend = backends.resolve(backend, device=self.device, quantize=quantize)
        if quantize == "int8" and self.backend != "inductor" and self.device == "cpu" and bf16_runs_fast(self.device):
            log.info("predict.quantize=int8: this CPU has a bf16 matrix unit, where predict.quantize=bf16 runs about "
                     "twice int8's speed and moves fewer labels; predict.backend=inductor compiles int8 for its "
                     "int8 unit, faster than bf16 where the model seldom hesitates, its close calls re-checked in "
                     "bf16 (docs/predict.md, Headroom)")
        self.load_kwargs = backends.load_kwargs(self.backend)
        # In a train run, the model a fit just wrote is taken from memory; never when int8 / bf16 or the backend's
        # loading arguments would make it another model than the one in memory.
        plain = quantize is None and not self.load_kwargs
        kept = reuse.recall(model_dir) if plain else None
        try:
            self.tokenizer = kept.tokenizer if kept else AutoTokenizer.from_pretrained(str(model_dir))
            model = self.load_model(Path(model_dir), kept.model if kept else None)
        except weights_errors() as exc:  # a pickled .bin torch refused, a truncated safetensors file, ...
            raise load_error(model_dir, exc) from None
        model.eval()
        positions = getattr(model.config, "max_position_embeddings", None)
        if positions and self.max_length > positions:
            log.warning("%s: max_length %d exceeds the model's %d positions; using %d",
                        model_dir, self.max_length, positions, positions)
            self.max_length = int(positions)
        self.quantize = quantize
        self.model = model.to(self.device)
        # With int8 / bf16 this fp32 forward pass is only the calibration's (eager: nothing compiled for it)
        self.forward = backends.prepare(self.model, "eager" if quantize else self.backend, output=self.output,
                                        model_dir=Path(model_dir), settings=backend)
        self.max_batch_tokens = batch_token_budget(max_batch_tokens, self.device)
        keep_freed_memory()
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        # The Rust tokenizer itself (no copy: re-reading a large vocabulary costs seconds of start-up); `encode`
        # sets it to truncate only before each use, as the Python tokenizer sets it before each of its calls.
        self._backend = getattr(self.tokenizer, "backend_tokenizer", None)
        # int8 / bf16: sentences whose top-two margin is below this are scored again one precision up (`ladder`)
        self.recheck_margin = check_recheck_margin(recheck_margin, quantize) if quantize else 0.0
        self.ladder: list[RecheckStep] = []
        self.rechecked = Counter()  # sentences scored in int8 / bf16, and re-scored per precision (the stage's log)
        if quantize:
            fp32 = self.model
            # The rungs above int8 / bf16, made before int8 smooths `fp32`: the bf16 rung is predict.quantize=bf16's
            # own model, and a compiled model is not worth compiling twice (the rungs run eagerly)
            self.ladder = recheck_ladder(fp32, quantize, recheck_margin, self.recheck_margin, device=self.device,
                                         backend="eager" if self.backend == "inductor" else self.backend,
                                         output=self.output)
            if quantize == "int8":  # calibrated on fp32 forward passes of this predictor: everything above is set
                from pipeline.models.int8 import export_int8, quantize_predictor

                # both smooth `fp32` in place (the same function) and return the int8 model
                self.model = export_int8(self) if self.backend == "inductor" else quantize_predictor(self)
            else:
                self.model = to_bf16(fp32, keep=bool(self.ladder))
            self.forward = backends.prepare(self.model, self.backend, output=self.output,
                                            bf16_fast=bf16_runs_fast(self.device))

    def load_model(self, model_dir: Path, model=None):
        """The sequence-classification model (`model`: the one a fit wrote there, in memory), checked against the
        labels of stance_model.json."""
        from transformers import AutoModelForSequenceClassification

        if model is None:
            model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), **self.load_kwargs)
        if model.config.num_labels != len(self.labels):
            raise PipelineError(f"{model_dir}: the model has {model.config.num_labels} outputs but "
                                f"{METADATA_FILE} lists {len(self.labels)} labels; the directory is inconsistent")
        id2label = {int(k): str(v) for k, v in (model.config.id2label or {}).items()}
        if id2label and [id2label.get(i) for i in range(len(self.labels))] != self.labels \
                and not all(v.startswith("LABEL_") for v in id2label.values()):
            raise PipelineError(f"{model_dir}: config.id2label {id2label} disagrees with the labels "
                                f"{self.labels} of {METADATA_FILE}")
        return model

    def logits(self, input_ids, attention_mask, forward=None):
        """Class logits of one padded batch (torch tensors); `forward`: another forward pass than the predictor's
        (the fp32 reference of an int8 or bf16 model)."""
        return (forward or self.forward)(input_ids=input_ids, attention_mask=attention_mask).logits

    def encode(self, texts: list[str]) -> tuple[list[list[int]], np.ndarray]:
        """Token ids with special tokens, cut to max_length: the ids of tokenizer(truncation=True), with
        per-sentence truncation flags, from one pass of the Rust tokenizer."""
        if self._backend is not None:
            padding, truncation = self._backend.padding, self._backend.truncation
            self._backend.no_padding()  # padding is done per batch
            self._backend.enable_truncation(self.max_length)
            try:
                encodings = self._backend.encode_batch(texts)
            finally:  # as it was: a tokenizer kept in memory in a train run is saved with later fits
                self._backend.enable_padding(**padding) if padding else self._backend.no_padding()
                self._backend.enable_truncation(**truncation) if truncation else self._backend.no_truncation()
            return [e.ids for e in encodings], np.fromiter((bool(e.overflowing) for e in encodings), bool, len(encodings))
        full = self.tokenizer(texts, truncation=False, verbose=False)["input_ids"]
        cut = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        return cut, np.fromiter((len(f) > self.max_length for f in full), bool, len(full))

    def _scores(self, texts: list[str], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        ids, truncated = self.encode(texts)
        probs = self.scores_from_ids(ids, batch_size)
        if self.ladder:
            self.recheck(ids, probs, batch_size)
        return probs, truncated

    @property
    def reference(self):
        """The fp32 forward pass that scores the last close calls (the ladder's fp32 rung), or None."""
        return next((step.forward for step in self.ladder if step.precision == "fp32"), None)

    def recheck(self, ids: list[list[int]], probs: np.ndarray, batch_size: int) -> None:
        """Climb the ladder, in place: the rows of `probs` (int8 or bf16) whose top two labels are closer than the
        rung's margin are scored again at its precision, and of those, the ones still that close go one rung up.
        Close calls are the only sentences whose label a lower precision moves (docs/train.md, int8 and bf16)."""
        rows = np.arange(len(ids))
        self.rechecked["scored"] += len(ids)
        for step in self.ladder:
            rows = rows[top_two_margins(probs[rows]) < step.margin]
            self.rechecked[step.precision] += len(rows)
            if not len(rows):
                break
            probs[rows] = self.scores_from_ids([ids[r] for r in rows], batch_size, forward=step.forward,
                                               matrix_unit=step.precision == "bf16")

    def recheck_cost(self) -> float | None:
        """The time of the sentences scored so far, re-checks included, as a share of fp32's alone (None before any):
        1 or more means the lower precision gained nothing. From each precision's speed-up over fp32 (SPEED_UP)."""
        scored = self.rechecked["scored"]
        if not self.quantize or not scored:
            return None
        own = SPEED_UP["int8-compiled" if self.quantize == "int8" and self.backend == "inductor" else self.quantize]
        return 1 / own + sum(self.rechecked[s.precision] / scored / SPEED_UP[s.precision] for s in self.ladder)

    def _truncated(self, texts: list[str]) -> np.ndarray:
        return self.encode(texts)[1]

    @property
    def context_separator(self) -> str | None:
        return context_separator(self.tokenizer)

    def batches(self, lengths: np.ndarray, batch_size: int, matrix_unit: bool | None = None) -> list[np.ndarray]:
        """Row indices per batch: longest first, each batch of similar lengths, at most `batch_size` sentences and
        (with a token budget) at most `max_batch_tokens` padded tokens. `matrix_unit`: cut them as bf16's (None =
        as this predictor's own precision wants)."""
        order = np.argsort(-lengths, kind="stable")
        out, start, n = [], 0, len(order)
        budget = getattr(self, "max_batch_tokens", None)
        matrix_unit = self.matrix_unit_batches if matrix_unit is None else matrix_unit
        min_tokens = BF16_MIN_BATCH_TOKENS if matrix_unit else MIN_BATCH_TOKENS
        while start < n:
            width = int(lengths[order[start]])
            end = start + 1
            cap = batch_size if not budget else max(1, min(batch_size, budget // max(width, 1)))
            while end < n and end - start < cap:
                if lengths[order[end]] < width * (1 - PAD_TOLERANCE) and (end - start) * width >= min_tokens:
                    break
                end += 1
            out.append(order[start:end])
            start = end
        return out

    @property
    def matrix_unit_batches(self) -> bool:
        """Whether batches wait for BF16_MIN_BATCH_TOKENS: bf16, and int8 compiled for the CPU's int8 unit (AMX
        wants many rows; bench/int8_amx.py)."""
        quantize = getattr(self, "quantize", None)
        return quantize == "bf16" or (quantize == "int8" and getattr(self, "backend", None) == "inductor")

    def scores_from_ids(self, ids: list[list[int]], batch_size: int, forward=None,
                        matrix_unit: bool | None = None) -> np.ndarray:
        import torch

        return self.outputs_from_ids(ids, batch_size, len(self.labels),
                                     lambda i, a: torch.softmax(self.logits(i, a, forward).double(), dim=-1),
                                     matrix_unit=matrix_unit)

    def outputs_from_ids(self, ids: list[list[int]], batch_size: int, width: int, forward,
                         matrix_unit: bool | None = None) -> np.ndarray:
        """(n, width) float64: `forward(input_ids, attention_mask)` over length-sorted, tightly padded batches
        (`matrix_unit`: as `batches`)."""
        import torch

        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        probs = np.empty((len(ids), width), dtype=np.float64)
        with torch.inference_mode():
            # Longest first: padding stays small, and a batch too big for memory fails at once.
            for rows in self.batches(lengths, batch_size, matrix_unit):
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


def context_separator(tokenizer) -> str | None:
    """The token a sentence and its context are joined with (pipeline.text.context.join_inputs): the tokenizer's
    separator ([SEP] for BERT, </s> for XLM-R), so the pair reads like the sentence pairs of pretraining."""
    return getattr(tokenizer, "sep_token", None) or getattr(tokenizer, "eos_token", None)


# A batch on a GPU holds up to this many padded tokens (rows x width) unless predict.max_batch_tokens says
# otherwise: BERT-base activations for 65,536 tokens take well under 2 GiB in fp32.
GPU_BATCH_TOKENS = 65536


QUANTIZE = ("int8", "bf16")  # predict.quantize choices besides null (fp32)


def check_quantize(value) -> str | None:
    """predict.quantize as None (fp32), "int8" or "bf16"; PipelineError naming the choices otherwise."""
    if value in (None, "", "none", "null"):
        return None
    if value not in QUANTIZE:
        raise PipelineError(f"predict.quantize={value!r}: choose null (fp32), {' or '.join(QUANTIZE)}")
    return str(value)


def bf16_runs_fast(device: str) -> bool:
    """Whether bf16 matrix products run faster than fp32 on `device`: a CPU with AMX or AVX512-BF16, a GPU with
    bf16 (measured with bench/predict_speed.py; elsewhere torch emulates bf16, slower than fp32)."""
    import torch

    if str(device).startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    cpu = getattr(torch, "cpu", None)
    return any(getattr(cpu, probe, lambda: False)() for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))


def top_two_margins(probs: np.ndarray) -> np.ndarray:
    """Per row, the most probable label's probability minus the second's (1 with a single label: no close call)."""
    if probs.shape[1] < 2:
        return np.ones(len(probs))
    top = np.sort(probs, axis=1)
    return top[:, -1] - top[:, -2]


@dataclass(frozen=True)
class RecheckStep:
    """A rung of the re-check ladder: the sentences whose top two labels are closer than `margin` (the margin of
    the precision below, predict.recheck_margin.<below>) are scored again at `precision` by `forward`."""
    below: str
    precision: str
    margin: float
    forward: Callable


def recheck_ladder(fp32, quantize: str, margins, margin: float, *, device: str, backend: str,
                   output: str) -> list[RecheckStep]:
    """The rungs above `quantize` for the fp32 model `fp32` (`margins`: predict.recheck_margin; `margin`: its
    value for `quantize`). int8 climbs to bf16 where bf16 runs fast (bf16 moves the probabilities ~4x less than
    int8, at ~3.4x fp32's speed: docs/train.md, *Re-check ladder*), and bf16's own close calls (its margin) on to
    fp32; elsewhere int8 and bf16 go straight to fp32. No margin: no rung."""
    from pipeline.models import backends

    steps, below = [], quantize
    if margin > 0 and quantize == "int8" and bf16_runs_fast(device):
        bf16 = to_bf16(fp32, keep=True)
        steps.append(RecheckStep(below, "bf16", margin, backends.prepare(bf16, backend, output=output)))
        below, margin = "bf16", check_recheck_margin(margins, "bf16")
    if margin > 0:
        steps.append(RecheckStep(below, "fp32", margin, backends.prepare(fp32, backend, output=output)))
    return steps


def to_bf16(model, *, keep: bool):
    """The model in bfloat16 (weights and activations; the logits are read back in float64): a copy when `keep`
    (the fp32 model stays, to re-score close calls), else the model itself, converted in place."""
    import copy

    import torch

    return (copy.deepcopy(model) if keep else model).to(torch.bfloat16)


def recheck_option(value):
    """predict.recheck_margin as load_predictor takes it: a number (any precision), a plain {precision: margin}
    mapping (conf/predict: one margin per precision), or None."""
    from collections.abc import Mapping

    from omegaconf import OmegaConf

    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    return dict(value) if isinstance(value, Mapping) else value


def check_recheck_margin(value, quantize: str | None = None) -> float:
    """The re-check margin of precision `quantize` (a number, or its entry of a {precision: margin} mapping; none =
    0) as a float in [0, 1); PipelineError naming the key otherwise."""
    value = recheck_option(value)
    key = "predict.recheck_margin"
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(QUANTIZE))
        if unknown:
            raise PipelineError(f"{key}: {', '.join(map(str, unknown))} is not a precision; set "
                                f"{' / '.join(f'{key}.{q}' for q in QUANTIZE)}")
        key, value = f"{key}.{quantize}", value.get(quantize)
    try:
        margin = float(0.0 if value is None else value)
    except (TypeError, ValueError):
        margin = -1.0
    if not 0.0 <= margin < 1.0:
        raise PipelineError(f"{key}={value!r}: set a probability margin in [0, 1) (0 = re-score nothing in fp32)")
    return margin


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
