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

Streaming: sentences are predicted in chunks of `predict.chunk_sentences`, each chunk written atomically to a
hidden parts directory beside the output; at the end the parts are merged into the output through a temp file
and a rename. An interrupted run leaves only the hidden parts directory; `predict.resume=true` skips the
articles already in the output or in the parts of an interrupted run.
"""

from __future__ import annotations

import glob
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
from omegaconf import DictConfig, ListConfig, OmegaConf
from tqdm.auto import tqdm

from pipeline.arabic import has_arabic, squeeze_spaces
from pipeline.errors import PipelineError
from pipeline.io import BadInputFile, atomic_path, read_text_strict, write_table_atomic, write_text_atomic
from pipeline.segment import SegmentRules, article_id_for, article_rows, sentence_ids

log = logging.getLogger(__name__)

TABLE_SUFFIXES = (".csv", ".jsonl", ".parquet")
OUTPUT_SUFFIXES = (".csv", ".jsonl", ".parquet")
ERROR_COLUMNS = ["source", "article_id", "sentence_id", "reason", "message"]
GLOB_CHARS = set("*?[")


# ---------------------------------------------------------------- errors report

@dataclass
class ErrorLog:
    rows: list[dict] = field(default_factory=list)

    def add(self, source, reason: str, message: str, article_id: str = "", sentence_id: str = "") -> None:
        self.rows.append({"source": str(source), "article_id": article_id, "sentence_id": sentence_id,
                          "reason": reason, "message": message})

    def file_error(self, exc: BadInputFile) -> None:
        log.warning("skipping %s", exc)
        self.add(exc.path, exc.reason, str(exc))

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=ERROR_COLUMNS)


# ---------------------------------------------------------------- model resolution

@dataclass
class ResolvedModel:
    model_dir: Path
    uri: str                 # what was asked for, or the URI the default resolved to
    run_id: str | None       # the training run, when known: its config gives the segmentation rules


def best_model_uri(cfg: DictConfig) -> tuple[str, str]:
    """(runs:/<id>/model, run id) of the best has_model=true run of `tracking.experiment` by test_macro_f1."""
    from pipeline import tracking

    mlflow = tracking.setup(cfg)
    experiment = str(cfg.tracking.experiment)
    runs = mlflow.search_runs(
        experiment_names=[experiment],
        filter_string="tags.has_model = 'true' and attributes.status = 'FINISHED'",
        order_by=["metrics.test_macro_f1 DESC", "attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    if not runs:
        raise PipelineError(
            f"no trained model in MLflow experiment {experiment!r} at {tracking.tracking_uri(cfg)}; "
            "run `python -m pipeline train` first, or give model_uri=<runs:/…, models:/…, or a model directory>"
        )
    run = runs[0]
    f1 = run.data.metrics.get("test_macro_f1")
    log.info("predict: default model = best run %s (%s) of experiment %r by test_macro_f1=%s",
             run.info.run_id, run.info.run_name, experiment, "n/a" if f1 is None else f"{f1:.4f}")
    return f"runs:/{run.info.run_id}/model", run.info.run_id


def _source_run_id(uri: str) -> str | None:
    """The training run behind an MLflow model URI, or None when it cannot be told."""
    from mlflow import MlflowClient

    client = MlflowClient()
    try:
        if uri.startswith("runs:/"):
            return uri[len("runs:/"):].split("/")[0]
        if uri.startswith("models:/"):
            rest = uri[len("models:/"):].strip("/")
            if rest.startswith("m-") and "/" not in rest and "@" not in rest:
                return client.get_logged_model(rest).source_run_id
            if "@" in rest:
                name, alias = rest.split("@", 1)
                version = client.get_model_version_by_alias(name, alias)
            else:
                name, number = rest.rsplit("/", 1)
                version = client.get_model_version(name, number)
            if version.run_id:
                return version.run_id
            model_id = getattr(version, "model_id", None)
            return client.get_logged_model(model_id).source_run_id if model_id else None
    except Exception as exc:  # lineage is a nicety; the model itself is what must resolve
        log.debug("no source run for %s: %s", uri, exc)
    return None


def resolve_model(cfg: DictConfig, download_to: Path) -> ResolvedModel:
    """Turn `model_uri` (or the experiment's best run) into a local stance model directory."""
    from pipeline.inference import fetch_model_dir, is_mlflow_uri

    uri = OmegaConf.select(cfg, "model_uri", default=None)
    run_id = None
    if uri in (None, ""):
        uri, run_id = best_model_uri(cfg)
    uri = str(uri)
    model_dir = fetch_model_dir(cfg, uri, key="model_uri", download_to=download_to)
    if not is_mlflow_uri(uri):
        return ResolvedModel(model_dir, uri, None)
    return ResolvedModel(model_dir, uri, run_id or _source_run_id(uri))


def segment_rules_for(cfg: DictConfig, model: ResolvedModel) -> SegmentRules:
    """The segmentation rules the model was trained with (its run's config.yaml); else today's config."""
    if model.run_id:
        try:
            import mlflow

            text = mlflow.artifacts.load_text(f"runs:/{model.run_id}/config.yaml")
            trained = OmegaConf.create(text)
            if OmegaConf.select(trained, "segment") is not None:
                log.info("predict: segmentation rules from the training run %s", model.run_id)
                return SegmentRules.from_cfg(trained.segment)
        except Exception as exc:
            log.warning("predict: cannot read config.yaml of run %s (%s); using the current segment config",
                        model.run_id, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    else:
        log.info("predict: model %s has no training run to take segmentation rules from; using the "
                 "current segment config", model.uri)
    return SegmentRules.from_cfg(cfg.segment)


# ---------------------------------------------------------------- inputs

@dataclass
class Article:
    article_id: str
    source: str
    rows: list[dict]  # sentence_id, idx, text


def _as_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple, ListConfig)):
        return [str(v) for v in value]
    return [str(value)]


