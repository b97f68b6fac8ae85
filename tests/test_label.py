"""The label stage on the seed corpus: output contract, precedence, abstention, gold checks, rules report,
Label Studio export (active-learning order) and import (validation, conflicts, backup, atomic write)."""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import LABELS
from pipeline.cli.main import main as cli_main
from pipeline.core.errors import PipelineError
from pipeline.labeling.gold import GOLD_COLUMNS, GoldLabelError
from pipeline.stages.label import LABELLED_COLUMNS, label
from pipeline.labeling.labelstudio import ANNOTATION_COLUMNS, LabelStudioImportError, build_tasks, uncertainty
from pipeline.stages.segment import segment

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "labelstudio"
# Sentences of seeds/003 and 004 that the real Label Studio export (fixtures/labelstudio/export.json) annotates.
READINESS = "003_f5ed5c3613781166:9219f7e368c6"       # annotated positive
TALKS_REFUSAL = "004_e8ea8b372a263e80:c1f8370e2007"   # annotated negative by two annotators
DISAGREED = "004_e8ea8b372a263e80:d164f9511d29"       # positive by one annotator, neutral by the other
SKIPPED = "004_e8ea8b372a263e80:69b817d59811"         # the annotator cancelled (skipped) this task


@pytest.fixture
def seeds(make_cfg, tmp_path):
    """Segment the seed corpus into tmp_path; returns a cfg factory for the label stage and the sentences."""
    segment(make_cfg("segment"))
    sentences = pd.read_parquet(tmp_path / "work" / "sentences.parquet")

    def cfg(*overrides: str):
        return make_cfg("label", f"paths.gold={tmp_path}/gold.csv", f"labeling.annotations={tmp_path}/annotations.csv",
                        "labeling.log_mlflow=false", *overrides)

    return cfg, sentences


def write_gold(path: Path, rows: list[tuple[str, str]], sentences: pd.DataFrame) -> Path:
    text = dict(zip(sentences["sentence_id"], sentences["text"]))
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(GOLD_COLUMNS)
        for sid, lab in rows:
            writer.writerow([sid, sid.split(":")[0], text.get(sid, "?"), lab, ""])
    return path


def gold_from_articles(sentences: pd.DataFrame, articles: tuple[str, ...]) -> list[tuple[str, str]]:
    """A stand-in gold for some articles: a fixed label pattern, not a claim about the sentences' stance."""
    picked = sentences[sentences["article_id"].str.startswith(articles)]
    return [(sid, LABELS[i % 3]) for i, sid in enumerate(picked["sentence_id"])]


def test_labelled_set_contract_and_precedence(seeds, tmp_path):
    cfg, sentences = seeds
    gold_rows = gold_from_articles(sentences, ("000",))
    write_gold(tmp_path / "gold.csv", gold_rows, sentences)
    annotated = sentences[sentences["article_id"].str.startswith("001")]["sentence_id"].tolist()[:3]
    pd.DataFrame([{"sentence_id": sid, "article_id": sid.split(":")[0], "text": "x", "label": "positive",
                   "annotator": "a@x", "annotated_at": "", "source_task": "t"} for sid in annotated]
                 + [{"sentence_id": gold_rows[0][0], "article_id": "000", "text": "x", "label": "negative",
                     "annotator": "a@x", "annotated_at": "", "source_task": "t"}]).to_csv(tmp_path / "annotations.csv", index=False)

    out = label(cfg())
    saved = pd.read_parquet(tmp_path / "work" / "labelled.parquet")
    assert list(saved.columns) == LABELLED_COLUMNS
    assert len(saved) == len(sentences) == len(out)
    assert saved["sentence_id"].tolist() == sentences["sentence_id"].tolist()
    assert str(saved["idx"].dtype) == "int64" and str(saved["rule_confidence"].dtype) == "float64"
    assert set(saved["source"]) <= {"gold", "annotation", "rules", "none"}

    by_id = saved.set_index("sentence_id")
    for sid, lab in gold_rows:                                   # gold wins, even over an annotation
        assert by_id.at[sid, "source"] == "gold" and by_id.at[sid, "label"] == lab
    for sid in annotated:                                        # annotation beats rules
        assert by_id.at[sid, "source"] == "annotation" and by_id.at[sid, "label"] == "positive"
    rules = saved[saved["source"] == "rules"]
    fired = rules["rule_label"].notna()
    assert (rules.loc[fired, "label"] == rules.loc[fired, "rule_label"]).all()
    assert (rules.loc[~fired, "label"] == "neutral").all()        # default abstain policy
    assert (rules.loc[~fired, "rule_confidence"] == 0).all() and (rules.loc[~fired, "rules_fired"] == "").all()
    assert set(saved["rule_label"].dropna()) <= set(LABELS)

    # the rules-vs-gold report is written beside the run
    run_dir = Path(cfg().paths.run_dir).parent
    reports = list(run_dir.glob("*/rules_quality.json"))
    assert reports, "rules_quality.json missing"
    metrics = json.loads(reports[0].read_text())
    assert metrics["n_gold"] == len(gold_rows) and 0 < metrics["coverage"] <= 1


