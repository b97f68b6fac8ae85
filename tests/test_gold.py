"""Gold labels: the shipped file is complete and valid; the loader refuses every kind of bad file."""

from __future__ import annotations

import pandas as pd
import pytest

from pipeline import LABELS
from pipeline.labeling.gold import GOLD_COLUMNS, GoldLabelError, label_distribution, load_gold

from conftest import REPO

GOLDEN = REPO / "tests" / "golden" / "seed_sentences.jsonl"


@pytest.fixture
def sentences():
    return pd.read_json(GOLDEN, lines=True, dtype=False)


def write_csv(path, rows, columns=GOLD_COLUMNS):
    pd.DataFrame(rows, columns=columns).to_csv(path, index=False)
    return path


def test_shipped_gold_labels_every_seed_sentence(sentences):
    gold = load_gold(REPO / "labels" / "gold.csv", sentences)
    assert set(gold["sentence_id"]) == set(sentences["sentence_id"])
    assert set(gold["label"]) == set(LABELS)
    merged = gold.merge(sentences, on="sentence_id", suffixes=("", "_seg"))
    assert (merged["text"] == merged["text_seg"]).all()
    assert (merged["article_id"] == merged["article_id_seg"]).all()
    counts = label_distribution(gold["label"])["count"].to_dict()
    assert counts == {"negative": 20, "neutral": 42, "positive": 12}  # as stated in the README


def row(sentences, i, label, note=""):
    s = sentences.iloc[i]
    return [s.sentence_id, s.article_id, s.text, label, note]


def test_unknown_label_names_file_and_line(tmp_path, sentences):
    path = write_csv(tmp_path / "gold.csv", [row(sentences, 0, "neutral"), row(sentences, 1, "postive")])
    with pytest.raises(GoldLabelError, match=r"gold.csv:3: unknown label 'postive'.*negative, neutral, positive"):
        load_gold(path, sentences)


def test_labels_are_case_and_space_tolerant(tmp_path, sentences):
    path = write_csv(tmp_path / "gold.csv", [row(sentences, 0, " Positive ")])
    assert load_gold(path, sentences)["label"].tolist() == ["positive"]


def test_missing_column(tmp_path, sentences):
    path = write_csv(tmp_path / "gold.csv", [row(sentences, 0, "neutral")[:4]], GOLD_COLUMNS[:4])
    with pytest.raises(GoldLabelError, match=r"gold.csv:1: missing column\(s\) note"):
        load_gold(path)


def test_conflicting_duplicates_are_an_error_but_exact_repeats_are_not(tmp_path, sentences):
    path = write_csv(tmp_path / "gold.csv", [row(sentences, 0, "neutral"), row(sentences, 0, "neutral")])
    assert len(load_gold(path, sentences)) == 1
    path = write_csv(tmp_path / "gold.csv", [row(sentences, 0, "neutral"), row(sentences, 0, "negative")])
    with pytest.raises(GoldLabelError, match=r"gold.csv:3: .* labelled 'negative' here but 'neutral' on line 2"):
        load_gold(path, sentences)


def test_stale_ids_are_all_listed(tmp_path, sentences):
    rows = [row(sentences, 0, "neutral"), ["000_x:deadbeef0001", "000_x", "قديم", "neutral", ""],
            ["000_x:deadbeef0002", "000_x", "قديم ايضا", "negative", ""]]
    path = write_csv(tmp_path / "gold.csv", rows)
    with pytest.raises(GoldLabelError) as err:
        load_gold(path, sentences)
    message = str(err.value)
    assert "2 labelled sentence id(s) no longer match" in message
    assert "gold.csv:3: 000_x:deadbeef0001" in message and "gold.csv:4: 000_x:deadbeef0002" in message


def test_bad_encoding_and_empty_file(tmp_path):
    (tmp_path / "gold.csv").write_bytes("sentence_id,label\nx,سلبي\n".encode("cp1256"))
    with pytest.raises(GoldLabelError, match="not valid UTF-8"):
        load_gold(tmp_path / "gold.csv")
    (tmp_path / "gold.csv").write_text("", encoding="utf-8")
    with pytest.raises(GoldLabelError, match="empty"):
        load_gold(tmp_path / "gold.csv")
    with pytest.raises(GoldLabelError, match="not found"):
        load_gold(tmp_path / "missing.csv")


def test_iconv_hint_names_the_likely_encoding(tmp_path):
    arabic = tmp_path / "arabic.csv"
    arabic.write_bytes("sentence_id,label\nx,قال الوزير إن الاتفاق مهم\n".encode("cp1256"))
    with pytest.raises(GoldLabelError, match="iconv -f WINDOWS-1256 -t UTF-8 arabic.csv"):
        load_gold(arabic)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("sentence_id,label\nx,Le café est très élégant\n".encode("latin-1"))
    with pytest.raises(GoldLabelError, match="iconv -f ISO-8859-1 -t UTF-8 latin.csv"):
        load_gold(latin)


def test_header_only_gold_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "gold.csv"
    path.write_text("sentence_id,article_id,text,label,note\n", encoding="utf-8")
    with pytest.raises(GoldLabelError, match=r"gold.csv: no labelled rows, only the header"):
        load_gold(path)
