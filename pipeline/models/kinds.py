"""The model-kind registry: the one place that names the kinds of stance model.

A kind is one module (or any object with the same attributes), registered by name. A name is a `model.kind`
value of conf/model (`fits=True`), a kind that a stance model dir records in stance_model.json (`loads=True`),
or both. What the module says:

    fits:   written_kind(cfg) -> str     the kind its fit records in the model dir
            fit(cfg, split, work_dir, out, preprocess, *, resume_from=None)
                                         train on split.train (split.val for early stopping / a score) and write
                                         a complete stance model dir to `out` (base.write_model_metadata)
            preflight(cfg)               optional: refuse an unavailable model before any run is opened
            METHOD = "<name>"            optional: how it fits, as runs are tagged (`model_kind`): one name for the
                                         kinds one module fits (tiny is fitted as "transformer"); else model.kind
            CHECKPOINTS = True           optional: the fit keeps Trainer checkpoints (train.resume, torchrun)
    loads:  load(model_dir, meta, **options) -> predictor   (options: quantize, device, max_batch_tokens)
            unpickled_files(model_dir) -> list[Path]          optional: what loading would unpickle (trust.py)
            calibration_dir(model_dir) -> Path                optional: the dir whose calibration.json applies
    wraps:  a kind with `wraps_when` (a config key) wraps any fitted model when that key is true:
            wrap(out_dir, learned_dir, cfg)

Modules are imported on first use, so fitting or serving a tfidf model never imports torch. Adding a kind is
one module and one conf/model file with `kind: <name>` (docs/architecture.md); a test may `register` its own.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from omegaconf import DictConfig, OmegaConf

from pipeline.core.errors import PipelineError


@dataclass(frozen=True)
class Kind:
    name: str
    module: str | object        # a module path (imported on first use) or the kind object itself
    fits: bool = True           # a `model.kind` value
    loads: bool = True          # a kind recorded in stance_model.json
    wraps_when: str | None = None  # a config key: when true, this kind wraps the fitted model
    from_scratch: bool = False  # its fit builds a tiny model here from random weights: a smoke model, never served

    def impl(self) -> ModuleType | object:
        return importlib.import_module(self.module) if isinstance(self.module, str) else self.module


_KINDS: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    """Add (or replace) a kind; returns it."""
    _KINDS[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    _KINDS.pop(name, None)


for _kind in (
    Kind("transformer", "pipeline.models.transformer"),           # fine-tuning (pooled: writes "encoder")
    Kind("tiny", "pipeline.models.transformer", loads=False, from_scratch=True),  # the same on a tiny BERT built here
    Kind("tfidf", "pipeline.models.tfidf"),                        # TF-IDF n-grams + logistic regression
    Kind("frozen", "pipeline.models.frozen", loads=False),         # frozen encoder + logistic regression
    Kind("contrastive", "pipeline.models.contrastive", loads=False),  # encoder tuned on sentence pairs + LR (SetFit)
    Kind("encoder", "pipeline.models.encoder", fits=False),        # encoder + pooling + linear head (head.json)
    Kind("hybrid", "pipeline.models.hybrid", fits=False, wraps_when="train.hybrid.enabled"),  # lexicon + inner
):
    register(_kind)


def config_kinds() -> tuple[str, ...]:
    return tuple(k.name for k in _KINDS.values() if k.fits)


def dir_kinds() -> tuple[str, ...]:
    return tuple(k.name for k in _KINDS.values() if k.loads)


def fitter(cfg: DictConfig):
    """The kind module that fits `model.kind`; a one-line error naming the known kinds otherwise."""
    name = str(cfg.model.kind)
    kind = _KINDS.get(name)
    if kind is None or not kind.fits:
        raise PipelineError(f"model.kind={name!r} is not known; use {', '.join(config_kinds())}")
    return kind.impl()


def loader(name: str):
    """The kind module that loads a model dir recording kind `name`."""
    kind = _KINDS.get(str(name))
    if kind is None or not kind.loads:
        raise PipelineError(f"unknown stance model kind {name!r}; choose one of {', '.join(dir_kinds())}")
    return kind.impl()


def written_kind(cfg: DictConfig) -> str:
    """The kind the configured fit records in its model dir (before any wrapper): what `model_kind` tags say."""
    return str(fitter(cfg).written_kind(cfg))


def fit_method(cfg: DictConfig) -> str:
    """How the configured model is fitted (transformer, frozen, tfidf...): the `model_kind` tag of train and
    evaluate runs, which tells a frozen encoder from a fine-tuned one although both write kind "encoder"."""
    return str(getattr(fitter(cfg), "METHOD", cfg.model.kind))


def keeps_checkpoints(cfg: DictConfig) -> bool:
    """Whether the configured fit keeps Trainer checkpoints (train.resume continues them; torchrun runs it)."""
    return bool(getattr(fitter(cfg), "CHECKPOINTS", False))


def builds_from_scratch(cfg: DictConfig) -> bool:
    kind = _KINDS.get(str(OmegaConf.select(cfg, "model.kind", default="")))
    return bool(kind is not None and kind.from_scratch)


def wrapper(cfg: DictConfig):
    """The kind module that wraps the fitted model under this config (a hybrid), or None."""
    for kind in _KINDS.values():
        if kind.wraps_when and bool(OmegaConf.select(cfg, kind.wraps_when, default=False)):
            return kind.impl()
    return None