def test_abstain_drop_leaves_no_label(seeds, tmp_path):
    cfg, sentences = seeds
    write_gold(tmp_path / "gold.csv", gold_from_articles(sentences, ("000",)), sentences)
    out = label(cfg("labeling.abstain=drop"))
    dropped = out[out["source"] == "none"]
    assert len(dropped) > 0
    assert dropped["label"].isna().all() and dropped["rule_label"].isna().all()
    assert out[out["source"] == "rules"]["label"].notna().all()
    with pytest.raises(PipelineError, match="labeling.abstain='maybe'"):
        label(cfg("labeling.abstain=maybe"))


def test_stale_gold_id_is_an_error_listing_it(seeds, tmp_path, capsys):
    cfg, sentences = seeds
    rows = gold_from_articles(sentences, ("002",))[:2] + [("002_3088c021a0674a40:000000000000", "neutral")]
    write_gold(tmp_path / "gold.csv", rows, sentences)
    with pytest.raises(GoldLabelError, match="002_3088c021a0674a40:000000000000"):
        label(cfg())
    # through the CLI: one clear line, exit 1, no traceback
    c = cfg()
    code = cli_main(["label", f"paths.work_dir={c.paths.work_dir}", f"paths.gold={c.paths.gold}",
                     f"paths.output_root={c.paths.output_root}", f"labeling.annotations={c.labeling.annotations}",
                     "labeling.log_mlflow=false"])
    err = capsys.readouterr().err
    assert code == 1 and "error:" in err and "000000000000" in err and "Traceback" not in err


def test_stats_prints_gold_and_source_distributions(seeds, tmp_path, capsys):
    cfg, sentences = seeds
    write_gold(tmp_path / "gold.csv", [(sid, "negative") for sid in sentences["sentence_id"][:4]]
               + [(sid, "neutral") for sid in sentences["sentence_id"][4:5]], sentences)
    label(cfg())
    capsys.readouterr()
    result = label(cfg("labeling.stats_only=true"))
    printed = capsys.readouterr().out
    assert result["gold"].loc["negative", "count"] == 4 and result["gold"].loc["negative", "share"] == 0.8
    assert "gold labels" in printed and "by source" in printed and "annotation" not in result["labelled"].index
    assert result["labelled"].loc["gold", "total"] == 5


