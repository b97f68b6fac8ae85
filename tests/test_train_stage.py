"""The train stage end to end on the tiny BERT and TF-IDF: learning, MLflow run contents, determinism,
crash → FAILED, resume, table data and sweeps. Every run takes seconds on one CPU thread."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import ARSARCASM_LABEL_MAP_OVERRIDE
from pipeline import LABELS
from test_train_data import labelled, make_labelled, write_table  # noqa: F401 (labelled is a fixture)

pytestmark = pytest.mark.slow

TINY = ["model=tiny", "train.baselines=[majority,rules]", "evaluate.bootstrap=100"]


def runs_of(cfg):
    import mlflow

    from pipeline.core import tracking

    tracking.setup(cfg)
    exp = mlflow.get_experiment_by_name(str(cfg.tracking.experiment))
    return mlflow.search_runs([exp.experiment_id], output_format="list")


def test_tiny_model_learns_a_separable_task(make_cfg, tmp_path):
    """Fails if the loss is not optimised: the model must fit its training set and beat chance on test."""
    from pipeline.models.base import load_predictor
    from pipeline.labeling.splits import holdout_split, load_labelled
    from pipeline.stages.train import train

    separable = make_labelled(make_cfg, tmp_path / "sep.parquet", separable=True)
    cfg = make_cfg("train", *TINY, f"paths.labelled={separable}", "train.epochs=20", "train.lr=1e-3",
                   "train.early_stopping_patience=0", "train.baselines=[majority]")
    result = train(cfg)
    assert result["metrics"]["test_macro_f1"] > 0.8, result["metrics"]  # chance is about 0.33
    assert result["metrics"]["test_macro_f1"] > result["baselines"]["majority"]["macro_f1"] + 0.3
    # It fits the sentences it was trained on (the held-out articles were never seen).
    split = holdout_split(load_labelled(cfg), cfg)
    pred = load_predictor(result["model_dir"]).predict(split.train["text"].tolist())
    train_acc = float((pred["label"].to_numpy() == split.train["label"].to_numpy()).mean())
    assert train_acc >= 0.95, train_acc


def test_train_run_is_one_complete_mlflow_run_and_deterministic(make_cfg, labelled, tmp_path):
    import mlflow

    from pipeline.stages.train import train

    overrides = [*TINY, f"paths.labelled={labelled}", "train.epochs=3"]
    first = train(make_cfg("train", *overrides))
    second = train(make_cfg("train", *overrides))
    # Same seed on CPU: same metrics, to the last digit.
    assert first["metrics"] == second["metrics"]

    cfg = make_cfg("train", *overrides)
    runs = runs_of(cfg)
    assert len(runs) == 2, [(r.info.run_name, r.data.tags.get("stage"), r.info.status) for r in runs]
    run = mlflow.get_run(first["run_id"])
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["stage"] == "train" and tags["has_model"] == "true" and tags["model_kind"] == "transformer"
    assert tags["data_digest"] and "git_commit" in tags and tags["git_dirty"] in ("true", "false")
    assert tags["labels_test"].startswith("negative=")
    m = run.data.metrics
    for key in ("test_macro_f1", "test_accuracy", "test_weighted_f1", "test_f1_negative", "test_precision_positive",
                "test_recall_neutral", "test_ece_before", "test_ece_after",
                "baseline_majority_test_macro_f1", "baseline_rules_test_macro_f1", "train_loss", "val_macro_f1"):
        assert key in m, key
    # The test rows are one article: no interval (an article bootstrap needs two; a sentence one would pretend).
    assert tags["test_articles"].count(",") == 0 and "test_macro_f1_ci_low" not in m
    client = mlflow.MlflowClient()
    assert len(client.get_metric_history(run.info.run_id, "val_macro_f1")) >= 2  # per epoch
    assert run.data.params["train.batch_size"] == "16" and run.data.params["model.name"] == "tiny"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/confusion_matrix.png", "evaluation/confusion_matrix.csv", "evaluation/errors.csv"} <= artifacts
    assert "config.yaml" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert run.inputs.dataset_inputs, "the training/test data are logged as run inputs"
    # The model: an MLflow pyfunc returning the label and every class probability.
    model = mlflow.pyfunc.load_model(first["model_uri"])
    out = model.predict(pd.DataFrame({"text": ["رفضت موسكو الرد الأمريكي.", "اتفق الجانبان على مواصلة الحوار."]}))
    assert list(out.columns) == ["label", *[f"p_{x}" for x in LABELS]]
    assert np.allclose(out[[f"p_{x}" for x in LABELS]].sum(axis=1), 1.0)
    meta = json.loads((Path(first["model_dir"]) / "stance_model.json").read_text())
    assert meta["kind"] == "transformer" and meta["labels"] == list(LABELS)


def test_evaluation_counts_gold_rows_only(make_cfg, labelled):
    """The rule labels of test articles disagree with the labels: a leak would change the test set size."""
    from pipeline.labeling.splits import holdout_split, load_labelled
    from pipeline.stages.train import train

    cfg = make_cfg("train", "model=tfidf", f"paths.labelled={labelled}", "train.baselines=[]")
    split = holdout_split(load_labelled(cfg), cfg)
    frame = pd.read_parquet(labelled)
    in_test = frame[frame["article_id"].isin(split.test_groups)]
    result = train(cfg)
    assert result["metrics"]["test_n"] == (in_test["source"] == "gold").sum() < len(in_test)


class _CrashAfterFirstSave:
    def __new__(cls):
        from transformers import TrainerCallback

        class Crash(TrainerCallback):
            def on_save(self, args, state, control, **kwargs):
                raise RuntimeError("simulated crash after the first checkpoint")

        return Crash()


def test_crash_marks_run_failed_and_resume_continues(make_cfg, labelled, tmp_path, monkeypatch):
    import shutil

    import mlflow

    from pipeline.models import transformer
    from pipeline.stages import train as train_module
    from pipeline.core.errors import PipelineError

    run_dir = tmp_path / "outputs" / "train" / "interrupted"
    overrides = [*TINY, f"paths.labelled={labelled}", "train.epochs=3", "train.early_stopping_patience=0",
                 "train.refit=none", "train.min_steps=0"]
    monkeypatch.setattr(transformer, "extra_callbacks", lambda: [_CrashAfterFirstSave()])
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_module.train(make_cfg("train", *overrides, f"paths.run_dir={run_dir}"))
    failed = runs_of(make_cfg("train", *overrides))
    assert [r.info.status for r in failed] == ["FAILED"]
    assert "has_model" not in failed[0].data.tags
    checkpoints = sorted((run_dir / "checkpoints").glob("checkpoint-*"))
    assert len(checkpoints) == 1 and not (run_dir / "model").exists()
    monkeypatch.setattr(transformer, "extra_callbacks", lambda: [])

    # Issue 9 item 2: an evaluate fold's checkpoints (no train_state.json), newer than the train run's, are not
    # resumed; nor is the train run under another config.
    fold = tmp_path / "outputs" / "evaluate" / "loao-x"
    shutil.copytree(run_dir / "checkpoints", fold / "checkpoints")
    with pytest.raises(PipelineError, match="not a train stage run"):
        train_module.train(make_cfg("train", *overrides, f"train.resume={fold}"))
    with pytest.raises(PipelineError, match="config differs"):
        train_module.train(make_cfg("train", *overrides, "train.lr=0.5", f"train.resume={run_dir}"))
    with pytest.raises(PipelineError, match="matches this config"):
        train_module.train(make_cfg("train", *overrides, "train.lr=0.5", "train.resume=true"))

    result = train_module.train(make_cfg("train", *overrides, "train.resume=true"))
    assert Path(result["model_dir"]) == run_dir / "model"
    state = json.loads((sorted((run_dir / "checkpoints").glob("checkpoint-*"))[-1] / "trainer_state.json").read_text())
    steps_per_epoch = int(checkpoints[0].name.split("-")[1])
    assert state["global_step"] == 3 * steps_per_epoch and state["epoch"] == 3
    # Issue 9 item 6: the resume reopened the same MLflow run; its curve holds epoch 1 (before the crash) and
    # epochs 2 and 3 (the resume), each once.
    assert result["run_id"] == failed[0].info.run_id
    assert [r.info.run_id for r in runs_of(make_cfg("train", *overrides))] == [result["run_id"]]
    history = mlflow.MlflowClient().get_metric_history(result["run_id"], "train_loss")
    assert sorted(h.step for h in history) == [steps_per_epoch, 2 * steps_per_epoch, 3 * steps_per_epoch]
    run = mlflow.get_run(result["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["resumed_from"].endswith(checkpoints[0].name)


KILLED_TRAIN = """
import sys, time
from pathlib import Path
from transformers import TrainerCallback
from pipeline.models import transformer
from pipeline.core.config import compose_config
from pipeline.stages.train import train