def expand_inputs(inputs: Sequence[str], errors: ErrorLog) -> list[Path]:
    """Files named by paths, directories (recursively, hidden files skipped) and glob patterns."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if GLOB_CHARS & set(item) and not path.exists():
            matched = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
            if not matched:
                errors.add(item, "missing", f"{item}: no file matches this pattern")
                log.warning("predict: %s matches no file", item)
            files.extend(matched)
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*")
                           if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                errors.add(path, "empty", f"{path}: directory holds no files")
                log.warning("predict: directory %s holds no files", path)
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            errors.add(path, "missing", f"{path}: no such file or directory")
            log.warning("predict: input %s does not exist", path)
    return files


def _table_chunks(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """A table read in chunks of rows, every column as str; BadInputFile for an unreadable one."""
    suffix = path.suffix.lower()
    try:
        if path.stat().st_size == 0:
            raise BadInputFile(path, "empty", "file is empty; remove it or give it some rows")
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows):
                yield batch.to_pandas().astype(str)
            return
        with open(path, "rb") as fh:
            if b"\x00" in fh.read(1 << 16):
                raise BadInputFile(path, "binary", "looks binary (NUL bytes); give a UTF-8 table")
        if suffix == ".csv":
            reader = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8", chunksize=chunk_rows)
        else:
            reader = pd.read_json(path, lines=True, dtype=str, encoding="utf-8", chunksize=chunk_rows)
        with reader:
            for chunk in reader:
                yield chunk.fillna("").astype(str)
    except BadInputFile:
        raise
    except UnicodeDecodeError as exc:
        raise BadInputFile(path, "not_utf8", f"not valid UTF-8 (byte {exc.start}); re-save it as UTF-8") from None
    except pd.errors.EmptyDataError:
        raise BadInputFile(path, "empty", "table is empty; give it a header and rows") from None
    except (ValueError, pd.errors.ParserError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BadInputFile(path, "bad_table", f"cannot be read as a {suffix} table ({first[:200]})") from None


class ArticleReader:
    """Yields the articles of all inputs one at a time; unusable ones become error rows."""

    def __init__(self, cfg: DictConfig, rules: SegmentRules, errors: ErrorLog):
        self.rules = rules
        self.errors = errors
        self.text_column = str(cfg.predict.text_column)
        self.table_rows = str(cfg.predict.table_rows)
        self.chunk_rows = int(cfg.predict.chunk_sentences)
        if self.table_rows not in ("auto", "articles", "sentences"):
            raise PipelineError(f"predict.table_rows={self.table_rows!r}: choose auto, articles or sentences")
        self.owners: dict[str, str] = {}

    def read(self, files: Iterable[Path]) -> Iterator[Article]:
        for path in files:
            try:
                if path.suffix.lower() in TABLE_SUFFIXES:
                    yield from self._table(path)
                else:
                    article = self._text_file(path)
                    if article is not None:
                        yield article
            except BadInputFile as exc:
                self.errors.file_error(exc)

    def _claim(self, article_id: str, source: str) -> bool:
        if article_id in self.owners:
            message = (f"{source}: article id {article_id!r} already used by {self.owners[article_id]}; "
                       "skipped (ids are file stems or the table's article_id: make them unique)")
            log.warning("predict: %s", message)
            self.errors.add(source, "duplicate_article", message, article_id=article_id)
            return False
        self.owners[article_id] = source
        return True

    def _segmented(self, article_id: str, text: str, source: str) -> Article | None:
        if not has_arabic(text):
            raise BadInputFile(source, "no_arabic", "holds no Arabic text; is it the right file?")
        rows, _removed = article_rows(article_id, text, self.rules)
        if not rows:
            self.errors.add(source, "no_sentences", f"{source}: no sentence left after segmentation "
                            "(only boilerplate or punctuation)", article_id=article_id)
            return None
        if not self._claim(article_id, source):
            return None
        return Article(article_id, source, [{k: r[k] for k in ("sentence_id", "idx", "text")} for r in rows])

    def _text_file(self, path: Path) -> Article | None:
        return self._segmented(article_id_for(path), read_text_strict(path), str(path))

    def _table(self, path: Path) -> Iterator[Article]:
        sentences_mode: bool | None = None
        pending: tuple[str, list[str], list[str]] | None = None  # article id, texts, sentence ids
        row_number = 0
        for chunk in _table_chunks(path, self.chunk_rows):
            if self.text_column not in chunk.columns:
                raise BadInputFile(path, "bad_table", f"has no {self.text_column!r} column (columns: "
                                   f"{', '.join(map(str, chunk.columns))}); set predict.text_column")
            if sentences_mode is None:
                sentences_mode = (self.table_rows == "sentences"
                                  or (self.table_rows == "auto" and "sentence_id" in chunk.columns))
            has_ids = "article_id" in chunk.columns
            for record in chunk.to_dict("records"):
                row_number += 1
                text = str(record[self.text_column])
                if sentences_mode:
                    article_id = str(record["article_id"]) if has_ids and record["article_id"] else path.stem
                else:
                    article_id = str(record["article_id"]) if has_ids and record["article_id"] else f"{path.stem}:{row_number}"
                if pending is not None and pending[0] != article_id:
                    yield from self._finish_table_article(pending, path, sentences_mode)
                    pending = None
                if pending is None:
                    pending = (article_id, [], [])
                pending[1].append(text)
                pending[2].append(str(record.get("sentence_id", "") or ""))
        if sentences_mode is None:
            raise BadInputFile(path, "empty", "table has a header but no rows")
        if pending is not None:
            yield from self._finish_table_article(pending, path, sentences_mode)

    def _finish_table_article(self, pending, path: Path, sentences_mode: bool) -> Iterator[Article]:
        article_id, texts, given_ids = pending
        source = f"{path}#{article_id}"
        if not sentences_mode:
            try:
                article = self._segmented(article_id, "\n".join(texts), source)
            except BadInputFile as exc:
                self.errors.file_error(exc)
                return
            if article is not None:
                yield article
            return
        keep = [i for i, t in enumerate(texts) if squeeze_spaces(t)]
        for i in set(range(len(texts))) - set(keep):
            self.errors.add(source, "empty_sentence", f"{source}: sentence row {i} is empty; skipped",
                            article_id=article_id, sentence_id=given_ids[i])
        if not keep or not self._claim(article_id, str(path)):
            return
        texts = [squeeze_spaces(texts[i]) for i in keep]
        ids = [given_ids[i] for i in keep]
        if not all(ids):
            made = sentence_ids(article_id, texts)
            ids = [given or generated for given, generated in zip(ids, made)]
        yield Article(article_id, str(path), [{"sentence_id": s, "idx": i, "text": t}
                                              for i, (s, t) in enumerate(zip(ids, texts))])


# ---------------------------------------------------------------- outputs

def output_columns(labels: Sequence[str]) -> list[str]:
    return ["article_id", "sentence_id", "idx", "text", "label", *[f"p_{x}" for x in labels], "truncated"]


def conform(df: pd.DataFrame, labels: Sequence[str]) -> pd.DataFrame:
    """The output schema with fixed dtypes, whatever format the rows were read back from."""
    out = pd.DataFrame({
        "article_id": df["article_id"].astype(str),
        "sentence_id": df["sentence_id"].astype(str),
        "idx": pd.to_numeric(df["idx"]).astype("int64"),
        "text": df["text"].astype(str),
        "label": df["label"].astype(str),
    })
    for x in labels:
        out[f"p_{x}"] = pd.to_numeric(df[f"p_{x}"]).astype("float64")
    truncated = df["truncated"]
    if truncated.dtype != bool:
        truncated = truncated.astype(str).str.lower().isin(["true", "1"])
    out["truncated"] = truncated.astype(bool)
    return out


class TableWriter:
    """Appends DataFrames to one .csv / .jsonl / .parquet file without holding them all."""

    def __init__(self, path: Path, suffix: str):
        self.path = Path(path)
        self.suffix = suffix.lower()
        self._parquet = None
        self._started = False

    def write(self, df: pd.DataFrame) -> None:
        if self.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(df, preserve_index=False)
            if self._parquet is None:
                self._parquet = pq.ParquetWriter(self.path, table.schema)
            self._parquet.write_table(table.cast(self._parquet.schema))
        elif self.suffix == ".csv":
            df.to_csv(self.path, mode="a" if self._started else "w", header=not self._started, index=False,
                      encoding="utf-8")
        else:
            with open(self.path, "a" if self._started else "w", encoding="utf-8") as fh:
                if len(df):
                    df.to_json(fh, orient="records", lines=True, force_ascii=False)
        self._started = True

    def close(self, empty_like: pd.DataFrame) -> None:
        if not self._started:  # no rows at all: still a valid, empty table with the right columns
            self.write(empty_like)
        if self._parquet is not None:
            self._parquet.close()


def read_chunks(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """Rows of an earlier output (parquet / csv / jsonl) in chunks."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows):
            yield batch.to_pandas()
    elif suffix == ".csv":
        with pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8", chunksize=chunk_rows) as reader:
            yield from reader
    else:
        with pd.read_json(path, lines=True, dtype=False, chunksize=chunk_rows) as reader:
            yield from reader


