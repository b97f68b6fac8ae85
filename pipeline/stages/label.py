"""label stage: segmented sentences → labelled training set, with where every label came from.

    python -m pipeline label                                  # labelled.parquet + rules-vs-gold report (MLflow run "rules")
    python -m pipeline label --stats                          # gold (and labelled) label distributions, then stop
    python -m pipeline label --export [labeling.export_size=50 labeling.export_model_uri=runs:/<id>/model]
    python -m pipeline label labeling.import_file=project-export.json

Precedence per sentence: gold (labels/gold.csv) > annotation (labels/annotations.csv, from Label Studio) >
rules (labels/lexicon.yaml). Where no rule fires, `labeling.abstain` decides: neutral, or no label (source=none).
Output columns are the contract in docs (article_id, sentence_id, idx, text, label, source, rule_label,
rule_confidence, rules_fired).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig
from tqdm.auto import tqdm

from pipeline import LABELS
from pipeline.core.errors import PipelineError
from pipeline.labeling.gold import label_distribution, load_gold
from pipeline.models.metrics import plot_confusion
from pipeline.core import io
from pipeline.core.io import CsvStyle, read_table, write_table_atomic, write_text_atomic
from pipeline.core.progress import bar_disabled
from pipeline.core.provenance import note_file
from pipeline.labeling import labelstudio
from pipeline.labeling.rules import Lexicon, load_lexicon, rule_ids

log = logging.getLogger(__name__)

LABELLED_COLUMNS = ["article_id", "sentence_id", "idx", "text", "label", "source",
                    "rule_label", "rule_confidence", "rules_fired"]
SOURCES = ("gold", "annotation", "rules", "none")
ABSTAIN_POLICIES = ("neutral", "drop")
ABSTAIN = "(abstain)"
RULES_BAR_FROM = 2000  # sentences: fewer are labelled in about a second, not worth a bar


# ---------------------------------------------------------------- inputs

def read_sentences(cfg: DictConfig) -> pd.DataFrame:
    path = Path(cfg.paths.sentences)
    if not path.exists():
        raise PipelineError(f"{path}: not found; run `python -m pipeline segment` first")
    return read_table(path)


def read_gold(cfg: DictConfig, sentences: pd.DataFrame) -> pd.DataFrame | None:
    """Gold labels checked against the current sentences (stale ids are an error); None if there is no file."""
    path = Path(cfg.paths.gold)
    note_file(path)
    if not path.exists():
        log.warning("label: no gold labels at %s; rule quality cannot be measured and every label is weak", path)
        return None
    return load_gold(path, sentences)


# ---------------------------------------------------------------- the labelled table

def apply_rules(lexicon: Lexicon, texts: list[str]) -> pd.DataFrame:
    return lexicon.label_texts(tqdm(texts, desc="rules", unit="sentence",
                                    disable=bar_disabled(len(texts), at_least=RULES_BAR_FROM)))


def build_labelled(sentences: pd.DataFrame, rules: pd.DataFrame, gold: pd.DataFrame | None,
                   annotations: pd.DataFrame | None, abstain: str) -> pd.DataFrame:
    """One row per sentence: gold > annotation > rules; abstentions per `abstain`."""
    if abstain not in ABSTAIN_POLICIES:
        raise PipelineError(f"labeling.abstain={abstain!r}: choose one of {', '.join(ABSTAIN_POLICIES)}")
    out = sentences[["article_id", "sentence_id", "idx", "text"]].reset_index(drop=True).copy()
    out = pd.concat([out, rules.reset_index(drop=True)], axis=1)
    gold_map = dict(zip(gold["sentence_id"], gold["label"])) if gold is not None else {}
    ann_map = dict(zip(annotations["sentence_id"], annotations["label"])) if annotations is not None else {}
    labels, sources = [], []
    for sid, rule_label in zip(out["sentence_id"], out["rule_label"]):
        if sid in gold_map:
            labels.append(gold_map[sid]); sources.append("gold")
        elif sid in ann_map:
            labels.append(ann_map[sid]); sources.append("annotation")
        elif isinstance(rule_label, str):
            labels.append(rule_label); sources.append("rules")
        elif abstain == "neutral":
            labels.append("neutral"); sources.append("rules")
        else:
            labels.append(None); sources.append("none")
    out["label"] = pd.Series(labels, dtype="object")
    out["source"] = pd.Series(sources, dtype="object")
    out["idx"] = out["idx"].astype("int64")
    out["rule_confidence"] = out["rule_confidence"].astype("float64")
    return out[LABELLED_COLUMNS]


# ---------------------------------------------------------------- rules vs gold

def rules_quality(labelled: pd.DataFrame, gold: pd.DataFrame, abstain: str, lexicon: Lexicon | None = None) -> dict:
    """Coverage, accuracy, macro-F1, per-class precision/recall and the confusion matrix of the rules on gold."""
    from pipeline.models.metrics import classification_metrics

    rows = labelled.merge(gold[["sentence_id", "label"]].rename(columns={"label": "gold"}), on="sentence_id")
    n = len(rows)
    fired = rows["rule_label"].notna()
    covered = rows[fired]
    # The labels the stage would write from rules: abstentions become neutral, or are left out.
    effective = rows.assign(pred=rows["rule_label"].fillna("neutral")) if abstain == "neutral" else covered.assign(pred=covered["rule_label"])
    metrics = {"n_gold": float(n), "coverage": float(fired.mean()) if n else 0.0}
    metrics.update(classification_metrics(effective["gold"], effective["pred"]))
    for key, value in classification_metrics(covered["gold"], covered["rule_label"]).items():
        if key in ("accuracy", "macro_f1"):
            metrics[f"covered_{key}"] = value
    abstained = rows[~fired]
    metrics["abstained"] = float(len(abstained))
    metrics["abstained_gold_neutral_share"] = float((abstained["gold"] == "neutral").mean()) if len(abstained) else 0.0
    pred_col = rows["rule_label"].fillna(ABSTAIN)
    confusion = pd.crosstab(pd.Categorical(rows["gold"], categories=list(LABELS)),
                            pd.Categorical(pred_col, categories=[*LABELS, ABSTAIN]), dropna=False)
    confusion.index = [f"gold_{x}" for x in LABELS]
    confusion.columns = [f"rules_{x}" if x != ABSTAIN else "rules_abstain" for x in confusion.columns]
    errors = effective[effective["pred"] != effective["gold"]][
        ["sentence_id", "gold", "pred", "rule_confidence", "rules_fired", "text"]]
    cue_labels = {c.id: c.label for c in lexicon.cues} if lexicon is not None else {}
    return {"metrics": metrics, "confusion": confusion, "errors": errors,
            "per_cue": per_cue_quality(rows, cue_labels)}


def per_cue_quality(rows: pd.DataFrame, cue_labels: dict[str, str]) -> pd.DataFrame:
    """For each rule id that fired on a gold sentence: how often, and how often gold agrees with its vote."""
    stats: dict[str, list[int]] = {}
    for fired, gold in zip(rows["rules_fired"], rows["gold"]):
        for rid in set(rule_ids(fired)):
            if rid == "contrast":
                continue
            vote = _vote_of(rid, cue_labels)
            entry = stats.setdefault(rid, [0, 0])
            entry[0] += 1
            entry[1] += int(vote == gold)
    table = pd.DataFrame([{"rule": k, "vote": _vote_of(k, cue_labels) or "none", "fired_on_gold": v[0], "gold_agrees": v[1],
                           "precision": round(v[1] / v[0], 3)} for k, v in stats.items()],
                         columns=["rule", "vote", "fired_on_gold", "gold_agrees", "precision"])
    return table.sort_values(["fired_on_gold", "rule"], ascending=[False, True]).reset_index(drop=True)


def _vote_of(rule_id: str, cue_labels: dict[str, str]) -> str | None:
    """The class a fired rule id voted for: a positive cue → positive, …:negated → negative, …:cancelled → none."""
    base, _, modifier = rule_id.partition(":")
    label = cue_labels.get(base)
    if modifier == "cancelled":
        return None
    if modifier == "negated" and label in ("positive", "negative"):
        return "negative" if label == "positive" else "positive"
    return label


def format_quality(quality: dict, abstain: str) -> str:
    m = quality["metrics"]
    lines = [
        f"rules vs gold ({int(m['n_gold'])} gold sentences, abstain={abstain}):",
        f"  coverage {m['coverage']:.3f} (rules fired on {int(m['n_gold'] - m['abstained'])}; "
        f"{int(m['abstained'])} abstained, {m['abstained_gold_neutral_share']:.0%} of them gold-neutral)",
        f"  accuracy {m.get('accuracy', float('nan')):.3f}  macro-F1 {m.get('macro_f1', float('nan')):.3f}  "
        f"(where rules fired: accuracy {m.get('covered_accuracy', float('nan')):.3f}, "
        f"macro-F1 {m.get('covered_macro_f1', float('nan')):.3f})",
        "  per class:  precision  recall",
        *(f"    {label:<9} {m.get(f'precision_{label}', 0):9.3f} {m.get(f'recall_{label}', 0):7.3f}" for label in LABELS),
        "  confusion (rows gold, columns rules):",
        *("    " + line for line in quality["confusion"].to_string().splitlines()),
    ]
    return "\n".join(lines)


def rules_quality_key(lexicon_sha: str, abstain: str, labelled: pd.DataFrame, gold: pd.DataFrame) -> str:
    """What the rules-vs-gold numbers depend on: the lexicon, the abstain policy, and the gold sentences (ids, texts,
    labels). Two label runs with the same key measure the same thing."""
    import hashlib

    rows = labelled.merge(gold[["sentence_id", "label"]].rename(columns={"label": "gold"}), on="sentence_id")
    payload = json.dumps([lexicon_sha, abstain, sorted(zip(rows["sentence_id"], rows["text"], rows["gold"]))],
                         ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def rules_description(quality: dict, lexicon_sha: str, abstain: str) -> str:
    m = quality["metrics"]
    return (f"**rules vs gold** on {int(m['n_gold'])} gold sentences: macro-F1 **{m.get('macro_f1', float('nan')):.3f}**, "
            f"accuracy {m.get('accuracy', float('nan')):.3f}, coverage {m['coverage']:.2f} (abstain={abstain}). "
            "In-sample where the lexicon was written from these articles (the seeds): optimistic.\n\n"
            f"Lexicon {lexicon_sha}. Logged once per lexicon, abstain policy and gold set; a label run that would "
            "measure the same again logs nothing.")


def log_quality_to_mlflow(cfg: DictConfig, quality: dict, lexicon_path: Path, run_dir: Path,
                          key: str) -> tuple[str, bool]:
    """(run id, logged now): the `rules` run of this lexicon, abstain policy and gold (`key`); a finished one that
    measured the same is reused rather than repeated."""
    from pipeline.core import tracking

    lexicon_sha = io.file_digest(lexicon_path)
    mlflow = tracking.setup(cfg)
    earlier = mlflow.search_runs(experiment_names=[str(cfg.tracking.experiment)], output_format="list", max_results=1,
                                 filter_string=f"tags.stage = 'label' and tags.rules_key = '{key}' "
                                               "and attributes.status = 'FINISHED'")
    if earlier:
        return earlier[0].info.run_id, False
    tags = {"stage": "label", "lexicon_sha": lexicon_sha, "abstain": str(cfg.labeling.abstain), "rules_key": key,
            tracking.NOTE_TAG: rules_description(quality, lexicon_sha, str(cfg.labeling.abstain))}
    with tracking.start_run(cfg, f"rules {lexicon_sha[:8]}", tags=tags) as run:
        mlflow.log_metrics({f"rules_{k}": float(v) for k, v in quality["metrics"].items()})
        for name in ("rules_confusion.csv", "rules_confusion.png", "rules_errors.csv", "rules_per_cue.csv",
                     "rules_quality.json"):
            if (run_dir / name).exists():
                mlflow.log_artifact(str(run_dir / name))
        mlflow.log_artifact(str(lexicon_path))
        return run.info.run_id, True


def write_quality_files(quality: dict, run_dir: Path, csv: CsvStyle | None = None) -> None:
    write_table_atomic(quality["confusion"].rename_axis("gold").reset_index(), run_dir / "rules_confusion.csv",
                       csv=csv)
    write_table_atomic(quality["errors"], run_dir / "rules_errors.csv", csv=csv)
    write_table_atomic(quality["per_cue"], run_dir / "rules_per_cue.csv", csv=csv)
    write_text_atomic(run_dir / "rules_quality.json", json.dumps(quality["metrics"], indent=2))
    try:
        plot_confusion(quality["confusion"], run_dir / "rules_confusion.png", title="rules vs gold", xlabel="rules")
    except Exception as exc:  # a missing font or backend must not fail the stage
        log.warning("label: confusion matrix plot skipped (%s)", exc)


# ---------------------------------------------------------------- stats

def print_stats(cfg: DictConfig, sentences: pd.DataFrame) -> dict:
    result: dict = {}
    gold = read_gold(cfg, sentences)
    if gold is None:
        print(f"gold: no file at {cfg.paths.gold}")
    else:
        dist = label_distribution(gold["label"])
        print(f"gold labels ({cfg.paths.gold}, {len(gold)} sentences of {len(sentences)}):")
        print(dist.to_string())
        result["gold"] = dist
    labelled_path = Path(cfg.paths.labelled)
    if labelled_path.exists():
        labelled = read_table(labelled_path)
        table = pd.crosstab(labelled["source"], labelled["label"].fillna("(none)"), margins=True, margins_name="total")
        print(f"\nlabelled set ({labelled_path}, {len(labelled)} sentences) by source:")
        print(table.to_string())
        shares = labelled["source"].value_counts(normalize=True).round(3)
        print("\nshare by source: " + ", ".join(f"{k} {v:.1%}" for k, v in shares.items()))
        result["labelled"] = table
    else:
        print(f"\nno labelled set yet at {labelled_path} (run `python -m pipeline label`)")
    return result


# ---------------------------------------------------------------- Label Studio

EXPORT_MODEL_KEY = "labeling.export_model_uri"


def export_model_uri(cfg: DictConfig) -> str | None:
    """The model that orders and pre-annotates `label --export`'s tasks, when there is one."""
    lab = cfg.labeling
    return str(lab.export_model_uri) if lab.export and lab.export_model_uri and not lab.stats_only else None


