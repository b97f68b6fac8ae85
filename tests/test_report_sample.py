"""The report's bounded sample (issue 21): at most articles x 3 x per_article sentences whatever the input size,
the right extremes, the same page however the output is chunked, and predict streaming it from its output."""

import re

import numpy as np
import pandas as pd
from hypothesis import given, settings, strategies as st

from pipeline import LABELS
from pipeline.prediction.report import render_html, render_sample
from pipeline.prediction.report_sample import ReportSample
from test_predict import run_predict, store  # noqa: F401 (fixtures)


def sentences(n: int, n_articles: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    # coarse probabilities, so that ties happen and their order is checked too
    p = rng.dirichlet([1, 1, 1], size=n).round(1)
    p[:, 1] = 1 - p[:, 0] - p[:, 2]
    frame = pd.DataFrame({"article_id": [f"a{i}" for i in rng.integers(0, n_articles, n)],
                          "text": [f"جملة رقم {i}" for i in range(n)],
                          "p_negative": p[:, 0], "p_neutral": p[:, 1], "p_positive": p[:, 2]})
    frame["idx"] = frame.groupby("article_id").cumcount()
    frame["sentence_id"] = frame["article_id"] + ":" + frame["idx"].astype(str)
    frame["label"] = np.array(LABELS)[p.argmax(axis=1)]
    frame["confidence"] = p.max(axis=1)
    frame["confident"] = frame["confidence"] >= 0.6
    return frame


def shown_ids(text: str) -> list[str]:
    articles = text.split('<section id="articles">', 1)[1]
    return re.findall(r'data-sentence-id="([^"]+)"', articles)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 400), n_articles=st.integers(1, 8), per_article=st.integers(1, 4), seed=st.integers(0, 99))
def test_shown_sentences_bounded_by_articles_times_bound(n, n_articles, per_article, seed):
    frame = sentences(n, n_articles, seed)
    text = render_html(frame, frame.iloc[:0], per_article=per_article)
    ids = shown_ids(text)
    assert len(ids) == len(set(ids))
    assert len(ids) <= frame["article_id"].nunique() * 3 * per_article
    shown = {int(x) for x in re.findall(r'data-shown="(\d+)"', text)}
    assert max(shown) <= 3 * per_article
    # the page says how many it shows out of how many
    totals = [int(x) for x in re.findall(r'data-sentences="(\d+)"', text)]
    assert sum(totals) == n


def test_chosen_sentences_are_the_extremes_of_a_pandas_sort():
    frame = sentences(3000, 6, seed=1)
    n = 4
    sample = ReportSample(LABELS, per_article=n, top_n=7)
    for start in range(0, len(frame), 128):
        sample.add(frame.iloc[start:start + 128])
    net = frame.assign(net=frame["p_positive"] - frame["p_negative"])
    expected = set()
    for _, group in net.groupby("article_id"):
        expected |= set(group.sort_values("net", ascending=False, kind="stable")["sentence_id"].head(n))
        expected |= set(group.sort_values("net", ascending=True, kind="stable")["sentence_id"].head(n))
        expected |= set(group.sort_values("confidence", ascending=True, kind="stable")["sentence_id"].head(n))
    assert set(sample.kept["sentence_id"]) == expected
    top = net[net["net"] > 0].sort_values("net", ascending=False, kind="stable")["sentence_id"].head(7).tolist()
    bottom = net[net["net"] < 0].sort_values("net", ascending=True, kind="stable")["sentence_id"].head(7).tolist()
    assert sample.most(1)["sentence_id"].tolist() == top
    assert sample.most(-1)["sentence_id"].tolist() == bottom
    assert sample.n_sentences == len(frame) and sample.n_low == int((~frame["confident"]).sum())


def test_chunked_reading_gives_the_same_page_as_one_chunk():
    frame = sentences(600, 5, seed=2)
    articles = pd.DataFrame({"article_id": sorted(frame["article_id"].unique(), reverse=True)})
    whole = render_html(frame, articles, per_article=3, top_n=5)
    for size in (1, 7, 250):
        sample = ReportSample(LABELS, per_article=3, top_n=5)
        for start in range(0, len(frame), size):
            sample.add(frame.iloc[start:start + size])
        assert render_sample(sample, articles) == whole, size


def test_predict_report_streams_a_bounded_sample(run_predict, tmp_path):
    long_text = "\n".join(f"قال المسؤول إن المحادثات رقم {i} تتقدم." for i in range(40))
    pd.DataFrame({"article_id": ["long", "short"], "text": [long_text, "رفض الوفد العرض."]}).to_csv(
        tmp_path / "s.csv", index=False)
    out = tmp_path / "p.csv"
    report = run_predict(f"input={tmp_path}/s.csv", f"output={out}", "predict.report=true",
                         "predict.report_sentences_per_article=2", "predict.chunk_sentences=8")
    text = open(report["report"], encoding="utf-8").read()
    ids = shown_ids(text)
    output = pd.read_csv(out)
    assert len(output) == 41
    assert len(ids) <= 2 * 3 * 2 and output.loc[output["article_id"] == "short", "sentence_id"].iloc[0] in ids
    assert re.search(r'data-sentences="40" data-shown="[1-6]"', text)
    kept = set(ids) & set(output.loc[output["article_id"] == "long", "sentence_id"])
    net = (output["p_positive"] - output["p_negative"]).where(output["article_id"] == "long")
    assert output.loc[net.idxmax(), "sentence_id"] in kept and output.loc[net.idxmin(), "sentence_id"] in kept


def test_bad_bound_is_refused_before_any_work(run_predict, tmp_path):
    pd.DataFrame({"text": ["رفض الوفد العرض."]}).to_csv(tmp_path / "s.csv", index=False)
    error = run_predict(f"input={tmp_path}/s.csv", f"output={tmp_path}/p.csv", "predict.report=true",
                        "predict.report_sentences_per_article=0", expect_error=True)
    assert "predict.report_sentences_per_article=0" in str(error)
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "p.errors.csv").exists()
