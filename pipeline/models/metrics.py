"""Classification metrics on gold labels, a bootstrap interval for macro-F1, and the report files."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from pipeline import LABELS
from pipeline.core.io import CsvStyle, atomic_path, write_table_atomic

log = logging.getLogger(__name__)

# The headline numbers of a model, in the order tables show them: fold spreads, comparison tables, baseline logs.
SUMMARY_METRICS = ("macro_f1", "accuracy", "weighted_f1")


def classification_metrics(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str] = LABELS) -> dict[str, float]:
    """accuracy, macro/weighted F1 and per-class precision/recall/F1/support, as flat names."""
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    labels = list(labels)
    y_true, y_pred = list(y_true), list(y_pred)
    if not y_true:
        return {}
    present = [label for label in labels if label in set(y_true)]
    out = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        # Macro over the labels present in this gold: a fold without a positive sentence is not capped at 2/3
        # by a class it cannot score.
        "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        # Macro over all three labels (absent ones count as F1 0): the pre-fix figure, kept for comparison.
        "macro_f1_all_labels": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
        "n": float(len(y_true)),
    }
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    for i, label in enumerate(labels):
        out[f"precision_{label}"] = float(p[i])
        out[f"recall_{label}"] = float(r[i])
        out[f"f1_{label}"] = float(f[i])
        out[f"support_{label}"] = float(s[i])
    return out


def macro_f1(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str] = LABELS) -> float:
    """Macro-F1 over the labels present in `y_true` (as `classification_metrics`' `macro_f1`)."""
    from sklearn.metrics import f1_score

    y_true = list(y_true)
    present = [label for label in labels if label in set(y_true)]
    return float(f1_score(y_true, list(y_pred), labels=present, average="macro", zero_division=0))


def bootstrap_macro_f1(y_true: Sequence[str], y_pred: Sequence[str], *, n_resamples: int = 1000, ci: float = 0.95,
                       seed: int = 0, labels: Sequence[str] = LABELS,
                       groups: Sequence[object] | None = None) -> tuple[float, float]:
    """Percentile bootstrap interval of macro-F1 (over the labels present in each resample's gold).

    With `groups` (e.g. article ids) whole groups are resampled with replacement (cluster bootstrap): sentences of
    one article are not independent, and resampling them one by one gives a too-narrow interval. Rows from a single
    group have no between-group spread to measure: no interval (NaN, and the log says why), as
    `pipeline.prediction.analytics` does for a day or outlet with one article. Without `groups`, sentences are resampled.
    """
    labels = list(labels)
    index = {label: i for i, label in enumerate(labels)}
    t = np.array([index[y] for y in y_true])
    p = np.array([index[y] for y in y_pred])
    n, k = len(t), len(labels)
    if n == 0 or n_resamples <= 0:
        return float("nan"), float("nan")
    members: list[np.ndarray] | None = None
    if groups is not None:
        codes, _ = pd.factorize(pd.Series(list(groups), dtype=object), sort=True)
        if len(codes) != n:
            raise ValueError(f"groups has {len(codes)} entries for {n} labels")
        if codes.max(initial=-1) < 1:
            log.info("macro-F1 interval: the %d gold rows come from one article (group); resampling articles needs "
                     "at least two, and resampling its sentences would treat them as independent: no interval", n)
            return float("nan"), float("nan")
        members = [np.flatnonzero(codes == g) for g in range(codes.max() + 1)]
    rng = np.random.default_rng(seed)
    scores = np.empty(n_resamples)
    for b in range(n_resamples):
        if members is None:
            idx = rng.integers(0, n, n)
        else:
            idx = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
        # Confusion counts per class, vectorised: much faster than sklearn per resample.
        tb, pb = t[idx], p[idx]
        tp = np.bincount(tb[tb == pb], minlength=k).astype(float)
        true_n = np.bincount(tb, minlength=k)
        pred_n = np.bincount(pb, minlength=k)
        denom = true_n + pred_n
        f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
        scores[b] = f1[true_n > 0].mean()
    alpha = (1 - ci) / 2
    return float(np.quantile(scores, alpha)), float(np.quantile(scores, 1 - alpha))


def confusion(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str] = LABELS) -> pd.DataFrame:
    from sklearn.metrics import confusion_matrix

    cm = confusion_matrix(list(y_true), list(y_pred), labels=list(labels))
    return pd.DataFrame(cm, index=[f"true_{x}" for x in labels], columns=[f"pred_{x}" for x in labels])