def check_export_model(cfg: DictConfig) -> None:
    """Before any work (the label stage's check, run before the stages it needs): a model that may not be loaded
    (pipeline.models.trust) is refused before segment, label and the rules' MLflow run."""
    uri = export_model_uri(cfg)
    if uri:
        from pipeline.models.store import check_model_uri

        check_model_uri(cfg, uri, key=EXPORT_MODEL_KEY)


def fetch_export_model(cfg: DictConfig) -> Path | None:
    """The export model's local directory, fetched (and its loading allowed or refused) before the stage works."""
    uri = export_model_uri(cfg)
    if not uri:
        return None
    from pipeline.models.store import fetch_model_dir

    return fetch_model_dir(cfg, uri, key=EXPORT_MODEL_KEY)  # runs:/ and models:/ from the configured store


def model_probabilities(model_dir: Path, sentences: pd.DataFrame) -> np.ndarray:
    """Class probabilities (columns in LABELS order) of a sentence table's rows (article_id, idx, text) from a local
    stance model dir (fetch_export_model), with their sentence context when the model reads one."""
    from pipeline.models.base import load_predictor
    from pipeline.text.context import table_contexts

    predictor = load_predictor(model_dir)
    context = None if predictor.context == "none" else table_contexts(sentences, predictor.context)
    probs = predictor.predict_proba(sentences["text"].tolist(), context=context)
    if list(predictor.labels) != list(LABELS):
        probs = probs[:, [predictor.labels.index(label) for label in LABELS]]
    return probs


