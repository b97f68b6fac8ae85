"""evaluate's nested selection (`evaluate.select`): the value of a sweep is chosen inside each outer fold.

    python -m pipeline evaluate model=frozen evaluate.select='{train.head.C: [0.1, 1, 10]}'

For each outer fold, every candidate (the product of the listed values) is scored by an inner cross-validation on
that fold's training articles only (leave one article out, pipeline.training.inner_cv): the pooled macro-F1 of the inner
out-of-fold predictions. The best candidate (the first listed on a tie) is then fitted on the fold's training rows
and scored on its held-out article. The pooled outer score is an estimate of the whole procedure, selection
included; the maximum over a plain sweep of the same values on the reporting folds is a selection result, not an
estimate.
"""

from __future__ import annotations

import itertools
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pipeline import LABELS
from pipeline.core.config import share_refusal
from pipeline.core.errors import PipelineError
from pipeline.training.inner_cv import out_of_fold
from pipeline.models.metrics import macro_f1
from pipeline.labeling.splits import LabelledSet, Split

log = logging.getLogger(__name__)

# Keys a selection may vary: how the model is fitted. Data, segmentation and labelling keys change the labelled
# table the folds are drawn from, so they are not candidates of one evaluation.
SELECTABLE = ("train.", "model.")
_ABSENT = object()


@dataclass
class Selection:
    chosen: dict                         # config key -> the chosen value
    scores: list[tuple[dict, float]]     # every candidate with its inner pooled macro-F1

    @property
    def label(self) -> str:
        return describe(self.chosen)


def describe(values: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


def candidates(cfg: DictConfig) -> list[dict]:
    """The candidates of `evaluate.select` ({key: [values]}): every combination, in the order listed; [] = none."""
    spec = OmegaConf.select(cfg, "evaluate.select", default=None)
    spec = OmegaConf.to_container(spec, resolve=True) if spec is not None and OmegaConf.is_config(spec) else spec
    if not spec:
        return []
    if not isinstance(spec, dict):
        raise PipelineError("evaluate.select must map config keys to lists of values, e.g. "
                            "evaluate.select='{train.head.C: [0.1, 1, 10]}'")
    for key, values in spec.items():
        if not str(key).startswith(SELECTABLE):
            raise PipelineError(f"evaluate.select: {key!r} is not a train.* or model.* key; a selection varies how "
                                "the model is fitted, not the data it is evaluated on")
        if OmegaConf.select(cfg, str(key), default=_ABSENT) is _ABSENT:
            raise PipelineError(f"evaluate.select: no config key {key!r} (see `python -m pipeline evaluate --help`)")
        if not isinstance(values, list) or not values:
            raise PipelineError(f"evaluate.select: {key!r} needs a non-empty list of values, e.g. {{{key}: [1, 2]}}")
        refused = [why for why in (share_refusal(str(key), v) for v in values) if why]
        if refused:
            raise PipelineError(f"evaluate.select: {refused[0]}")
    keys = list(spec)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(spec[k] for k in keys))]


def with_values(cfg: DictConfig, values: dict) -> DictConfig:
    """`cfg` with the candidate's values set."""
    out = cfg.copy()
    for key, value in values.items():
        OmegaConf.update(out, key, value, merge=False)
    return out


def select(cfg: DictConfig, data: LabelledSet, outer: Split, work_dir: Path | str, *,
           folds: int | None = None) -> Selection:
    """Choose among `candidates(cfg)` by inner cross-validation on `outer.train` (never `outer.test`)."""
    inner_dir = Path(work_dir) / "select"
    scores: list[tuple[dict, float]] = []
    for values in candidates(cfg):
        oof = out_of_fold(with_values(cfg, values), data, outer, inner_dir, folds=folds)
        if oof is None:
            raise PipelineError(f"evaluate.select: {outer.name} has fewer than two gold training articles to choose "
                                "on; nested selection needs at least three gold-labelled articles")
        predicted = [LABELS[i] for i in oof.proba.argmax(axis=1)]
        scores.append((values, macro_f1(oof.rows["label"].tolist(), predicted)))
    shutil.rmtree(inner_dir, ignore_errors=True)
    best = max(range(len(scores)), key=lambda i: (scores[i][1], -i))  # the first listed on a tie
    selection = Selection(scores[best][0], scores)
    log.info("evaluate: %s: %s chosen by inner cross-validation on its training articles (%s)", outer.name,
             selection.label, "; ".join(f"{describe(v)}: {s:.3f}" for v, s in scores))
    return selection