class Hang(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        Path(sys.argv[1]).write_text("saved")
        time.sleep(600)  # killed here with SIGKILL

transformer.extra_callbacks = lambda: [Hang()]
train(compose_config("train", sys.argv[2:]))
"""


def test_kill_9_then_resume_is_one_finished_run(make_cfg, labelled, tmp_path, kill_when_marked):
    """Issue 9 item 6: a train killed with SIGKILL leaves its run RUNNING; the next process to open the store marks
    it KILLED and the resume reopens it: one run, FINISHED."""
    import os
    import sys

    from mlflow import MlflowClient

    from pipeline.core import tracking
    from pipeline.stages.train import train

    run_dir = tmp_path / "outputs" / "train" / "killed"
    overrides = [*TINY, f"paths.labelled={labelled}", "train.epochs=2", "train.early_stopping_patience=0",
                 "train.refit=none", "train.min_steps=0"]
    cfg = make_cfg("train", *overrides, f"paths.run_dir={run_dir}")
    flat = [f"paths.{k}={v}" for k, v in cfg.paths.items() if k in ("work_dir", "output_root", "run_dir")]
    flat += [f"tracking.uri={cfg.tracking.uri}", f"tracking.artifact_root={cfg.tracking.artifact_root}"]
    marker = tmp_path / "saved"
    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, "OMP_NUM_THREADS": "1"}
    proc = kill_when_marked([sys.executable, "-c", KILLED_TRAIN, str(marker), *flat, *overrides], marker,
                            "saved a checkpoint", env=env)
    client = MlflowClient(str(cfg.tracking.uri))  # read as it is: tracking.setup would already mark the run
    runs = client.search_runs([client.get_experiment_by_name(str(cfg.tracking.experiment)).experiment_id])
    assert [r.info.status for r in runs] == ["RUNNING"] and runs[0].data.tags["pid"] == str(proc.pid)
    assert tracking.mark_dead_runs(cfg) == [runs[0].info.run_id]
    assert [r.info.status for r in runs_of(cfg)] == ["KILLED"]

    result = train(make_cfg("train", *overrides, "train.resume=true"))
    after = runs_of(cfg)
    assert [r.info.run_id for r in after] == [runs[0].info.run_id] == [result["run_id"]]
    assert after[0].info.status == "FINISHED"


def test_nothing_to_resume_is_a_clear_error(make_cfg, labelled):
    from pipeline.core.errors import PipelineError
    from pipeline.stages.train import train

    with pytest.raises(PipelineError, match="no interrupted train run"):
        train(make_cfg("train", *TINY, f"paths.labelled={labelled}", "train.resume=true"))


def test_tfidf_on_a_table_through_the_cli(make_cfg, tmp_path):
    """model=tfidf and data=table through `run_stage`: no segment/label stage runs, the run has a model,
    registered under tracking.register with tracking.alias."""
    import mlflow

    from pipeline.cli.main import run_stage

    path = write_table(tmp_path / "t.csv", n=90)
    cfg = make_cfg("train", "model=tfidf", "data=table", f"data.path={path}", "data.text_column=tweet",
                   "data.label_column=sentiment", ARSARCASM_LABEL_MAP_OVERRIDE,
                   f"paths.sentences={tmp_path}/never.parquet", "tracking.register=stance-tfidf")
    result = run_stage("train", cfg)
    assert Path(result["model_dir"]).parent.name == "final"  # the refit is what is served
    assert not (tmp_path / "never.parquet").exists()
    assert result["metrics"]["test_macro_f1"] > 0.9
    run = mlflow.get_run(result["run_id"])
    assert run.data.tags["model_kind"] == "tfidf" and run.data.tags["has_model"] == "true"
    assert "baseline_tfidf_test_macro_f1" not in run.data.metrics  # the model is the baseline here
    assert "baseline_rules_test_macro_f1" not in run.data.metrics  # a plain table has no rules
    # Calibrated on out-of-fold gold before logging, measured on the test rows; the served refit has its own T.
    assert {"calibration_temperature", "test_ece_before", "test_ece_after",
            "served_calibration_temperature"} <= set(run.data.metrics)
    assert (Path(result["model_dir"]) / "calibration.json").exists()
    artifacts = [a.path for a in mlflow.MlflowClient().list_artifacts(result["run_id"], "evaluation")]
    assert "evaluation/reliability.png" in artifacts
    # The run's description in the UI lists its headline numbers; the experiment is a model-training one.
    assert "test macro-F1" in run.data.tags["mlflow.note.content"] and "calibration" in run.data.tags["mlflow.note.content"]
    experiment = mlflow.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert experiment.tags["mlflow.note.content"]
    # Registered under the configured name, with the alias pointing at this run's version.
    out = mlflow.pyfunc.load_model("models:/stance-tfidf@champion").predict(pd.DataFrame({"text": ["اتفاق مثمر وبناء اليوم"]}))
    assert out["label"].tolist() == ["positive"]
    version = mlflow.MlflowClient().get_model_version_by_alias("stance-tfidf", "champion")
    assert version.run_id == result["run_id"]


def test_batches_are_padded_dynamically_and_grouped_by_length(make_cfg, tmp_path):
    """The stage pads each batch to its own longest sentence (not to max_length) and groups similar lengths."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from pipeline.models.loading import load_tokenizer_and_model
    from pipeline.models.tiny import build_tiny_bert
    from pipeline.models.trainer import build_trainer

    words = ["موسكو", "واشنطن", "الضمانات", "الأمنية", "الحلف", "المحادثات"]
    texts = [" ".join(words[i % 6] for i in range(n)) for n in range(1, 65)] * 4  # 3..66 tokens each
    labels = [LABELS[i % 3] for i in range(len(texts))]
    model_dir = build_tiny_bert(texts, tmp_path / "m", LABELS)
    tokenizer, model = load_tokenizer_and_model(str(model_dir), LABELS)
    cfg = make_cfg("train", "model=tiny", "train.batch_size=8")
    trainer = build_trainer(cfg, model, tokenizer, texts, labels, [], [], tmp_path / "out", save=False)
    loader = trainer.get_train_dataloader()
    assert isinstance(trainer._get_train_sampler(), LengthGroupedSampler)
    widths = [batch["input_ids"].shape[1] for batch in loader]
    assert max(widths) == 66 and min(widths) < 30  # padded per batch, never to 128
    spans = []
    for batch in loader:
        lengths = batch["attention_mask"].sum(dim=1)
        spans.append(int(lengths.max() - lengths.min()))
    assert np.mean(spans) < 20  # random batches of 8 from lengths 3..66 would span about 50 tokens
    pad_cfg = make_cfg("train", "model=tiny", "train.batch_size=8", "train.pad_to_max_length=true")
    padded = build_trainer(pad_cfg, model, tokenizer, texts, labels, [], [], tmp_path / "out2", save=False)
    assert {b["input_ids"].shape[1] for b in padded.get_train_dataloader()} == {128}


def test_the_logged_model_is_served_with_the_runs_predict_backend(make_cfg, labelled):
    """predict.backend (with its onnx cache) reaches the pyfunc model (and so Spark UDFs and `mlflow models serve`)
    as its model_config."""
    import mlflow

    from pipeline.stages.train import train

    cfg = make_cfg("train", *TINY, f"paths.labelled={labelled}", "train.epochs=1", "predict.backend=sdpa")
    result = train(cfg)
    model = mlflow.pyfunc.load_model(result["model_uri"])
    assert model.model_config == {"backend": "sdpa", "onnx_cache": cfg.predict.onnx_cache,
                                  "onnx_cache_keep": cfg.predict.onnx_cache_keep, "quantize": None,
                                  "recheck_margin": cfg.predict.recheck_margin}
    assert model.unwrap_python_model().predictor.backend == "sdpa"
    override = mlflow.pyfunc.load_model(result["model_uri"], model_config={"backend": "eager"})
    assert override.unwrap_python_model().predictor.backend == "eager"
