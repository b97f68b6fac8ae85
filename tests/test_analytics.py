import logging
import math

import numpy as np
import pandas as pd
import pytest

from pipeline.prediction.analytics import by_outlet, grouped_summary, parse_dates, period_start, timeline
from pipeline.core.errors import PipelineError


def _rows():
    # article, date (mixed formats), outlet, label, p_negative, p_positive → net
    data = [
        ("A", "2022-01-27", "X", "positive", 0.1, 0.8),        # +0.7
        ("A", "2022-01-27", "X", "negative", 0.7, 0.1),        # -0.6
        ("B", "27/01/2022", "Y", "neutral", 0.2, 0.2),         #  0.0
        ("C", "2022-01-28T10:00:00Z", "X", "positive", 0.05, 0.9),  # +0.85
    ]
    df = pd.DataFrame(data, columns=["article_id", "date", "outlet", "label", "p_negative", "p_positive"])
    df["p_neutral"] = 1 - df["p_negative"] - df["p_positive"]
    return df


def test_parse_dates_formats_and_errors():
    values = pd.Series(["2022-01-27", "2022-01-27T10:00:00Z", "27/01/2022", "05-02-2022", "2022/02/05", "",
                        None, "yesterday", "31/02/2022", "٢٧/٠١/٢٠٢٢", "2022-01-27T23:30:00+03:00"],
                       index=range(2, 13))
    parsed, errors = parse_dates(values, source="news.csv")
    expected = ["2022-01-27", "2022-01-27 10:00", "2022-01-27", "2022-02-05", "2022-02-05", None, None, None, None,
                "2022-01-27", "2022-01-27 20:30"]
    assert [None if pd.isna(x) else x for x in parsed] == [None if e is None else pd.Timestamp(e) for e in expected]
    assert pd.api.types.is_datetime64_any_dtype(parsed)
    assert list(parsed.index) == list(values.index)
    assert len(errors) == 2  # empty and None are missing, not errors
    assert errors[0].startswith("news.csv row 9: cannot read date 'yesterday'")
    assert "DD/MM/YYYY" in errors[0] and "YYYY-MM-DD" in errors[0]
    assert "row 10" in errors[1] and "31/02/2022" in errors[1]


def test_timeline_by_day_computed_by_hand():
    out = timeline(_rows(), "day", n_boot=2000, seed=3)
    assert list(out["period"]) == [pd.Timestamp("2022-01-27"), pd.Timestamp("2022-01-28")]
    day1, day2 = out.iloc[0], out.iloc[1]
    assert (day1["n_articles"], day1["n_sentences"]) == (2, 3)
    assert (day2["n_articles"], day2["n_sentences"]) == (1, 1)
    for label in ("negative", "neutral", "positive"):
        assert day1[f"share_{label}"] == pytest.approx(1 / 3)
    assert (day2["share_positive"], day2["share_negative"]) == (1.0, 0.0)
    assert day1["net_stance"] == pytest.approx((0.7 - 0.6 + 0.0) / 3)
    assert day2["net_stance"] == pytest.approx(0.85)
    # Article bootstrap on day 1: AA → 0.1/4, AB → 0.1/3, BB → 0/2; each extreme has probability 1/4, so the
    # 95 % percentile interval is exactly [0, 0.05] (a sentence bootstrap would reach −0.6 and +0.7).
    assert day1["net_stance_ci_low"] == pytest.approx(0.0)
    assert day1["net_stance_ci_high"] == pytest.approx(0.05)
    # a single article: no spread to measure → NaN bounds
    assert math.isnan(day2["net_stance_ci_low"]) and math.isnan(day2["net_stance_ci_high"])


def test_timeline_by_week_starts_on_monday():
    df = _rows()
    extra = df.iloc[[3]].assign(article_id="D", date="30/01/2022")  # Sunday → week of Monday 24 Jan
    later = df.iloc[[3]].assign(article_id="E", date="2022-01-31")  # Monday → its own week
    out = timeline(pd.concat([df, extra, later], ignore_index=True), "week", n_boot=200)
    assert list(out["period"]) == [pd.Timestamp("2022-01-24"), pd.Timestamp("2022-01-31")]
    assert list(out["n_articles"]) == [4, 1]
    assert list(out["n_sentences"]) == [5, 1]
    assert out.iloc[0]["net_stance"] == pytest.approx((0.7 - 0.6 + 0.0 + 0.85 + 0.85) / 5)
    assert list(period_start(pd.Series([pd.Timestamp("2022-01-24"), pd.Timestamp("2022-01-30 23:59")]), "week")) == \
        [pd.Timestamp("2022-01-24")] * 2


def test_bootstrap_contains_estimate_and_is_deterministic_by_seed():
    rng = np.random.default_rng(0)
    n = 60
    df = pd.DataFrame({"article_id": [f"a{i // 4}" for i in range(n)], "date": "2022-01-27",
                       "label": rng.choice(["negative", "neutral", "positive"], n)})
    df["p_positive"] = rng.uniform(0, 0.6, n)
    df["p_negative"] = rng.uniform(0, 0.4, n)
    a = timeline(df, n_boot=500, seed=7)
    b = timeline(df, n_boot=500, seed=7)
    c = timeline(df, n_boot=500, seed=8)
    pd.testing.assert_frame_equal(a, b)
    assert a.iloc[0]["net_stance_ci_low"] != c.iloc[0]["net_stance_ci_low"]
    row = a.iloc[0]
    assert row["net_stance_ci_low"] < row["net_stance"] < row["net_stance_ci_high"]
    # adding another day does not move this day's interval (the stream depends on the group key, not its position)
    more = pd.concat([df.assign(date="2022-01-20", article_id=df["article_id"] + "x"), df], ignore_index=True)
    pd.testing.assert_series_equal(timeline(more, n_boot=500, seed=7).iloc[1], row, check_names=False)


def test_by_outlet_and_shared_summary(caplog):
    df = _rows()
    df.loc[len(df)] = {"article_id": "F", "date": "", "outlet": " ", "label": "neutral", "p_negative": 0.3,
                       "p_positive": 0.3, "p_neutral": 0.4}
    with caplog.at_level(logging.WARNING):
        out = by_outlet(df, n_boot=500)
    assert "1 of 5 sentences have no outlet" in caplog.text
    assert list(out["outlet"]) == ["X", "Y"]  # most sentences first
    x = out.iloc[0]
    assert (x["n_articles"], x["n_sentences"]) == (2, 3)
    assert x["net_stance"] == pytest.approx((0.7 - 0.6 + 0.85) / 3)
    assert x["share_positive"] == pytest.approx(2 / 3) and x["share_neutral"] == 0
    # same numbers as the generic function keyed by outlet
    direct = grouped_summary(df, df["outlet"].where(df["outlet"].str.strip() != ""), "outlet", n_boot=500)
    pd.testing.assert_frame_equal(direct.set_index("outlet").loc[["X", "Y"]].reset_index(), out)


def test_undated_rows_left_out_and_bad_input_refused(caplog):
    df = _rows()
    df.loc[1, "date"] = "not a date"
    with caplog.at_level(logging.WARNING):
        out = timeline(df, n_boot=0)
    assert "row 1: cannot read date 'not a date'" in caplog.text
    assert out["n_sentences"].sum() == 3
    assert out["net_stance_ci_low"].isna().all()  # n_boot=0: no interval
    with pytest.raises(PipelineError, match="date"):
        timeline(df.drop(columns="date"))
    with pytest.raises(PipelineError, match="frequency"):
        timeline(df, "month")
    empty = timeline(df.iloc[:0])
    assert empty.empty and "net_stance_ci_high" in empty.columns