class Summary:
    """Per-article counts and shares per label, mean(p_positive − p_negative), dominant label.

    Accumulated chunk by chunk as one small table per article, never holding the sentences."""

    def __init__(self, labels: Sequence[str]):
        self.labels = list(labels)
        self.columns = ["sentences", "truncated", *[f"n_{x}" for x in self.labels], "net_sum",
                        *[f"psum_{x}" for x in self.labels]]
        self.totals = pd.DataFrame(columns=self.columns, dtype="float64")
        self.order: dict[str, None] = {}  # articles in first-seen order

    def add(self, df: pd.DataFrame) -> None:
        if df.empty:
            return
        ids = df["article_id"].astype(str)
        part = pd.DataFrame({"sentences": 1.0, "truncated": df["truncated"].astype(float)})
        for x in self.labels:
            part[f"n_{x}"] = (df["label"] == x).astype(float)
        net = df["p_positive"] - df["p_negative"] if {"p_positive", "p_negative"} <= set(df.columns) else 0.0
        part["net_sum"] = net
        for x in self.labels:
            part[f"psum_{x}"] = df[f"p_{x}"].astype(float)
        sums = part.groupby(ids.to_numpy(), sort=False).sum()
        self.order.update(dict.fromkeys(sums.index))
        self.totals = sums if self.totals.empty else self.totals.add(sums, fill_value=0.0)

    def frame(self) -> pd.DataFrame:
        t = self.totals.reindex(list(self.order))
        out = pd.DataFrame({"article_id": t.index.astype(str), "sentences": t["sentences"].astype("int64").to_numpy()})
        for x in self.labels:
            out[f"n_{x}"] = t[f"n_{x}"].astype("int64").to_numpy()
        for x in self.labels:
            out[f"share_{x}"] = (t[f"n_{x}"] / t["sentences"]).to_numpy()
        out["net_stance"] = (t["net_sum"] / t["sentences"]).to_numpy()
        # Most sentences wins; a tie goes to the label with the larger summed probability.
        keys = np.stack([t[f"n_{x}"].to_numpy() + t[f"psum_{x}"].to_numpy() / (t["sentences"].to_numpy() + 1)
                         for x in self.labels], axis=1) if len(t) else np.zeros((0, len(self.labels)))
        out["dominant_label"] = np.asarray(self.labels, dtype=object)[keys.argmax(axis=1)] if len(t) else []
        out["truncated_sentences"] = t["truncated"].astype("int64").to_numpy()
        return out


