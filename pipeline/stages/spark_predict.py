"""spark_predict stage: whole articles → per-sentence stance, a per-article summary and an errors report, as a
Spark job (pipeline.prediction.spark_articles), written as parquet directories.

    python -m pipeline spark_predict input=<dir | glob | .parquet | .jsonl> output=<dir> [model_uri=...]
    spark-submit scripts/spark_predict.py input=s3a://bucket/articles/ output=s3a://bucket/stance/ \
        model_uri=models:/stance-seeds@champion tracking.uri=http://mlflow:5000

The model is resolved on the driver as `predict` does (model_uri, or the experiment's best run), with the
segmentation rules of its training run; the rows equal the local predict stage's. Spark's output committer
publishes each directory whole at the end of its job (`_SUCCESS` marks a finished one).

As in the local stage: no usable article (an empty directory, only empty or unreadable files) is an error (exit 1,
one line, nothing written to the outputs; the reasons in the run directory's spark_predict_errors.csv); a local
output is locked while the job writes it (pipeline.core.write_guard), and no output may be, hold or sit in the input.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pipeline.core.errors import PipelineError
from pipeline.core.io import CsvStyle, write_table_atomic, write_text_atomic
from pipeline.models.backends import from_config
from pipeline.models.batching import recheck_option
from pipeline.models.store import model_identity, resolve_model, segment_rules_for
from pipeline.prediction.extras import Enricher
from pipeline.prediction.inputs import as_list, carry_setting, drop_empty, expand_inputs, no_usable_article
from pipeline.prediction.outputs import ErrorLog, sibling_path
from pipeline.prediction.spark_articles import predict_articles, read_articles
from pipeline.prediction.spark_session import spark_session
from pipeline.core.write_guard import output_lock, refuse_clashes

log = logging.getLogger(__name__)


def _local(path: str) -> Path | None:
    """A path on this machine (`file:` stripped), or None for a URL (s3a://, hdfs://...)."""
    if "://" in path and not path.startswith("file://"):
        return None
    return Path(path[len("file:"):] if path.startswith("file:") else path)


def _refuse_existing(paths: dict[str, str], mode: str) -> None:
    if mode not in ("error", "overwrite"):
        raise PipelineError(f"spark.mode={mode!r}: choose error or overwrite")
    if mode == "error":
        for key, path in paths.items():
            local = _local(path)
            if local is not None and local.exists():
                raise PipelineError(f"{key}={path} already exists; choose another output, remove it, or set "
                                    "spark.mode=overwrite")


def _input_files(source: Path, errors: ErrorLog) -> list[Path]:
    """The files Spark will read under a local input, as the local stage lists them (missing, empty directory:
    error rows), without the names Spark skips (`_SUCCESS`, `_...`), empty ones reported."""
    files = expand_inputs([str(source)], errors)
    if source.is_dir():
        files = [f for f in files if not any(part.startswith("_") for part in f.relative_to(source).parts)]
    return drop_empty(files, errors)


def typed_dates(frame, column: str):
    """The carried date column (ISO text, "" = none) as dates, as the local stage writes it in parquet
    (pipeline.core.io.typed_dates); kept as text when some values carry a time of day."""
    from pyspark.sql import functions as F

    if not column or column not in frame.columns:
        return frame
    if frame.filter(F.length(F.col(column)) > len("YYYY-MM-DD")).limit(1).count():
        log.info("spark_predict: %s holds times of day: written as ISO text", column)
        return frame
    return frame.withColumn(column, F.to_date(F.when(F.col(column) != "", F.col(column)), "yyyy-MM-dd"))


def spark_predict(cfg: DictConfig) -> dict:
    """Stage entry: predict the articles of `input` on Spark into the parquet directory `output`."""
    scfg = cfg.spark
    inputs = as_list(OmegaConf.select(cfg, "input", default=None))
    output = OmegaConf.select(cfg, "output", default=None)
    if len(inputs) != 1:
        raise PipelineError("give one input: input=<directory | glob of text files | .parquet | .jsonl>")
    if not output:
        raise PipelineError("give where to write predictions: output=<directory> (parquet)")
    source, output = inputs[0], str(output)
    summary_out = sibling_path(output, scfg.summary, ".articles", replace_suffix=False)
    errors_out = sibling_path(output, scfg.errors, ".errors", replace_suffix=False)
    written = {"output": output, "spark.summary": summary_out, "spark.errors": errors_out}
    run_dir = Path(cfg.paths.run_dir)
    # When no article is usable nothing is written to the outputs (no _SUCCESS); the reasons go to this CSV.
    failed_csv = run_dir / "spark_predict_errors.csv"
    local_source = _local(source)
    for key, path in written.items():
        if _local(path) is None and path.rstrip("/") == source.rstrip("/"):
            raise PipelineError(f"{key}={path} is also the input; predicting would overwrite it: write elsewhere")
    local_written = {key: _local(path) for key, path in written.items() if _local(path) is not None}
    if local_source is not None:
        errors = ErrorLog()
        files = _input_files(local_source, errors)
        refuse_clashes({"the run's report": run_dir / "spark_predict_report.json", "the run's errors": failed_csv},
                       [local_source, *files], dirs=local_written, fix="write elsewhere")
        if not files:  # before the model loads or a Spark session starts, as the local stage
            write_table_atomic(errors.frame(), failed_csv, csv=CsvStyle.from_cfg(cfg))
            raise no_usable_article([source], errors.frame()["message"].tolist(), failed_csv)
    with output_lock(local_written["output"]) if "output" in local_written else contextlib.nullcontext():
        _refuse_existing(written, str(scfg.mode))
        return _spark_predict(cfg, source, written, failed_csv)


def _spark_predict(cfg: DictConfig, source: str, written: dict[str, str], failed_csv: Path) -> dict:
    scfg, pcfg = cfg.spark, cfg.predict
    output, summary_out, errors_out = written["output"], written["spark.summary"], written["spark.errors"]
    run_dir = Path(cfg.paths.run_dir)
    model = resolve_model(cfg, run_dir / "model")
    rules = segment_rules_for(cfg, model)
    spark, created = spark_session(cfg)
    try:
        articles = read_articles(spark, source, fmt=str(scfg.input_format), id_column=str(scfg.id_column),
                                 text_column=str(pcfg.text_column))
        result = predict_articles(
            articles.frame, model.model_dir, rules=rules, model_id=model_identity(model.uri, model.model_dir),
            id_column=articles.id_column, text_column=articles.text_column, content_column=articles.content_column,
            source_column=articles.source_column, keep_first=articles.keep_first,
            batch_size=int(pcfg.batch_size), arrow_batch=int(scfg.arrow_batch_articles),
            threads=int(scfg.executor_threads), device=str(pcfg.device), max_batch_tokens=pcfg.max_batch_tokens,
            quantize=pcfg.quantize or None, backend=from_config(pcfg),
            recheck_margin=recheck_option(pcfg.recheck_margin),
            code=bool(scfg.ship_code), enrich=Enricher.settings(cfg), carry=carry_setting(cfg),
            date_column=str(OmegaConf.select(pcfg, "date_column", default="date") or ""),
            chunk_sentences=int(pcfg.chunk_sentences))
        counts = {"sentences": result.sentences.count(), "articles": result.articles.count()}  # cached rows
        if counts["articles"] == 0:  # the local stage's rule: no usable article is an error, and no output
            failed = result.errors.toPandas().sort_values(["source", "reason"], ignore_index=True)
            result.unpersist()
            write_table_atomic(failed, failed_csv, csv=CsvStyle.from_cfg(cfg))
            raise no_usable_article([source], failed["message"].tolist(), failed_csv)
        partition_by = [str(c) for c in scfg.partition_by]
        unknown = [c for c in partition_by if c not in result.sentences.columns]
        if unknown:
            raise PipelineError(f"spark.partition_by: no column {', '.join(map(repr, unknown))} in the sentence rows "
                                f"(columns: {', '.join(result.sentences.columns)})")
        mode = "errorifexists" if str(scfg.mode) == "error" else "overwrite"
        date_column = str(OmegaConf.select(pcfg, "date_column", default="") or "")
        result.sentences = typed_dates(result.sentences, date_column)
        result.articles = typed_dates(result.articles, date_column)
        log.info("spark_predict: model %s; %s → %s (+ %s, %s)", model.uri, source, output, summary_out, errors_out)
        sentences = result.sentences
        if scfg.output_partitions:
            sentences = sentences.repartition(int(scfg.output_partitions))
        sentences.write.mode(mode).partitionBy(*partition_by).parquet(output)
        summary_partitions = [c for c in partition_by if c in result.articles.columns]
        result.articles.write.mode(mode).partitionBy(*summary_partitions).parquet(summary_out)
        result.errors.write.mode(mode).parquet(errors_out)
        reasons = {r["reason"]: int(r["count"]) for r in result.errors.groupBy("reason").count().collect()}
        result.unpersist()
    finally:
        if created:
            spark.stop()
    problems = sum(n for reason, n in reasons.items() if reason != "truncated")
    log.info("spark_predict: %d articles, %d sentences predicted (%d truncated); %d input problems (%s)",
             counts["articles"], counts["sentences"], reasons.get("truncated", 0), problems,
             ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) or "none")
    report = {"output": output, "summary": summary_out, "errors": errors_out, "model_uri": model.uri, **counts,
              "truncated": reasons.get("truncated", 0), "input_problems": problems, "errors_by_reason": reasons}
    write_text_atomic(run_dir / "spark_predict_report.json", json.dumps(report, ensure_ascii=False, indent=2))
    print(f"spark_predict: {counts['articles']} articles, {counts['sentences']} sentences → {output} (+ {summary_out}, "
          f"{errors_out}: {problems} input problems); model {model.uri}; next: read them with "
          f"spark.read.parquet('{output}') or pandas.read_parquet('{output}')")
    return report
