"""CSV for spreadsheet users (issue 20): UTF-8 with a byte-order mark, rounded floats, formula cells neutralised and
restored when the pipeline reads its own CSV back; parquet keeps full precision and types dates as dates."""

from __future__ import annotations

import csv
import datetime
import io
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.config import compose_config
from pipeline.core.errors import PipelineError
from pipeline.core.io import (CsvStyle, neutralise_cell, read_table, restore_cell, write_table_atomic)
from pipeline.prediction.outputs import TableWriter
from test_predict import run_predict, store  # noqa: F401 (fixtures)

BOM = b"\xef\xbb\xbf"
ATTACKS = ["=HYPERLINK(\"http://x\",\"y\")", "+1+2", "-2+3", "@SUM(A1)", "\tTAB", "\rCR", "'=already guarded",
           "'quote only", "=", "-", "- بند أول", "@"]
PLAIN = ["روسيا ترفض العرض", "-0.25", "+3", "1e-4", "", "a=b", "text with = inside"]


def raw_cells(path: Path) -> list[list[str]]:
    """The cells exactly as a spreadsheet sees them (csv module, no pandas clean-up)."""
    text = path.read_bytes().decode("utf-8")
    return list(csv.reader(io.StringIO(text.lstrip("\ufeff"), newline="")))


@pytest.mark.parametrize("text", ATTACKS + PLAIN)
def test_neutralise_and_restore_are_inverse(text):
    guarded = neutralise_cell(text)
    assert restore_cell(guarded) == text
    if text in ATTACKS:
        assert guarded.startswith("'") and guarded[1:] == text
    else:
        assert guarded == text  # plain text and plain numbers are left alone


def test_csv_has_bom_rounded_floats_and_guarded_cells(tmp_path):
    frame = pd.DataFrame({"text": ATTACKS + PLAIN, "p": [1 / 3] * len(ATTACKS + PLAIN),
                          "n": range(len(ATTACKS + PLAIN))})
    frame["=evil header"] = "x"
    path = write_table_atomic(frame, tmp_path / "t.csv")  # the default style = conf/config.yaml's csv section
    data = path.read_bytes()
    assert data.startswith(BOM) and data.count(BOM) == 1
    assert "روسيا ترفض العرض".encode("utf-8") in data
    cells = raw_cells(path)
    assert cells[0] == ["text", "p", "n", "'=evil header"]
    for row, text in zip(cells[1:], ATTACKS + PLAIN):
        assert row[0] == (f"'{text}" if text in ATTACKS else text)
        assert row[1] == "0.3333"  # csv.float_digits=4
    # the pipeline reading its own CSV back gets the original cells
    back = read_table(path, restore=True)
    assert back["text"].tolist() == ATTACKS + PLAIN and "=evil header" in back.columns
    # an input table (someone else's CSV) is read as it is
    assert read_table(path)["text"].iloc[0].startswith("'")


def test_csv_style_comes_from_the_config(tmp_path):
    cfg = compose_config("predict", ["csv.encoding=utf-8", "csv.float_digits=null", "csv.neutralise_formulas=false"])
    style = CsvStyle.from_cfg(cfg)
    assert style == CsvStyle("utf-8", None, False)
    assert CsvStyle.from_cfg(compose_config("predict")) == CsvStyle()  # the config's defaults are the class's
    path = write_table_atomic(pd.DataFrame({"text": ["=1+2"], "p": [1 / 3]}), tmp_path / "t.csv", csv=style)
    assert not path.read_bytes().startswith(BOM)
    assert raw_cells(path)[1] == ["=1+2", str(1 / 3)]
    with pytest.raises(PipelineError, match="csv.encoding"):
        CsvStyle.from_cfg(compose_config("predict", ["csv.encoding=latin-1"]))


def test_appended_csv_has_one_bom_and_one_header(tmp_path):
    path = tmp_path / "parts.csv"
    writer = TableWriter(path, ".csv")
    for chunk in range(3):
        writer.write(pd.DataFrame({"text": [f"=chunk {chunk}"], "p": [0.123456]}))
    writer.close(pd.DataFrame({"text": [], "p": []}))
    data = path.read_bytes()
    assert data.startswith(BOM) and data.count(BOM) == 1
    assert raw_cells(path) == [["text", "p"], ["'=chunk 0", "0.1235"], ["'=chunk 1", "0.1235"], ["'=chunk 2", "0.1235"]]


def test_parquet_dates_are_dates_and_floats_full_precision(tmp_path):
    frame = pd.DataFrame({"date": ["2022-01-27", "", "2022-01-28"], "p": [1 / 3, 0.5, 0.25]})
    path = write_table_atomic(frame, tmp_path / "t.parquet", date_columns=["date", "absent"])
    table = pq.read_table(path)
    assert table.schema.field("date").type == pa.date32()
    assert pd.read_parquet(path)["date"].tolist() == [datetime.date(2022, 1, 27), None, datetime.date(2022, 1, 28)]
    assert table.column("date").null_count == 1
    assert table.column("p").to_pylist()[0] == 1 / 3
    timed = write_table_atomic(pd.DataFrame({"date": ["2022-01-28T10:00:00", ""]}), tmp_path / "u.parquet",
                               date_columns=["date"])
    assert pa.types.is_timestamp(pq.read_table(timed).schema.field("date").type)


