"""predict's analyst outputs (issue 11): confidence, reasons, timeline / outlet summaries and the HTML report.

  * `Enricher` adds per-sentence columns to each predicted chunk: `confidence` (the calibrated probability of the
    predicted label; the calibration itself is applied by the predictor, pipeline.models.base), `confident`
    (≥ predict.min_confidence), `rules_fired` (the cue lexicon's rules; a hybrid model already returns them) and,
    with predict.explain=true, `top_words` (occlusion, pipeline.models.explain);
  * `write_summaries` writes `<output stem>.timeline<ext>` and `<output stem>.outlets<ext>` from the per-article
    summary (one row per article: memory does not grow with the number of sentences);
  * `write_report` writes the self-contained HTML report from the per-article summary and a bounded sample of
    sentences per article, read from the merged output in chunks (pipeline.prediction.report_sample).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from pipeline.prediction.analytics import by_outlet, timeline
from pipeline.core.errors import PipelineError
from pipeline.models.explain import format_reasons, top_words
from pipeline.core.io import CsvStyle, iter_table_chunks, write_table_atomic
from pipeline.text.context import contexts_of

log = logging.getLogger(__name__)

TIMELINE_CHOICES = ("day", "week", "none")


class Enricher:
    """Callable on a predicted chunk (text, label, p_<label>… columns): adds confidence, confident, rules_fired and
    (explain) top_words. `added` lists the text columns it adds.

    Built from plain values, so that a Spark executor builds the same one without the Hydra config
    (pipeline.prediction.spark_articles); the predict stage uses `from_cfg`. `lexicon` is a loaded rules.Lexicon, the path of
    one, or None (an empty rules_fired); it is not used when the predictor (a hybrid) returns rules_fired itself."""

    def __init__(self, predictor, *, min_confidence: float = 0.0, explain: bool = False, top_k: int = 3,
                 batch_size: int = 64, lexicon=None):
        self.predictor = predictor
        self.labels = list(predictor.labels)
        self.min_confidence = float(min_confidence or 0.0)
        self.explain = bool(explain)
        self.top_k = int(top_k)
        self.batch_size = int(batch_size)
        self.lexicon = None
        if "rules_fired" not in predictor.output_columns:  # a hybrid returns them: never computed twice
            self.lexicon = read_lexicon(lexicon) if isinstance(lexicon, (str, Path)) else lexicon
        self.added = ["rules_fired"] + (["top_words"] if self.explain else [])

    @property
    def cue_lexicon(self):
        """The lexicon whose rules make `rules_fired` (a hybrid model's own, else labeling.lexicon), or None."""
        return self.lexicon if self.lexicon is not None else getattr(self.predictor, "lexicon", None)

    @staticmethod
    def settings(cfg: DictConfig) -> dict:
        """The constructor's plain values from the config (predict.*, labeling.lexicon as a path or None)."""
        pcfg = cfg.predict
        lexicon = OmegaConf.select(cfg, "labeling.lexicon", default=None)
        return {"min_confidence": float(OmegaConf.select(pcfg, "min_confidence", default=0.0) or 0.0),
                "explain": bool(OmegaConf.select(pcfg, "explain", default=False)),
                "top_k": int(OmegaConf.select(pcfg, "explain_top_k", default=3)),
                "batch_size": int(OmegaConf.select(pcfg, "batch_size", default=64)),
                "lexicon": str(lexicon) if lexicon else None}

    @classmethod
    def from_cfg(cls, cfg: DictConfig, predictor) -> "Enricher":
        return cls(predictor, **cls.settings(cfg))

    def __call__(self, frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.copy()
        probs = frame[[f"p_{x}" for x in self.labels]].to_numpy(dtype=float)
        frame["confidence"] = probs.max(axis=1) if len(frame) else np.zeros(0)
        frame["confident"] = frame["confidence"] >= self.min_confidence
        texts = frame["text"].astype(str).tolist()
        if "rules_fired" not in frame.columns:
            frame["rules_fired"] = (self.lexicon.label_texts(texts)["rules_fired"].to_numpy()
                                    if self.lexicon is not None else "")
        if self.explain:
            def proba(t, c=None):  # the context only for a model that reads one
                return self.predictor.predict_proba(t, batch_size=self.batch_size,
                                                    **({} if c is None else {"context": c}))

            words = top_words(proba, texts, frame["label"].tolist(), k=self.top_k, classes=self.labels,
                              context=contexts_of(frame, self.predictor.context))
            frame["top_words"] = [format_reasons(w) for w in words]
        return frame


def read_lexicon(path):
    """The cue lexicon at `path`, or None with a warning when it cannot be loaded (rules_fired is then empty)."""
    from pipeline.labeling.rules import load_lexicon

    try:
        return load_lexicon(str(path))
    except (PipelineError, OSError) as exc:
        log.warning("predict: no rules_fired column values: cannot load the lexicon %s (%s)", path, exc)
        return None


def timeline_freq(cfg: DictConfig) -> str | None:
    freq = str(OmegaConf.select(cfg, "predict.timeline", default="none") or "none").lower()
    if freq not in TIMELINE_CHOICES:
        raise PipelineError(f"predict.timeline={freq!r}: choose one of {', '.join(TIMELINE_CHOICES)}")
    return None if freq == "none" else freq


def _per_article(articles: pd.DataFrame, labels) -> pd.DataFrame:
    """The per-article summary as the sums `analytics.grouped_articles` takes."""
    out = articles.copy()
    out["net_sum"] = out["net_stance"].astype(float) * out["sentences"].astype(float)
    return out


def write_summaries(cfg: DictConfig, output: Path, articles: pd.DataFrame, labels) -> dict[str, pd.DataFrame]:
    """Timeline and outlet tables beside `output`, when the articles carry dates / outlets; {name: frame}."""
    pcfg = cfg.predict
    n_boot, seed = int(pcfg.bootstrap), int(OmegaConf.select(cfg, "seed", default=0) or 0)
    per_article = _per_article(articles, labels)
    written: dict[str, pd.DataFrame] = {}
    freq = timeline_freq(cfg)
    date_column, outlet_column = str(pcfg.date_column), str(pcfg.outlet_column)
    if freq and date_column in articles.columns and (articles[date_column].astype(str).str.strip() != "").any():
        frame = timeline(per_article, freq, date_column=date_column, n_boot=n_boot, seed=seed, labels=labels,
                         per_article=True)
        frame["period"] = pd.to_datetime(frame["period"])
        written["timeline"] = frame
    if outlet_column in articles.columns and (articles[outlet_column].astype(str).str.strip() != "").any():
        written["outlets"] = by_outlet(per_article, outlet_column=outlet_column, n_boot=n_boot, seed=seed,
                                       labels=labels, per_article=True)
    for name, frame in written.items():
        path = summary_path(output, name)
        if "period" in frame.columns:  # YYYY-MM-DD in CSV and JSON lines, a date in parquet
            frame = frame.assign(period=frame["period"].dt.strftime("%Y-%m-%d"))
        write_table_atomic(frame, path, csv=CsvStyle.from_cfg(cfg), date_columns=["period"])
        log.info("predict: wrote %s (%d rows)", path, len(frame))
    return written


def summary_path(output: Path, name: str) -> Path:
    return output.with_name(f"{output.stem}.{name}{output.suffix}")


SUMMARY_NAMES = ("timeline", "outlets")  # the tables write_summaries may write beside the output


def report_path(cfg: DictConfig, output: Path) -> Path:
    """predict.report_path, default <output stem>.report.html."""
    configured = OmegaConf.select(cfg, "predict.report_path", default=None)
    return Path(str(configured)) if configured else output.with_name(output.stem + ".report.html")


def report_sample(cfg: DictConfig, labels):
    """An empty ReportSample sized by predict.report_sentences_per_article and predict.report_top_sentences (a bad
    value fails here: the stage calls this before any work)."""
    from pipeline.prediction.report_sample import ReportSample

    return ReportSample(labels, per_article=int(cfg.predict.report_sentences_per_article),
                        top_n=int(cfg.predict.report_top_sentences))


def write_report(cfg: DictConfig, output: Path, articles: pd.DataFrame, summaries: dict[str, pd.DataFrame],
                 labels, model_description: str, *, quality: dict | None = None, lexicon=None) -> Path:
    """The HTML report (predict.report_path, default <output stem>.report.html) from the merged outputs.
    `quality`: registry.model_quality of the model's train run (None: unknown); `lexicon`: the one that made
    rules_fired (Enricher.cue_lexicon), so the report shows the cues' own words."""
    from pipeline.prediction.report import ModelQuality, write_html_report

    pcfg = cfg.predict
    path = report_path(cfg, output)
    sample = report_sample(cfg, labels)
    # read back in chunks, keeping only the per-article sample: memory does not grow with the output
    for chunk in iter_table_chunks(output, int(pcfg.chunk_sentences), restore=True):
        sample.add(_typed(chunk, labels))  # a CSV / JSONL output reads back as text: numbers and flags again
    shown = None if quality is None else ModelQuality(
        **{k: quality.get(k) for k in ("smoke", "test_macro_f1", "test_ci", "test_n", "cv_macro_f1", "cv_ci", "cv_n",
                                       "run_id", "rules_in_sample") if quality.get(k) is not None})
    return write_html_report(path, sample, articles, summaries.get("timeline"), summaries.get("outlets"),
                             model_description=model_description, quality=shown,
                             min_confidence=float(pcfg.min_confidence),
                             cues=lexicon.cue_matches if lexicon is not None else None)


def _typed(sentences: pd.DataFrame, labels) -> pd.DataFrame:
    """A chunk of the output as read back: probabilities, confidence and idx as numbers, flags as bools."""
    for column in [*(f"p_{x}" for x in labels), "confidence", "idx"]:
        if column in sentences.columns:
            sentences[column] = pd.to_numeric(sentences[column])
    for column in ("truncated", "confident"):
        if column in sentences.columns and sentences[column].dtype != bool:
            sentences[column] = sentences[column].astype(str).str.lower().isin(["true", "1"])
    return sentences