def export_tasks(cfg: DictConfig, labelled: pd.DataFrame, lexicon_sha: str,
                 model_dir: Path | None = None) -> tuple[Path, Path, int]:
    lab = cfg.labeling
    candidates = ~labelled["source"].isin(["gold", "annotation"])
    probs, version = None, f"rules-{lexicon_sha[:8]}"
    if model_dir is not None:
        probs = model_probabilities(model_dir, labelled)
        version = str(lab.export_model_uri)
    tasks = labelstudio.build_tasks(
        labelled, candidates, probs=probs, model_version=version, method=str(lab.uncertainty),
        size=None if lab.export_size is None else int(lab.export_size),
        context_sentences=int(lab.context_sentences), from_name=str(lab.from_name), to_name=str(lab.to_name),
    )
    out_dir = Path(lab.export_dir) if lab.export_dir else Path(cfg.paths.run_dir) / "labelstudio"
    xml = labelstudio.labeling_config(LABELS, from_name=str(lab.from_name), to_name=str(lab.to_name))
    tasks_path, config_path = labelstudio.write_export(tasks, out_dir, xml)
    return tasks_path, config_path, len(tasks)


def run_import(cfg: DictConfig, sentences: pd.DataFrame, gold: pd.DataFrame | None) -> labelstudio.ImportReport:
    lab = cfg.labeling
    report = labelstudio.import_export_file(
        lab.import_file, sentences, lab.annotations, gold, on_conflict=str(lab.import_on_conflict),
        from_name=str(lab.from_name), csv=CsvStyle.from_cfg(cfg),
    )
    log.info("label: import %s: %s", lab.import_file, report.summary())
    print(f"imported {lab.import_file}: {report.summary()}")
    if report.backup:
        print(f"  previous annotations backed up to {report.backup}")
    if report.conflicts:
        conflicts = pd.DataFrame(report.conflicts)
        path = write_table_atomic(conflicts, Path(cfg.paths.run_dir) / "import_conflicts.csv", csv=CsvStyle.from_cfg(cfg))
        print(f"  {len(conflicts)} conflict(s), not applied unless said otherwise (listed in {path}):")
        for c in report.conflicts:
            print(f"    [{c['kind']}] {c['sentence_id']}: existing={c['existing'] or '-'} imported={c['imported']} "
                  f"by {c['who']} {c.get('resolution', '')}".rstrip())
            log.warning("label: import conflict %s", c)
    return report


