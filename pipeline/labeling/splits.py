"""Labelled examples for train/evaluate and the splits over them.

Two kinds of data (`data.kind`):
  articles: `paths.labelled` from the label stage. Splits are grouped by article (no article has sentences on
            both sides), stratified on the gold labels where possible; the test side is gold rows only.
  table:    any labelled CSV/parquet (`data.path`, text and label columns); every row is gold. Splits are
            stratified random (or grouped by `data.group_column`), or the test set is `data.test_path`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from pipeline import LABELS
from pipeline.core.errors import PipelineError
from pipeline.core.io import read_table
from pipeline.text.context import MODES, check_mode, context_column, with_table_contexts

log = logging.getLogger(__name__)

COLUMNS = ["sentence_id", "group", "text", "label", "source", "rule_label", "rule_confidence"]
LABELLED_REQUIRED = ["article_id", "sentence_id", "text", "label", "source", "rule_label"]
WEAK_SOURCE = "rules"
HUMAN_SOURCES = ("gold", "annotation")      # labels a person gave; any other row is a sentence still to label


@dataclass
class LabelledSet:
    frame: pd.DataFrame                      # COLUMNS; label may be null (unusable row)
    test_frame: pd.DataFrame | None          # a separate test file (table data), else None
    paths: list[Path]
    grouped: bool                            # True when `group` holds article (or document) ids
    has_rules: bool = False                  # True when `rule_label` comes from the label stage

    @property
    def gold(self) -> pd.DataFrame:
        return self.frame[(self.frame["source"] == "gold") & self.frame["label"].notna()]


@dataclass
class Split:
    name: str
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame                       # gold rows only
    test_groups: list[str] = field(default_factory=list)
    pool: pd.DataFrame | None = None         # sentences self-training may pseudo-label (training/self_training.py)

    def describe(self) -> str:
        return f"{self.name}: train {len(self.train)}, validation {len(self.val)}, test {len(self.test)} (gold)"


# ----------------------------------------------------------------------------------------------- loading


def load_labelled(cfg: DictConfig) -> LabelledSet:
    kind = str(OmegaConf.select(cfg, "data.kind", default="articles"))
    if kind == "table":
        return _load_table_data(cfg)
    if kind != "articles":
        raise PipelineError(f"data.kind={kind!r} is not known; use articles or table")
    path = Path(str(cfg.paths.labelled))
    if not path.exists():
        raise PipelineError(f"{path}: labelled sentences not found; run `python -m pipeline label` first")
    df = read_table(path)
    missing = [c for c in LABELLED_REQUIRED if c not in df.columns]
    if missing:
        raise PipelineError(
            f"{path}: missing column(s) {', '.join(missing)}; it was not written by the current label stage, "
            "re-run `python -m pipeline label`"
        )
    frame = pd.DataFrame(
        {
            "sentence_id": df["sentence_id"].astype(str),
            "group": df["article_id"].astype(str),
            "text": df["text"].astype(str),
            "label": df["label"].where(df["label"].notna(), None),
            "source": df["source"].fillna("none").astype(str),
            "rule_label": df["rule_label"].where(df["rule_label"].notna(), None),
            "rule_confidence": pd.to_numeric(df.get("rule_confidence", 0.0), errors="coerce").fillna(0.0),
        }
    )
    _check_labels(frame, path)
    # Each sentence's context in every mode, from its whole article, labelled or not, in idx order: the model's
    # `model.context` (a nested selection's candidate too) picks its own at fit and scoring time.
    frame = frame.join(with_table_contexts(df)[[context_column(m) for m in MODES if m != "none"]])
    return LabelledSet(frame.reset_index(drop=True), None, [path], grouped=True, has_rules=True)


def _check_labels(frame: pd.DataFrame, path: Path) -> None:
    bad = sorted(set(frame["label"].dropna()) - set(LABELS))
    if bad:
        raise PipelineError(f"{path}: unknown label(s) {bad}; labels must be one of {', '.join(LABELS)}")


def _read_label_table(cfg: DictConfig, path: Path, *, sample: bool) -> pd.DataFrame:
    data = cfg.data
    if not path.exists():
        raise PipelineError(f"{path}: labelled table not found; set data.path (and data.test_path) to a CSV or parquet file")
    df = read_table(path)
    text_col, label_col = str(data.text_column), str(data.label_column)
    group_col = OmegaConf.select(cfg, "data.group_column", default=None)
    for col in [text_col, label_col, *([group_col] if group_col else [])]:
        if col not in df.columns:
            raise PipelineError(
                f"{path}: no column {col!r} (columns: {', '.join(map(str, df.columns))}); "
                "set data.text_column / data.label_column / data.group_column"
            )
    label_map = {str(k): str(v) for k, v in (OmegaConf.to_container(data.label_map) or {}).items()}
    # The string "None" (e.g. Mawqif's stance) is a label (read_table keeps it); a real null (JSON null, parquet
    # None) is no label: it becomes "" and is reported below, never mapped as if it were the string "None".
    raw = df[label_col].where(df[label_col].notna(), "").astype(str).str.strip()
    labels = raw.map(label_map) if label_map else raw.str.lower()
    unknown = raw[labels.isna() | ~labels.isin(LABELS)].value_counts()
    if len(unknown):
        listing = ", ".join(f"{k!r} ({v} rows)" for k, v in unknown.head(10).items())
        raise PipelineError(
            f"{path}: label(s) {listing} in column {label_col!r} are not {', '.join(LABELS)}; "
            "map them with data.label_map (raw label: negative/neutral/positive; see conf/data/arsarcasm.yaml)"
        )
    text = df[text_col].astype(str).str.strip()
    keep = text.str.len() > 0
    if (~keep).any():
        log.warning("%s: %d rows with empty text skipped", path, int((~keep).sum()))
    frame = pd.DataFrame(
        {
            "sentence_id": [f"{path.stem}:{i}" for i in df.index],
            "group": df[group_col].astype(str) if group_col else None,
            "text": text,
            "label": labels,
            "source": "gold",
            "rule_label": None,
            "rule_confidence": 0.0,
        }
    )[keep].reset_index(drop=True)
    max_rows = OmegaConf.select(cfg, "data.max_rows", default=None)
    if sample and max_rows and len(frame) > int(max_rows):
        frame = _stratified_sample(frame, int(max_rows), int(cfg.seed))
        log.info("%s: sampled %d rows (data.max_rows)", path, len(frame))
    return frame


def _stratified_sample(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    from sklearn.model_selection import train_test_split

    stratify = frame["label"] if frame["label"].value_counts().min() >= 2 else None
    taken, _ = train_test_split(frame, train_size=n, random_state=seed, stratify=stratify)
    return taken.sort_index().reset_index(drop=True)


def _load_table_data(cfg: DictConfig) -> LabelledSet:
    if OmegaConf.is_missing(cfg.data, "path"):
        raise PipelineError("data=table needs the file: add data.path=<labelled .csv or .parquet> "
                            "(and data.text_column=..., data.label_column=...)")
    path = Path(str(cfg.data.path))
    frame = _read_label_table(cfg, path, sample=True)
    test_path = OmegaConf.select(cfg, "data.test_path", default=None)
    test_frame = _read_label_table(cfg, Path(str(test_path)), sample=True) if test_path else None
    paths = [path, *([Path(str(test_path))] if test_path else [])]
    grouped = bool(OmegaConf.select(cfg, "data.group_column", default=None))
    if check_mode(OmegaConf.select(cfg, "model.context", default="none")) != "none":
        log.info("model.context: %s rows are not sentences of ordered articles; each is read alone", path)
    return LabelledSet(frame, test_frame, paths, grouped=grouped)


def label_counts(labels: pd.Series) -> dict[str, int]:
    counts = labels.value_counts()
    return {label: int(counts.get(label, 0)) for label in LABELS}


# ----------------------------------------------------------------------------------------------- splitting


def _can_stratify(labels: pd.Series, n_splits: int) -> bool:
    return len(labels) > 0 and labels.value_counts().min() >= n_splits


def _pick_groups(rows: pd.DataFrame, share: float, seed: int) -> list[str]:
    """Groups forming about `share` of `rows`, stratified on the row labels where the counts allow."""
    from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

    groups = rows["group"].unique()
    if len(groups) < 2:
        return []
    n_splits = int(min(len(groups), max(2, round(1 / share))))
    try:
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        _, test_idx = next(splitter.split(rows, rows["label"], rows["group"]))
    except ValueError:  # too few rows of some class: keep the grouping, drop the stratification
        splitter = GroupShuffleSplit(n_splits=1, test_size=1 / n_splits, random_state=seed)
        _, test_idx = next(splitter.split(rows, groups=rows["group"]))
    return sorted(rows.iloc[test_idx]["group"].unique())


def _pick_rows(rows: pd.DataFrame, share: float, seed: int) -> pd.Index:
    from sklearn.model_selection import train_test_split

    if len(rows) < 4:
        return rows.index[:0]
    stratify = rows["label"] if _can_stratify(rows["label"], 2) else None
    _, taken = train_test_split(rows, test_size=share, random_state=seed, stratify=stratify)
    return taken.index


def _trainable(rows: pd.DataFrame, sources: Sequence[str]) -> pd.DataFrame:
    return rows[rows["label"].notna() & rows["source"].isin(list(sources))]


def weak_settings(cfg: DictConfig) -> dict:
    """`train.weak`: how rule labels (source=rules) join training; defaults keep older configs working."""
    weak = OmegaConf.select(cfg, "train.weak", default=None) or {}
    source_weights = OmegaConf.select(cfg, "train.source_weights", default=None) or {}
    settings = {
        "min_confidence": float(weak.get("min_confidence", 0.0)),
        "abstained": str(weak.get("abstained", "keep")),
        "weights": {str(k): float(v) for k, v in dict(source_weights).items()},
    }
    if settings["abstained"] not in ("keep", "drop"):
        raise PipelineError(f"train.weak.abstained={settings['abstained']!r}: choose keep or drop")
    bad = {k: v for k, v in settings["weights"].items() if v < 0}
    if bad:
        raise PipelineError(f"train.source_weights {bad}: weights must be >= 0")
    return settings


def training_rows(rows: pd.DataFrame, cfg: DictConfig) -> pd.DataFrame:
    """The rows that train a model, each with a `weight`: labelled, of a source in `train.sources`; a rule label
    must reach `train.weak.min_confidence` (a sentence where no rule fired, labelled by `labeling.abstain`, is
    kept or dropped by `train.weak.abstained`); the weight is `train.source_weights[source]` (default 1)."""
    settings = weak_settings(cfg)
    picked = _trainable(rows, list(cfg.train.sources))
    weak = picked["source"] == WEAK_SOURCE
    fired = picked["rule_label"].notna()
    confident = pd.to_numeric(picked["rule_confidence"], errors="coerce").fillna(0.0) >= settings["min_confidence"]
    keep = ~weak | (fired & confident) | (~fired & (settings["abstained"] == "keep"))
    picked = picked[keep].copy()
    picked["weight"] = picked["source"].map(lambda src: settings["weights"].get(src, 1.0)).astype(float)
    return picked[picked["weight"] > 0]


def as_unlabelled(rows: pd.DataFrame, cfg: DictConfig) -> pd.DataFrame:
    """Held-out articles treated as the articles a user labels: their gold is hidden, their rule labels
    (abstentions per `labeling.abstain`) join training as source=rules."""
    abstain = str(OmegaConf.select(cfg, "labeling.abstain", default="neutral"))
    weak = rows.copy()
    weak["label"] = [r if isinstance(r, str) else ("neutral" if abstain == "neutral" else None)
                     for r in weak["rule_label"]]
    weak["source"] = WEAK_SOURCE
    return weak[weak["label"].notna()]


def make_split(name: str, data: LabelledSet, rest: pd.DataFrame, test: pd.DataFrame, cfg: DictConfig,
            test_groups: Sequence[str] = ()) -> Split:
    """A split testing on `test` (gold rows) and training on `rest`: carve the validation part out of `rest`
    (grouped when the data is), add the held-out articles' rule labels with `train.transductive`, keep the
    trainable rows. Every split is made here: hold-out, CV folds and inner folds (pipeline.training.inner_cv)."""
    sources = list(cfg.train.sources)
    seed = int(cfg.seed)
    val_share = float(cfg.train.val_size)
    labelled = rest[rest["label"].notna()]
    if val_share <= 0:  # no validation: the epoch count is the recipe's (chosen by CV), every article trains
        val, train_rows = rest.iloc[:0], rest
    elif data.grouped:
        gold_rest = labelled[labelled["source"] == "gold"]
        basis = gold_rest if gold_rest["group"].nunique() >= 2 else _trainable(labelled, sources)
        val_groups = _pick_groups(basis, val_share, seed) if rest["group"].nunique() >= 3 else []
        in_val = rest["group"].isin(val_groups)
        val_rows, train_rows = rest[in_val], rest[~in_val]
        val = val_rows[(val_rows["source"] == "gold") & val_rows["label"].notna()]
        if val.empty and not val_rows.empty:
            val = _trainable(val_rows, sources)
            if not val.empty:
                log.warning("%s: no gold labels in the validation articles; early stopping uses their %s labels",
                            name, "/".join(sorted(set(val["source"]))))
    else:
        val_idx = _pick_rows(_trainable(labelled, sources), val_share, seed)
        val, train_rows = rest.loc[val_idx], rest.drop(index=val_idx)
    if test_groups and bool(OmegaConf.select(cfg, "train.transductive", default=False)) and data.has_rules:
        # Measured as used: the held-out articles are the unlabelled ones, their rule labels join training.
        train_rows = pd.concat([train_rows, as_unlabelled(data.frame[data.frame["group"].isin(test_groups)], cfg)])
    # What self-training may pseudo-label: the training side's sentences without a person's label (never test gold).
    pool = train_rows[~train_rows["source"].isin(HUMAN_SOURCES)].reset_index(drop=True)
    train = training_rows(train_rows, cfg)
    if train.empty:
        raise PipelineError(
            f"{name}: no training rows (sources {sources}); label more sentences or widen train.sources"
        )
    return Split(name, train.reset_index(drop=True), val.reset_index(drop=True), test.reset_index(drop=True),
                 list(test_groups), pool)


def _no_gold_error(data: LabelledSet) -> PipelineError:
    where = data.paths[0]
    return PipelineError(
        f"{where}: no gold-labelled sentences to evaluate on. Quality is measured on gold labels only "
        "(never on the rule labels a model is trained on): add hand-checked labels to labels/gold.csv "
        "and re-run `python -m pipeline label`"
    )


def holdout_split(data: LabelledSet, cfg: DictConfig) -> Split:
    """The train stage's split: test articles (gold rows only), validation articles, training articles."""
    seed, test_share = int(cfg.seed), float(cfg.train.test_size)
    frame = data.frame
    if data.test_frame is not None:
        return make_split("holdout", data, frame, data.test_frame, cfg)
    gold = data.gold
    if gold.empty:
        raise _no_gold_error(data)
    if data.grouped:
        if gold["group"].nunique() < 2:
            raise PipelineError(
                f"{data.paths[0]}: gold labels come from {gold['group'].nunique()} article(s); a grouped test split "
                "needs gold sentences in at least 2 articles (label some in another article)"
            )
        test_groups = _pick_groups(gold, test_share, seed)
        in_test = frame["group"].isin(test_groups)
        test = gold[gold["group"].isin(test_groups)]
        return make_split("holdout", data, frame[~in_test], test, cfg, test_groups)
    test_idx = _pick_rows(gold, test_share, seed)
    return make_split("holdout", data, frame.drop(index=test_idx), frame.loc[test_idx], cfg)


