"""The evaluate stage: cross-validation folds as child runs of one parent, baselines, reports; sweeps."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from conftest import ARSARCASM_LABEL_MAP_OVERRIDE
from test_train_data import labelled  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow


def _runs(cfg):
    import mlflow

    from pipeline.core import tracking

    tracking.setup(cfg)
    exp = mlflow.get_experiment_by_name(str(cfg.tracking.experiment))
    return mlflow.search_runs([exp.experiment_id], output_format="list")


def test_loao_cv_logs_folds_as_children_of_one_parent(make_cfg, labelled, tmp_path, capsys):
    import mlflow

    from pipeline.stages.evaluate import evaluate

    cfg = make_cfg("evaluate", "model=tiny", "train.epochs=2", f"paths.labelled={labelled}", "evaluate.bootstrap=100")
    result = evaluate(cfg)
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    runs = _runs(cfg)
    parent = [r for r in runs if r.info.run_id == result["run_id"]]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == result["run_id"]]
    assert len(parent) == 1 and len(children) == 5 and len(runs) == 6
    assert all(r.info.status == "FINISHED" for r in runs)
    assert {r.data.tags["fold"] for r in children} == {f"fold-{i}" for i in range(5)}
    # Each fold: its own gold test metrics and the baselines on the same rows.
    for child in children:
        assert {"test_macro_f1", "baseline_majority_test_macro_f1", "baseline_rules_test_macro_f1",
                "baseline_tfidf_test_macro_f1"} <= set(child.data.metrics)
    m = parent[0].data.metrics
    for key in ("cv_macro_f1_mean", "cv_macro_f1_std", "cv_accuracy_mean", "oof_macro_f1", "oof_macro_f1_ci_low",
                "oof_macro_f1_ci_high", "baseline_rules_cv_macro_f1_mean", "baseline_tfidf_cv_macro_f1_mean",
                "baseline_majority_oof_macro_f1"):
        assert key in m, key
    fold_scores = [c.data.metrics["test_macro_f1"] for c in children]
    assert m["cv_macro_f1_mean"] == pytest.approx(sum(fold_scores) / 5)
    assert parent[0].data.tags["stage"] == "evaluate" and "has_model" not in parent[0].data.tags
    # The console line compares like with like, with the numbers MLflow holds: pooled with pooled, means with means.
    pooled, _, means = printed.partition("; mean over folds: ")
    assert printed.startswith("evaluate: pooled macro-F1") and f"MLflow run {result['run_id']}" in printed
    assert f"tiny {m['oof_macro_f1']:.3f} [" in pooled and f"tiny {m['cv_macro_f1_mean']:.3f} ± " in means
    for name in ("majority", "rules", "tfidf"):
        assert f"{name} {m[f'baseline_{name}_oof_macro_f1']:.3f}" in pooled, name
        assert f"{name} {m[f'baseline_{name}_cv_macro_f1_mean']:.3f}" in means, name
    assert "the honest number" in parent[0].data.tags["mlflow.note.content"] and pooled[10:] in \
        parent[0].data.tags["mlflow.note.content"]
    assert all("One fold of an evaluate run" in c.data.tags["mlflow.note.content"] for c in children)
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(result["run_id"], "evaluation")}
    assert {"evaluation/confusion_matrix.png", "evaluation/errors.csv", "evaluation/folds.csv",
            "evaluation/comparison.csv"} <= artifacts
    folds = pd.read_csv(f"{cfg.paths.run_dir}/evaluation/folds.csv")
    assert folds["test_articles"].nunique() == 5
    fold_dir = tmp_path / "runs" / Path(str(cfg.paths.run_dir)).name / "fold-0"
    assert (fold_dir / "model" / "stance_model.json").exists() and not (fold_dir / "checkpoints").exists()


def test_kfold_on_a_table_without_groups(make_cfg, tmp_path):
    from test_train_data import write_table

    from pipeline.stages.evaluate import evaluate

    path = write_table(tmp_path / "t.csv", n=60)
    cfg = make_cfg("evaluate", "model=tfidf", "data=table", f"data.path={path}", "data.text_column=tweet",
                   "data.label_column=sentiment", ARSARCASM_LABEL_MAP_OVERRIDE,
                   "evaluate.cv=kfold", "evaluate.folds=3", "evaluate.bootstrap=50")
    result = evaluate(cfg)
    assert len(result["folds"]) == 3 and sum(f["n_test"] for f in result["folds"]) == 60
    assert result["summary"]["cv_macro_f1_mean"] > 0.9
    assert "baseline_rules_cv_macro_f1_mean" not in result["summary"]


def test_loao_without_articles_falls_back_to_stratified_folds(make_cfg, tmp_path):
    from test_train_data import write_table

    from pipeline.labeling.splits import cv_splits, load_labelled

    path = write_table(tmp_path / "t.csv", n=30)
    cfg = make_cfg("evaluate", "model=tfidf", "data=table", f"data.path={path}", "data.text_column=tweet",
                   "data.label_column=sentiment", ARSARCASM_LABEL_MAP_OVERRIDE,
                   "evaluate.folds=3")
    assert cfg.evaluate.cv == "loao"
    folds = cv_splits(load_labelled(cfg), cfg)
    assert len(folds) == 3 and all(f["label"].value_counts().min() == 3 for f in (x.test for x in folds))


def test_evaluate_a_trained_model_dir(make_cfg, labelled):
    from pipeline.stages.evaluate import evaluate
    from pipeline.stages.train import train

    trained = train(make_cfg("train", "model=tfidf", "train.refit=all", f"paths.labelled={labelled}",
                             "train.baselines=[majority]"))
    first_fit = Path(trained["model_dir"]).parent.parent / "model"  # train.refit=all serves work_dir/final/model
    result = evaluate(make_cfg("evaluate", "evaluate.cv=none", f"evaluate.model_dir={first_fit}",
                               f"paths.labelled={labelled}", "train.baselines=[majority]"))
    # Same split, same model, same predictions: the same numbers as the end of train.
    assert result["metrics"]["eval_macro_f1"] == pytest.approx(trained["metrics"]["test_macro_f1"])
    # The served model was refit on every gold article: scoring it on "test" articles is refused.
    from pipeline.core.errors import PipelineError

    with pytest.raises(PipelineError, match="refit on every labelled row"):
        evaluate(make_cfg("evaluate", "evaluate.cv=none", f"evaluate.model_dir={trained['model_dir']}",
                          f"paths.labelled={labelled}", "train.baselines=[majority]"))


def test_evaluate_model_dir_scores_the_stored_split_not_the_seed(make_cfg, labelled, tmp_path):
    """Issue 9 item 3: the test articles come from the model dir's split.json, whatever the seed or the data now."""
    import json

    from pipeline.core.errors import PipelineError
    from pipeline.stages.evaluate import evaluate
    from pipeline.labeling.splits import holdout_split, load_labelled
    from pipeline.stages.train import train

    base = [f"paths.labelled={labelled}", "train.baselines=[majority]"]
    trained = train(make_cfg("train", "model=tfidf", "train.refit=none", *base))
    stored = json.loads((Path(trained["model_dir"]) / "split.json").read_text())
    cfg = make_cfg("train", *base)
    assert stored["test"] == sorted(holdout_split(load_labelled(cfg), cfg).test_groups)
    # Another seed would pick other test articles (some the model trained on); the stored ones are scored.
    for seed in (1, 2, 3):
        other = make_cfg("train", *base, f"seed={seed}")
        if sorted(holdout_split(load_labelled(other), other).test_groups) != stored["test"]:
            break
    else:
        pytest.skip("every seed picks the same test articles")
    result = evaluate(make_cfg("evaluate", "evaluate.cv=none", f"evaluate.model_dir={trained['model_dir']}",
                               f"seed={seed}", *base))
    assert result["metrics"]["eval_macro_f1"] == pytest.approx(trained["metrics"]["test_macro_f1"])
    assert result["metrics"]["eval_n"] == trained["metrics"]["test_n"]
    # The data changed and lost a stored test article: a clear refusal, not a score on other rows.
    frame = pd.read_parquet(labelled)
    shrunk = tmp_path / "shrunk.parquet"
    frame[frame["article_id"] != stored["test"][0]].to_parquet(shrunk, index=False)
    with pytest.raises(PipelineError, match="data changed since training"):
        evaluate(make_cfg("evaluate", "evaluate.cv=none", f"evaluate.model_dir={trained['model_dir']}",
                          f"paths.labelled={shrunk}", "train.baselines=[majority]"))


