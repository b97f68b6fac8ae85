"""Whole-article prediction on Spark (pipeline.prediction.spark_articles, the spark_predict stage) on local[2] = the local
predict stage, row for row: sentence rows, per-article summary and error rows, for the seed articles and edge cases.

Needs the `spark` extra (`pip install -e ".[spark]"`) and a Java runtime; skipped with the reason otherwise.
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from conftest import SEEDS
from pipeline.core.errors import PipelineError
from pipeline import LABELS
from test_inference import make_stance_model

pytestmark = pytest.mark.slow

PROBS = ["p_negative", "p_neutral", "p_positive"]
BOILERPLATE_ONLY = "نهاية الرسالة\nجميع الحقوق محفوظة لموقع الأخبار\n...\n"


@pytest.fixture(scope="module")
def logged_model(tmp_path_factory):
    """A tiny stance model logged under a train run (whose config.yaml gives the segmentation rules)."""
    from pipeline.core import tracking
    from pipeline.core.config import compose_config
    from pipeline.models.store import log_stance_model

    root = tmp_path_factory.mktemp("spark-model")
    store = [f"tracking.uri=sqlite:///{root}/mlruns/mlflow.db", f"tracking.artifact_root={root}/mlruns/artifacts",
             f"paths.output_root={root}/outputs"]
    cfg = compose_config("train", [*store, f"paths.run_dir={root}/run"])
    with tracking.start_run(cfg, "spark-articles-model"):  # logs config.yaml: its segment rules
        info = log_stance_model(make_stance_model(root / "model"))
    return info.model_uri, store


def articles_dir(tmp_path):
    folder = tmp_path / "articles"
    folder.mkdir()
    for path in sorted(SEEDS.glob("*.txt")):
        shutil.copy(path, folder / path.name)
    (folder / "empty.txt").write_text("", encoding="utf-8")
    (folder / "boilerplate.txt").write_text(BOILERPLATE_ONLY, encoding="utf-8")
    (folder / "english.txt").write_text("No Arabic here.\n", encoding="utf-8")
    (folder / "cp1256.txt").write_bytes("روسيا ترفض الرد.".encode("cp1256"))
    (folder / "bom_crlf.txt").write_bytes("\ufeffقالت موسكو إن المحادثات بناءة.\r\nولم يتفق الطرفان بعد؟!\r\n"
                                          .encode("utf-8"))
    (folder / "sub").mkdir()
    shutil.copy(folder / "bom_crlf.txt", folder / "sub" / "bom_crlf.txt")  # a second article with the same id
    return folder


def sentence_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(["article_id", "idx"]).reset_index(drop=True)


def assert_same_rows(spark_rows: pd.DataFrame, local_rows: pd.DataFrame, key: list[str]) -> None:
    got = spark_rows.sort_values(key).reset_index(drop=True)
    want = local_rows.sort_values(key).reset_index(drop=True)
    assert list(got.columns) == list(want.columns)
    assert len(got) == len(want) > 0
    floats = [c for c in want.columns if want[c].dtype == np.float64]
    others = [c for c in want.columns if c not in floats]
    pd.testing.assert_frame_equal(got[others], want[others], check_dtype=False)
    np.testing.assert_allclose(got[floats].to_numpy(), want[floats].to_numpy(), atol=1e-6, rtol=0)


def errors_set(frame: pd.DataFrame) -> set[tuple]:
    return {tuple(str(v) for v in row) for row in frame[["source", "article_id", "sentence_id", "reason",
                                                           "message"]].itertuples(index=False)}


def test_spark_job_equals_the_local_predict_stage_row_for_row(spark, make_cfg, logged_model, tmp_path, capsys):
    from pipeline.stages.predict import predict
    from pipeline.stages.spark_predict import spark_predict

    uri, store = logged_model
    folder = articles_dir(tmp_path)
    local = predict(make_cfg("predict", *store, f"input={folder}", f"output={tmp_path}/local.parquet",
                             f"model_uri={uri}"))
    capsys.readouterr()
    report = spark_predict(make_cfg("spark_predict", *store, f"input={folder}", f"output={tmp_path}/spark",
                                    f"model_uri={uri}", "spark.arrow_batch_articles=3"))
    line = capsys.readouterr().out.strip().splitlines()[-1]  # its summary: what, where, the model, what next
    assert line.startswith(f"spark_predict: {report['articles']} articles, {report['sentences']} sentences → "
                           f"{tmp_path}/spark (+ {tmp_path}/spark.articles, {tmp_path}/spark.errors: ")
    assert f"model {uri}; next: read them with spark.read.parquet" in line

    local_rows = pd.read_parquet(local["output"])
    spark_rows = pd.read_parquet(tmp_path / "spark")
    assert set(local_rows["article_id"]) == {p.stem for p in SEEDS.glob("*.txt")} | {"bom_crlf"}
    assert local_rows["truncated"].any()  # max_length 24: truncation is part of the comparison
    assert {"confidence", "confident", "rules_fired", "path"} <= set(local_rows.columns)
    assert local_rows["rules_fired"].astype(bool).any()  # the lexicon shipped to the executors is used
    assert_same_rows(spark_rows, local_rows, ["article_id", "idx"])

    assert_same_rows(pd.read_parquet(tmp_path / "spark.articles"), pd.read_parquet(local["summary"]), ["article_id"])

    local_errors = pd.read_csv(local["errors"], dtype=str, keep_default_na=False)
    spark_errors = pd.read_parquet(tmp_path / "spark.errors").fillna("")
    assert errors_set(spark_errors) == errors_set(local_errors)
    assert {"empty", "no_sentences", "no_arabic", "not_utf8", "duplicate_article", "truncated"} \
        <= set(spark_errors["reason"])
    assert report["articles"] == len(pd.read_parquet(local["summary"]))
    assert report["sentences"] == len(local_rows)


def test_table_of_articles_keeps_metadata_and_partitions(spark, make_cfg, logged_model, tmp_path):
    from pipeline.stages.predict import predict
    from pipeline.stages.spark_predict import spark_predict

    uri, store = logged_model
    seeds = sorted(SEEDS.glob("*.txt"))
    table = pd.DataFrame({"article_id": [p.stem for p in seeds],
                          "text": [p.read_text(encoding="utf-8") for p in seeds],
                          "outlet": ["a", "b", "a", "b", "a"],
                          "date": ["2022-01-27", "27/01/2022", "", "2022-01-28", "2022-01-31"]})
    table.to_json(tmp_path / "articles.jsonl", orient="records", lines=True, force_ascii=False)
    # predict.explain=true: the analyst columns, top_words included, come from the same Enricher on the executors
    local = predict(make_cfg("predict", *store, f"input={tmp_path}/articles.jsonl",
                             f"output={tmp_path}/local.parquet", f"model_uri={uri}", "predict.explain=true"))
    spark_predict(make_cfg("spark_predict", *store, f"input={tmp_path}/articles.jsonl", f"output={tmp_path}/out",
                           f"model_uri={uri}", "spark.partition_by=[outlet]", "predict.explain=true"))

    assert sorted(p.name for p in (tmp_path / "out").glob("outlet=*")) == ["outlet=a", "outlet=b"]
    got = pd.read_parquet(tmp_path / "out")
    outlet = dict(zip(table["article_id"], table["outlet"]))
    assert (got["outlet"].astype(str) == got["article_id"].map(outlet)).all()
    got["outlet"] = got["outlet"].astype(str).astype(object)  # a partition column reads back as a category
    local_rows = pd.read_parquet(local["output"])
    assert {"outlet", "confidence", "confident", "rules_fired", "top_words"} <= set(local_rows.columns)
    assert local_rows["top_words"].astype(bool).any()
    assert_same_rows(got[list(local_rows.columns)], local_rows, ["article_id", "idx"])
    import pyarrow as pa
    import pyarrow.parquet as pq

    assert pq.read_schema(local["output"]).field("date").type == pa.date32()  # dates in parquet, both ways
    assert pa.types.is_date(pq.read_table(tmp_path / "out").schema.field("date").type)
    summary = pd.read_parquet(tmp_path / "out.articles")
    assert (summary["outlet"].astype(str) == summary["article_id"].map(outlet)).all()


def test_bad_requests_are_one_clear_error(spark, make_cfg, logged_model, tmp_path):
    from pipeline.stages.spark_predict import spark_predict

    uri, store = logged_model
    pd.DataFrame({"article_id": ["x", "x"], "text": ["نص", "نص آخر"]}).to_parquet(tmp_path / "dup.parquet")
    with pytest.raises(PipelineError, match=r"dup.parquet: article id\(s\) 'x' are on several rows"):
        spark_predict(make_cfg("spark_predict", *store, f"input={tmp_path}/dup.parquet", f"output={tmp_path}/o1",
                               f"model_uri={uri}"))
    pd.DataFrame({"id": ["x"], "body": ["نص"]}).to_parquet(tmp_path / "cols.parquet")
    with pytest.raises(PipelineError, match="no 'article_id', 'text' column .* set spark.id_column"):
        spark_predict(make_cfg("spark_predict", *store, f"input={tmp_path}/cols.parquet", f"output={tmp_path}/o2",
                               f"model_uri={uri}"))
    (tmp_path / "exists").mkdir()
    with pytest.raises(PipelineError, match="already exists; .* spark.mode=overwrite"):
        spark_predict(make_cfg("spark_predict", *store, f"input={tmp_path}/cols.parquet", f"output={tmp_path}/exists",
                               f"model_uri={uri}"))


def test_no_usable_article_is_the_same_error_in_both_stages(spark, make_cfg, logged_model, tmp_path):
    """Issue 17 item 7: spark_predict on an empty directory or on one binary file exited 0 and wrote `_SUCCESS`."""
    from pipeline.stages.predict import predict
    from pipeline.stages.spark_predict import spark_predict

    uri, store = logged_model
    (tmp_path / "empty").mkdir()
    (tmp_path / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    for name, source in (("empty", tmp_path / "empty"), ("binary", tmp_path / "image.txt")):
        with pytest.raises(PipelineError) as local:
            predict(make_cfg("predict", *store, f"input={source}", f"output={tmp_path}/{name}.parquet",
                             f"model_uri={uri}"))
        with pytest.raises(PipelineError) as on_spark:
            spark_predict(make_cfg("spark_predict", *store, f"input={source}", f"output={tmp_path}/{name}-spark",
                                   f"model_uri={uri}", f"paths.run_dir={tmp_path}/run-{name}"))
        said, spark_said = str(local.value), str(on_spark.value)
        assert said.startswith(f"no usable article in input={source}: {source}: "), said
        assert spark_said.split("; see ")[0] == said.split("; see ")[0]
        assert spark_said.endswith(f"; see {tmp_path}/run-{name}/spark_predict_errors.csv for why")
        assert not (tmp_path / f"{name}-spark").exists() and not (tmp_path / f"{name}-spark.articles").exists()
        assert not (tmp_path / f"{name}.parquet").exists()


def test_a_context_model_reads_the_same_contexts_on_spark_as_in_the_local_stage(spark, make_cfg, tmp_path):
    """Issue 22 item 3: the sentence context comes with the model dir (preprocess.json); the Spark job builds each
    article's contexts by the local stage's function before cutting it into chunks, so both give the same rows."""
    from pipeline.core import tracking
    from pipeline.core.config import compose_config
    from pipeline.models.store import log_stance_model
    from pipeline.stages.predict import predict
    from pipeline.stages.spark_predict import spark_predict
    from pipeline.text.preprocess import TextPreprocessor

    store = [f"tracking.uri=sqlite:///{tmp_path}/mlruns/mlflow.db", f"tracking.artifact_root={tmp_path}/mlruns/art",
             f"paths.output_root={tmp_path}/outputs"]
    with tracking.start_run(compose_config("train", [*store, f"paths.run_dir={tmp_path}/run"]), "context-model"):
        uri = log_stance_model(make_stance_model(tmp_path / "model", preprocessor=TextPreprocessor(
            None, context="previous+first"))).model_uri
    local = predict(make_cfg("predict", *store, f"input={SEEDS}", f"output={tmp_path}/local.parquet",
                             f"model_uri={uri}", "predict.chunk_sentences=4"))
    spark_predict(make_cfg("spark_predict", *store, f"input={SEEDS}", f"output={tmp_path}/spark",
                           f"model_uri={uri}", "predict.chunk_sentences=3"))
    local_rows = pd.read_parquet(local["output"])
    assert_same_rows(pd.read_parquet(tmp_path / "spark"), local_rows, ["article_id", "idx"])
    assert "sentence_context_previous+first" not in local_rows.columns


def test_spark_takes_the_precision_and_its_recheck_margin_to_the_executors(spark, make_cfg, logged_model, tmp_path):
    """int8 with a margin that re-scores every sentence of this hesitant tiny model: the local stage's rows are
    fp32's probabilities; executors that lost the margin (or the precision) would write int8's or differ."""
    from pipeline.stages.predict import predict
    from pipeline.stages.spark_predict import spark_predict

    uri, store = logged_model
    settings = ["predict.quantize=int8", "predict.recheck_margin.int8=0.9"]
    local = predict(make_cfg("predict", *store, f"input={SEEDS}", f"output={tmp_path}/local.parquet",
                             f"model_uri={uri}", *settings))
    fp32 = predict(make_cfg("predict", *store, f"input={SEEDS}", f"output={tmp_path}/fp32.parquet", f"model_uri={uri}"))
    int8 = predict(make_cfg("predict", *store, f"input={SEEDS}", f"output={tmp_path}/int8.parquet", f"model_uri={uri}",
                            "predict.quantize=int8", "predict.recheck_margin.int8=0"))
    spark_predict(make_cfg("spark_predict", *store, f"input={SEEDS}", f"output={tmp_path}/spark", f"model_uri={uri}",
                           *settings))
    probs = [f"p_{label}" for label in LABELS]
    rows = {name: sentence_rows(pd.read_parquet(out["output"])) for name, out in
            {"local": local, "fp32": fp32, "int8": int8}.items()}
    # int8 moves this model's probabilities by more than the row comparison's 1e-6; the re-checked rows are fp32's
    assert np.abs(rows["int8"][probs].to_numpy() - rows["fp32"][probs].to_numpy()).max() > 4e-6
    np.testing.assert_allclose(rows["local"][probs].to_numpy(), rows["fp32"][probs].to_numpy(), atol=5e-7)
    assert_same_rows(pd.read_parquet(tmp_path / "spark"), pd.read_parquet(local["output"]), ["article_id", "idx"])
