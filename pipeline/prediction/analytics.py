"""Stance over time and by outlet, from predicted sentence rows.

Input: the predict stage's sentence rows (`article_id`, `label`, `p_negative`, `p_positive`, …) plus the metadata
carried from the input table (`date`, `outlet`). Output: one row per period or outlet with

    <key>, n_articles, n_sentences, share_<label> (per label), net_stance, net_stance_ci_low, net_stance_ci_high

`net_stance` is the mean over the group's sentences of p_positive − p_negative (the same quantity as the per-article
summary, pooled). Its interval comes from an ARTICLE-level bootstrap: sentences of one article are not independent
(same author, same event, same slant), so resampling sentences would give intervals that are far too narrow. Each
replicate draws the group's articles with replacement and recomputes the pooled sentence mean. A group with a single
article has no between-article spread to measure: its bounds are NaN (not the point estimate, which would look
like certainty). Intervals are deterministic: the random stream of a group depends only on `seed` and the group key,
so adding other days or outlets to the input does not move a group's interval.
"""

from __future__ import annotations

import logging
import re
import zlib
from typing import Sequence

import numpy as np
import pandas as pd

from pipeline import LABELS
from pipeline.core.errors import PipelineError

log = logging.getLogger(__name__)

ACCEPTED_DATE_FORMATS = "YYYY-MM-DD (ISO, optionally with a time, e.g. 2022-01-27T10:00:00Z), DD/MM/YYYY, DD-MM-YYYY, YYYY/MM/DD"
_ARABIC_DIGITS = str.maketrans("٠١٢٣٤٥٦٧٨٩۰۱۲۳۴۵۶۷۸۹", "01234567890123456789")
_ISO = re.compile(r"\d{4}-\d{1,2}-\d{1,2}([T ]\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?", re.I)
# day first for the slashed / dashed forms whose year comes last: this is how Arabic-language outlets write dates.
_DAY_FIRST = re.compile(r"(\d{1,2})[/-](\d{1,2})[/-](\d{4})")
_YEAR_FIRST_SLASH = re.compile(r"(\d{4})/(\d{1,2})/(\d{1,2})")
FREQUENCIES = ("day", "week")


def _parse_one(text: str) -> pd.Timestamp | None:
    if _ISO.fullmatch(text):
        stamp = pd.Timestamp(text.replace(" ", "T", 1) if " " in text.strip() else text)
        # One clock for all rows: aware times go to UTC, then drop the zone so they compare with naive dates.
        return stamp.tz_convert("UTC").tz_localize(None) if stamp.tzinfo is not None else stamp
    if m := _DAY_FIRST.fullmatch(text):
        day, month, year = (int(g) for g in m.groups())
    elif m := _YEAR_FIRST_SLASH.fullmatch(text):
        year, month, day = (int(g) for g in m.groups())
    else:
        return None
    return pd.Timestamp(year=year, month=month, day=day)


def parse_dates(values: pd.Series, source: str) -> tuple[pd.Series, list[str]]:
    """Lenient date parsing: (datetime64 series with NaT where missing or unreadable, one message per bad row).

    Accepts ISO dates and date-times (a time zone is converted to UTC and dropped), DD/MM/YYYY, DD-MM-YYYY and
    YYYY/MM/DD (day first whenever the year comes last), Arabic-Indic digits, and values that already are
    dates. Empty / missing values are NaT without an error. A message names `source` and the row by the series'
    index label, so pass a series indexed by the row numbers you want reported.
    """
    parsed: list[pd.Timestamp | None] = []
    errors: list[str] = []
    for row, value in values.items():
        if value is None or (not isinstance(value, str) and pd.isna(value)):
            parsed.append(None)
            continue
        if isinstance(value, (pd.Timestamp, np.datetime64)) or hasattr(value, "year"):
            stamp = pd.Timestamp(value)
            parsed.append(stamp.tz_convert("UTC").tz_localize(None) if stamp.tzinfo is not None else stamp)
            continue
        text = str(value).strip().translate(_ARABIC_DIGITS)
        if not text:
            parsed.append(None)
            continue
        try:
            stamp = _parse_one(text)
        except ValueError:  # matched the shape but not a real date, e.g. 31/02/2022
            stamp = None
        if stamp is None:
            errors.append(f"{source} row {row}: cannot read date {value!r}; accepted formats: {ACCEPTED_DATE_FORMATS}")
        parsed.append(stamp)
    out = pd.Series(pd.to_datetime(pd.Series(parsed, dtype=object), errors="coerce").to_numpy(dtype="datetime64[ns]"),
                    index=values.index, name=values.name)
    return out, errors