# ---------------------------------------------------------------- stage entry

def label(cfg: DictConfig) -> pd.DataFrame | dict:
    lab = cfg.labeling
    export_model = fetch_export_model(cfg)  # a model that may not be loaded is refused before any work
    sentences = read_sentences(cfg)
    if lab.stats_only:
        return print_stats(cfg, sentences)
    run_dir = Path(cfg.paths.run_dir)
    gold = read_gold(cfg, sentences)
    if lab.import_file:
        run_import(cfg, sentences, gold)
    annotations = labelstudio.read_annotations(lab.annotations, sentences)
    lexicon_path = Path(lab.lexicon)
    lexicon = load_lexicon(lexicon_path)
    rules = apply_rules(lexicon, sentences["text"].tolist())
    labelled = build_labelled(sentences, rules, gold, annotations, str(lab.abstain))
    out = write_table_atomic(labelled, cfg.paths.labelled)
    counts = labelled["source"].value_counts().reindex(SOURCES, fill_value=0)
    log.info("label: wrote %s (%d sentences: %s; %d without a label)", out, len(labelled),
             ", ".join(f"{k}={v}" for k, v in counts.items()), int(labelled["label"].isna().sum()))

    from pipeline.core.io import file_digest

    lexicon_sha = file_digest(lexicon_path)
    rules_note = "no gold labels: rule quality not measured"
    if gold is not None and len(gold):
        quality = rules_quality(labelled, gold, str(lab.abstain), lexicon)
        write_quality_files(quality, run_dir, CsvStyle.from_cfg(cfg))
        print(format_quality(quality, str(lab.abstain)))
        rules_note = f"rules vs gold macro-F1 {quality['metrics'].get('macro_f1', float('nan')):.3f}"
        if lab.log_mlflow:
            key = rules_quality_key(lexicon_sha, str(lab.abstain), labelled, gold)
            run_id, logged = log_quality_to_mlflow(cfg, quality, lexicon_path, run_dir, key)
            log.info("label: rules quality %s MLflow run %s", "logged to" if logged else "unchanged since", run_id)
            rules_note += f", MLflow run {run_id}{'' if logged else ' (unchanged: not logged again)'}"
    shown = ", ".join(f"{k} {v}" for k, v in counts.items() if v or k != "none")
    print(f"label: {len(labelled)} sentences → {out} ({shown}); {rules_note}; next: python -m pipeline train")
    if lab.export:
        tasks_path, config_path, n = export_tasks(cfg, labelled, lexicon_sha, export_model)
        print(export_line(cfg, labelled, tasks_path, config_path, n))
    return labelled


def export_line(cfg: DictConfig, labelled: pd.DataFrame, tasks_path: Path, config_path: Path, n: int) -> str:
    """What `label --export` wrote, and what to do next; with no task, why none and what to pass."""
    if n:
        return (f"label: exported {n} Label Studio task(s) → {tasks_path} (labeling config: {config_path}); next: "
                "import them into a Label Studio project (docs/label.md), annotate, export as JSON, then "
                "python -m pipeline label labeling.import_file=<export.json>")
    if cfg.labeling.export_size is not None and int(cfg.labeling.export_size) <= 0:
        why = f"labeling.export_size={cfg.labeling.export_size}"
    else:
        why = (f"every one of the {len(labelled)} sentences already has a gold label ({cfg.paths.gold}) or an "
               f"annotation ({cfg.labeling.annotations}), so there is nothing left to annotate")
    return (f"label: exported 0 Label Studio tasks ({tasks_path} is an empty list): {why}; to annotate new articles, "
            "pass them: python -m pipeline label --export data.unlabelled='<files | directory | glob>' "
            "(e.g. data.unlabelled='new/*.txt')")
