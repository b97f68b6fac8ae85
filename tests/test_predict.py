"""predict stage: inputs of every kind, bad input, model URIs, summary, resume, same answer as the MLflow model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import LABELS
from pipeline.core.config import compose_config
from pipeline.core.errors import PipelineError
from pipeline.core.io import read_table
from pipeline.stages.predict import predict
from test_inference import make_stance_model

REPO = Path(__file__).resolve().parent.parent
SEEDS = sorted((REPO / "seeds").glob("*.txt"))
PROBS = ["p_negative", "p_neutral", "p_positive"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """An MLflow store with two fake training runs of the same tiny model registered as versions 1 and 2 of
    `stance`; the served alias (champion) is on version 2, trained with blank-line paragraphs (to check that predict
    segments as the model's run did)."""
    import mlflow

    from pipeline.core import tracking
    from pipeline.models.store import log_stance_model

    root = tmp_path_factory.mktemp("store")
    overrides = [f"tracking.uri=sqlite:///{root}/mlflow.db", f"tracking.artifact_root={root}/artifacts",
                 "tracking.register=stance"]
    model_dir = make_stance_model(root / "model")
    # Version 2 has other weights than version 1, so a test can tell which one an alias or URI loaded.
    model_dirs = {"worse": model_dir, "better": make_stance_model(root / "model_better", seed=11)}
    runs = {}
    for name, f1, extra in (("worse", 0.2, []), ("better", 0.6, ["segment.paragraph_break=blank_line"])):
        cfg = compose_config("train", [*overrides, *extra])
        with tracking.start_run(cfg, name, tags={"has_model": "true", "model_kind": "transformer"}) as run:
            info = log_stance_model(model_dirs[name], registered_model_name="stance")
            mlflow.log_metric("test_macro_f1", f1)
        runs[name] = (run.info.run_id, info)
    mlflow.MlflowClient().set_registered_model_alias("stance", "champion", "2")
    return {"overrides": overrides, "model_dir": model_dir, "model_dirs": model_dirs, "runs": runs, "root": root}


@pytest.fixture
def run_predict(make_cfg, store, tmp_path):
    def _run(*overrides, expect_error: bool = False):
        cfg = make_cfg("predict", *store["overrides"], *overrides)
        if expect_error:
            with pytest.raises(PipelineError) as info:
                predict(cfg)
            return info.value
        return predict(cfg)

    return _run


def bad_inputs(folder: Path) -> dict[str, str]:
    """Files each of which must be reported and skipped: name -> expected reason."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.txt").write_bytes(b"")
    (folder / "english.txt").write_text("Only English words here.\n", encoding="utf-8")
    (folder / "cp1256.txt").write_bytes("روسيا والناتو".encode("cp1256"))
    (folder / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    return {"empty.txt": "empty", "english.txt": "no_arabic", "cp1256.txt": "not_utf8", "image.png": "binary"}


def test_directory_with_bad_files_default_model_and_summary(run_predict, store, tmp_path):
    folder = tmp_path / "articles"
    expected_reasons = bad_inputs(folder)
    for p in SEEDS:
        (folder / p.name).write_bytes(p.read_bytes())
    # Hard-wrapped: two sentences with blank-line paragraphs, three with one paragraph per line.
    (folder / "wrapped.txt").write_text("قالت روسيا إن المحادثات مع واشنطن\nلم تحقق تقدما.\n\nالناتو يرفض المطالب.\n",
                                        encoding="utf-8")
    out = tmp_path / "out" / "pred.csv"
    report = run_predict(f"input={folder}", f"output={out}", "predict.plot=true", "predict.chunk_sentences=16")

    assert report["model_uri"] == "models:/stance@champion"  # the served model: version 2, the "better" run
    table = read_table(out)
    assert list(table.columns) == ["article_id", "sentence_id", "idx", "text", "label", *PROBS, "truncated",
                                   "rules_fired", "confidence", "confident", "path"]
    table[PROBS] = table[PROBS].astype(float)
    assert sorted(table["article_id"].unique()) == sorted([p.stem for p in SEEDS] + ["wrapped"])
    np.testing.assert_allclose(table[PROBS].sum(axis=1), 1.0, atol=2e-4)  # CSV: rounded to csv.float_digits=4
    assert table["sentence_id"].is_unique and report["sentences"] == len(table)

    # Segmented with the training run's rules (blank_line), not today's config (line).
    from pipeline.core.io import read_text_strict
    from pipeline.text.segmentation import SegmentRules, article_rows

    trained = SegmentRules.from_cfg(compose_config("predict", ["segment.paragraph_break=blank_line"]).segment)
    expected_ids = [r["sentence_id"] for p in [*SEEDS, folder / "wrapped.txt"]
                    for r in article_rows(p.stem, read_text_strict(p), trained)[0]]
    assert table["sentence_id"].tolist() == expected_ids
    assert (table["article_id"] == "wrapped").sum() == 2

    errors = pd.read_csv(report["errors"], keep_default_na=False)
    by_file = {Path(s).name: r for s, r in zip(errors["source"], errors["reason"]) if r != "truncated"}
    assert by_file == expected_reasons
    truncated = errors[errors["reason"] == "truncated"]
    assert set(truncated["sentence_id"]) == set(table.loc[table["truncated"] == "True", "sentence_id"])
    assert len(truncated) > 0

    summary = pd.read_csv(report["summary"])
    assert list(summary.columns) == ["article_id", "sentences", "n_negative", "n_neutral", "n_positive",
                                     "share_negative", "share_neutral", "share_positive", "net_stance",
                                     "dominant_label", "truncated_sentences", "path"]
    for row in summary.itertuples():
        part = table[table["article_id"] == row.article_id]
        assert row.sentences == len(part)
        assert row.n_positive == (part["label"] == "positive").sum()
        assert row.share_neutral == pytest.approx((part["label"] == "neutral").mean(), abs=1e-4)
        assert row.net_stance == pytest.approx((part["p_positive"] - part["p_negative"]).mean(), abs=2e-4)
        assert row.dominant_label == part["label"].value_counts().idxmax()
    assert Path(report["plot"]).read_bytes()[:4] == b"\x89PNG"
    assert not any(p.name.startswith(".") for p in out.parent.iterdir())  # no temp or parts left behind


def test_stage_and_mlflow_pyfunc_model_give_the_same_answer(run_predict, store, tmp_path):
    import mlflow

    out = tmp_path / "p.parquet"
    run_predict(f"input={SEEDS[0]}", f"output={out}")
    stage = pd.read_parquet(out)
    run_id, info = store["runs"]["better"]
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    got = model.predict(pd.DataFrame({"text": stage["text"]}))
    assert (got["label"].to_numpy() == stage["label"].to_numpy()).all()
    np.testing.assert_allclose(got[PROBS].to_numpy(), stage[PROBS].to_numpy(), atol=1e-6)


@pytest.mark.parametrize("which", ["models_alias", "logged_model", "local_dir", "downloaded_pyfunc"])
def test_model_uri_forms(run_predict, store, tmp_path, which):
    import mlflow

    run_id, info = store["runs"]["worse"]
    if which == "models_alias":
        uri = "models:/stance@champion"
    elif which == "logged_model":
        uri = info.model_uri  # models:/m-…
    elif which == "local_dir":
        uri = str(store["model_dir"])
    else:
        uri = mlflow.artifacts.download_artifacts(artifact_uri=info.model_uri, dst_path=str(tmp_path / "dl"))
    out = tmp_path / "p.jsonl"
    report = run_predict(f"input={SEEDS[1]}", f"output={out}", f"model_uri={uri}")
    assert report["model_uri"] == uri
    table = pd.read_json(out, lines=True)
    assert len(table) > 0 and set(table["label"]) <= set(LABELS)


def test_alias_loads_the_version_it_points_to(run_predict, store, tmp_path):
    import mlflow

    def probs(uri: str, name: str) -> np.ndarray:
        out = tmp_path / f"{name}.parquet"
        run_predict(f"input={SEEDS[1]}", f"output={out}", f"model_uri={uri}")
        return pd.read_parquet(out)[PROBS].to_numpy(dtype=float)

    v1, v2 = probs(str(store["model_dirs"]["worse"]), "v1"), probs(str(store["model_dirs"]["better"]), "v2")
    assert not np.allclose(v1, v2, atol=1e-4)                     # the two versions really differ
    np.testing.assert_allclose(probs("models:/stance@champion", "champion2"), v2, atol=1e-6)
    client = mlflow.MlflowClient(f"sqlite:///{store['root']}/mlflow.db")
    client.set_registered_model_alias("stance", "champion", "1")
    try:
        np.testing.assert_allclose(probs("models:/stance@champion", "champion1"), v1, atol=1e-6)
        np.testing.assert_allclose(probs("models:/stance/2", "version2"), v2, atol=1e-6)
    finally:
        client.set_registered_model_alias("stance", "champion", "2")


def test_unknown_model_uri_and_missing_input(run_predict, tmp_path):
    out = tmp_path / "p.csv"
    err = run_predict(f"input={SEEDS[0]}", f"output={out}", "model_uri=models:/no-such-model@prod", expect_error=True)
    assert "models:/no-such-model@prod" in str(err)
    assert not out.exists()
    errors = pd.read_csv(tmp_path / "p.errors.csv")
    assert errors["reason"].tolist() == ["model"]
    err = run_predict(f"input={SEEDS[0]}", f"output={out}", f"model_uri={tmp_path}/nowhere", expect_error=True)
    assert "nowhere" in str(err)

    # A missing input among others: reported, the rest predicted.
    report = run_predict(f"input=[{SEEDS[0]},{tmp_path}/missing.txt,{tmp_path}/none-*.txt]", f"output={out}")
    errors = pd.read_csv(report["errors"], keep_default_na=False)
    assert sorted(errors.loc[errors["reason"] == "missing", "source"]) == sorted(
        [f"{tmp_path}/missing.txt", f"{tmp_path}/none-*.txt"])
    assert report["articles"] == 1
    # Nothing usable at all: a clear error, and the report says why.
    err = run_predict(f"input={tmp_path}/missing.txt", f"output={tmp_path}/q.csv", expect_error=True)
    assert "no usable article" in str(err) and not (tmp_path / "q.csv").exists()


def test_table_inputs(run_predict, tmp_path):
    from pipeline.core.io import read_text_strict

    articles = pd.DataFrame({"article_id": [p.stem for p in SEEDS[:2]], "text": [read_text_strict(p) for p in SEEDS[:2]]})
    articles.to_csv(tmp_path / "articles.csv", index=False)
    sentences = pd.DataFrame({"sentence_id": ["s1", "s2", "s3"], "article_id": ["a", "a", "b"],
                              "body": ["روسيا ترفض العرض", "", "واشنطن توافق على الحوار"]})
    sentences.to_json(tmp_path / "sentences.jsonl", orient="records", lines=True, force_ascii=False)
    pd.DataFrame({"other": ["x"]}).to_csv(tmp_path / "bad.csv", index=False)
    (tmp_path / "empty.csv").write_text("")
    out = tmp_path / "p.csv"
    report = run_predict(f"input=[{tmp_path}/articles.csv,{tmp_path}/bad.csv,{tmp_path}/empty.csv]", f"output={out}")
    table = read_table(out)
    assert sorted(table["article_id"].unique()) == sorted(articles["article_id"])
    reasons = pd.read_csv(report["errors"], keep_default_na=False).set_index("source")["reason"]
    assert reasons[f"{tmp_path}/bad.csv"] == "bad_table" and reasons[f"{tmp_path}/empty.csv"] == "empty"

    report = run_predict(f"input={tmp_path}/sentences.jsonl", f"output={tmp_path}/s.csv", "predict.text_column=body")
    table = read_table(tmp_path / "s.csv")
    assert table["sentence_id"].tolist() == ["s1", "s3"] and table["article_id"].tolist() == ["a", "b"]
    errors = pd.read_csv(report["errors"], keep_default_na=False)
    assert errors["reason"].tolist() == ["empty_sentence"] and errors["sentence_id"].tolist() == ["s2"]


def served_rows(path: Path) -> list[dict]:
    """The sentence rows of an article as the served model (trained with blank-line paragraphs) segments it."""
    from pipeline.core.io import read_text_strict
    from pipeline.text.segmentation import SegmentRules, article_rows

    rules = SegmentRules.from_cfg(compose_config("predict", ["segment.paragraph_break=blank_line"]).segment)
    return article_rows(path.stem, read_text_strict(path), rules)[0]


def test_interrupted_run_leaves_no_output_and_resume_skips_done_articles(run_predict, tmp_path, monkeypatch):
    from pipeline.models.batching import TransformerPredictor

    out = tmp_path / "p.csv"
    calls = {"n": 0}
    real = TransformerPredictor.predict
    first_article = len(served_rows(SEEDS[0]))  # one chunk per sentence: the first article, then one more

    def dies_in_the_second_article(self, texts, batch_size=64):
        calls["n"] += 1
        if calls["n"] == first_article + 2:
            raise KeyboardInterrupt  # the user pressed Ctrl-C in the middle of the batch
        return real(self, texts, batch_size)

    monkeypatch.setattr(TransformerPredictor, "predict", dies_in_the_second_article)
    with pytest.raises(KeyboardInterrupt):
        run_predict(f"input=[{SEEDS[0]},{SEEDS[1]},{SEEDS[2]}]", f"output={out}", "predict.chunk_sentences=1")
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".p.csv")] == [".p.csv.parts"]
    monkeypatch.setattr(TransformerPredictor, "predict", real)

    report = run_predict(f"input=[{SEEDS[0]},{SEEDS[1]},{SEEDS[2]}]", f"output={out}", "predict.resume=true")
    assert report["skipped_done"] == 1 and report["articles"] == 2
    first = read_table(out)
    assert sorted(first["article_id"].unique()) == [p.stem for p in SEEDS[:3]] and first["sentence_id"].is_unique

    # Resume onto a finished output: only the new articles are predicted, the old rows are kept.
    report = run_predict(f"input={REPO / 'seeds'}", f"output={out}", "predict.resume=true")
    assert report["skipped_done"] == 3 and report["articles"] == len(SEEDS) - 3
    final = read_table(out)
    assert sorted(final["article_id"].unique()) == [p.stem for p in SEEDS] and final["sentence_id"].is_unique
    pd.testing.assert_frame_equal(final.iloc[: len(first)], first)
    assert len(pd.read_csv(report["summary"])) == len(SEEDS)
    assert not (tmp_path / ".p.csv.parts").exists()


def test_output_formats_agree(run_predict, tmp_path):
    frames = []
    for suffix in (".csv", ".jsonl", ".parquet"):
        out = tmp_path / f"p{suffix}"
        run_predict(f"input={SEEDS[2]}", f"output={out}")
        frame = read_table(out) if suffix != ".csv" else pd.read_csv(out)
        frames.append(frame.reset_index(drop=True))
    csv, jsonl, parquet = frames
    for other in (jsonl, parquet):
        assert (other["sentence_id"] == csv["sentence_id"]).all()
        # CSV rounds to csv.float_digits=4 decimals; JSON lines and parquet keep full precision
        np.testing.assert_allclose(other[PROBS].to_numpy(float), csv[PROBS].to_numpy(float), atol=5.01e-5)
    np.testing.assert_allclose(jsonl[PROBS].to_numpy(float), parquet[PROBS].to_numpy(float), atol=1e-12)
    assert (parquet[PROBS].to_numpy(float) != parquet[PROBS].to_numpy(float).round(4)).any()
    with pytest.raises(PipelineError, match="unsupported format"):
        run_predict(f"input={SEEDS[2]}", f"output={tmp_path}/p.xlsx")


def test_cli_command_as_written(store, tmp_path):
    """`python -m pipeline predict input=seeds output=... model_uri=...` in a fresh process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    out = tmp_path / "p.csv"
    common = [f"paths.output_root={tmp_path}/outputs", *store["overrides"]]
    done = subprocess.run([sys.executable, "-m", "pipeline", "predict", "input=seeds", f"output={out}",
                           f"model_uri={store['model_dir']}", *common],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(read_table(out)["article_id"].unique()) == [p.stem for p in SEEDS]
    bad = subprocess.run([sys.executable, "-m", "pipeline", "predict", "input=seeds", f"output={out}",
                          "model_uri=runs:/0123456789abcdef/model", *common],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "error: model_uri='runs:/0123456789abcdef/model'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_resume_after_kill_between_rename_and_cleanup_does_not_duplicate(run_predict, tmp_path, monkeypatch):
    """Issue 9 item 5: killed after the output's rename but before its parts were removed, a resume merged both."""
    from pipeline.prediction import parts as predict_parts

    out = tmp_path / "p.csv"
    inputs = f"input=[{SEEDS[0]},{SEEDS[1]}]"

    def killed_before_cleanup(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(predict_parts.PartsWriter, "discard", killed_before_cleanup)
    with pytest.raises(KeyboardInterrupt):
        run_predict(inputs, f"output={out}", "predict.chunk_sentences=1")
    monkeypatch.undo()
    assert out.exists() and (tmp_path / ".p.csv.parts").exists()
    expected = len(read_table(out))
    report = run_predict(inputs, f"output={out}", "predict.resume=true")
    table = read_table(out)
    assert len(table) == expected and table["sentence_id"].is_unique, (len(table), expected)
    assert report["skipped_done"] == 2 and not (tmp_path / ".p.csv.parts").exists()


def test_resume_keeps_the_interrupted_runs_errors_and_refuses_another_model(run_predict, store, tmp_path, monkeypatch):
    """Issue 9 item 5: the errors of the killed run survive the resume; another model cannot resume its parts."""
    from pipeline.models.base import read_model_metadata
    from pipeline.models.batching import TransformerPredictor

    out = tmp_path / "p.csv"
    # A sentence table with one overlong sentence (truncated: an error row written with its part).
    long = " ".join(["روسيا ترفض العرض"] * 400)
    pd.DataFrame({"article_id": ["a", "b", "c"], "sentence_id": ["a1", "b1", "c1"],
                  "text": [long, "واشنطن توافق على الحوار", "موسكو ترفض"]}).to_csv(tmp_path / "s.csv", index=False)
    real = TransformerPredictor.predict
    calls = {"n": 0}

    def dies_on_third_chunk(self, texts, batch_size=64):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, texts, batch_size)

    monkeypatch.setattr(TransformerPredictor, "predict", dies_on_third_chunk)
    model = f"model_uri={store['model_dir']}"
    with pytest.raises(KeyboardInterrupt):
        run_predict(f"input={tmp_path}/s.csv", f"output={out}", "predict.chunk_sentences=1", model)
    monkeypatch.setattr(TransformerPredictor, "predict", real)

    # Another model (a copy with a different max_length) must not continue these parts.
    import shutil

    other = tmp_path / "other-model"
    shutil.copytree(store["model_dir"], other)
    meta_path = other / "stance_model.json"
    meta = json.loads(meta_path.read_text())
    meta["max_length"] = int(read_model_metadata(store["model_dir"])["max_length"]) - 1
    meta_path.write_text(json.dumps(meta))
    err = run_predict(f"input={tmp_path}/s.csv", f"output={out}", "predict.resume=true", f"model_uri={other}",
                      expect_error=True)
    assert "were predicted by model" in str(err) and not out.exists()

    report = run_predict(f"input={tmp_path}/s.csv", f"output={out}", "predict.resume=true", model)
    assert report["skipped_done"] == 2
    errors = pd.read_csv(report["errors"], keep_default_na=False)
    assert errors.loc[errors["reason"] == "truncated", "sentence_id"].tolist() == ["a1"]
    assert sorted(read_table(out)["sentence_id"]) == ["a1", "b1", "c1"]


def test_output_equal_to_input_is_refused_before_anything_is_written(run_predict, tmp_path):
    table = tmp_path / "s.csv"
    pd.DataFrame({"sentence_id": ["s1"], "text": ["روسيا ترفض العرض"]}).to_csv(table, index=False)
    before = table.read_bytes()
    err = run_predict(f"input={table}", f"output={table}", expect_error=True)
    assert "also an input" in str(err) and table.read_bytes() == before
    assert not (tmp_path / ".s.csv.parts").exists()


def test_missing_input_is_told_before_the_model_is_fetched(run_predict, tmp_path, monkeypatch):
    """Issue 9 item 11(f)."""
    from pipeline.stages import predict as predict_module

    def no_model(*args, **kwargs):
        raise AssertionError("the model was resolved before the inputs were checked")

    monkeypatch.setattr(predict_module, "resolve_model", no_model)
    err = run_predict(f"input={tmp_path}/missing.txt", f"output={tmp_path}/q.csv", expect_error=True)
    assert "no usable article" in str(err) and "missing.txt: no such file or directory" in str(err)


def test_sentence_table_without_article_id_is_predicted_in_row_chunks(run_predict, tmp_path, monkeypatch):
    """Issue 9 item 5: one long article (no article_id) is flushed every predict.chunk_sentences rows."""
    from pipeline.models.batching import TransformerPredictor

    texts = [f"روسيا ترفض العرض رقم {i}" for i in range(7)]
    pd.DataFrame({"sentence_id": [f"s{i}" for i in range(7)], "text": texts}).to_csv(tmp_path / "one.csv", index=False)
    sizes = []
    real = TransformerPredictor.predict

    def counting(self, batch, batch_size=64):
        sizes.append(len(batch))
        return real(self, batch, batch_size)

    monkeypatch.setattr(TransformerPredictor, "predict", counting)
    report = run_predict(f"input={tmp_path}/one.csv", f"output={tmp_path}/p.csv", "predict.chunk_sentences=3")
    assert max(sizes) <= 3 and sum(sizes) == 7
    table = read_table(tmp_path / "p.csv")
    assert table["sentence_id"].tolist() == [f"s{i}" for i in range(7)] and table["idx"].astype(int).tolist() == list(range(7))
    assert set(table["article_id"]) == {"one"} and report["articles"] >= 1
    assert pd.read_csv(report["summary"])["sentences"].tolist() == [7]


class _Payload:
    """A pickle that runs code when loaded: it creates the file named by `target`."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def test_pickled_model_dir_outside_the_store_is_refused_unless_trusted(run_predict, tmp_path):
    """Issue 9 item 12: model_uri=<dir> with a model.joblib from anywhere must not be unpickled by default."""
    import joblib
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from pipeline.models.base import write_model_metadata
    from pipeline.text.preprocess import TextPreprocessor

    evil = tmp_path / "downloads" / "evil-model"
    evil.mkdir(parents=True)
    marker = tmp_path / "code-ran"
    joblib.dump(_Payload(marker), evil / "model.joblib")
    write_model_metadata(evil, kind="tfidf", labels=LABELS, max_length=512, base_model="tfidf",
                         preprocessor=TextPreprocessor(None))
    err = run_predict(f"input={SEEDS[0]}", f"output={tmp_path}/p.csv", f"model_uri={evil}", expect_error=True)
    assert "predict.trust_model_dir=true" in str(err) and "model.joblib" in str(err)
    assert not marker.exists() and not (tmp_path / "p.csv").exists()

    # A real tfidf directory one trusts: predicted with predict.trust_model_dir=true.
    good = tmp_path / "downloads" / "good-model"
    good.mkdir()
    texts = ["روسيا ترفض العرض", "واشنطن توافق على الحوار", "موسكو تدرس الاقتراح"] * 3
    pipe = make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=200)).fit(texts, LABELS * 3)
    joblib.dump(pipe, good / "model.joblib")
    write_model_metadata(good, kind="tfidf", labels=LABELS, max_length=512, base_model="tfidf",
                         preprocessor=TextPreprocessor(None))
    run_predict(f"input={SEEDS[0]}", f"output={tmp_path}/p.csv", f"model_uri={good}", expect_error=True)
    report = run_predict(f"input={SEEDS[0]}", f"output={tmp_path}/p.csv", f"model_uri={good}",
                         "predict.trust_model_dir=true")
    assert report["sentences"] > 0


def test_predict_ends_with_a_summary_line(run_predict, tmp_path, capsys):
    out = tmp_path / "p.csv"
    report = run_predict(f"input={SEEDS[2]}", f"output={out}", "predict.report=true", "predict.bootstrap=10")
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"predict: 1 articles, {report['sentences']} sentences → {out} "
                           f"(+ {report['summary']}, {report['errors']}")
    # the model it used and how good its run measured it (the served version 2 logged test_macro_f1 0.6)
    assert "; model models:/stance@champion, held-out macro-F1 0.60;" in line
    assert line.endswith(f"next: open {report['report']}")
    assert report["model_quality"]["test_macro_f1"] == 0.6 and report["model_quality"]["smoke"] is None


def test_report_and_summary_show_the_models_quality_and_warn_of_a_smoke_model(run_predict, store, tmp_path, capsys):
    import mlflow

    from pipeline.core import tracking
    from pipeline.models.store import log_stance_model
    from pipeline.models.serving import SMOKE_TAG

    cfg = compose_config("train", store["overrides"])
    with tracking.start_run(cfg, "train-tiny", tags={"has_model": "true", SMOKE_TAG: "true", "data_name": "seeds",
                                                     "recipe_digest": "recipe-x"}) as run:
        log_stance_model(store["model_dir"])
        mlflow.log_metrics({"test_macro_f1": 0.24, "test_macro_f1_ci_low": 0.11, "test_macro_f1_ci_high": 0.33,
                            "test_n": 21})
    with tracking.start_run(cfg, "evaluate-loao-tiny", tags={"stage": "evaluate", "cv_parent": "true",
                                                             "data_name": "seeds", "recipe_digest": "recipe-x"}):
        mlflow.log_metrics({"oof_macro_f1": 0.27, "oof_macro_f1_ci_low": 0.2, "oof_macro_f1_ci_high": 0.35,
                            "oof_n": 74})
    out = tmp_path / "p.csv"
    report = run_predict(f"input={SEEDS[2]}", f"output={out}", f"model_uri=runs:/{run.info.run_id}/model",
                         "predict.report=true", "predict.bootstrap=10")
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "a SMOKE model (built from scratch): its labels mean nothing" in line
    html = Path(report["report"]).read_text(encoding="utf-8")
    assert 'class="warn" role="alert"' in html and "نموذج تجريبي" in html
    for shown in ("0.24", "[0.11, 0.33]", "0.27", "[0.20, 0.35]", ">21<", ">74<"):
        assert shown in html, shown
