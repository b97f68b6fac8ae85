"""predict's table inputs read into articles (pipeline.prediction.inputs) without a model: missing cells mean the same
in every format, and sentence ids are unique per article however the table is read in pieces (issue 18 item 5)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.prediction.inputs import ArticleReader
from pipeline.prediction.outputs import ErrorLog
from pipeline.text.segmentation import SegmentRules

ARTICLE = "رحبت موسكو بالتقدم في المحادثات. وقال المتحدث إن الطرفين اتفقا على مواصلة الحوار."
OTHER = "رفضت روسيا المقترح الأمريكي."
# An article table with missing ids and a missing text: None is a null cell (an empty cell in CSV).
ROWS = [{"article_id": None, "text": ARTICLE, "outlet": "a"},
        {"article_id": None, "text": OTHER, "outlet": None},
        {"article_id": "k", "text": None, "outlet": "b"},
        {"article_id": "m", "text": OTHER, "outlet": "c"}]


def write(rows: list[dict], path: Path) -> Path:
    """The same rows as CSV (empty cells), JSON lines (null) or parquet (null)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        pd.DataFrame(rows).to_csv(path, index=False)          # None → an empty cell
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def read(make_cfg, path: Path, *overrides: str) -> tuple[list, list[dict]]:
    errors = ErrorLog()
    reader = ArticleReader(make_cfg("predict", *overrides), SegmentRules(), errors)
    return list(reader.read([path])), errors.rows


def test_missing_ids_and_texts_mean_the_same_in_csv_json_lines_and_parquet(make_cfg, tmp_path):
    seen = {}
    for suffix in (".csv", ".jsonl", ".parquet"):
        articles, errors = read(make_cfg, write(ROWS, tmp_path / suffix[1:] / f"t{suffix}"))
        seen[suffix] = ([(a.article_id, [r["text"] for r in a.rows], a.meta) for a in articles],
                        [(e["article_id"], e["reason"]) for e in errors])
    assert seen[".jsonl"] == seen[".csv"] and seen[".parquet"] == seen[".csv"]
    articles, errors = seen[".csv"]
    # Rows without an id are two articles of their own (not one article "nan"); a missing text is reported, never
    # predicted as the sentence "nan"; a missing carried value is empty.
    assert [a[0] for a in articles] == ["t:1", "t:2", "m"]
    assert not any("nan" in text.lower() or "none" in text.lower() for a in articles for text in a[1])
    assert articles[1][2] == {"outlet": ""}
    assert errors == [("k", "empty")]


def test_missing_sentence_ids_and_texts_in_a_sentence_table(make_cfg, tmp_path):
    rows = [{"article_id": "a", "sentence_id": "a:given", "text": OTHER},
            {"article_id": "a", "sentence_id": None, "text": "اتفق الطرفان على الحوار."},
            {"article_id": "a", "sentence_id": "a:blank", "text": None}]
    seen = {}
    for suffix in (".csv", ".jsonl", ".parquet"):
        articles, errors = read(make_cfg, write(rows, tmp_path / suffix[1:] / f"s{suffix}"))
        seen[suffix] = ([[(r["sentence_id"], r["text"]) for r in a.rows] for a in articles],
                        [(e["sentence_id"], e["reason"]) for e in errors])
    assert seen[".jsonl"] == seen[".csv"] and seen[".parquet"] == seen[".csv"]
    (sentences,), errors = seen[".csv"]
    assert sentences[0] == ("a:given", OTHER) and sentences[1][0].startswith("a:") and sentences[1][0] != "a:nan"
    assert errors == [("a:blank", "empty_sentence")]


def test_sentence_ids_are_unique_per_article_however_the_table_is_chunked(make_cfg, tmp_path):
    """A sentence table without ids and article ids is one article, read predict.chunk_sentences rows at a time;
    a text repeated in two pieces once got the same id twice (the occurrence count restarted per piece)."""
    texts = ["نص مكرر في المقال.", "جملة أولى.", "جملة ثانية.", "نص مكرر في المقال.", "جملة ثالثة.",
             "نص مكرر في المقال."]
    path = write([{"sentence_id": "", "text": t} for t in texts], tmp_path / "one.csv")
    ids = {}
    for chunk in (2, 3, 1000):
        articles, errors = read(make_cfg, path, f"predict.chunk_sentences={chunk}")
        assert not errors
        ids[chunk] = [r["sentence_id"] for a in articles for r in a.rows]
        assert len(ids[chunk]) == len(texts) and len(set(ids[chunk])) == len(texts), chunk
    assert ids[2] == ids[3] == ids[1000]


def test_a_long_article_followed_by_another_keeps_every_row(make_cfg, tmp_path):
    """A sentence table whose first article has more rows than predict.chunk_sentences: its last piece, flushed
    when the next article starts, was taken for a second article of the same id and dropped (8 of 40 rows lost)."""
    texts = [f"الجملة رقم {i} من المقال الطويل." for i in range(40)]
    rows = [{"article_id": "long", "sentence_id": f"s{i}", "text": t} for i, t in enumerate(texts)]
    path = write(rows + [{"article_id": "short", "sentence_id": "x", "text": OTHER}], tmp_path / "t.csv")
    for chunk in (8, 7, 1000):
        articles, errors = read(make_cfg, path, f"predict.chunk_sentences={chunk}")
        assert not errors, chunk
        long_rows = [r for a in articles if a.article_id == "long" for r in a.rows]
        assert [r["text"] for r in long_rows] == texts, chunk
        assert [r["sentence_id"] for r in long_rows] == [f"s{i}" for i in range(40)], chunk
        assert [r["idx"] for r in long_rows] == list(range(40)), chunk
        assert [a.article_id for a in articles][-1] == "short"