def plot_net_stance(summary: pd.DataFrame, target: Path, max_bars: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = summary.sort_values("net_stance")
    with atomic_path(target) as tmp:
        if len(data) <= max_bars:
            fig, ax = plt.subplots(figsize=(8, max(2.5, 0.28 * len(data) + 1)))
            colors = ["#2a9d8f" if v > 0 else "#e76f51" for v in data["net_stance"]]
            ax.barh(range(len(data)), data["net_stance"], color=colors)
            ax.set_yticks(range(len(data)), data["article_id"], fontsize=7)
            ax.axvline(0, color="black", linewidth=0.8)
            ax.set_xlabel("net stance = mean(p_positive − p_negative)")
        else:  # too many articles for one bar each: their distribution
            fig, ax = plt.subplots(figsize=(8, 4))
            ax.hist(data["net_stance"], bins=40, color="#457b9d")
            ax.set_xlabel("net stance = mean(p_positive − p_negative)")
            ax.set_ylabel("articles")
        ax.set_xlim(-1, 1)
        ax.set_title(f"Net stance toward agreement, {len(data)} articles")
        fig.tight_layout()
        fig.savefig(tmp, format="png", dpi=120)
        plt.close(fig)
    return target


# ---------------------------------------------------------------- the stage

def _sibling(output: Path, configured, tail: str) -> Path:
    if configured:
        return Path(str(configured))
    return output.with_name(output.stem + tail)


def _done_articles(paths: Iterable[Path], chunk_rows: int) -> set[str]:
    done: set[str] = set()
    for path in paths:
        for chunk in read_chunks(path, chunk_rows):
            done.update(chunk["article_id"].astype(str))
    return done


def predict(cfg: DictConfig) -> dict:
    """Stage entry: predict `input` with `model_uri` (default: best run) into `output`; returns the paths."""
    from pipeline.inference import load_predictor, set_threads

    pcfg = cfg.predict
    inputs = _as_list(OmegaConf.select(cfg, "input", default=None))
    output = OmegaConf.select(cfg, "output", default=None)
    if not inputs:
        raise PipelineError("give the articles to predict: input=<file | directory | glob | .csv | .jsonl>")
    if not output:
        raise PipelineError("give where to write predictions: output=<file.csv | file.jsonl | file.parquet>")
    output = Path(str(output))
    if output.suffix.lower() not in OUTPUT_SUFFIXES:
        raise PipelineError(f"output={output}: unsupported format {output.suffix!r}; use .csv, .jsonl or .parquet")
    summary_path = _sibling(output, pcfg.summary, ".articles" + output.suffix)
    errors_path = _sibling(output, pcfg.errors, ".errors.csv")
    plot_path = _sibling(output, pcfg.plot_path, ".net_stance.png") if pcfg.plot else None
    chunk_sentences = int(pcfg.chunk_sentences)
    if chunk_sentences < 1:
        raise PipelineError(f"predict.chunk_sentences={chunk_sentences} must be at least 1")
    run_dir = Path(cfg.paths.run_dir)
    errors = ErrorLog()

    try:
        model = resolve_model(cfg, run_dir / "model")
        predictor = load_predictor(model.model_dir, quantize=pcfg.quantize or None)
    except PipelineError as exc:
        errors.add(OmegaConf.select(cfg, "model_uri", default=None) or "(default model)", "model", str(exc))
        write_table_atomic(errors.frame(), errors_path)
        raise
    threads = set_threads(pcfg.threads)
    log.info("predict: model %s (%s, labels %s, max_length %d%s), %d threads", model.uri, predictor.kind,
             ",".join(predictor.labels), predictor.max_length,
             ", int8" if pcfg.quantize else "", threads)
    rules = segment_rules_for(cfg, model)
    labels = predictor.labels
    columns = output_columns(labels)

    # Hidden work area beside the output: parts of an interrupted run never look like a finished output.
    parts_dir = output.with_name(f".{output.name}.parts")
    previous_errors = pd.DataFrame(columns=ERROR_COLUMNS)
    if pcfg.resume:
        done = _done_articles([p for p in [output] if p.exists()] + sorted(parts_dir.glob("part-*.parquet")),
                              chunk_sentences)
        if errors_path.exists():
            previous_errors = pd.read_csv(errors_path, dtype=str, keep_default_na=False)
            previous_errors = previous_errors[previous_errors["article_id"].isin(done)]
        log.info("predict: resume: %d articles already done", len(done))
    else:
        done = set()
        if parts_dir.exists():
            log.info("predict: removing the parts of an earlier, unfinished run in %s", parts_dir)
            shutil.rmtree(parts_dir)
    parts_dir.mkdir(parents=True, exist_ok=True)
    next_part = 1 + max((int(p.stem.split("-")[1]) for p in parts_dir.glob("part-*.parquet")), default=0)

    files = expand_inputs(inputs, errors)
    reader = ArticleReader(cfg, rules, errors)
    buffer: list[dict] = []
    counts = {"articles": 0, "skipped_done": 0, "sentences": 0, "truncated": 0}

    def flush() -> None:
        nonlocal next_part, buffer
        if not buffer:
            return
        frame = pd.DataFrame(buffer)
        buffer = []
        scored = predictor.predict(frame["text"].tolist(), batch_size=int(pcfg.batch_size))
        frame = pd.concat([frame.drop(columns=["source"]).reset_index(drop=True), scored], axis=1)
        for row in frame.loc[frame["truncated"], ["article_id", "sentence_id"]].itertuples(index=False):
            errors.add(sources[row.article_id], "truncated",
                       f"{sources[row.article_id]}: sentence {row.sentence_id} is longer than the model's "
                       f"max_length={predictor.max_length} tokens; predicted from its first "
                       f"{predictor.max_length} tokens", article_id=row.article_id, sentence_id=row.sentence_id)
        counts["sentences"] += len(frame)
        counts["truncated"] += int(frame["truncated"].sum())
        write_table_atomic(conform(frame, labels)[columns], parts_dir / f"part-{next_part:06d}.parquet")
        next_part += 1
        progress.set_postfix(sentences=counts["sentences"])

    sources: dict[str, str] = {}  # article id -> source, for the chunk being predicted
    progress = tqdm(reader.read(files), desc="predict", unit="article", disable=None)
    for article in progress:
        if article.article_id in done:
            counts["skipped_done"] += 1
            continue
        if len(buffer) >= chunk_sentences:
            flush()
            sources = {}
        sources[article.article_id] = article.source
        buffer.extend({"source": article.source, "article_id": article.article_id, **row} for row in article.rows)
        counts["articles"] += 1
    flush()
    progress.close()

    if counts["articles"] == 0 and not done:
        write_table_atomic(errors.frame(), errors_path)
        shutil.rmtree(parts_dir, ignore_errors=True)
        raise PipelineError(f"no usable article in input={', '.join(inputs)}; see {errors_path} for why")

    # Merge: earlier output (resume) + parts → temp file → rename; the summary is built on the way.
    summary = Summary(labels)
    with atomic_path(output) as tmp:
        writer = TableWriter(tmp, output.suffix)
        merged = ([output] if pcfg.resume and output.exists() else []) + sorted(parts_dir.glob("part-*.parquet"))
        for path in merged:
            for chunk in read_chunks(path, chunk_sentences):
                chunk = conform(chunk, labels)[columns]
                writer.write(chunk)
                summary.add(chunk)
        writer.close(pd.DataFrame({c: pd.Series(dtype=t) for c, t in conform_dtypes(labels).items()}))
    shutil.rmtree(parts_dir, ignore_errors=True)

    summary_frame = summary.frame()
    write_table_atomic(summary_frame, summary_path)
    all_errors = pd.concat([previous_errors, errors.frame()], ignore_index=True) if len(previous_errors) else errors.frame()
    write_table_atomic(all_errors, errors_path)
    if plot_path is not None:
        plot_net_stance(summary_frame, plot_path, int(pcfg.plot_max_bars))

    problems = all_errors[all_errors["reason"] != "truncated"]
    log.info("predict: %d articles, %d sentences predicted (%d truncated at %d tokens); %d skipped as already "
             "done; %d input problems", counts["articles"], counts["sentences"], counts["truncated"],
             predictor.max_length, counts["skipped_done"], len(problems))
    log.info("predict: wrote %s, %s, %s%s", output, summary_path, errors_path,
             f", {plot_path}" if plot_path else "")
    report = {"output": str(output), "summary": str(summary_path), "errors": str(errors_path),
              "plot": str(plot_path) if plot_path else None, "model_uri": model.uri, **counts,
              "input_problems": int(len(problems))}
    write_text_atomic(run_dir / "predict_report.json", json.dumps(report, ensure_ascii=False, indent=2))
    return report


def conform_dtypes(labels: Sequence[str]) -> dict[str, str]:
    return {"article_id": "object", "sentence_id": "object", "idx": "int64", "text": "object", "label": "object",
            **{f"p_{x}": "float64" for x in labels}, "truncated": "bool"}
