"""Issue 11 wired into the stages: metadata, timeline / outlets, calibration, reasons and the report from predict;
calibration at train time; the MLflow experiment kind and sweep child run names."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from pipeline import LABELS
from test_predict import run_predict, store  # noqa: F401 (fixtures)

PROBS = [f"p_{x}" for x in LABELS]
CUE = "روسيا ترفض العرض الأمريكي"  # labels/lexicon.yaml: neg.refusal


def dated_table(path: Path) -> Path:
    pd.DataFrame({
        "article_id": ["a1", "a2", "a3", "a4"],
        "text": [f"{CUE}. وقال المتحدث إن المحادثات مستمرة", "واشنطن توافق على الحوار مع موسكو",
                 "الاتفاق خطوة مهمة نحو السلام. الطرفان يجتمعان غدا", "المفاوضات تتعثر من جديد"],
        "date": ["2022-01-27", "27/01/2022", "2022-01-28T10:00:00Z", "yesterday"],
        "outlet": ["الجزيرة", "العربية", "الجزيرة", "العربية"],
        "url": ["http://x/1", "http://x/2", "http://x/3", "http://x/4"],
    }).to_csv(path, index=False)
    return path


class Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_predict_writes_metadata_timeline_outlets_reasons_and_report(run_predict, tmp_path):
    from pipeline.prediction.analytics import timeline

    table = dated_table(tmp_path / "news.csv")
    out = tmp_path / "out" / "pred.csv"
    report = run_predict(f"input={table}", f"output={out}", "predict.timeline=day", "predict.bootstrap=50",
                         "predict.explain=true", "predict.explain_top_k=2", "predict.report=true",
                         "predict.min_confidence=0.5")
    rows = pd.read_csv(out, keep_default_na=False)
    # 1. carried columns, dates normalised; the unreadable one is a bad_date error and an empty date
    assert {"date", "outlet", "url"} <= set(rows.columns)
    by_article = rows.drop_duplicates("article_id").set_index("article_id")
    assert by_article.loc["a1", "date"] == "2022-01-27" and by_article.loc["a2", "date"] == "2022-01-27"
    assert by_article.loc["a3", "date"] == "2022-01-28T10:00:00" and by_article.loc["a4", "date"] == ""
    assert by_article.loc["a2", "outlet"] == "العربية" and by_article.loc["a3", "url"] == "http://x/3"
    errors = pd.read_csv(report["errors"], keep_default_na=False)
    bad = errors[errors["reason"] == "bad_date"]
    assert bad["article_id"].tolist() == ["a4"] and "yesterday" in bad["message"].iloc[0]
    summary = pd.read_csv(report["summary"], keep_default_na=False).set_index("article_id")
    assert summary.loc["a1", "outlet"] == "الجزيرة" and summary.loc["a3", "date"] == "2022-01-28T10:00:00"
    # 3. confidence = max probability, confident = ≥ min_confidence
    np.testing.assert_allclose(rows["confidence"], rows[PROBS].max(axis=1))
    assert (rows["confident"].astype(str).str.lower() == (rows["confidence"] >= 0.5).astype(str).str.lower()).all()
    # 4. reasons: the lexicon's rule on the cue sentence; top words present and formatted
    cue_row = rows[rows["text"].str.contains("ترفض")].iloc[0]
    assert "neg.refusal" in cue_row["rules_fired"]
    assert rows["top_words"].str.fullmatch(r"(\S+ \(\+\d\.\d\d\)(, )?){0,2}").all()
    # 2. timeline and outlets beside the output; the timeline equals the sentence-level computation
    tl = pd.read_csv(report["timeline"])
    assert Path(report["timeline"]) == out.with_name("pred.timeline.csv")
    assert tl["period"].astype(str).tolist() == ["2022-01-27", "2022-01-28"]
    assert tl["n_articles"].tolist() == [2, 1]
    expected = timeline(rows.assign(date=rows["date"].replace("", None)), "day", n_boot=50,
                        seed=int(0))
    # (the CSV rows and the timeline CSV are rounded to csv.float_digits=4 decimals)
    np.testing.assert_allclose(tl["net_stance"].astype(float), expected["net_stance"].astype(float), atol=2e-4)
    assert tl["n_sentences"].astype(int).tolist() == expected["n_sentences"].astype(int).tolist()
    outlets = pd.read_csv(out.with_name("pred.outlets.csv"))
    assert sorted(outlets["outlet"]) == ["الجزيرة", "العربية"] and outlets["n_articles"].astype(int).sum() == 4
    # 5. the report: one self-contained RTL page with the sections
    html_path = Path(report["report"])
    assert html_path == out.with_name("pred.report.html")
    parser = Collect()
    parser.feed(html_path.read_text(encoding="utf-8"))
    html_tag = next(attrs for tag, attrs in parser.tags if tag == "html")
    assert html_tag == {"lang": "ar", "dir": "rtl"}
    ids = {attrs.get("id") for _, attrs in parser.tags}
    assert {"summary", "timeline", "outlets", "extremes", "articles"} <= ids
    assert not any(tag == "script" for tag, _ in parser.tags)


def test_timeline_none_and_no_metadata_writes_no_summaries(run_predict, tmp_path):
    pd.DataFrame({"text": [CUE]}).to_csv(tmp_path / "plain.csv", index=False)
    report = run_predict(f"input={tmp_path}/plain.csv", f"output={tmp_path}/p.parquet", "predict.timeline=none")
    assert report["timeline"] is None and report["outlets"] is None and report["report"] is None
    assert not list(tmp_path.glob("p.timeline*"))


def skewed_tfidf_model(out_dir: Path) -> tuple[Path, pd.DataFrame]:
    """A TF-IDF model that memorised random labels (over-confident), and held-out rows where it is right half the
    time: its probabilities are near 1 for accuracy near 1/2."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from pipeline.models.base import write_model_metadata
    from pipeline.models.trust import save_sklearn
    from pipeline.text.preprocess import TextPreprocessor

    rng = np.random.default_rng(0)
    texts = [f"جملة رقم {i} كلمة{i} نص{i % 7}" for i in range(90)]
    labels = [LABELS[i % 3] for i in range(90)]
    pipe = make_pipeline(TfidfVectorizer(), LogisticRegression(C=1e4, max_iter=2000)).fit(texts, labels)
    out_dir.mkdir(parents=True)
    save_sklearn(pipe, out_dir)
    write_model_metadata(out_dir, kind="tfidf", labels=LABELS, max_length=64, base_model="tfidf",
                         preprocessor=TextPreprocessor(None))
    gold = [lab if rng.random() < 0.5 else LABELS[(LABELS.index(lab) + 1) % 3] for lab in labels]
    return out_dir, pd.DataFrame({"text": texts, "label": gold})