def test_multirun_sweep_makes_child_runs_under_one_parent(make_cfg, labelled, tmp_path):
    import mlflow

    from pipeline.cli.main import main

    db = f"sqlite:///{tmp_path}/sweep/mlflow.db"
    args = ["train", "-m", "model=tfidf", "model.tfidf.C=1.0,8.0", f"paths.labelled={labelled}",
            f"paths.output_root={tmp_path}/outputs", f"tracking.uri={db}", f"tracking.artifact_root={tmp_path}/sweep/a",
            "train.baselines=[majority]", f"paths.sentences={tmp_path}/work/sentences.parquet",
            f"paths.work_dir={tmp_path}/work",
            f"paths.labels_dir={tmp_path}/labels"]  # no label inputs newer than labelled.parquet: label stays fresh
    assert main(args) == 0
    runs = _runs(make_cfg("train", f"tracking.uri={db}"))
    parents = [r for r in runs if r.data.tags.get("sweep") == "true"]
    assert len(parents) == 1 and len(runs) == 3
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.data.params["model.tfidf.C"] for r in children) == ["1.0", "8.0"]
    assert all(r.data.tags["has_model"] == "true" for r in children)
    assert mlflow.get_run(parents[0].info.run_id).info.status == "FINISHED"


def test_nested_selection_chooses_inside_each_fold_and_never_sees_its_test_article(make_cfg, labelled, monkeypatch,
                                                                                   capsys):
    """Issue 18 item 3: evaluate.select chooses a value of a sweep by leave-one-article-out on each outer fold's
    training articles; the outer fold fits and scores that choice."""
    import mlflow

    from pipeline.training import inner_cv
    from pipeline.stages.evaluate import evaluate
    from pipeline.models.trust import load_sklearn

    inner_fits = []
    real_fit = inner_cv.fit_model

    def recording_fit(cfg, split, work_dir, **kwargs):
        inner_fits.append((Path(work_dir).parent.parent.name, set(split.train["group"]) | set(split.test["group"]),
                           float(cfg.model.tfidf.C)))
        return real_fit(cfg, split, work_dir, **kwargs)

    monkeypatch.setattr(inner_cv, "fit_model", recording_fit)
    cfg = make_cfg("evaluate", "model=tfidf", f"paths.labelled={labelled}", "evaluate.bootstrap=50",
                   "train.baselines=[majority]", "evaluate.select={model.tfidf.C: [0.01, 100.0]}")
    result = evaluate(cfg)
    run_dir = Path(str(cfg.paths.run_dir))
    folds = pd.read_csv(run_dir / "evaluation" / "folds.csv")
    chosen = pd.read_csv(run_dir / "evaluation" / "selection.csv")
    assert len(folds) == 5 and len(chosen) == 10 and (chosen.groupby("fold")["chosen"].sum() == 1).all()
    for fold in folds.itertuples():
        mine = chosen[chosen["fold"] == fold.fold]
        best = mine.loc[mine["inner_macro_f1"].idxmax()]                     # the first listed on a tie
        assert best["chosen"] and fold.selected == best["candidate"]
        # 4 training articles: 4 inner fits per candidate, none of them on (or tested on) the fold's test article
        fits = [f for f in inner_fits if f[0] == fold.fold]
        assert len(fits) == 8 and not any(fold.test_articles in groups for _, groups, _ in fits)
        assert sorted({c for _, _, c in fits}) == [0.01, 100.0]
        # the outer model was fitted with the chosen value
        pipe = load_sklearn(run_dir / fold.fold / "model")   # model.skops: the tfidf kind stores no pickle
        assert f"model.tfidf.C={pipe.named_steps['classifier'].C}" == fold.selected
    parent = mlflow.get_run(result["run_id"])
    assert parent.data.tags["selection"] == "nested" and "fold-0:" in parent.data.tags["selected_per_fold"]
    assert "oof_macro_f1" in parent.data.metrics
    assert "nested selection" in capsys.readouterr().out
    assert not any((run_dir / f"fold-{i}" / "select").exists() for i in range(5))   # inner fits leave nothing


def test_a_selection_varies_only_existing_model_and_train_keys(make_cfg):
    from pipeline.core.errors import PipelineError
    from pipeline.training.selection import candidates

    assert candidates(make_cfg("evaluate")) == []
    both = candidates(make_cfg("evaluate", "evaluate.select={train.head.C: [0.5, 2], train.lr: [1e-5]}"))
    assert both == [{"train.head.C": 0.5, "train.lr": 1e-5}, {"train.head.C": 2, "train.lr": 1e-5}]
    for bad, message in (("{data.path: [a.csv]}", "not a train.\\* or model.\\* key"),
                         ("{train.nope: [1]}", "no config key 'train.nope'"),
                         ("{train.lr: 3e-5}", "non-empty list"),
                         # issue 17 item 10: a share the command line would refuse is refused here too
                         ("{train.val_size: [0, 1.5]}", "train.val_size=1.5 is outside \\[0, 1\\)")):
        with pytest.raises(PipelineError, match=message):
            candidates(make_cfg("evaluate", f"evaluate.select={bad}"))