def _bootstrap_interval(net_sums: np.ndarray, counts: np.ndarray, n_boot: int, ci: float,
                        rng: np.random.Generator) -> tuple[float, float]:
    """Percentile interval of Σ net / Σ sentences over articles drawn with replacement."""
    m = len(counts)
    if m < 2 or n_boot <= 0:
        return float("nan"), float("nan")
    draws = rng.integers(0, m, size=(n_boot, m))
    stats = net_sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    alpha = (1.0 - ci) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _group_seed(seed: int, key) -> list[int]:
    return [int(seed), zlib.crc32(str(key).encode("utf-8"))]


def grouped_summary(sentences: pd.DataFrame, keys: pd.Series, key_name: str, *, n_boot: int = 1000,
                    ci: float = 0.95, seed: int = 0, labels: Sequence[str] = LABELS) -> pd.DataFrame:
    """Counts, label shares, net stance and its article-level bootstrap interval per value of `keys`.

    `keys` is aligned with `sentences` (same index); rows whose key is missing are left out. The one computation
    behind `timeline` and `by_outlet`; it reduces the sentences to per-article sums and calls `grouped_articles`.
    """
    missing = [c for c in ("article_id", "label", "p_negative", "p_positive") if c not in sentences.columns]
    if missing:
        raise PipelineError(f"sentence rows lack column(s) {missing}; expected the predict stage's output")
    labels = list(labels)
    keep = keys.notna().to_numpy()
    frame = pd.DataFrame({
        "key": keys.to_numpy()[keep],
        "article_id": sentences["article_id"].astype(str).to_numpy()[keep],
        "net_sum": (sentences["p_positive"].astype(float) - sentences["p_negative"].astype(float)).to_numpy()[keep],
        "sentences": 1.0,
    })
    for x in labels:
        frame[f"n_{x}"] = (sentences["label"].to_numpy()[keep] == x).astype(float)
    per_article = frame.groupby(["key", "article_id"], sort=True, as_index=False).sum()
    return grouped_articles(per_article, per_article["key"], key_name, n_boot=n_boot, ci=ci, seed=seed,
                            labels=labels)


def grouped_articles(articles: pd.DataFrame, keys: pd.Series, key_name: str, *, n_boot: int = 1000,
                     ci: float = 0.95, seed: int = 0, labels: Sequence[str] = LABELS) -> pd.DataFrame:
    """`grouped_summary` from per-article sums: one row per article (or per article and key) with `article_id`,
    `sentences`, `net_sum` (Σ p_positive − p_negative) and `n_<label>`; `keys` aligned with the rows.

    Lets the predict stage summarise any number of sentences from its per-article table, in flat memory."""
    missing = [c for c in ("article_id", "sentences", "net_sum", *[f"n_{x}" for x in labels])
               if c not in articles.columns]
    if missing:
        raise PipelineError(f"article rows lack column(s) {missing}; expected per-article sums")
    if not 0 < ci < 1:
        raise PipelineError(f"ci must lie strictly between 0 and 1, got {ci}")
    labels = list(labels)
    columns = [key_name, "n_articles", "n_sentences", *[f"share_{x}" for x in labels], "net_stance",
               "net_stance_ci_low", "net_stance_ci_high"]
    keep = keys.notna().to_numpy() & (articles["sentences"].to_numpy(dtype=float) > 0)
    frame = pd.DataFrame({"key": keys.to_numpy()[keep], "article_id": articles["article_id"].astype(str).to_numpy()[keep],
                          "net_sum": articles["net_sum"].to_numpy(dtype=float)[keep],
                          "n": articles["sentences"].to_numpy(dtype=float)[keep]})
    for x in labels:
        frame[f"n_{x}"] = articles[f"n_{x}"].to_numpy(dtype=float)[keep]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    # One row per (group, article): the bootstrap resamples these.
    per_article = frame.groupby(["key", "article_id"], sort=True).sum()
    rows = []
    for key, group in per_article.groupby(level="key", sort=True):
        n = group["n"].to_numpy(dtype=float)
        low, high = _bootstrap_interval(group["net_sum"].to_numpy(), n, n_boot, ci,
                                        np.random.default_rng(_group_seed(seed, key)))
        total = n.sum()
        rows.append({key_name: key, "n_articles": len(group), "n_sentences": int(total),
                     **{f"share_{x}": group[f"n_{x}"].sum() / total for x in labels},
                     "net_stance": group["net_sum"].sum() / total, "net_stance_ci_low": low, "net_stance_ci_high": high})
    return pd.DataFrame(rows, columns=columns)


