"""What a train run leaves beside its checkpoints and inside its model directory, so that it can be resumed and
scored honestly later.

* `train_state.json` (in the run dir, beside `checkpoints/`): the stage, a digest of the config sections that
  shape the model, the split's article ids and the MLflow run id. `train.resume` continues only a run whose state
  matches the current config and split (`resume_refusal` says why not), and reopens its MLflow run.
* `split.json` (in the model dir): the split's test / validation / train ids and the data digest, which
  `evaluate.cv=none` scores instead of rebuilding the split from the seed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pipeline.core import io
from pipeline.core.io import write_text_atomic

log = logging.getLogger(__name__)

STATE_FILE = "train_state.json"
SPLIT_FILE = "split.json"
# The config sections that decide what a checkpoint holds; `train.resume` itself is left out.
DIGEST_SECTIONS = ("model", "train", "data", "preprocess", "segment", "labeling", "seed")


def config_digest(cfg: DictConfig) -> str:
    picked = {}
    for key in DIGEST_SECTIONS:
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, DictConfig):
            value = OmegaConf.to_container(value, resolve=True, throw_on_missing=False)
        picked[key] = value
    if isinstance(picked.get("train"), dict):
        picked["train"] = {k: v for k, v in picked["train"].items() if k != "resume"}
    return hashlib.sha256(json.dumps(picked, sort_keys=True, default=str).encode()).hexdigest()[:16]


def data_digest(data) -> str:
    return "+".join(io.file_digest(p) for p in data.paths)


def _ids(frame, grouped: bool) -> list[str]:
    if frame is None or not len(frame):
        return []
    column = "group" if grouped and "group" in frame.columns else "sentence_id"
    return sorted({str(v) for v in frame[column]})


def split_record(data, split) -> dict:
    """The split as ids: article (group) ids when the data is grouped, else sentence ids."""
    grouped = bool(data.grouped) and data.test_frame is None
    return {"by": "group" if grouped else "sentence_id", "data_digest": data_digest(data),
            **{side: _ids(getattr(split, side), grouped) for side in ("test", "val", "train")}}


# ---------------------------------------------------------------- train_state.json (resume)

def write_state(work_dir: Path, cfg: DictConfig, data, split, run_id: str) -> Path:
    state = {"stage": "train", "config_digest": config_digest(cfg), "split": split_record(data, split),
             "run_id": run_id}
    return write_text_atomic(Path(work_dir) / STATE_FILE, json.dumps(state, indent=1))


def read_state(work_dir: Path) -> dict | None:
    path = Path(work_dir) / STATE_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def resume_refusal(work_dir: Path, cfg: DictConfig, data, split) -> str | None:
    """Why the checkpoints in `work_dir` must not be resumed with this config and split; None when they may."""
    state = read_state(work_dir)
    if state is None:
        return f"{Path(work_dir) / STATE_FILE} is missing (not a train stage run, e.g. an evaluate fold)"
    if state.get("stage") != "train":
        return f"it is a {state.get('stage')!r} run, not a train run"
    if state.get("config_digest") != config_digest(cfg):
        return "its model/train/data config differs from this one"
    stored = {k: v for k, v in (state.get("split") or {}).items() if k != "data_digest"}
    current = {k: v for k, v in split_record(data, split).items() if k != "data_digest"}
    if stored != current:
        return "its train/validation/test split differs from this one (the labelled data changed)"
    return None


# ---------------------------------------------------------------- split.json (evaluate cv=none)

def write_split(model_dir: Path, data, split, *, seen_all: bool = False) -> Path:
    """`seen_all`: the model was refit on every labelled row (train.refit=all), test articles included."""
    record = {**split_record(data, split), "seen_all": seen_all}
    return write_text_atomic(Path(model_dir) / SPLIT_FILE, json.dumps(record, indent=1))


def read_split(model_dir: Path) -> dict | None:
    path = Path(model_dir) / SPLIT_FILE
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))
