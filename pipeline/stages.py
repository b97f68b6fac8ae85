"""The stage registry: what each stage runs, what it needs first, and which files make it stale."""

from __future__ import annotations

import glob
import hashlib
import importlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig, OmegaConf

from pipeline.config import with_run_dir
from pipeline.io import write_text_atomic

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


def _sections(cfg: DictConfig, *keys: str) -> dict:
    """The resolved values of `keys` (dotted config keys, whole sections allowed), for a fingerprint."""
    out = {}
    for key in keys:
        value = OmegaConf.select(cfg, key, default=None)
        out[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return out


# What each stage's outputs depend on in the config. Left out on purpose: knobs that change what a run prints or
# exports but not the table it writes (labeling.stats_only, export*, uncertainty, context_sentences, import_*,
# log_mlflow, from_name/to_name). An imported annotation file changes `labeling.annotations`, an input.
SEGMENT_KEYS = ("data.articles_glob", "segment")
LABEL_KEYS = ("segment", "labeling.lexicon", "labeling.abstain", "labeling.annotations", "paths.gold",
              "paths.sentences")
FINGERPRINT_SUFFIX = ".fingerprint.json"


def fingerprint_path(output: Path) -> Path:
    return output.with_name(output.name + FINGERPRINT_SUFFIX)


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
    config_keys: tuple[str, ...] = ()            # config the outputs depend on (see fingerprint)

    def run(self, cfg: DictConfig):
        module_name, func_name = self.entry.split(":")
        outputs = self.outputs(cfg)
        before = {p: _mtime_ns(p) for p in outputs}
        result = getattr(importlib.import_module(module_name), func_name)(cfg)
        # Only an output this run (re)wrote gets this config's fingerprint: `label --stats` writes no table.
        fingerprint = None
        for path in outputs:
            if path.exists() and _mtime_ns(path) != before[path]:
                fingerprint = fingerprint or self.fingerprint(cfg)
                write_text_atomic(fingerprint_path(path), json.dumps(fingerprint, ensure_ascii=False, indent=1))
        return result

    def fingerprint(self, cfg: DictConfig) -> dict:
        """What produced the outputs: the stage's config keys and its input files (path, size, mtime)."""
        inputs = {}
        for p in sorted(self.inputs(cfg)):
            if p.exists():
                st = p.stat()
                inputs[str(p)] = [st.st_size, st.st_mtime_ns]
        config = _sections(cfg, *self.config_keys)
        body = json.dumps({"config": config, "inputs": inputs}, sort_keys=True, ensure_ascii=False, default=str)
        return {"stage": self.name, "digest": hashlib.sha256(body.encode()).hexdigest(), "config": config}

    def stale_reason(self, cfg: DictConfig) -> str | None:
        """Why the outputs must be rebuilt (missing, older than an input, other config or inputs), or None."""
        outputs = self.outputs(cfg)
        if not outputs or any(not p.exists() for p in outputs):
            return "missing"
        oldest_output = min(p.stat().st_mtime for p in outputs)
        if any(p.exists() and p.stat().st_mtime > oldest_output for p in self.inputs(cfg)):
            return "older than an input"
        digest = self.fingerprint(cfg)["digest"]
        for path in outputs:
            fp = fingerprint_path(path)
            if not fp.exists():
                # Made outside the pipeline (a hand-made table) or by a version without fingerprints: only the
                # mtime rule above applies; the next run of the stage writes one.
                log.warning("%s has no %s; cannot tell which config built it", path, fp.name)
                continue
            try:
                stored = json.loads(fp.read_text(encoding="utf-8")).get("digest")
            except (OSError, ValueError):
                return f"unreadable {fp}"
            if stored != digest:
                return f"built with another config or other inputs (see {fingerprint_path(path)})"
        return None

    def is_stale(self, cfg: DictConfig) -> bool:
        return self.stale_reason(cfg) is not None


def _mtime_ns(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


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
            config_keys=SEGMENT_KEYS,
        ),
        Stage(
            "label",
            "sentences → labelled.parquet (gold, annotation, weak rules); --stats prints label counts",
            "pipeline.label:label",
            needs=("segment",),
            inputs=lambda cfg: _paths(cfg, "paths.sentences", "paths.gold", "labeling.lexicon", "labeling.annotations"),
            outputs=lambda cfg: _paths(cfg, "paths.labelled"),
            flags={"--stats": "labeling.stats_only=true", "--export": "labeling.export=true"},
            config_keys=LABEL_KEYS,
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
            "spark_predict",
            "the same prediction as a Spark job (local[*] or spark-submit): parquet sentence rows, summary, errors",
            "pipeline.spark_predict:spark_predict",
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