def period_start(dates: pd.Series, freq: str) -> pd.Series:
    """The first day of each date's period: the date itself (day) or the Monday of its week (week)."""
    if freq not in FREQUENCIES:
        raise PipelineError(f"timeline frequency must be one of {FREQUENCIES}, got {freq!r}")
    days = pd.to_datetime(dates).dt.normalize()
    if freq == "week":
        days = days - pd.to_timedelta(days.dt.day_of_week, unit="D")  # Monday = 0
    return days


def timeline(sentences: pd.DataFrame, freq: str = "day", *, date_column: str = "date", n_boot: int = 1000,
             ci: float = 0.95, seed: int = 0, labels: Sequence[str] = LABELS,
             per_article: bool = False) -> pd.DataFrame:
    """Stance per day or week (weeks start on Monday): columns `period` (first day), then the summary columns.

    The date column may hold dates or strings (parsed with `parse_dates`; unreadable ones are logged). Rows without
    a date are left out and counted in the log. Only periods with sentences appear (no empty rows in between).
    """
    if date_column not in sentences.columns:
        raise PipelineError(f"timeline: sentence rows have no {date_column!r} column; carry the input's date "
                            "column through predict, or set predict.timeline=none")
    dates = sentences[date_column]
    if not pd.api.types.is_datetime64_any_dtype(dates):
        dates, errors = parse_dates(dates, source=f"column {date_column!r}")
        for message in errors[:10]:
            log.warning(message)
        if len(errors) > 10:
            log.warning("… and %d more unreadable dates", len(errors) - 10)
    elif getattr(dates.dt, "tz", None) is not None:
        dates = dates.dt.tz_convert("UTC").dt.tz_localize(None)
    undated = int(dates.isna().sum())
    if undated:
        log.warning("timeline: %d of %d sentences have no usable date and are left out", undated, len(dates))
    group = grouped_articles if per_article else grouped_summary
    return group(sentences, period_start(dates, freq), "period", n_boot=n_boot, ci=ci, seed=seed, labels=labels)


def by_outlet(sentences: pd.DataFrame, *, outlet_column: str = "outlet", n_boot: int = 1000, ci: float = 0.95,
              seed: int = 0, labels: Sequence[str] = LABELS, per_article: bool = False) -> pd.DataFrame:
    """Stance per outlet: columns `outlet`, then the summary columns; most sentences first, ties by name.

    Rows with a missing or blank outlet are left out and counted in the log. `per_article=True`: the rows are
    per-article sums (see `grouped_articles`) instead of sentences; the same for `timeline`."""
    if outlet_column not in sentences.columns:
        raise PipelineError(f"by_outlet: sentence rows have no {outlet_column!r} column; carry the input's outlet "
                            "column through predict")
    outlets = sentences[outlet_column].astype("string").str.strip()
    outlets = outlets.mask(outlets == "")
    unknown = int(outlets.isna().sum())
    if unknown:
        log.warning("by_outlet: %d of %d sentences have no outlet and are left out", unknown, len(outlets))
    group = grouped_articles if per_article else grouped_summary
    out = group(sentences, outlets.astype(object), "outlet", n_boot=n_boot, ci=ci, seed=seed, labels=labels)
    return out.sort_values(["n_sentences", "outlet"], ascending=[False, True], kind="stable").reset_index(drop=True)
