"""predict stage: new articles → per-sentence stance with probabilities, a per-article summary, an errors report.

    python -m pipeline predict input=<file|dir|glob|table> output=<.csv|.jsonl|.parquet> [model_uri=...]

Inputs (`input=`, one path or a list):
  * a text file is one article (id = file stem), segmented with the segmentation rules of the model's
    training run; a directory means every non-hidden file under it; a glob pattern every file it matches;
  * a table (.csv / .jsonl / .parquet) holds a `predict.text_column` column and either
      - whole articles (no sentence_id column): one row per article, `article_id` optional
        (default <file stem>:<row>); rows sharing an article_id are paragraphs of one article; or
      - ready sentences (a `sentence_id` column, or predict.table_rows=sentences): predicted as they are,
        grouped into articles by `article_id` (default: the file stem); an article's rows must be contiguous.
Every unusable input (missing, empty, binary, not UTF-8, no Arabic, bad table) and every sentence cut at the
model's max_length is a row of the errors report; the rest of the batch is still predicted.

Analyst outputs (docs/analyst.md): carried input columns (predict.carry_columns) and `confidence` / `confident` /
`rules_fired` (/ `top_words` with predict.explain) on every sentence row; `<output stem>.timeline<ext>` and
`.outlets<ext>` when the articles have dates / outlets; `<output stem>.report.html` with predict.report=true.

Streaming (pipeline.prediction.parts): sentences are predicted in chunks of `predict.chunk_sentences` (a long article
over several), each chunk written atomically to a hidden parts directory beside the output; at the end the parts
are merged into the output through a temp file and a rename. An interrupted run leaves only the hidden parts
directory; `predict.resume=true` skips the articles already in the output or in the parts of an interrupted run
(parts already merged into the output are dropped; parts of another model are refused; the interrupted run's
error rows are kept).

Safety (pipeline.core.write_guard): before anything runs, every file the run may write (`written_files`) is checked
against the inputs and the other outputs; the output's lock is held from then on, so a second run on the same
output is refused while this one lives, and parts found by a run that holds the lock are a dead run's. Missing and
empty inputs, and another model's parts on resume, fail before the model loads.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from pipeline.core.errors import PipelineError
from pipeline.models.backends import from_config
from pipeline.models.base import load_predictor
from pipeline.models.batching import recheck_option, set_threads
from pipeline.core.io import TABLE_SUFFIXES, CsvStyle, read_table, write_table_atomic, write_text_atomic
from pipeline.models.store import model_identity, resolve_model, segment_rules_for
from pipeline.prediction.extras import (SUMMARY_NAMES, Enricher, report_path, report_sample, summary_path,
                                        timeline_freq, write_report, write_summaries)
from pipeline.prediction.inputs import ArticleReader, as_list, drop_empty, expand_inputs, no_usable_article
from pipeline.prediction.outputs import ERROR_COLUMNS, ErrorLog, plot_net_stance, sibling_path
from pipeline.prediction.parts import PartsWriter, check_resume
from pipeline.models.serving import model_quality
from pipeline.core.write_guard import output_lock, refuse_clashes

log = logging.getLogger(__name__)


def log_recheck(predictor, quantize: str | None) -> None:
    """How many sentences each rung of the re-check ladder scored again, and a warning when the re-checks cost what
    the lower precision saved (the model hesitates on many sentences)."""
    counts = getattr(predictor, "rechecked", None)
    scored = counts["scored"] if counts else 0
    if not scored:
        return
    for step in predictor.ladder:
        done = counts[step.precision]
        log.info("predict: %s: %d of %d sentences (%.1f%%) scored again in %s, their two most probable labels within "
                 "predict.recheck_margin.%s=%g", quantize, done, scored, 100 * done / scored, step.precision,
                 step.below, step.margin)
    cost = predictor.recheck_cost()
    if cost is not None and cost >= 1:
        log.warning("predict: the model hesitates on %.0f%% of these sentences, so %s gained little or nothing here: "
                    "fp32 (predict.quantize=null) gives the same labels as fast",
                    100 * counts[predictor.ladder[0].precision] / scored, quantize)


def _sibling(output: Path, configured, tail: str) -> Path:
    return Path(sibling_path(output, configured, tail, replace_suffix=True))


def written_files(cfg: DictConfig, output: Path) -> dict[str, Path]:
    """Every file a predict run may write, by the key (or words) naming it: checked against the inputs and against
    each other before anything runs (write_guard.refuse_clashes)."""
    pcfg = cfg.predict
    files = {"output": output,
             "predict.summary": _sibling(output, pcfg.summary, ".articles" + output.suffix),
             "predict.errors": _sibling(output, pcfg.errors, ".errors.csv")}
    if pcfg.plot:
        files["predict.plot_path"] = _sibling(output, pcfg.plot_path, ".net_stance.png")
    if pcfg.report:
        files["predict.report_path"] = report_path(cfg, output)
    for name in SUMMARY_NAMES:
        files[f"the {name} table"] = summary_path(output, name)
    files["the run's report"] = Path(cfg.paths.run_dir) / "predict_report.json"
    return files


def predict(cfg: DictConfig) -> dict:
    """Stage entry: predict `input` with `model_uri` (default: best run) into `output`; returns the paths."""
    pcfg = cfg.predict
    inputs = as_list(OmegaConf.select(cfg, "input", default=None))
    output = OmegaConf.select(cfg, "output", default=None)
    if not inputs:
        raise PipelineError("give the articles to predict: input=<file | directory | glob | .csv | .jsonl>")
    if not output:
        raise PipelineError("give where to write predictions: output=<file.csv | file.jsonl | file.parquet>")
    output = Path(str(output))
    if output.suffix.lower() not in TABLE_SUFFIXES and not output.is_dir():
        raise PipelineError(f"output={output}: unsupported format {output.suffix!r}; use .csv, .jsonl or .parquet")
    chunk_sentences = int(pcfg.chunk_sentences)
    if chunk_sentences < 1:
        raise PipelineError(f"predict.chunk_sentences={chunk_sentences} must be at least 1")
    timeline_freq(cfg)  # a bad predict.timeline fails before any work
    if cfg.predict.report:
        report_sample(cfg, [])  # so does a bad predict.report_sentences_per_article
    written = written_files(cfg, output)
    errors = ErrorLog()
    # The inputs first: a missing input is told before a model is fetched or loaded; no output over an input.
    files = expand_inputs(inputs, errors)
    refuse_clashes(written, files, fix="write the predictions to another file")
    with output_lock(output):  # a second run on this output is refused here, before it touches anything
        return _predict(cfg, inputs, files, written, errors)


def _predict(cfg: DictConfig, inputs: list[str], files: list[Path], written: dict[str, Path],
             errors: ErrorLog) -> dict:
    pcfg = cfg.predict
    output, errors_path = written["output"], written["predict.errors"]
    run_dir = Path(cfg.paths.run_dir)
    csv = CsvStyle.from_cfg(cfg)
    date_column = str(OmegaConf.select(pcfg, "date_column", default="") or "")

    files = drop_empty(files, errors)  # an empty file alone fails here, not after the model has loaded
    if not files:
        write_table_atomic(errors.frame(), errors_path, csv=csv)
        raise no_usable_article(inputs, errors.frame()["message"].tolist(), errors_path)

    def model_error(exc: PipelineError) -> PipelineError:
        errors.add(OmegaConf.select(cfg, "model_uri", default=None) or "(default model)", "model", str(exc))
        write_table_atomic(errors.frame(), errors_path, csv=csv)
        return exc

    try:
        model = resolve_model(cfg, run_dir / "model")
    except PipelineError as exc:
        raise model_error(exc)
    model_id = model_identity(model.uri, model.model_dir)
    if pcfg.resume:
        check_resume(output, model_id)  # parts of another model: refused before the model loads
    try:
        predictor = load_predictor(model.model_dir, quantize=pcfg.quantize or None, device=str(pcfg.device),
                                   max_batch_tokens=pcfg.max_batch_tokens, backend=from_config(pcfg),
                                   recheck_margin=recheck_option(pcfg.recheck_margin))
    except PipelineError as exc:
        raise model_error(exc)
    threads = set_threads(pcfg.threads)
    inner = getattr(predictor, "inner", predictor)  # a hybrid's model
    quantize = getattr(inner, "quantize", None)  # None where bf16 was asked for but runs fp32 here
    log.info("predict: model %s (%s, labels %s, max_length %d%s, backend %s) on %s, %d threads", model.uri,
             predictor.kind, ",".join(predictor.labels), predictor.max_length, f", {quantize}" if quantize else "",
             getattr(predictor, "backend", "-"), getattr(predictor, "device", "cpu"), threads)
    rules = segment_rules_for(cfg, model)

    enricher = Enricher.from_cfg(cfg, predictor)
    writer = PartsWriter(output, predictor, errors, chunk_sentences=int(pcfg.chunk_sentences),
                         batch_size=int(pcfg.batch_size), resume=bool(pcfg.resume), model_id=model_id,
                         enrich=enricher, added=enricher.added, csv=csv, date_column=date_column)
    previous_errors = pd.DataFrame(columns=ERROR_COLUMNS)
    if pcfg.resume:
        earlier = (read_table(errors_path, restore=True) if errors_path.exists() and output.exists()
                   else previous_errors)
        earlier = earlier[earlier["article_id"].isin(writer.done)]  # others are read again and re-reported
        previous_errors = pd.concat([earlier, writer.previous_errors()], ignore_index=True)
    reader = ArticleReader(cfg, rules, errors)
    counts = {"articles": 0, "skipped_done": 0}
    progress = tqdm(reader.read(files), desc="predict", unit="article", disable=None)
    for article in progress:
        first_piece = article.piece == 0  # a long sentence-table article comes in pieces: count it once
        if writer.is_done(article):
            counts["skipped_done"] += first_piece
            continue
        if writer.add(article):
            progress.set_postfix(sentences=writer.sentences)
        counts["articles"] += first_piece
    writer.flush()
    progress.close()
    counts.update(sentences=writer.sentences, truncated=writer.truncated)
    log_recheck(inner, quantize)

    if counts["articles"] == 0 and not writer.done:
        write_table_atomic(errors.frame(), errors_path, csv=csv)
        writer.discard()
        raise no_usable_article(inputs, errors.frame()["message"].tolist(), errors_path)

    summary_frame = writer.merge()  # a full disk: one error line, the parts kept for predict.resume=true
    try:
        report = _write_the_rest(cfg, model, predictor, enricher, written, summary_frame, errors, previous_errors,
                                 counts)
    except OSError as exc:
        raise PipelineError(f"cannot write the files beside {output} ({exc.strerror or exc}); the predictions are "
                            f"in {output}: make room (or fix the directory) and run the same command with "
                            "predict.resume=true to write the rest") from None
    print(outcome_line(report))
    return report


def _write_the_rest(cfg: DictConfig, model, predictor, enricher, written: dict[str, Path], summary_frame,
                    errors: ErrorLog, previous_errors: pd.DataFrame, counts: dict) -> dict:
    """After the merge: the per-article summary, the errors report, the plot, timeline / outlets, the HTML report
    and the run's predict_report.json."""
    pcfg = cfg.predict
    output, summary_file, errors_path = written["output"], written["predict.summary"], written["predict.errors"]
    plot_path = written.get("predict.plot_path")
    csv = CsvStyle.from_cfg(cfg)
    date_column = str(OmegaConf.select(pcfg, "date_column", default="") or "")
    write_table_atomic(summary_frame, summary_file, csv=csv, date_columns=[date_column])
    all_errors = (pd.concat([previous_errors.astype(str), errors.frame().astype(str)], ignore_index=True)
                  .drop_duplicates(ignore_index=True) if len(previous_errors) else errors.frame())
    write_table_atomic(all_errors, errors_path, csv=csv)
    if plot_path is not None:
        plot_net_stance(summary_frame, plot_path, int(pcfg.plot_max_bars))
    summaries = write_summaries(cfg, output, summary_frame, predictor.labels)
    quality = model_quality(cfg, model.run_id)
    extra_paths = {name: str(summary_path(output, name)) for name in summaries}
    if pcfg.report:
        calibration = getattr(predictor, "calibration", None)
        described = f"{model.uri} ({predictor.kind}, {predictor.base_model}" + (
            f", T={calibration.temperature:.2f})" if calibration is not None and calibration.temperature != 1.0 else ")")
        extra_paths["report"] = str(write_report(cfg, output, summary_frame, summaries, predictor.labels, described,
                                                 quality=quality, lexicon=enricher.cue_lexicon))

    problems = all_errors[all_errors["reason"] != "truncated"]
    log.info("predict: %d articles, %d sentences predicted (%d truncated at %d tokens); %d skipped as already "
             "done; %d input problems", counts["articles"], counts["sentences"], counts["truncated"],
             predictor.max_length, counts["skipped_done"], len(problems))
    log.info("predict: wrote %s, %s, %s%s%s", output, summary_file, errors_path,
             f", {plot_path}" if plot_path else "", "".join(f", {p}" for p in extra_paths.values()))
    report = {"output": str(output), "summary": str(summary_file), "errors": str(errors_path),
              "plot": str(plot_path) if plot_path else None, "timeline": extra_paths.get("timeline"),
              "outlets": extra_paths.get("outlets"), "report": extra_paths.get("report"), "model_uri": model.uri, **counts,
              "input_problems": int(len(problems)), "model_run_id": model.run_id, "model_quality": quality}
    write_text_atomic(written["the run's report"], json.dumps(report, ensure_ascii=False, indent=2))
    return report


def outcome_line(report: dict) -> str:
    """What a predict run leaves the user: its files, the model that made them (and how good it is), what next."""
    quality = report.get("model_quality") or {}
    if quality.get("smoke"):
        judged = "a SMOKE model (built from scratch): its labels mean nothing"
    elif quality.get("test_macro_f1") is not None:
        ci = quality.get("test_ci")
        judged = f"held-out macro-F1 {quality['test_macro_f1']:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
        if quality.get("rules_in_sample"):
            judged += " (its rules were written on that gold: in-sample, optimistic)"
    else:
        judged = "quality unknown (no MLflow run)"
    others = [p for p in (report["summary"], report["errors"], report.get("timeline"), report.get("outlets"),
                          report.get("plot")) if p]
    problems = f" ({report['input_problems']} input problems)" if report["input_problems"] else ""
    after = (f"open {report['report']}" if report.get("report")
             else "add predict.report=true for an HTML report")
    return (f"predict: {report['articles']} articles, {report['sentences']} sentences → {report['output']} "
            f"(+ {', '.join(others)}){problems}; model {report['model_uri']}, {judged}; next: {after}")
