"""The stage registry: what each stage runs, what it needs first, and which files make it stale."""

from __future__ import annotations

import glob
import importlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig, OmegaConf

from pipeline.config import with_run_dir

log = logging.getLogger(__name__)


def _paths(cfg: DictConfig, *keys: str) -> list[Path]:
    found = []
    for key in keys:
        value = OmegaConf.select(cfg, key, default=None)
        if value:
            found.append(Path(str(value)))
    return found


def _table_data(cfg: DictConfig) -> bool:
    """A labelled table (`data.kind: table`) is read directly by train/evaluate: no segment or label stage."""
    return str(OmegaConf.select(cfg, "data.kind", default="articles")) == "table"


@dataclass(frozen=True)
class Stage:
    name: str
    help: str
    entry: str                                   # "module:function", the function takes the config
    needs: tuple[str, ...] = ()                  # stages whose outputs this one reads
    inputs: Callable[[DictConfig], list[Path]] = field(default=lambda cfg: [])
    outputs: Callable[[DictConfig], list[Path]] = field(default=lambda cfg: [])
    flags: dict[str, str] = field(default_factory=dict)  # CLI flag -> override it stands for
    skip_needs: Callable[[DictConfig], bool] = field(default=lambda cfg: False)  # True: `needs` do not apply

    def run(self, cfg: DictConfig):
        module_name, func_name = self.entry.split(":")
        return getattr(importlib.import_module(module_name), func_name)(cfg)

    def is_stale(self, cfg: DictConfig) -> bool:
        outputs = self.outputs(cfg)
        if not outputs or any(not p.exists() for p in outputs):
            return True
        oldest_output = min(p.stat().st_mtime for p in outputs)
        return any(p.exists() and p.stat().st_mtime > oldest_output for p in self.inputs(cfg))


def _modelling_stage(name: str, help: str) -> Stage:
    """train / evaluate: read the labelled set, made by `label` unless the data is a labelled table."""
    return Stage(name, help, f"pipeline.{name}:{name}", needs=("label",), skip_needs=_table_data)


STAGES: dict[str, Stage] = {
    s.name: s
    for s in [
        Stage(
            "segment",
            "articles → sentences.parquet (clean sentences, stable ids, offsets)",
            "pipeline.segment:segment",
            inputs=lambda cfg: [Path(p) for p in glob.glob(str(cfg.data.articles_glob), recursive=True)],
            outputs=lambda cfg: _paths(cfg, "paths.sentences"),
        ),
        Stage(
            "label",
            "sentences → labelled.parquet (gold, annotation, weak rules); --stats prints label counts",
            "pipeline.label:label",
            needs=("segment",),
            inputs=lambda cfg: _paths(cfg, "paths.sentences", "paths.gold", "labeling.lexicon", "labeling.annotations"),
            outputs=lambda cfg: _paths(cfg, "paths.labelled"),
            flags={"--stats": "labeling.stats_only=true", "--export": "labeling.export=true"},
        ),
        _modelling_stage("train", "fine-tune the configured model on the labelled set, evaluate on gold, log to MLflow"),
        _modelling_stage("evaluate", "metrics on gold labels (cross-validated on small corpora) against baselines, "
                                     "logged to MLflow"),
        Stage(
            "predict",
            "batch-predict new articles with a model from MLflow: per-sentence and per-article stance",
            "pipeline.predict:predict",
        ),
        Stage(
            "all",
            "segment → label → train → evaluate on the configured corpus",
            "pipeline.stages:run_all",
        ),
    ]
}


def ensure_inputs(stage: Stage, cfg: DictConfig) -> None:
    """Run the stages `stage` depends on whose outputs are missing or older than their inputs."""
    if stage.skip_needs(cfg):
        return
    for dep_name in stage.needs:
        dep = STAGES[dep_name]
        ensure_inputs(dep, cfg)
        if dep.is_stale(cfg):
            log.info("%s: outputs of '%s' are missing or out of date; running it first", stage.name, dep_name)
            dep.run(with_run_dir(cfg, Path(cfg.paths.run_dir) / dep_name))


def run_all(cfg: DictConfig):
    results = {}
    names = ("train", "evaluate") if _table_data(cfg) else ("segment", "label", "train", "evaluate")
    for name in names:
        log.info("all: stage %s", name)
        results[name] = STAGES[name].run(with_run_dir(cfg, Path(cfg.paths.run_dir) / name))
    return results