def plot_confusion(cm: pd.DataFrame, path: Path | str, title: str, xlabel: str = "predicted") -> Path:
    """Heat map of a confusion table whose index/columns are `<who>_<label>` (e.g. true_neutral, rules_abstain)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = cm.to_numpy()
    fig, ax = plt.subplots(figsize=(4.6, 4))
    ax.imshow(values, cmap="Blues")
    ax.set_xticks(range(values.shape[1]), [str(c).split("_", 1)[-1] for c in cm.columns], rotation=30)
    ax.set_yticks(range(values.shape[0]), [str(r).split("_", 1)[-1] for r in cm.index])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("gold")
    ax.set_title(title, fontsize=9)
    top = values.max() if values.size else 0
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            ax.text(j, i, str(values[i, j]), ha="center", va="center",
                    color="white" if values[i, j] > top / 2 else "black")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return Path(path)


def error_table(test: pd.DataFrame, proba: np.ndarray, labels: Sequence[str] = LABELS, limit: int = 500) -> pd.DataFrame:
    """Misclassified gold sentences, most confident mistakes first."""
    labels = list(labels)
    pred = [labels[i] for i in proba.argmax(axis=1)]
    table = pd.DataFrame(
        {
            "sentence_id": test["sentence_id"].to_numpy(),
            "group": test["group"].to_numpy(),
            "text": test["text"].to_numpy(),
            "gold": test["label"].to_numpy(),
            "predicted": pred,
            "confidence": proba.max(axis=1).round(4),
            **{f"p_{label}": proba[:, i].round(4) for i, label in enumerate(labels)},
        }
    )
    wrong = table[table["gold"] != table["predicted"]]
    return wrong.sort_values("confidence", ascending=False).head(limit).reset_index(drop=True)


def write_report(out_dir: Path | str, test: pd.DataFrame, proba: np.ndarray, *, title: str, n_resamples: int,
                 ci: float, seed: int, max_errors: int, labels: Sequence[str] = LABELS,
                 csv: CsvStyle | None = None) -> tuple[dict[str, float], list[Path]]:
    """Metrics + CI + confusion matrix (CSV, PNG) + error table for one model on gold test rows (CSV in `csv`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = list(labels)
    y_true = test["label"].tolist()
    y_pred = [labels[i] for i in proba.argmax(axis=1)]
    metrics = classification_metrics(y_true, y_pred, labels)
    # Resample articles when the rows say which article they come from (cluster bootstrap), else sentences.
    groups = test["group"].tolist() if "group" in test.columns and test["group"].notna().all() else None
    lo, hi = bootstrap_macro_f1(y_true, y_pred, n_resamples=n_resamples, ci=ci, seed=seed, labels=labels,
                                groups=groups)
    metrics["macro_f1_ci_low"], metrics["macro_f1_ci_high"] = lo, hi
    cm = confusion(y_true, y_pred, labels)
    files = [
        write_table_atomic(cm.reset_index(names="gold"), out / "confusion_matrix.csv", csv=csv),
        plot_confusion(cm, out / "confusion_matrix.png", f"{title}  macro-F1 {metrics['macro_f1']:.3f} (n={len(y_true)})"),
        write_table_atomic(error_table(test, proba, labels, max_errors), out / "errors.csv", csv=csv),
    ]
    return metrics, files


def interval_text(metrics: dict[str, float]) -> str:
    """The macro-F1 interval for a log line or a description: "[lo, hi]", or "(no interval)" (e.g. test rows from
    one article: `bootstrap_macro_f1` logs why)."""
    low, high = metrics.get("macro_f1_ci_low", float("nan")), metrics.get("macro_f1_ci_high", float("nan"))
    if low != low or high != high:
        return "(no interval)"
    return f"[{low:.3f}, {high:.3f}]"


def prefixed(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    return {f"{prefix}{k}": v for k, v in metrics.items() if v == v}  # NaN (no data) is not logged
