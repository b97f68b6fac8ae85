"""Loading the model to fine-tune: a local directory, a cached hub id, or the tiny offline BERT.

The hub is tried only when it can answer: a missing model fails within seconds with the three ways
to fix it, instead of a minute of silent download retries.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

from omegaconf import DictConfig, OmegaConf

from pipeline.core.errors import PipelineError
from pipeline.text.preprocess import refuse_segmented, short_name

log = logging.getLogger(__name__)

DEFAULT_HUB = "https://huggingface.co"


class ModelUnavailable(PipelineError):
    """The configured model cannot be loaded here (not local, not cached, hub unreachable)."""


def remedy_text(name: str) -> str:
    return (
        f"cannot load model {name!r}: it is not a local directory, not in the Hugging Face cache, and the hub "
        "cannot be reached from here. Fix it one of three ways:\n"
        f"  1. download it once on a machine with internet access: `hf download {name}` "
        "(then copy ~/.cache/huggingface here, or `hf download "
        f"{name} --local-dir /models/{name.split('/')[-1]}`);\n"
        f"  2. point the pipeline at a local copy: `python -m pipeline train model.name_or_path=/models/{name.split('/')[-1]}`;\n"
        "  3. run fully offline on the tiny locally built BERT (smoke runs only, not quality): "
        "`python -m pipeline train model=tiny`, or `make run-offline` for the whole pipeline."
    )


def hub_offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout_s: float) -> bool:
    """A TCP connect to the hub endpoint: enough to tell 'no network' from 'slow download' in seconds."""
    url = urlparse(os.environ.get("HF_ENDPOINT", DEFAULT_HUB))
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def is_cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # a malformed id, for instance: not in the cache either way
        return False
    return isinstance(found, str)


def resolve_source(name_or_path: str, *, hub_timeout_s: float = 3.0) -> tuple[str, bool]:
    """Where to load `name_or_path` from: (path or id, local_files_only). Raises ModelUnavailable fast."""
    if not name_or_path:
        raise PipelineError("model.name_or_path is empty; set it to a hub id or a local model directory")
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise PipelineError(f"{path}: not a Hugging Face model directory (no config.json)")
        return str(path), True
    looks_local = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_local:
        raise PipelineError(f"{name_or_path}: model directory not found; check model.name_or_path")
    if is_cached(name_or_path):
        return name_or_path, True
    if hub_offline() or not hub_reachable(hub_timeout_s):
        raise ModelUnavailable(remedy_text(name_or_path))
    return name_or_path, False


def check_preprocessing_matches(name_or_path: str, preprocess_as: str | None) -> None:
    """A Farasa-segmented AraBERT is refused by its own name too; another AraBERT variant than
    `model.preprocess_as` gets a warning (v02 base/large/twitter share one preprocessing)."""
    from arabert.preprocess import ACCEPTED_MODELS

    refuse_segmented(name_or_path, "model.name_or_path")
    short = short_name(name_or_path)
    wanted = short_name(preprocess_as or "")
    if short in ACCEPTED_MODELS and short != wanted:
        log.warning("model %s is preprocessed as %r (model.preprocess_as); set model.preprocess_as=%s if that is "
                    "not intended", name_or_path, preprocess_as, short)


def load_tokenizer_and_model(name_or_path: str, labels: Sequence[str], *, hub_timeout_s: float = 3.0,
                             encoder_only: bool = False, shared: bool = False):
    """Tokenizer and sequence-classification model with our label order as id2label/label2id
    (`encoder_only`: the bare encoder, for a pooled head of our own). Inside a train run (pipeline.models.reuse)
    the weights are read once: a fit gets a copy of them, or with `shared` (it never changes them) the one kept."""
    from pipeline.models import reuse

    source, local_only = resolve_source(name_or_path, hub_timeout_s=hub_timeout_s)

    def load():
        return _load_pretrained(name_or_path, source, local_only, labels, encoder_only)

    where = str(Path(source).resolve()) if Path(source).is_dir() else source
    return reuse.pretrained((where, encoder_only, tuple(labels)), load, shared=shared)


def _load_pretrained(name_or_path: str, source: str, local_only: bool, labels: Sequence[str], encoder_only: bool):
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    from pipeline.models.trust import load_error, unsafe_weights_errors

    id2label = dict(enumerate(labels))
    label2id = {label: i for i, label in enumerate(labels)}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        model = AutoModel.from_pretrained(source, local_files_only=local_only) if encoder_only else \
            AutoModelForSequenceClassification.from_pretrained(
            source,
            num_labels=len(labels),
            id2label=id2label,
            label2id=label2id,
            local_files_only=local_only,
            # a checkpoint trained on other labels gets a fresh head instead of a shape error
            ignore_mismatched_sizes=True,
        )
    except OSError as exc:
        if local_only:
            raise PipelineError(f"cannot load model from {source!r}: {str(exc).splitlines()[0]}") from None
        raise ModelUnavailable(remedy_text(name_or_path)) from None
    except unsafe_weights_errors() as exc:  # a pickled .bin torch refused, a truncated safetensors file
        raise load_error(source, exc, "the model") from None
    log.info("loaded %s (%s parameters)", source, f"{sum(p.numel() for p in model.parameters()):,}")
    return tokenizer, model


def from_scratch(cfg: DictConfig) -> bool:
    """True when the model is a tiny BERT built here with random weights (`model=tiny`, or any kind whose
    `model.name_or_path` is null and that has `model.tiny` settings): a smoke model, never a quality one. It is
    not registered or served by default (pipeline.models.serving), and its embeddings are never frozen."""
    from pipeline.models import kinds

    return kinds.builds_from_scratch(cfg) or bool(
        not OmegaConf.select(cfg, "model.name_or_path", default=None) and OmegaConf.select(cfg, "model.tiny", default=None))


def check_source(cfg: DictConfig) -> None:
    """Refuse a configured pretrained model that cannot be had (offline and not cached, or a preprocessing that
    does not match it) before any run is opened: the preflight of the kinds that start from one."""
    if OmegaConf.select(cfg, "model.name_or_path", default=None):
        preprocess_as = OmegaConf.select(cfg, "model.preprocess_as", default=None)
        check_preprocessing_matches(str(cfg.model.name_or_path), preprocess_as)
        resolve_source(str(cfg.model.name_or_path), hub_timeout_s=float(cfg.model.hub_timeout_s))


def base_model_dir(cfg: DictConfig, train_texts: Sequence[str], out_dir: Path, labels: Sequence[str]) -> str:
    """`model.name_or_path`, or a tiny BERT built from the (preprocessed) training texts (`from_scratch`)."""
    if not from_scratch(cfg):
        return str(cfg.model.name_or_path)
    from pipeline.models.tiny import build_tiny_bert

    target = Path(out_dir)
    if (target / "config.json").exists():  # resuming: the checkpoints were trained on this vocabulary
        return str(target)
    tiny = cfg.model.tiny
    build_tiny_bert(
        train_texts,
        target,
        labels,
        vocab_size=int(tiny.vocab_size),
        hidden_size=int(tiny.hidden_size),
        num_layers=int(tiny.num_layers),
        num_heads=int(tiny.num_heads),
        intermediate_size=int(tiny.intermediate_size),
        max_position=int(tiny.max_position),
        seed=int(cfg.seed),
    )
    return str(target)
