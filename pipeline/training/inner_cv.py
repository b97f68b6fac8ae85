"""Cross-validation inside one outer split's training rows: predictions of gold rows by models that never trained
on their article, without touching the outer split's test rows.

    splits = inner_splits(data, outer, cfg)              # leave one training article out (or `folds` grouped folds)
    held = out_of_fold(cfg, data, outer, work_dir)       # every gold training row, predicted out of fold

train fits its temperature on these predictions when there is no validation split (pipeline.training.calibrate);
evaluate chooses the value of a sweep on them inside each outer fold (nested selection, pipeline.training.selection).
The inner fits log nothing to MLflow and leave nothing on disk.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from pipeline.core import distributed
from pipeline.training.fitting import fit_model
from pipeline.training.self_training import merge_pools
from pipeline.labeling.splits import LabelledSet, Split, make_split
from pipeline.models import reuse
from pipeline.models.trainer import run_logging_off
from pipeline.text.context import contexts_of

log = logging.getLogger(__name__)

# Tables without groups: stratified folds, as many as evaluate.cv=kfold makes by default.
TABLE_FOLDS = 5


@dataclass
class OutOfFold:
    rows: pd.DataFrame      # the gold rows predicted (the outer split's training gold), with the inner `fold`
    proba: np.ndarray       # each row's probabilities from the model of its inner fold (raw: no calibration)
    folds: int


def inner_splits(data: LabelledSet, outer: Split, cfg: DictConfig, folds: int | None = None) -> list[Split]:
    """Splits of `outer.train`: each tests on the gold rows of some training articles and trains on the rest, as
    the outer split was made (validation, transductive rule labels, weights: `splits.make_split`). `folds`: None =
    one article per fold, k = k grouped folds (at most one per article); tables without groups: k stratified
    folds (TABLE_FOLDS when None). Empty when there are fewer than two gold articles (or rows) to hold out."""
    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

    rows = outer.train
    gold = rows[(rows["source"] == "gold") & rows["label"].notna()]
    seed = int(cfg.seed)
    if data.grouped:
        groups = sorted(gold["group"].dropna().astype(str).unique())
        if len(groups) < 2:
            return []
        if folds is None or int(folds) >= len(groups):
            parts = [[g] for g in groups]
        else:
            k = max(2, int(folds))
            try:
                pairs = list(StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
                             .split(gold, gold["label"], gold["group"]))
            except ValueError:
                pairs = list(GroupKFold(n_splits=k).split(gold, groups=gold["group"]))
            parts = [sorted(gold.iloc[test_idx]["group"].astype(str).unique()) for _, test_idx in pairs]
        return [_with_outer_pool(make_split(f"{outer.name}-inner-{i}", data, rows[~rows["group"].astype(str).isin(part)],
                                            gold[gold["group"].astype(str).isin(part)], cfg, part), outer)
                for i, part in enumerate(parts)]
    k = min(int(folds or TABLE_FOLDS), len(gold))
    if k < 2:
        return []
    stratify = gold["label"].value_counts().min() >= k
    splitter = (StratifiedKFold(n_splits=k, shuffle=True, random_state=seed) if stratify
                else KFold(n_splits=k, shuffle=True, random_state=seed))
    return [_with_outer_pool(make_split(f"{outer.name}-inner-{i}", data, rows.drop(index=gold.index[test_idx]),
                                        gold.iloc[test_idx], cfg), outer)
            for i, (_, test_idx) in enumerate(splitter.split(gold, gold["label"]))]


def _with_outer_pool(inner: Split, outer: Split) -> Split:
    """The inner split may pseudo-label what the outer one may (train.self_training), less its own held-out rows'
    sentences (transductive adds those back as make_split did): outer.train lacks the pool rows that do not train."""
    if outer.pool is None or outer.pool.empty:
        return inner
    held_out = set(inner.test["sentence_id"]) | (set() if not inner.test_groups else
                                                 set(outer.pool.loc[outer.pool["group"].isin(inner.test_groups),
                                                                    "sentence_id"]))
    return replace(inner, pool=merge_pools(inner.pool, outer.pool[~outer.pool["sentence_id"].isin(held_out)]))


def out_of_fold(cfg: DictConfig, data: LabelledSet, outer: Split, work_dir: Path | str, *,
                folds: int | None = None) -> OutOfFold | None:
    """Fit `cfg`'s model on every inner split of `outer` and predict its held-out gold rows. None when there is
    nothing to hold out, and on the other ranks of a multi-process run (they take part in the fits only)."""
    from pipeline.models.base import load_predictor

    splits = inner_splits(data, outer, cfg, folds)
    if not splits:
        return None
    frames, probas = [], []
    for split in splits:
        fold_dir = Path(work_dir) / split.name
        with run_logging_off():  # an inner fit's curves are not the run's
            model_dir = fit_model(cfg, split, fold_dir)
        if not distributed.is_main():
            continue
        predictor = load_predictor(model_dir)
        probas.append(predictor.predict_proba(split.test["text"].tolist(), batch_size=int(cfg.train.eval_batch_size),
                                              context=contexts_of(split.test, predictor.context)))
        frames.append(split.test.assign(fold=split.name))
        shutil.rmtree(fold_dir, ignore_errors=True)  # a model per inner fold: GBs for a transformer
        reuse.forget(fold_dir)  # and in memory (pipeline.models.reuse)
    if not frames:
        return None
    return OutOfFold(pd.concat(frames, ignore_index=True), np.vstack(probas), len(splits))
