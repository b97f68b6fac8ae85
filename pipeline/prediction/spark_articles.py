"""Whole-article prediction over a Spark DataFrame: the predict stage's per-article code path, run on executors.

`predict_articles(articles, model_dir, rules=...)` takes a DataFrame of articles — an id column, the text (or the
raw bytes of a file, decoded as strictly as the local stage reads files), and any metadata columns — and returns
three DataFrames:

* `sentences`: the predict stage's output rows (`prediction.outputs.sentence_rows` / `sentence_dtypes`: article_id,
  sentence_id, idx, text, label, p_<label>…, truncated, rules_fired (, top_words), confidence, confident) plus the
  carried metadata columns (text), made by the local stage's `prediction.extras.Enricher` and `sentence_rows`;
* `articles`: the per-article summary (`prediction.outputs.Summary`: sentences, n_/share_<label>, net_stance,
  dominant_label, truncated_sentences) plus the metadata columns;
* `errors`: the errors report's rows (`prediction.outputs.ERROR_COLUMNS`).

Each article is segmented by `prediction.inputs.segment_article` and predicted by `prediction.outputs.predict_rows`, the
functions the local stage uses, with the segmentation rules of the model's training run (`model_store.
segment_rules_for`) and the model's saved preprocessing: the rows equal the local stage's (labels, ids, and
probabilities to float rounding). The work runs in `mapInPandas` over Arrow batches of `arrow_batch` articles; the
model directory (and the cue lexicon) is shipped with `SparkContext.addFile` and loaded once per executor Python
process (Spark reuses its Python workers), this package is shipped as a zip (`ship_code`). An article is never split
across batches, so its summary row is made in the same batch (no shuffle). Segmentation and prediction happen once:
the mapped rows (sentence, summary and error rows in one schema, told apart by `row_kind`) are persisted and the
three outputs are read from them (call `SparkPrediction.unpersist()` after writing).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import pandas as pd

from pipeline.core.errors import PipelineError
from pipeline.core.io import BadInputFile, decode_text_strict
from pipeline.prediction.extras import Enricher
from pipeline.prediction.inputs import carried_columns, carried_values, segment_article, with_context
from pipeline.prediction.outputs import (ERROR_COLUMNS, ErrorLog, Summary, extra_columns, predict_rows, sentence_dtypes,
                                      sentence_rows)
from pipeline.text.segmentation import SegmentRules
from pipeline.prediction.spark_session import ship_code, ship_lexicon, ship_model

log = logging.getLogger(__name__)

SPARK_TYPES = {"object": "string", "int64": "bigint", "float64": "double", "bool": "boolean"}
# The mapped rows are sentence rows and error rows in one frame: error rows fill these, sentence rows leave them null.
ERROR_FIELDS = ("source", "reason", "message")
KIND = "row_kind"


@dataclass
class SparkPrediction:
    sentences: object  # pyspark.sql.DataFrame
    articles: object
    errors: object
    mapped: object

    def unpersist(self) -> None:
        self.mapped.unpersist()


# ---------------------------------------------------------------- driver side

def sentence_schema(labels: Sequence[str], extra: Sequence[str], meta: Sequence[str] = ()) -> list[tuple[str, str]]:
    """The local stage's sentence columns (`prediction.outputs.sentence_dtypes`) as Spark types."""
    return [(c, SPARK_TYPES[t]) for c, t in sentence_dtypes(labels, extra, meta).items()]


def summary_schema(labels: Sequence[str]) -> list[tuple[str, str]]:
    return ([("article_id", "string"), ("sentences", "bigint")] + [(f"n_{x}", "bigint") for x in labels]
            + [(f"share_{x}", "double") for x in labels]
            + [("net_stance", "double"), ("dominant_label", "string"), ("truncated_sentences", "bigint")])


def ddl(fields: Sequence[tuple[str, str]]) -> str:
    return ", ".join(f"`{name}` {kind}" for name, kind in fields)