def test_rules_quality_logged_to_mlflow(seeds, tmp_path):
    import mlflow

    cfg, sentences = seeds
    write_gold(tmp_path / "gold.csv", gold_from_articles(sentences, ("000", "001")), sentences)
    gold = dict(gold_from_articles(sentences, ("000", "001")))
    c = cfg("labeling.log_mlflow=true")
    out = label(c)
    runs = mlflow.search_runs(experiment_names=[str(c.tracking.experiment)], filter_string="tags.stage = 'label'")
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["tags.mlflow.runName"] == f"rules {run['tags.lexicon_sha'][:8]}"
    assert "rules vs gold" in run["tags.mlflow.note.content"]  # a description in the UI
    # The same numbers computed here by hand from the rule labels (abstain=neutral: no rule = neutral).
    rule = dict(zip(out["sentence_id"], out["rule_label"]))
    pairs = [(g, rule[sid] if isinstance(rule[sid], str) else "neutral") for sid, g in gold.items()]
    fired = sum(isinstance(rule[sid], str) for sid in gold)

    def f1(label: str) -> float:
        tp = sum(g == p == label for g, p in pairs)
        fp = sum(p == label != g for g, p in pairs)
        fn = sum(g == label != p for g, p in pairs)
        return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0

    present = sorted({g for g, _ in pairs})
    predicted_negative = [g for g, p in pairs if p == "negative"]
    gold_positive = [p for g, p in pairs if g == "positive"]
    expected = {
        "rules_coverage": fired / len(gold),
        "rules_accuracy": sum(g == p for g, p in pairs) / len(pairs),
        "rules_macro_f1": sum(f1(x) for x in present) / len(present),
        "rules_precision_negative": (predicted_negative.count("negative") / len(predicted_negative)
                                     if predicted_negative else 0.0),
        "rules_recall_positive": gold_positive.count("positive") / len(gold_positive) if gold_positive else 0.0,
    }
    assert 0 < fired < len(gold) and len(present) >= 2             # a case where the numbers can go wrong
    for key, value in expected.items():
        assert run[f"metrics.{key}"] == pytest.approx(value), key
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run["run_id"])}
    assert {"rules_confusion.csv", "rules_errors.csv", "rules_per_cue.csv", "lexicon.yaml"} <= artifacts


def test_export_rules_order_and_files(seeds, tmp_path):
    cfg, sentences = seeds
    write_gold(tmp_path / "gold.csv", gold_from_articles(sentences, ("000", "001", "002")), sentences)
    export_dir = tmp_path / "ls"
    out = label(cfg("labeling.export=true", f"labeling.export_dir={export_dir}", "labeling.export_size=10"))
    tasks = json.loads((export_dir / "tasks.json").read_text(encoding="utf-8"))
    assert len(tasks) == 10
    gold_ids = set(out.loc[out["source"] == "gold", "sentence_id"])
    assert not gold_ids & {t["data"]["sentence_id"] for t in tasks}
    unc = [t["data"]["uncertainty"] for t in tasks]
    assert unc == sorted(unc, reverse=True)                     # most uncertain first
    for t in tasks:
        data = t["data"]
        assert {"text", "sentence_id", "article_id", "idx", "context_before", "context_after"} <= set(data)
        for pred in t["predictions"]:
            assert pred["model_version"].startswith("rules-") and 0 < pred["score"] <= 1
            assert pred["result"][0]["value"]["choices"][0] in LABELS
    config = ET.fromstring((export_dir / "labeling_config.xml").read_text(encoding="utf-8"))
    choices = config.find(".//Choices")
    assert choices.get("name") == "stance" and choices.get("toName") == "text"
    assert [c.get("value") for c in choices.findall("Choice")] == list(LABELS)
    assert config.find(".//Text[@name='text']").get("value") == "$text"


def test_uncertainty_ordering_with_model_probabilities():
    labelled = pd.DataFrame({
        "article_id": ["a"] * 4, "sentence_id": [f"a:{i}" for i in range(4)], "idx": range(4),
        "text": ["s0", "s1", "s2", "s3"], "label": [None] * 4, "source": ["rules"] * 4,
        "rule_label": [None] * 4, "rule_confidence": [0.0] * 4, "rules_fired": [""] * 4,
    })
    probs = np.array([[0.98, 0.01, 0.01], [0.34, 0.33, 0.33], [0.6, 0.3, 0.1], [0.5, 0.5, 0.0]])
    ent = uncertainty(probs, "entropy")
    assert ent.argmax() == 1 and ent.argmin() == 0 and np.all((ent >= 0) & (ent <= 1))
    assert uncertainty(probs, "margin").argmax() == 3                 # a dead heat between the top two
    tasks = build_tasks(labelled, pd.Series([True] * 4), probs=probs, model_version="m1", size=3)
    assert [t["data"]["sentence_id"] for t in tasks] == ["a:1", "a:2", "a:3"]
    assert tasks[0]["predictions"][0]["score"] == 0.34 and tasks[0]["predictions"][0]["model_version"] == "m1"
    lc = build_tasks(labelled, pd.Series([True] * 4), probs=probs, model_version="m1", method="least_confidence")
    assert [t["data"]["sentence_id"] for t in lc] == ["a:1", "a:3", "a:2", "a:0"]
    assert build_tasks(labelled, pd.Series([True, False, True, False]), probs=probs, model_version="m")[0]["data"]["sentence_id"] == "a:2"
    with pytest.raises(PipelineError, match="labeling.uncertainty='random'"):
        uncertainty(probs, "random")