def formula_table(path: Path) -> Path:
    pd.DataFrame({
        "article_id": ["a1", "a2"],
        "text": ["=HYPERLINK(\"http://evil\") روسيا ترفض العرض الأمريكي", "واشنطن توافق على الحوار مع موسكو"],
        "date": ["2022-01-27", "28/01/2022"],
        "outlet": ["@الجزيرة", "العربية"],
    }).to_csv(path, index=False)
    return path


def test_predict_csv_outputs_open_in_a_spreadsheet(run_predict, tmp_path):
    table = formula_table(tmp_path / "news.csv")
    out = tmp_path / "out" / "pred.csv"
    report = run_predict(f"input={table}", f"output={out}", "predict.report=true", "predict.bootstrap=20")
    for path in (out, Path(report["summary"]), Path(report["errors"]), Path(report["timeline"]),
                 Path(report["outlets"])):
        assert path.read_bytes().startswith(BOM), path
    rows = raw_cells(out)
    header, body = rows[0], rows[1:]
    text, outlet, p_pos = header.index("text"), header.index("outlet"), header.index("p_positive")
    assert body[0][text].startswith("'=HYPERLINK") and body[0][outlet] == "'@الجزيرة"
    assert all(len(r[p_pos].split(".")[-1]) <= 4 for r in body)
    summary = raw_cells(Path(report["summary"]))
    assert summary[1][summary[0].index("outlet")] == "'@الجزيرة"
    # the report reads the CSV back: the article text as written, without the guard
    html = Path(report["report"]).read_text(encoding="utf-8")
    assert "=HYPERLINK(&quot;http://evil&quot;) روسيا" in html and "&#x27;=HYPERLINK" not in html
    # a resumed run merges the earlier CSV output without guarding its cells twice
    run_predict(f"input={table}", f"output={out}", "predict.resume=true", "predict.bootstrap=20")
    again = raw_cells(out)
    assert again[1][text] == body[0][text] and again[1][outlet] == "'@الجزيرة"


def test_predict_parquet_outputs_type_dates(run_predict, tmp_path):
    table = formula_table(tmp_path / "news.csv")
    out = tmp_path / "pred.parquet"
    report = run_predict(f"input={table}", f"output={out}", "predict.bootstrap=20")
    for path, column in ((out, "date"), (Path(report["summary"]), "date"), (Path(report["timeline"]), "period")):
        assert pq.read_schema(path).field(column).type == pa.date32(), path
    rows = pd.read_parquet(out)
    assert rows["date"].iloc[0] == datetime.date(2022, 1, 27)  # pandas reads them back as dates too
    assert rows["text"].iloc[0].startswith("=HYPERLINK")  # parquet holds the raw text


def test_annotations_store_round_trips_guarded_cells(tmp_path):
    from pipeline.labeling.labelstudio import ANNOTATION_COLUMNS, read_annotations, write_annotations

    row = {"sentence_id": "-a1:0123456789ab", "article_id": "-a1", "text": "=1+2 روسيا", "label": "negative",
           "annotator": "@bob", "annotated_at": "2024-01-01", "source_task": "export.json#task1"}
    path = tmp_path / "annotations.csv"
    write_annotations(pd.DataFrame([row], columns=ANNOTATION_COLUMNS), path)
    cells = raw_cells(path)
    assert cells[1][:3] == ["'-a1:0123456789ab", "'-a1", "'=1+2 روسيا"] and cells[1][4] == "'@bob"
    back = read_annotations(path).iloc[0]
    assert {c: back[c] for c in ANNOTATION_COLUMNS} == row


def test_spark_predicts_csv_is_guarded_too(make_cfg, tmp_path):
    """Issue 17 item 9: spark_predict's CSV (why no article was usable) is written in the one CsvStyle."""
    from pipeline.stages.spark_predict import spark_predict

    attack = '=HYPERLINK("evil.example/x";"x")'
    with pytest.raises(PipelineError, match="no usable article"):
        spark_predict(make_cfg("spark_predict", f"input='{attack}'", f"output={tmp_path}/out",
                               f"paths.run_dir={tmp_path}/run"))
    path = tmp_path / "run" / "spark_predict_errors.csv"
    assert path.read_bytes().startswith(BOM)
    row = raw_cells(path)[1]
    assert row[0] == f"'{attack}" and row[4] == f"'{attack}: no such file or directory"
    assert read_table(path, restore=True)["source"].tolist() == [attack]


def test_no_module_writes_a_csv_but_through_pipeline_io():
    """Issue 17 item 9: one function neutralises formula cells (io.write_csv); nothing else may write a CSV."""
    import ast

    def writes_csv(node) -> bool:
        if not isinstance(node, ast.Attribute):
            return False
        if node.attr == "to_csv":
            return True
        if node.attr in ("writer", "DictWriter") and isinstance(node.value, ast.Name) and node.value.id == "csv":
            return True
        return node.attr == "csv" and "write" in ast.unparse(node.value)  # Spark's DataFrame.write.csv

    package = Path(__file__).resolve().parent.parent / "pipeline"
    offenders = [f"{path.name}:{node.lineno}" for path in sorted(package.rglob("*.py")) if path.name != "io.py"
                 for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))) if writes_csv(node)]
    assert offenders == []