def predict_articles(articles, model_dir: Path | str, *, rules: SegmentRules, model_id: str | None = None,
                     id_column: str = "article_id", text_column: str = "text", content_column: str | None = None,
                     source_column: str | None = None, keep_first: dict[str, str] | None = None,
                     batch_size: int = 64, arrow_batch: int = 64, threads: int = 1, device: str = "auto",
                     max_batch_tokens: int | None = None, code: bool = True, enrich: dict | None = None,
                     quantize: str | None = None, backend=None, carry: Sequence[str] | None = None, date_column: str = "date",
                     chunk_sentences: int = 2048, recheck_margin: float | dict | None = None) -> SparkPrediction:
    """Predict whole articles on Spark as the local predict stage does; see the module docstring.

    `articles` holds `id_column` and either `text_column` (text) or `content_column` (a file's bytes, decoded like
    the local stage reads a file: BOM, empty, binary and not-UTF-8 checks); `source_column` names each article in
    error rows (default: its id). The other columns are metadata, carried as text onto the article's sentence and
    summary rows as the local stage carries a table's columns (`carry`: their names, None = all; a column named
    like an output column is not carried; `date_column` normalised to ISO); files (`content_column`) carry their
    `path`, as local text files do. `enrich` holds `prediction.extras.Enricher`'s settings (`Enricher.settings(cfg)`:
    min_confidence, explain, top_k, batch_size, lexicon path): every sentence row gets the local stage's
    confidence, confident, rules_fired (and top_words) columns; the lexicon file is shipped like the model.
    `keep_first` maps an article id that several rows share to the one source kept; the other copies become
    `duplicate_article` error rows (the local stage keeps the first file of that id in path order).
    `chunk_sentences`: the most sentences predicted at once (predict.chunk_sentences), however long an article.
    `quantize`, `recheck_margin`, `backend`: as predict.* (load_predictor)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from pipeline.models.base import load_predictor
    from pipeline.models.store import model_identity

    model_dir = Path(model_dir)
    # checked on the driver: a bad model, backend or quantisation fails before Spark work
    predictor = load_predictor(model_dir, device="cpu", quantize=quantize, backend=backend,
                               recheck_margin=recheck_margin)
    settings = dict(enrich or {})
    enricher = Enricher(predictor, **settings)  # a lexicon that cannot be loaded is warned about here, once
    labels, extra = list(predictor.labels), extra_columns(predictor, enricher.added)
    lexicon_path = settings.get("lexicon") if isinstance(settings.get("lexicon"), (str, Path)) else None
    if enricher.lexicon is None:
        settings["lexicon"] = None
    del predictor, enricher
    spark = articles.sparkSession
    body = content_column or text_column
    columns = list(articles.columns)
    for needed in (id_column, body):
        if needed not in columns:
            raise PipelineError(f"the articles DataFrame has no {needed!r} column (columns: {', '.join(columns)}); "
                                "set spark.id_column / predict.text_column")
    files = content_column is not None
    table_meta = carried_columns([c for c in columns if c not in (id_column, body, source_column)
                                  and not (files and c == "path")], body, carry)
    metadata = (["path"] if files else []) + table_meta  # a file carries its path, as in the local stage
    clash = [c for c in metadata if c in {*sentence_dtypes(labels, extra), *dict(summary_schema(labels)), KIND,
                                          *ERROR_FIELDS}]
    if clash:
        raise PipelineError(f"the articles DataFrame's metadata column(s) {', '.join(clash)} would collide with "
                            "output columns; rename or drop them")
    if code:
        ship_code(spark)
    name = ship_model(spark, model_dir, model_id or model_identity(str(model_dir), model_dir))
    if settings.get("lexicon") is not None and lexicon_path is not None:
        settings["lexicon"] = ship_lexicon(spark, lexicon_path)  # the executors open it by this name
        settings["shipped_lexicon"] = True
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(int(arrow_batch)))

    summary_fields = [f for f in summary_schema(labels) if f[0] != "article_id"]
    mapped_schema = ddl([*sentence_schema(labels, extra, metadata), *[(c, "string") for c in ERROR_FIELDS],
                         *summary_fields, (KIND, "string")])
    source = F.col(source_column) if source_column else F.col(id_column).cast("string")
    body_col = F.col(body) if content_column else F.col(body).cast("string")
    prepared = articles.select(F.col(id_column).cast("string").alias("article_id"), body_col.alias("body"),
                               source.alias("source"), *[F.col(c) for c in table_meta])
    keep = dict(keep_first or {})

    def mapper(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        return map_articles(batches, model_name=name, rules=rules, metadata=table_meta,
                            as_bytes=files, keep_first=keep, batch_size=int(batch_size),
                            threads=int(threads), device=device, max_batch_tokens=max_batch_tokens,
                            quantize=quantize, backend=backend, enrich=settings, date_column=str(date_column or ""),
                            chunk=int(chunk_sentences), recheck_margin=recheck_margin)

    mapped = prepared.mapInPandas(mapper, schema=mapped_schema).persist(StorageLevel.MEMORY_AND_DISK)
    sentences = mapped.filter(F.col(KIND) == "sentence").select(*sentence_dtypes(labels, extra, metadata))
    errors = mapped.filter(F.col(KIND) == "error").select(*ERROR_COLUMNS)
    # An article's sentences are all in one Arrow batch: its summary row is made there, with no shuffle.
    articles_out = mapped.filter(F.col(KIND) == "article").select(
        *[name for name, _ in summary_schema(labels)], *metadata)
    return SparkPrediction(sentences, articles_out, errors, mapped)


# ---------------------------------------------------------------- reading articles

INPUT_FORMATS = ("auto", "text", "parquet", "jsonl")


@dataclass
class ArticleInput:
    frame: object                      # pyspark.sql.DataFrame
    id_column: str
    text_column: str = "text"
    content_column: str | None = None  # text files: their bytes
    source_column: str | None = None
    keep_first: dict | None = None     # duplicated id -> the source kept


def input_format(path: str, configured: str) -> str:
    """The format of `input`: as configured, else by its suffix, else by the files in a local directory."""
    if configured not in INPUT_FORMATS:
        raise PipelineError(f"spark.input_format={configured!r}: choose one of {', '.join(INPUT_FORMATS)}")
    if configured != "auto":
        return configured
    lowered = path.lower().rstrip("/")
    for suffix, fmt in ((".parquet", "parquet"), (".jsonl", "jsonl"), (".json", "jsonl"), (".txt", "text")):
        if lowered.endswith(suffix):
            return fmt
    local = Path(path[len("file:"):] if path.startswith("file:") else path)
    if "://" not in path and local.is_dir():
        suffixes = {p.suffix.lower() for p in local.rglob("*")
                    if p.is_file() and not any(part.startswith((".", "_")) for part in p.relative_to(local).parts)}
        if suffixes and suffixes <= {".parquet"}:
            return "parquet"
        if suffixes and suffixes <= {".jsonl", ".json"}:
            return "jsonl"
        return "text"
    raise PipelineError(f"input={path}: cannot tell its format; set spark.input_format=text, parquet or jsonl")


def read_articles(spark, path: str, *, fmt: str = "auto", id_column: str = "article_id",
                  text_column: str = "text") -> ArticleInput:
    """Articles from a directory or glob of text files (one file = one article, id = file stem, like the local
    stage) or from a parquet / JSON-lines table (one row = one whole article, with `id_column` and `text_column`;
    the other columns are metadata)."""
    from pyspark.sql import functions as F
    from pyspark.sql.utils import AnalysisException

    fmt = input_format(path, fmt)
    try:
        if fmt == "text":
            files = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(path)
            # Spark SQL, not Python UDFs: the id is the file stem (Path.stem), the source the path without file:
            plain = F.regexp_replace("path", r"^file:(//(?=/))?", "")
            raw = files.select(plain.alias("source"), "content")
            # Spark's scan skips empty files; the listing has them, and the local stage reports them: add them back.
            listed = spark.createDataFrame([(p,) for p in files.inputFiles()], "path string").select(
                plain.alias("source"))
            empty = listed.join(files.select(plain.alias("source")), "source", "left_anti")
            raw = raw.unionByName(empty.withColumn("content", F.lit(b"").cast("binary")))
            name = F.regexp_extract("source", r"([^/]+)$", 1)
            frame = raw.select(F.regexp_replace(name, r"(?<=.)\.[^.]*$", "").alias("article_id"), "source", "content")
            articles = ArticleInput(frame, "article_id", content_column="content", source_column="source")
            articles.keep_first = duplicate_ids(frame, "article_id", "source")
            return articles
        frame = spark.read.parquet(path) if fmt == "parquet" else spark.read.json(path)
    except AnalysisException as exc:
        first = (str(exc).strip().splitlines() or ["unreadable"])[0]
        raise PipelineError(f"input={path}: cannot be read as {fmt} ({first[:200]}); check the path, or set "
                            "spark.input_format") from None
    missing = [c for c in (id_column, text_column) if c not in frame.columns]
    if missing:
        raise PipelineError(f"input={path}: no {', '.join(repr(c) for c in missing)} column (columns: "
                            f"{', '.join(frame.columns)}); a Spark job reads one whole article per row: set "
                            "spark.id_column and predict.text_column")
    repeated = duplicate_ids(frame, id_column, None)
    if repeated:
        shown = ", ".join(repr(k) for k in list(repeated)[:5])
        raise PipelineError(f"input={path}: article id(s) {shown} are on several rows; a Spark job reads one whole "
                            f"article per row: join an article's paragraphs into one row with a unique {id_column}")
    # Error rows name <input>#<article id>, as the local stage names an article of a table.
    frame = frame.withColumn("__source", F.concat(F.lit(path.rstrip("/") + "#"), F.col(id_column).cast("string")))
    return ArticleInput(frame, id_column, text_column=text_column, source_column="__source")


def duplicate_ids(frame, id_column: str, source_column: str | None) -> dict[str, str]:
    """Article ids on more than one row → the source kept (the first in path order, as the local stage keeps the
    first file it reads); only the ids travel to the driver."""
    from pyspark.sql import functions as F

    aggregates = [F.count(F.lit(1)).alias("n")]
    if source_column:
        aggregates.append(F.min(source_column).alias("first"))
    rows = frame.groupBy(id_column).agg(*aggregates).filter(F.col("n") > 1).collect()
    return {str(r[id_column]): (str(r["first"]) if source_column else "") for r in rows}


# ---------------------------------------------------------------- executor side

_PREDICTORS: dict[str, object] = {}  # model name -> predictor, one per executor Python process


def executor_predictor(name: str, threads: int, device: str = "auto", max_batch_tokens: int | None = None,
                       quantize: str | None = None, backend=None, recheck_margin: float | dict | None = None):
    """The shipped model, loaded once per Python worker process (Spark reuses workers across tasks), on the
    executor's GPU when it has one (predict.device), quantised and run by the backend the stage asks for
    (predict.quantize, predict.recheck_margin, predict.backend)."""
    if name not in _PREDICTORS:
        import torch
        from pyspark import SparkFiles

        from pipeline.models.base import load_predictor

        if threads > 0:
            torch.set_num_threads(threads)
        _PREDICTORS[name] = load_predictor(SparkFiles.get(name), device=device, max_batch_tokens=max_batch_tokens,
                                           quantize=quantize, backend=backend,
                                           recheck_margin=recheck_margin)
    return _PREDICTORS[name]


_ENRICHERS: dict[tuple[str, str], Enricher] = {}  # (model name, settings) -> enricher, one per executor process


def executor_enricher(name: str, predictor, settings: dict) -> Enricher:
    """The local stage's `prediction.extras.Enricher` for the shipped model, built once per Python worker process;
    the lexicon is the file shipped by `ship_lexicon`."""
    import json

    key = (name, json.dumps(settings, sort_keys=True, default=str))
    if key not in _ENRICHERS:
        values = {k: v for k, v in settings.items() if k != "shipped_lexicon"}
        if settings.get("shipped_lexicon") and values.get("lexicon"):
            from pyspark import SparkFiles

            values["lexicon"] = SparkFiles.get(values["lexicon"])
        _ENRICHERS[key] = Enricher(predictor, **values)
    return _ENRICHERS[key]


def map_articles(batches: Iterator[pd.DataFrame], *, model_name: str, rules: SegmentRules, metadata: list[str],
                 as_bytes: bool, keep_first: dict[str, str], batch_size: int, threads: int, device: str = "auto",
                 max_batch_tokens: int | None = None, quantize: str | None = None, backend=None,
                 enrich: dict | None = None, date_column: str = "", chunk: int = 2048,
                 recheck_margin: float | dict | None = None) -> Iterator[pd.DataFrame]:
    """mapInPandas body: Arrow batches of articles → sentence, summary and error rows (column `row_kind`).
    `metadata`: the carried table columns (files also carry their path). Sentences are predicted `chunk` at a time
    (a long article too), the summary accumulated over the chunks."""
    predictor = executor_predictor(model_name, threads, device, max_batch_tokens, quantize, backend,
                                   recheck_margin)
    enricher = executor_enricher(model_name, predictor, dict(enrich or {}))
    labels, extra = list(predictor.labels), extra_columns(predictor, enricher.added)
    carried = (["path"] if as_bytes else []) + list(metadata)
    for batch in batches:
        errors = ErrorLog()
        rows: list[dict] = []
        sources: dict[str, str] = {}
        for record in batch.to_dict("records"):
            article_id, source = str(record["article_id"]), str(record["source"])
            if article_id in keep_first and keep_first[article_id] != source:
                message = (f"{source}: article id {article_id!r} already used by {keep_first[article_id]}; "
                           "skipped (ids are file stems or the table's article_id: make them unique)")
                errors.add(source, "duplicate_article", message, article_id=article_id)
                continue
            # The carried values first, as the local stage reads them with the article's first row (bad_date).
            where = source[:-len(article_id) - 1] if source.endswith("#" + article_id) else source
            values = {"path": source} if as_bytes else {}
            values.update(carried_values(record, metadata, date_column, where, source, article_id, errors))
            try:
                body = record["body"]
                if as_bytes:
                    text = decode_text_strict(bytes(body) if body is not None else b"", source)
                else:
                    text = "" if body is None else str(body)
                article = segment_article(article_id, text, source, rules, errors)
            except BadInputFile as exc:
                errors.file_error(exc)
                continue
            if article is None:
                continue
            sources[article_id] = source
            rows.extend({**values, "article_id": article_id, **row}
                        for row in with_context(article, predictor.context))  # before the chunks below
        frames = []
        summary = Summary(labels, carried)
        for start in range(0, len(rows), chunk):
            scored = predict_rows(predictor, pd.DataFrame(rows[start:start + chunk]), sources, errors,
                                  batch_size=batch_size, enrich=enricher)
            scored = sentence_rows(scored, labels, extra, carried)  # the local stage's columns and dtypes
            summary.add(scored)
            scored[KIND] = "sentence"
            yield mapped_frame(scored, labels, extra, carried, summary_schema(labels))
        if rows:
            articles = summary.frame()
            articles[KIND] = "article"
            frames.append(articles)
        if errors.rows:
            err = errors.frame()
            err[KIND] = "error"
            frames.append(err)
        if frames:
            yield mapped_frame(pd.concat(frames, ignore_index=True), labels, extra, carried, summary_schema(labels))


NULLABLE = {"int64": "Int64", "float64": "Float64", "bool": "boolean", "bigint": "Int64", "double": "Float64",
            "boolean": "boolean"}


def mapped_frame(frame: pd.DataFrame, labels, extra, metadata, summary_fields) -> pd.DataFrame:
    """Every column of the mapped schema, in order, with nullable dtypes (a row of one kind leaves the columns of
    the others null: an error row has no probabilities, a sentence row no summary)."""
    out = pd.DataFrame(index=frame.index)
    missing = pd.Series([None] * len(frame), index=frame.index, dtype=object)
    for column, dtype in sentence_dtypes(labels, extra, metadata).items():
        out[column] = (frame[column] if column in frame else missing).astype(NULLABLE.get(dtype, object))
    for column in ERROR_FIELDS:
        out[column] = frame[column] if column in frame else None
    for column, dtype in summary_fields:
        if column != "article_id":
            out[column] = (frame[column] if column in frame else missing).astype(NULLABLE.get(dtype, object))
    out[KIND] = frame[KIND]
    return plain_strings(out)


def plain_strings(frame: pd.DataFrame) -> pd.DataFrame:
    """Text columns as object dtype: pandas 3's Arrow-backed `str` columns reach PySpark's serializer as chunked
    arrays, which it cannot convert."""
    for column in frame.columns:
        if isinstance(frame[column].dtype, pd.StringDtype):
            frame[column] = frame[column].astype(object)
    return frame
