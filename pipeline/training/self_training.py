"""Self-training (`train.self_training`): after the first fit, the model's confident predictions on the sentences
still to label join training as pseudo-labels, and the model is fitted again, for `rounds` rounds.

    fit_rounds(cfg, split, learned_dir, work_dir, fit)     # called by fitting.fit_model for every kind

Which sentences: `Split.pool` (made with the split, pipeline.labeling.splits.make_split): the training side's
sentences without a person's label (the sentences of `data.unlabelled`, an article's unlabelled sentences), and with
`train.transductive` the held-out articles' sentences exactly as their rule labels join training. Never a validation
row, never a test row's gold: the pseudo label is the model's prediction, and the held-out gold still scores it.

Each round predicts the whole pool with the latest model (its raw probabilities: the temperature of
`train.calibrate` is fitted afterwards, on the final model, never on test rows); a sentence whose predicted label
reaches `min_confidence` becomes one training row (`source`, weighted `weight`). It replaces that sentence's rule
label rather than sitting beside it: a sentence keeps one label in training, so a confident sentence does not weigh
twice and a rule label the model overrules is not trained on at the same time. Each round starts again from the
labelled rows (the previous round's pseudo labels are replaced, not accumulated). Rounds stop early when no sentence
reaches the threshold or when the pseudo labels repeat the previous round's (the same rows fit the same model).
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from pipeline import LABELS
from pipeline.core import distributed
from pipeline.core.config import share_refusal
from pipeline.core.errors import PipelineError
from pipeline.labeling.splits import HUMAN_SOURCES, Split
from pipeline.models.metrics import macro_f1
from pipeline.models.trainer import log_metrics
from pipeline.text.context import contexts_of

log = logging.getLogger(__name__)

ROUNDS_DIR = "self_training"   # <work_dir>/self_training/round-<k>: one round's fit, removed once it is in place
METRIC_PREFIX = "self_training_"  # train's refit logs into the same run as its first fit: refit_self_training_*


def _prefix(split: Split) -> str:
    return f"refit_{METRIC_PREFIX}" if split.name == "refit" else METRIC_PREFIX


@dataclass(frozen=True)
class Settings:
    rounds: int
    min_confidence: float
    weight: float
    source: str


def settings(cfg: DictConfig) -> Settings:
    """`train.self_training`, checked: one `error:` line naming the key and the fix."""
    st = OmegaConf.select(cfg, "train.self_training", default=None) or {}
    out = Settings(int(st.get("rounds", 0) or 0), float(st.get("min_confidence", 0.9)),
                   float(st.get("weight", 0.5)), str(st.get("source", "pseudo")))
    if out.rounds < 0:
        raise PipelineError(f"train.self_training.rounds={out.rounds}: give 0 (off) or a number of rounds, e.g. 1")
    why = share_refusal("train.self_training.min_confidence", out.min_confidence)
    if why:
        raise PipelineError(why)
    if out.weight <= 0:
        raise PipelineError(f"train.self_training.weight={out.weight:g}: pseudo-labelled rows need a weight > 0, "
                            "e.g. 0.5 (rounds=0 turns self-training off)")
    if not out.source or out.source in HUMAN_SOURCES:
        raise PipelineError(f"train.self_training.source={out.source!r}: pseudo labels are not a person's; name "
                            f"them apart from {', '.join(HUMAN_SOURCES)}, e.g. pseudo")
    return out


def pool_rows(split: Split) -> pd.DataFrame:
    """The split's sentences to pseudo-label, one row per sentence (never a person's label)."""
    if split.pool is None or split.pool.empty:
        return pd.DataFrame(columns=["sentence_id", "group", "text", "label", "source", "rule_label"])
    pool = split.pool[~split.pool["source"].isin(HUMAN_SOURCES)]
    return pool.drop_duplicates("sentence_id").reset_index(drop=True)


def merge_pools(*pools: pd.DataFrame | None) -> pd.DataFrame | None:
    """Several pools as one, each sentence once (the first pool's row wins)."""
    frames = [p for p in pools if p is not None and not p.empty]
    if not frames:
        return next((p for p in pools if p is not None), None)
    return pd.concat(frames, ignore_index=True).drop_duplicates("sentence_id").reset_index(drop=True)


def pseudo_rows(pool: pd.DataFrame, proba: np.ndarray, s: Settings) -> pd.DataFrame:
    """The pool's sentences whose predicted label's probability reaches `min_confidence`, labelled with it: one
    training row each (`source`, `weight`), with that probability in `confidence`."""
    proba = np.asarray(proba, dtype=float).reshape(len(pool), len(LABELS))
    best = proba.argmax(axis=1) if len(pool) else np.zeros(0, dtype=int)
    confidence = proba[np.arange(len(pool)), best] if len(pool) else np.zeros(0)
    rows = pool.assign(label=[LABELS[i] for i in best], source=s.source, weight=s.weight, confidence=confidence)
    return rows[confidence >= s.min_confidence].reset_index(drop=True)


def with_pseudo(split: Split, pseudo: pd.DataFrame) -> Split:
    """`split` training on its labelled rows and `pseudo`: a pseudo-labelled sentence's own rule label (any row of it
    not labelled by a person) leaves training, its pseudo row takes its place. Validation and test are untouched."""
    replaced = split.train["sentence_id"].isin(pseudo["sentence_id"]) & ~split.train["source"].isin(HUMAN_SOURCES)
    added = pseudo[[c for c in split.train.columns if c in pseudo.columns]]
    train = pd.concat([split.train[~replaced], added], ignore_index=True)
    return replace(split, train=train)


def _proba(predictor, rows: pd.DataFrame, batch_size: int) -> np.ndarray:
    """Raw probabilities of `rows`' sentences, each with the context the model reads (model.context)."""
    if not len(rows):
        return np.zeros((0, len(LABELS)))
    return predictor.predict_proba(rows["text"].tolist(), batch_size=batch_size,
                                   context=contexts_of(rows, predictor.context))


def _read_model(model_dir: Path, split: Split, pool: pd.DataFrame | None, batch_size: int):
    """A round's model, loaded once: its macro-F1 on the split's held-out test and validation gold (reported,
    never chosen on) and its probabilities on the pool (None: no round follows)."""
    from pipeline.models.base import load_predictor

    predictor = load_predictor(model_dir)
    quality = {}
    for name, rows in (("test", split.test), ("val", split.val)):
        if len(rows):
            pred = _proba(predictor, rows, batch_size).argmax(axis=1)
            quality[f"{name}_macro_f1"] = macro_f1(rows["label"].tolist(), [LABELS[i] for i in pred])
    return quality, None if pool is None else _proba(predictor, pool, batch_size)


def _round(pool: pd.DataFrame, pseudo: pd.DataFrame, split: Split, k: int) -> dict[str, float]:
    counts = pseudo["label"].value_counts()
    in_train = split.train[~split.train["source"].isin(HUMAN_SOURCES)].drop_duplicates("sentence_id")
    trained = in_train.set_index("sentence_id")["label"]
    replaced = pseudo[pseudo["sentence_id"].isin(trained.index)]
    record = {"pool": len(pool), "added": len(pseudo),
              **{f"added_{label}": int(counts.get(label, 0)) for label in LABELS},
              "mean_confidence": float(pseudo["confidence"].mean()) if len(pseudo) else float("nan"),
              "replaced": len(replaced),
              "relabelled": int((replaced["label"].to_numpy() != trained.loc[replaced["sentence_id"]].to_numpy()).sum())}
    log_metrics({_prefix(split) + key: value for key, value in record.items() if value == value}, step=k)
    return record


def _scored(model_dir: Path, split: Split, pool: pd.DataFrame | None, batch_size: int, k: int):
    """Round k's model read once (rank 0): its quality, logged at step k, and its probabilities on the pool."""
    quality, proba = distributed.from_main(lambda: _read_model(model_dir, split, pool, batch_size))
    log_metrics({f"{_prefix(split)}round_{key}": value for key, value in quality.items()}, step=k)
    return quality, proba


def _line(quality: dict[str, float]) -> str:
    return ", ".join(f"{key.replace('_macro_f1', '')} macro-F1 {value:.3f}" for key, value in quality.items()) \
        or "no gold to score here"


def fit_rounds(cfg: DictConfig, split: Split, learned: Path, work_dir: Path,
               fit: Callable[[Split, Path, Path], None]) -> int:
    """Run `train.self_training.rounds` rounds on the model fitted in `learned`; each round's model replaces it.
    `fit(split, out_dir, work_dir)` is the kind's fit. Returns the rounds made. MLflow (the active run): per round k,
    `self_training_added[_<label>]`, `_mean_confidence`, `_replaced` (rule labels replaced), `_relabelled` (those
    the model overruled), `_pool`, and `self_training_round_{test,val}_macro_f1` of round k's model (k=0: the first
    fit) on the split's held-out gold: reported, never used to choose anything; train's refit logs them as
    `refit_self_training_*`."""
    s = settings(cfg)
    if s.rounds == 0:
        return 0
    pool = pool_rows(split)
    if pool.empty:
        log.info("%s: self-training: no sentence to pseudo-label (no unlabelled sentence on the training side; "
                 "data.unlabelled or train.transductive=true add some): the first fit stands", split.name)
        return 0
    batch = int(cfg.train.eval_batch_size)
    before, proba = _scored(learned, split, pool, batch, 0)
    previous: set | None = None
    made = 0
    for k in range(1, s.rounds + 1):
        pseudo = pseudo_rows(pool, proba, s)
        record = _round(pool, pseudo, split, k)
        by_label = ", ".join(f"{label} {record[f'added_{label}']}" for label in LABELS)
        top = float(np.max(proba)) if len(pool) else float("nan")
        log.info("%s: self-training round %d/%d: %d of %d sentences at confidence >= %g (%s; mean %s, the pool's "
                 "highest %.3f), %d rule labels replaced (%d with another label)", split.name, k, s.rounds, len(pseudo),
                 len(pool), s.min_confidence, by_label, f"{record['mean_confidence']:.3f}" if len(pseudo) else "-",
                 top, record["replaced"], record["relabelled"])
        labels = set(zip(pseudo["sentence_id"], pseudo["label"]))
        if pseudo.empty or labels == previous:
            log.info("%s: self-training stops after %d round(s): %s", split.name, made,
                     "no sentence reaches the threshold" if pseudo.empty else "the pseudo labels repeat the last round's")
            break
        previous = labels
        round_dir = Path(work_dir) / ROUNDS_DIR / f"round-{k}"
        if distributed.is_main() and round_dir.exists():
            shutil.rmtree(round_dir)
        fit(with_pseudo(split, pseudo), round_dir / "model", round_dir)
        if distributed.is_main():
            shutil.rmtree(learned)
            os.replace(round_dir / "model", learned)
            shutil.rmtree(round_dir, ignore_errors=True)  # its checkpoints: GBs for a transformer
        distributed.barrier()
        made = k
        after, proba = _scored(learned, split, pool if k < s.rounds else None, batch, k)
        log.info("%s: self-training round %d refitted on %d rows: %s (before: %s)", split.name, k,
                 len(split.train) - record["replaced"] + len(pseudo), _line(after), _line(before))
        before = after
    if distributed.is_main():
        shutil.rmtree(Path(work_dir) / ROUNDS_DIR, ignore_errors=True)
    return made
