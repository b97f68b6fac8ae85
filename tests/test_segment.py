"""segment stage: golden output on the seed corpus, splitting rules, boilerplate and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pipeline.core.errors import PipelineError
from pipeline.stages.segment import segment
from pipeline.text.segmentation import SegmentRules, split_sentences

from conftest import REPO, SEEDS

GOLDEN = REPO / "tests" / "golden" / "seed_sentences.jsonl"


def texts(text: str, **rules) -> list[str]:
    return [s.text for s in split_sentences(text, SegmentRules(**rules)).sentences]


def test_seed_corpus_matches_golden_file(make_cfg):
    """Every sentence of the five seed articles, checked by hand: text, ids, offsets."""
    table = segment(make_cfg("segment"))
    expected = pd.read_json(GOLDEN, lines=True, dtype=False)
    assert list(table.columns) == ["article_id", "sentence_id", "idx", "text", "start", "end"]
    assert table.to_dict("records") == expected.to_dict("records")
    assert table["sentence_id"].is_unique


def test_offsets_point_into_the_original_files(make_cfg):
    table = segment(make_cfg("segment"))
    for row in table.itertuples():
        original = (SEEDS / f"{row.article_id}.txt").read_text(encoding="utf-8")
        assert " ".join(original[row.start:row.end].split()) == row.text


def test_segment_report_counts_every_removal(make_cfg):
    cfg = make_cfg("segment")
    segment(cfg)
    report = json.loads((Path(cfg.paths.run_dir) / "segment_report.json").read_text(encoding="utf-8"))
    assert report["articles_read"] == 5 and report["articles_skipped"] == 0
    assert report["sentences_kept"] == 74
    # site header + editor name + a caption, each printed twice in article 003; comment form and
    # "end of message" in article 002; stray dots.
    assert report["sentences_removed"] == {"boilerplate_pattern": 4, "punctuation_only": 2, "repeated_line": 6}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("قال الوزير إن المحادثات مثمرة. وأضاف أنها ستستمر!", ["قال الوزير إن المحادثات مثمرة.", "وأضاف أنها ستستمر!"]),
        ("هل هناك رد؟ لم يصل بعد", ["هل هناك رد؟", "لم يصل بعد"]),
        ("انتظروا… ثم جاء الرد", ["انتظروا…", "ثم جاء الرد"]),
        ("انتظروا... ثم جاء الرد", ["انتظروا...", "ثم جاء الرد"]),
        ("قال، إن الرد سلبي؛ وأضاف أن الحوار مستمر", ["قال، إن الرد سلبي؛ وأضاف أن الحوار مستمر"]),
        ("ارتفع المؤشر 2.5 نقطة في 22.7.2020 أمس.", ["ارتفع المؤشر 2.5 نقطة في 22.7.2020 أمس."]),
        ("قال د. أحمد إن م. علي وصل. ثم غادر", ["قال د. أحمد إن م. علي وصل.", "ثم غادر"]),
        ('وقال "لا يوجد رد إيجابي." ثم غادر', ['وقال "لا يوجد رد إيجابي."', "ثم غادر"]),
        ("وقال (هذا مهم جدا.) ثم غادر", ["وقال (هذا مهم جدا.)", "ثم غادر"]),
        ("قال «انتهى الأمر؟!» وغادر", ["قال «انتهى الأمر؟!»", "وغادر"]),
        ("السطر الأول\nالسطر الثاني", ["السطر الأول", "السطر الثاني"]),
        ("جملة أولى.\n\n.\n\nجملة ثانية", ["جملة أولى.", "جملة ثانية"]),
    ],
)
def test_sentence_boundaries(text, expected):
    assert texts(text) == expected


def test_blank_line_paragraphs_join_wrapped_lines():
    text = "هذا سطر\nمكسور في الوسط.\n\nفقرة ثانية"
    assert texts(text, paragraph_break="blank_line") == ["هذا سطر مكسور في الوسط.", "فقرة ثانية"]
    assert texts(text) == ["هذا سطر", "مكسور في الوسط.", "فقرة ثانية"]


def test_configured_abbreviations_do_not_end_sentences():
    assert texts("راسلونا على ص.ب. 123 في القاهرة", abbreviations=("ص.ب",)) == ["راسلونا على ص.ب. 123 في القاهرة"]


def test_boilerplate_repeated_lines_and_patterns():
    text = "\n".join([
        "رئيس التحرير", "رئيس التحرير",                # short header printed twice: all copies go
        "جملة طويلة مكررة في المقال بسبب خطأ في النسخ من الموقع.",
        "الخبر الأساسي هنا.",
        "جملة طويلة مكررة في المقال بسبب خطأ في النسخ من الموقع.",
        "نهاية الرسالة",
    ])
    seg = split_sentences(text, SegmentRules(boilerplate_patterns=("^نهاية الرسالة$",), repeated_line_max_words=3))
    assert [s.text for s in seg.sentences] == [
        "جملة طويلة مكررة في المقال بسبب خطأ في النسخ من الموقع.",
        "الخبر الأساسي هنا.",
    ]
    assert seg.removed == {"repeated_line": 2, "duplicate_line": 1, "boilerplate_pattern": 1}


def test_bom_and_crlf_are_accepted_and_offsets_index_the_decoded_text(tmp_path, make_cfg):
    body = "السطر الأول هنا.\r\nالسطر الثاني هنا؟\r\n"
    (tmp_path / "a.txt").write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))
    table = segment(make_cfg("segment", f"data.articles_glob={tmp_path}/*.txt"))
    assert table["text"].tolist() == ["السطر الأول هنا.", "السطر الثاني هنا؟"]
    for row in table.itertuples():
        assert body[row.start:row.end] == row.text


def test_bad_files_are_reported_and_skipped(tmp_path, make_cfg, caplog):
    (tmp_path / "good.txt").write_text("هذه جملة عربية.", encoding="utf-8")
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "latin1.txt").write_bytes("café é".encode("latin-1"))
    (tmp_path / "cp1256.txt").write_bytes("مرحبا بكم".encode("cp1256"))
    (tmp_path / "english.txt").write_text("No Arabic here.", encoding="utf-8")
    (tmp_path / "binary.txt").write_bytes(b"\x00\x01\x02abc")
    cfg = make_cfg("segment", f"data.articles_glob={tmp_path}/*.txt")
    table = segment(cfg)
    assert table["article_id"].unique().tolist() == ["good"]
    report = json.loads((Path(cfg.paths.run_dir) / "segment_report.json").read_text(encoding="utf-8"))
    assert {Path(p).name: r for p, r in report["skipped"].items()} == {
        "empty.txt": "empty", "latin1.txt": "not_utf8", "cp1256.txt": "not_utf8",
        "english.txt": "no_arabic", "binary.txt": "binary",
    }
    assert "cp1256.txt" in caplog.text and "UTF-8" in caplog.text


def test_no_usable_article_fails_with_the_reasons(tmp_path, make_cfg):
    (tmp_path / "empty.txt").write_bytes(b"  \n")
    with pytest.raises(PipelineError, match="empty.txt: empty"):
        segment(make_cfg("segment", f"data.articles_glob={tmp_path}/*.txt"))
    with pytest.raises(PipelineError, match="no article matches"):
        segment(make_cfg("segment", f"data.articles_glob={tmp_path}/nothing/*.txt"))


def test_output_is_replaced_atomically(tmp_path, make_cfg):
    cfg = make_cfg("segment")
    segment(cfg)
    leftovers = [p.name for p in Path(cfg.paths.sentences).parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []
