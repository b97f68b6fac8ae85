"""The stage registry: what each stage runs, what it needs first, and when its outputs are stale."""

from __future__ import annotations

import importlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig, OmegaConf

from pipeline.core import provenance
from pipeline.core.config import with_run_dir
from pipeline.core.io import LISTINGS, write_text_atomic

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


# Keys that say where and how a run reports (its own directory, which command runs it, how much it logs), never
# what a table holds: a run reading them does not tie its output to their values.
RUN_LOCAL_KEYS = ("paths.run_dir", "stage", "log_level")
FINGERPRINT_SUFFIX = ".fingerprint.json"
FINGERPRINT_VERSION = 2  # 2: the keys, files and listings a run actually read (pipeline.core.provenance)


def fingerprint_path(output: Path) -> Path:
    return output.with_name(output.name + FINGERPRINT_SUFFIX)


@dataclass(frozen=True)
class Stage:
    name: str
    help: str
    entry: str                                   # "module:function", the function takes the config
    needs: tuple[str, ...] = ()                  # stages whose outputs this one reads
    outputs: Callable[[DictConfig], list[Path]] = field(default=lambda cfg: [])
    flags: dict[str, str] = field(default_factory=dict)  # CLI flag -> override it stands for
    skip_needs: Callable[[DictConfig], bool] = field(default=lambda cfg: False)  # True: `needs` do not apply
    positional: str | None = None                # the key a bare argument sets (`promote 3` = `target=3`)
    own: tuple[str, ...] = ()                    # the config keys (or sections) that are this stage's: --help leads with them
    check: str | None = None                     # "module:function" refusing bad settings before any stage runs
    # False: this run reads and logs nothing in MLflow, so its tracking server need not be up (segment; predict
    # from a local model directory)
    uses_tracking: Callable[[DictConfig], bool] = field(default=lambda cfg: True)

    def mode_keys(self) -> tuple[str, ...]:
        """The keys behind the stage's CLI flags (`label --stats`, `--export`): they choose what a run does
        beside building its table, so a table is not tied to them."""
        return tuple(override.split("=", 1)[0] for override in self.flags.values())

    def check_first(self, cfg: DictConfig) -> None:
        """Refuse what this stage would refuse anyway, before the stages it needs run (e.g. a model that may not
        be loaded)."""
        if self.check:
            module_name, func_name = self.check.split(":")
            getattr(importlib.import_module(module_name), func_name)(cfg)

    def run(self, cfg: DictConfig):
        """Run the stage, recording what it reads; each output it (re)writes gets a fingerprint of what had been
        read by then (pipeline.core.provenance)."""
        module_name, func_name = self.entry.split(":")
        outputs = self.outputs(cfg)
        with provenance.record(outputs, ignored_keys=(*RUN_LOCAL_KEYS, *self.mode_keys())) as reads:
            result = getattr(importlib.import_module(module_name), func_name)(cfg)
        for path in outputs:
            snapshot = reads.snapshots.get(os.path.abspath(path))
            if snapshot is not None:  # written by this run (`label --stats` writes no table)
                write_text_atomic(fingerprint_path(path),
                                  json.dumps(self.fingerprint(cfg, snapshot), ensure_ascii=False, indent=1))
        return result

    def fingerprint(self, cfg: DictConfig, snapshot: dict) -> dict:
        """What built an output: the value of every config key the run had read, and the files and listings."""
        return {"stage": self.name, "version": FINGERPRINT_VERSION,
                "config": {key: provenance.config_value(cfg, key) for key in snapshot["keys"]},
                "files": snapshot["files"], "listings": snapshot["listings"]}

    def stale_reason(self, cfg: DictConfig) -> str | None:
        """Why the outputs must be rebuilt (missing, or something they were built from differs), or None."""
        outputs = self.outputs(cfg)
        if not outputs or any(not p.exists() for p in outputs):
            return "missing"
        for path in outputs:
            fp = fingerprint_path(path)
            if not fp.exists():
                # Made outside the pipeline (a hand-made table): nothing says what it was built from.
                log.warning("%s has no %s: it was not built by this pipeline, so it is used as it is (delete it "
                            "to rebuild it)", path, fp.name)
                continue
            try:
                stored = json.loads(fp.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return f"unreadable {fp}"
            reason = _changed_since(cfg, stored)
            if reason:
                return f"{reason} since {path} was built (see {fp})"
        return None

    def is_stale(self, cfg: DictConfig) -> bool:
        return self.stale_reason(cfg) is not None


def _changed_since(cfg: DictConfig, stored: dict) -> str | None:
    """The first difference between a fingerprint and the current config, files and listings, or None."""
    if stored.get("version") != FINGERPRINT_VERSION:
        return "the pipeline's fingerprint format changed"
    for key, value in stored.get("config", {}).items():
        now = provenance.config_value(cfg, key)
        if not provenance.same_value(value, now):
            return f"{key} changed ({_short(value)} → {_short(now)})"
    for path, state in stored.get("files", {}).items():
        now = provenance.file_state(path)
        if now != state:
            return f"{path} {'appeared' if state is None else 'is gone' if now is None else 'changed'}"
    for listing in stored.get("listings", []):
        lister = LISTINGS.get(listing.get("kind"))
        if lister is None:
            return f"unknown listing {listing.get('kind')!r}"
        with provenance.unrecorded():
            found = [os.fspath(p) for p in lister(listing["spec"])]
        if found != listing.get("files"):
            added = sorted(set(found) - set(listing.get("files") or []))
            return f"{listing['spec']} lists other files ({'new: ' + ', '.join(added[:3]) if added else 'fewer'})"
    return None


def _short(value) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def _local_model(cfg: DictConfig) -> bool:
    """predict's model_uri is a local directory (a path or a file: URI): nothing is read from MLflow."""
    from pipeline.models.store import uri_origin

    uri = OmegaConf.select(cfg, "model_uri", default=None)
    return uri not in (None, "") and uri_origin(str(uri)) == "local"


def _modelling_stage(name: str, help: str, own: tuple[str, ...]) -> Stage:
    """train / evaluate: read the labelled set, made by `label` unless the data is a labelled table."""
    return Stage(name, help, f"pipeline.stages.{name}:{name}", needs=("label",), skip_needs=_table_data, own=own)


STAGES: dict[str, Stage] = {
    s.name: s
    for s in [
        Stage(
            "segment",
            "articles → sentences.parquet (clean sentences, stable ids, offsets)",
            "pipeline.stages.segment:segment",
            outputs=lambda cfg: _paths(cfg, "paths.sentences"),
            own=("data.articles_glob", "data.unlabelled", "segment"),
            uses_tracking=lambda cfg: False,
        ),
        Stage(
            "label",
            "sentences → labelled.parquet (gold, annotation, weak rules); --stats prints label counts",
            "pipeline.stages.label:label",
            needs=("segment",),
            outputs=lambda cfg: _paths(cfg, "paths.labelled"),
            flags={"--stats": "labeling.stats_only=true", "--export": "labeling.export=true"},
            own=("paths.gold", "labeling", "data.unlabelled"),
            check="pipeline.stages.label:check_export_model",
        ),
        _modelling_stage("train", "fine-tune the configured model on the labelled set, evaluate on gold, log to MLflow",
                         own=("model", "train", "tracking.promote")),
        _modelling_stage("evaluate", "metrics on gold labels (cross-validated on small corpora) against baselines, "
                                     "logged to MLflow", own=("evaluate", "model")),
        Stage(
            "predict",
            "batch-predict new articles with a model from MLflow: per-sentence and per-article stance",
            "pipeline.stages.predict:predict",
            own=("input", "output", "model_uri", "predict", "csv"),
            uses_tracking=lambda cfg: not _local_model(cfg),
        ),
        Stage(
            "spark_predict",
            "the same prediction as a Spark job (local[*] or spark-submit): parquet sentence rows, summary, errors",
            "pipeline.stages.spark_predict:spark_predict",
            own=("input", "output", "model_uri", "spark"),
        ),
        Stage(
            "promote",
            "which model predict serves: list the registered versions, or give the alias to one (promote <version "
            "| run id>)",
            "pipeline.stages.promote:promote",
            positional="target",
            own=("target", "tracking.register", "tracking.alias"),
        ),
        Stage(
            "all",
            "segment → label → train → evaluate on the configured corpus",
            "pipeline.cli.registry:run_all",
            own=("data", "model"),
        ),
    ]
}


def ensure_inputs(stage: Stage, cfg: DictConfig) -> None:
    """Run the stages `stage` depends on whose outputs are missing or were built from other config or files."""
    if stage.skip_needs(cfg):
        return
    for dep_name in stage.needs:
        dep = STAGES[dep_name]
        ensure_inputs(dep, cfg)
        reason = dep.stale_reason(cfg)
        if reason:
            log.info("%s: outputs of '%s' are out of date (%s); running it first", stage.name, dep_name, reason)
            dep.run(with_run_dir(cfg, Path(cfg.paths.run_dir) / dep_name))


def run_all(cfg: DictConfig):
    results = {}
    names = ("train", "evaluate") if _table_data(cfg) else ("segment", "label", "train", "evaluate")
    for name in names:
        log.info("all: stage %s", name)
        results[name] = STAGES[name].run(with_run_dir(cfg, Path(cfg.paths.run_dir) / name))
    return results