def test_calibration_fitted_at_train_time_is_applied_when_serving(make_cfg, tmp_path):
    from pipeline.models.calibration import Calibration, expected_calibration_error
    from pipeline.models.base import load_predictor
    from pipeline.training.calibrate import calibrate_model

    model_dir, rows = skewed_tfidf_model(tmp_path / "model")
    held_out, test = rows.iloc[:60].reset_index(drop=True), rows.iloc[60:].reset_index(drop=True)
    raw = load_predictor(model_dir).predict_proba(test["text"].tolist())
    gold = np.asarray([LABELS.index(x) for x in test["label"]])
    cfg = make_cfg("train", "model=tfidf")
    fitted = calibrate_model(cfg, None, SimpleNamespace(val=held_out, test=test), model_dir, tmp_path / "run")
    calibration = fitted.calibration
    assert calibration.fitted_on == "validation" and calibration.n == len(held_out) and calibration.temperature > 1
    assert calibration.ece_after < calibration.ece_before
    assert Calibration.load(model_dir).temperature == pytest.approx(calibration.temperature)
    assert (tmp_path / "run" / "evaluation" / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    # Measured on the test rows, which neither the model nor T saw.
    assert fitted.test_ece_before == pytest.approx(expected_calibration_error(raw, gold))
    assert fitted.test_ece_after < fitted.test_ece_before
    served = load_predictor(model_dir).predict_proba(test["text"].tolist())
    assert not np.allclose(served, raw) and (served.argmax(axis=1) == raw.argmax(axis=1)).all()
    assert expected_calibration_error(served, gold) == pytest.approx(fitted.test_ece_after)
    # train.calibrate=false: nothing fitted
    assert calibrate_model(make_cfg("train", "train.calibrate=false"), None, SimpleNamespace(val=held_out, test=test),
                           model_dir, tmp_path / "run2") is None


def test_experiment_is_marked_for_model_development(make_cfg):
    import mlflow

    from pipeline.core import tracking

    cfg = make_cfg("train")
    tracking.setup(cfg)
    experiment = mlflow.get_experiment_by_name(str(cfg.tracking.experiment))
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "Stance" in experiment.tags["mlflow.note.content"]


def test_sweep_child_runs_are_named_by_their_swept_values(tmp_path, monkeypatch):
    import mlflow

    from pipeline.cli import main as cli
    from pipeline.core import tracking

    def fake_stage(stage_name, cfg):  # what train does with its run, without the training
        with tracking.start_run(cfg, f"train-{cfg.model.name}", log_params=False) as run:
            return run.info.run_id

    monkeypatch.setattr(cli, "run_stage", fake_stage)
    base = [f"paths.work_dir={tmp_path}/work", f"paths.output_root={tmp_path}/outputs",
            f"tracking.uri=sqlite:///{tmp_path}/mlruns/mlflow.db", f"tracking.artifact_root={tmp_path}/mlruns/a"]
    ids = cli.run_multirun("train", [*base, "model=tiny", "train.lr=1e-4,3e-4"])
    names = [mlflow.get_run(i).info.run_name for i in ids]
    assert names == ["train-tiny lr=1e-4", "train-tiny lr=3e-4"]
    assert cli.swept_values([["a.b=1", "c=x"], ["a.b=2", "c=x"]], ["a.b=2", "c=x"]) == "b=2"