def test_context_stays_within_the_article_when_file_order_is_not_sorted_order():
    # Articles listed "z" before "a" (file order), sentences of "z" with shuffled idx: context must never
    # come from the other article, and must follow idx within the article.
    labelled = pd.DataFrame({
        "article_id": ["z", "z", "z", "a", "a"], "sentence_id": ["z:1", "z:0", "z:2", "a:0", "a:1"],
        "idx": [1, 0, 2, 0, 1], "text": ["z1", "z0", "z2", "a0", "a1"], "label": [None] * 5,
        "source": ["rules"] * 5, "rule_label": [None] * 5, "rule_confidence": [0.0] * 5, "rules_fired": [""] * 5,
    })
    tasks = build_tasks(labelled, pd.Series([True] * 5), model_version="m", context_sentences=1)
    context = {t["data"]["sentence_id"]: (t["data"]["context_before"], t["data"]["context_after"]) for t in tasks}
    assert context == {
        "z:0": ("", "z1"), "z:1": ("z0", "z2"), "z:2": ("z1", ""),
        "a:0": ("", "a1"), "a:1": ("a0", ""),
    }


def test_export_with_a_stance_model_dir(seeds, tmp_path):
    """Pre-annotations and order from a (tf-idf) stance model directory, through pipeline.models.store."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from pipeline.models.base import write_model_metadata
    from pipeline.models.trust import save_sklearn
    from pipeline.text.preprocess import TextPreprocessor

    cfg, sentences = seeds
    write_gold(tmp_path / "gold.csv", gold_from_articles(sentences, ("000",)), sentences)
    model_dir = tmp_path / "model"
    texts = sentences["text"].tolist()
    model = make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=200))
    model.fit(texts, [LABELS[i % 3] for i in range(len(texts))])
    model_dir.mkdir()
    save_sklearn(model, model_dir)   # skops: no pickle, so no predict.trust_model_dir needed
    write_model_metadata(model_dir, kind="tfidf", labels=LABELS, max_length=128, base_model="tfidf",
                         preprocessor=TextPreprocessor(None))
    export_dir = tmp_path / "ls"
    label(cfg("labeling.export=true", f"labeling.export_dir={export_dir}", f"labeling.export_model_uri={model_dir}",
              "labeling.export_size=null"))
    tasks = json.loads((export_dir / "tasks.json").read_text(encoding="utf-8"))
    candidates = sentences[~sentences["article_id"].str.startswith("000")]
    assert len(tasks) == len(candidates)
    probs = model.predict_proba(candidates["text"].tolist())[:, [list(model.classes_).index(x) for x in LABELS]]
    expected = uncertainty(probs, "entropy")
    got = [t["data"]["uncertainty"] for t in tasks]
    assert got == sorted(got, reverse=True)
    assert got[0] == pytest.approx(expected.max(), abs=1e-4)
    assert all(t["predictions"][0]["model_version"] == str(model_dir) for t in tasks)
    with pytest.raises(PipelineError, match="not a stance model directory"):
        label(cfg("labeling.export=true", f"labeling.export_dir={export_dir}", f"labeling.export_model_uri={tmp_path}"))


# ---------------------------------------------------------------- import

def test_import_real_label_studio_export(seeds, tmp_path, capsys):
    cfg, sentences = seeds
    write_gold(tmp_path / "gold.csv", gold_from_articles(sentences, ("000", "001", "002")), sentences)
    out = label(cfg(f"labeling.import_file={FIXTURES / 'export.json'}"))
    printed = capsys.readouterr().out
    ann = pd.read_csv(tmp_path / "annotations.csv", dtype=str, keep_default_na=False)
    assert list(ann.columns) == ANNOTATION_COLUMNS
    assert len(ann) == 7                                     # 11 annotations: 1 skipped, 2 agree, 2 disagree
    by_id = ann.set_index("sentence_id")
    assert by_id.at[READINESS, "label"] == "positive" and by_id.at[READINESS, "annotator"] == "admin@example.com"
    assert by_id.at[TALKS_REFUSAL, "annotator"] == "admin@example.com;annotator2@example.com"
    assert DISAGREED not in by_id.index and SKIPPED not in by_id.index
    assert "annotators_disagree" in printed and DISAGREED in printed
    assert not list(tmp_path.glob("annotations.csv.bak-*"))  # nothing to back up on the first import
    rows = out.set_index("sentence_id")
    assert rows.at[READINESS, "source"] == "annotation" and rows.at[READINESS, "label"] == "positive"
    assert rows.at[DISAGREED, "source"] == "rules"
    conflicts = pd.read_csv(next(Path(tmp_path / "runs").glob("*/import_conflicts.csv")))
    assert conflicts["kind"].tolist() == ["annotators_disagree"]

    # the plain API export (annotators as user ids) goes through the same code path
    label(cfg(f"labeling.import_file={FIXTURES / 'export_plain.json'}"))
    again = pd.read_csv(tmp_path / "annotations.csv", dtype=str, keep_default_na=False)
    assert len(again) == 7                                   # same labels: unchanged, not duplicated


def test_import_conflict_with_gold_is_listed_and_gold_kept(seeds, tmp_path, capsys):
    cfg, sentences = seeds
    gold = write_gold(tmp_path / "gold.csv", [(READINESS, "neutral"), (TALKS_REFUSAL, "negative")], sentences)
    before = gold.read_bytes()
    out = label(cfg(f"labeling.import_file={FIXTURES / 'export.json'}"))
    printed = capsys.readouterr().out
    assert gold.read_bytes() == before
    assert "[gold] " + READINESS in printed and "existing=neutral imported=positive" in printed
    ann = pd.read_csv(tmp_path / "annotations.csv", dtype=str, keep_default_na=False)
    assert READINESS not in set(ann["sentence_id"]) and TALKS_REFUSAL not in set(ann["sentence_id"])
    assert out.set_index("sentence_id").at[READINESS, "label"] == "neutral"   # gold still rules


def test_import_conflict_with_earlier_annotation_backup_and_replace(seeds, tmp_path, capsys):
    cfg, sentences = seeds
    write_gold(tmp_path / "gold.csv", [(sentences["sentence_id"].iloc[-1], "neutral")], sentences)  # any one gold row
    earlier = pd.DataFrame([{"sentence_id": READINESS, "article_id": READINESS.split(":")[0], "text": "t",
                             "label": "negative", "annotator": "old@x", "annotated_at": "2026-01-01",
                             "source_task": "old.json#task1"}])
    earlier.to_csv(tmp_path / "annotations.csv", index=False)
    original = (tmp_path / "annotations.csv").read_bytes()

    label(cfg(f"labeling.import_file={FIXTURES / 'export.json'}"))           # keep (default)
    assert "[annotation] " + READINESS in capsys.readouterr().out
    ann = pd.read_csv(tmp_path / "annotations.csv", dtype=str).set_index("sentence_id")
    assert ann.at[READINESS, "label"] == "negative" and len(ann) == 7
    assert (tmp_path / "annotations.csv.bak-1").read_bytes() == original

    label(cfg(f"labeling.import_file={FIXTURES / 'export.json'}", "labeling.import_on_conflict=replace"))
    ann = pd.read_csv(tmp_path / "annotations.csv", dtype=str).set_index("sentence_id")
    assert ann.at[READINESS, "label"] == "positive" and ann.at[READINESS, "annotator"] == "admin@example.com"
    assert (tmp_path / "annotations.csv.bak-2").exists()


def _edited_export(tmp_path: Path, edit) -> Path:
    tasks = json.loads((FIXTURES / "export.json").read_text(encoding="utf-8"))
    edit(tasks)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(tasks, ensure_ascii=False), encoding="utf-8")
    return path


def _first_annotated(tasks):
    return next(t for t in tasks if t["annotations"] and not t["annotations"][0]["was_cancelled"])


def test_import_refuses_unknown_labels_and_ids_and_writes_nothing(seeds, tmp_path):
    cfg, sentences = seeds
    write_gold(tmp_path / "gold.csv", [(sentences["sentence_id"].iloc[-1], "neutral")], sentences)  # any one gold row
    (tmp_path / "annotations.csv").write_text(",".join(ANNOTATION_COLUMNS) + "\n", encoding="utf-8")  # must stay as is
    before = (tmp_path / "annotations.csv").read_bytes()

    def break_both(tasks):
        _first_annotated(tasks)["annotations"][0]["result"][0]["value"]["choices"] = ["sarcastic"]
        annotated = [t for t in tasks if t["annotations"] and not t["annotations"][0]["was_cancelled"]]
        annotated[1]["data"]["sentence_id"] = "004_e8ea8b372a263e80:ffffffffffff"

    bad = _edited_export(tmp_path, break_both)
    with pytest.raises(LabelStudioImportError) as info:
        label(cfg(f"labeling.import_file={bad}"))
    message = str(info.value)
    assert "unknown label 'sarcastic'" in message and "ffffffffffff" in message and "nothing was imported" in message
    assert (tmp_path / "annotations.csv").read_bytes() == before
    assert not list(tmp_path.glob("annotations.csv.bak-*"))

    not_json = tmp_path / "not.json"
    not_json.write_text("{broken", encoding="utf-8")
    with pytest.raises(LabelStudioImportError, match="not valid JSON"):
        label(cfg(f"labeling.import_file={not_json}"))


def test_import_write_is_atomic(seeds, tmp_path, monkeypatch):
    cfg, sentences = seeds
    write_gold(tmp_path / "gold.csv", [(sentences["sentence_id"].iloc[-1], "neutral")], sentences)  # any one gold row
    (tmp_path / "annotations.csv").write_text(",".join(ANNOTATION_COLUMNS) + "\n", encoding="utf-8")
    before = (tmp_path / "annotations.csv").read_bytes()

    def crash(self, path, *args, **kwargs):
        Path(path).write_text("half a file", encoding="utf-8")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", crash)
    with pytest.raises(OSError, match="disk full"):
        label(cfg(f"labeling.import_file={FIXTURES / 'export.json'}"))
    assert (tmp_path / "annotations.csv").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".annotations.csv")] == []


def test_rules_quality_numbers_on_a_hand_made_case():
    from pipeline.stages.label import rules_quality
    from pipeline.labeling.rules import Lexicon

    lexicon = Lexicon.from_dict({"cues": {"positive": [{"id": "p", "phrases": ["x"]}],
                                          "negative": [{"id": "n", "phrases": ["y"]}]}})
    labelled = pd.DataFrame({
        "sentence_id": ["s1", "s2", "s3", "s4"], "text": ["a", "b", "c", "d"],
        "rule_label": ["positive", None, "negative", None], "rule_confidence": [0.5, 0.0, 0.5, 0.0],
        "rules_fired": ["p", "", "n;p:negated", ""],
    })
    gold = pd.DataFrame({"sentence_id": ["s1", "s2", "s3", "s4"], "label": ["positive", "neutral", "positive", "negative"]})
    q = rules_quality(labelled, gold, "neutral", lexicon)
    m = q["metrics"]
    assert m["coverage"] == 0.5 and m["accuracy"] == 0.5 and m["covered_accuracy"] == 0.5
    assert m["abstained"] == 2 and m["abstained_gold_neutral_share"] == 0.5
    assert m["precision_positive"] == 1.0 and m["recall_positive"] == 0.5 and m["recall_neutral"] == 1.0
    assert q["confusion"].loc["gold_positive", "rules_negative"] == 1
    assert q["confusion"].loc["gold_negative", "rules_abstain"] == 1
    assert q["errors"]["sentence_id"].tolist() == ["s3", "s4"]
    per_cue = q["per_cue"].set_index("rule")
    assert per_cue.loc["p:negated", "vote"] == "negative" and per_cue.loc["p", "precision"] == 1.0
    drop = rules_quality(labelled, gold, "drop", lexicon)["metrics"]
    assert drop["n"] == 2 and drop["accuracy"] == 0.5


def test_cli_flags_of_the_label_stage():
    from pipeline.cli.main import parse_args

    stage, overrides, _, _ = parse_args(["label", "--export", "labeling.export_size=5"])
    assert stage == "label" and overrides == ["labeling.export=true", "labeling.export_size=5"]
    assert parse_args(["label", "--stats"])[1] == ["labeling.stats_only=true"]


def test_rules_quality_is_logged_once_per_lexicon_abstain_and_gold(seeds, tmp_path, capsys):
    import mlflow

    cfg, sentences = seeds
    write_gold(tmp_path / "gold.csv", gold_from_articles(sentences, ("000", "001")), sentences)
    c = cfg("labeling.log_mlflow=true")

    def rules_runs():
        return mlflow.search_runs(experiment_names=[str(c.tracking.experiment)], filter_string="tags.stage = 'label'")

    label(c)
    first = capsys.readouterr().out
    label(c)                                                        # the same lexicon, abstain policy and gold
    again = capsys.readouterr().out
    assert len(rules_runs()) == 1
    run_id = rules_runs().iloc[0]["run_id"]
    assert f"MLflow run {run_id}" in first and f"MLflow run {run_id} (unchanged: not logged again)" in again
    label(cfg("labeling.log_mlflow=true", "labeling.abstain=drop"))  # another policy measures something else
    assert len(rules_runs()) == 2
    write_gold(tmp_path / "gold.csv", gold_from_articles(sentences, ("000", "001", "002")), sentences)
    label(c)                                                        # more gold: new numbers
    assert len(rules_runs()) == 3


def test_label_ends_with_a_summary_line(seeds, tmp_path, capsys):
    cfg, sentences = seeds
    write_gold(tmp_path / "gold.csv", gold_from_articles(sentences, ("000",)), sentences)
    label(cfg())
    last = capsys.readouterr().out.strip().splitlines()[-1]
    n_gold = len(gold_from_articles(sentences, ("000",)))
    assert last.startswith(f"label: {len(sentences)} sentences → {tmp_path}/work/labelled.parquet (gold {n_gold}, ")
    assert "rules vs gold macro-F1 " in last and last.endswith("next: python -m pipeline train")


def test_export_with_nothing_left_to_annotate_says_why_and_what_to_pass(seeds, tmp_path, capsys):
    cfg, sentences = seeds
    write_gold(tmp_path / "gold.csv", [(sid, "neutral") for sid in sentences["sentence_id"]], sentences)
    export_dir = tmp_path / "ls"
    label(cfg("labeling.export=true", f"labeling.export_dir={export_dir}"))
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads((export_dir / "tasks.json").read_text(encoding="utf-8")) == []
    assert last.startswith("label: exported 0 Label Studio tasks")
    assert f"every one of the {len(sentences)} sentences already has a gold label" in last
    assert "data.unlabelled=" in last
    # with something left, the line says where the tasks are and what comes next
    write_gold(tmp_path / "gold.csv", gold_from_articles(sentences, ("000",)), sentences)
    label(cfg("labeling.export=true", f"labeling.export_dir={export_dir}", "labeling.export_size=3"))
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(f"label: exported 3 Label Studio task(s) → {export_dir}/tasks.json")
    assert "labeling.import_file=" in last