def stored_split(data: LabelledSet, cfg: DictConfig, record: dict) -> Split:
    """The train stage's split as stored in a model dir (train_state.split_record): the same test rows."""
    column = "group" if record.get("by") == "group" else "sentence_id"
    ids = set(record.get("test") or [])
    pool = data.test_frame if data.test_frame is not None else data.gold
    test = pool[pool[column].astype(str).isin(ids)]
    rest = data.frame[~data.frame[column].astype(str).isin(ids)]
    return make_split("holdout", data, rest, test, cfg, sorted(ids) if column == "group" else ())


def _with_cv(cfg: DictConfig, mode: str) -> DictConfig:
    cfg = cfg.copy()
    cfg.evaluate.cv = mode
    return cfg


def cv_splits(data: LabelledSet, cfg: DictConfig) -> list[Split]:
    """Folds for `evaluate.cv`: loao (one gold-labelled article per fold) or kfold (grouped when possible)."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, KFold, GroupKFold

    mode, seed = str(cfg.evaluate.cv), int(cfg.seed)
    frame = data.frame
    gold = data.gold
    if gold.empty:
        raise _no_gold_error(data)
    folds: list[Split] = []
    if mode == "loao":
        if not data.grouped:
            log.warning("evaluate.cv=loao needs article groups and this data has none: using %d stratified folds "
                        "(evaluate.cv=kfold, evaluate.folds)", int(cfg.evaluate.folds))
            return cv_splits(data, _with_cv(cfg, "kfold"))
        groups = sorted(gold["group"].unique())
        if len(groups) < 2:
            raise PipelineError("evaluate.cv=loao needs gold labels in at least 2 articles")
        for i, group in enumerate(groups):
            test = gold[gold["group"] == group]
            folds.append(make_split(f"fold-{i}", data, frame[frame["group"] != group], test, cfg, [group]))
        return folds
    if mode != "kfold":
        raise PipelineError(f"evaluate.cv={mode!r} is not known; use loao, kfold or none")
    k = int(cfg.evaluate.folds)
    if data.grouped:
        n_groups = gold["group"].nunique()
        k = min(k, n_groups)
        if k < 2:
            raise PipelineError("evaluate.cv=kfold needs gold labels in at least 2 articles")
        try:
            pairs = list(StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(gold, gold["label"], gold["group"]))
        except ValueError:
            pairs = list(GroupKFold(n_splits=k).split(gold, groups=gold["group"]))
        for i, (_, test_idx) in enumerate(pairs):
            test = gold.iloc[test_idx]
            test_groups = sorted(test["group"].unique())
            folds.append(make_split(f"fold-{i}", data, frame[~frame["group"].isin(test_groups)], test, cfg, test_groups))
        return folds
    k = min(k, len(gold))
    splitter = (StratifiedKFold(n_splits=k, shuffle=True, random_state=seed) if _can_stratify(gold["label"], k)
                else KFold(n_splits=k, shuffle=True, random_state=seed))
    for i, (_, test_idx) in enumerate(splitter.split(gold, gold["label"])):
        test = gold.iloc[test_idx]
        folds.append(make_split(f"fold-{i}", data, frame.drop(index=test.index), test, cfg))
    return folds


def overlap_groups(split: Split) -> set[str]:
    """Groups present on both the training/validation side and the test side (must be empty when grouped)."""
    train_side = set(split.train["group"].dropna()) | set(split.val["group"].dropna())
    return train_side & set(split.test["group"].dropna())


def class_weights(labels: pd.Series, mode: str) -> np.ndarray | None:
    """Inverse-frequency weights in LABELS order (mean 1 over the training rows); None for mode 'none'."""
    if mode == "none":
        return None
    if mode != "balanced":
        raise PipelineError(f"train.class_weights={mode!r} is not known; use balanced or none")
    counts = np.array([max(int((labels == label).sum()), 0) for label in LABELS], dtype=float)
    present = counts > 0
    weights = np.zeros(len(LABELS))
    weights[present] = counts[present].sum() / (present.sum() * counts[present])
    weights[~present] = 1.0  # absent classes never occur as targets; any value is harmless
    return weights
