"""Issue 17 items 1-4, 10, 11: no code runs from a model that is not trusted, whatever route its files come by
(file: URI, a hybrid's inner model named elsewhere or linked elsewhere, a pickled checkpoint); weights that cannot
be loaded and models that may not be are one `error:` line, the latter before any work. The hostile models are
built here: pickles that create a marker file when they are loaded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline import LABELS
from pipeline.cli.main import main
from pipeline.models.base import load_predictor, write_model_metadata
from pipeline.text.preprocess import TextPreprocessor
from test_inference import make_stance_model

REPO = Path(__file__).resolve().parent.parent
SEED = sorted((REPO / "seeds").glob("*.txt"))[0]


class Payload:
    """Unpickling this runs code: it creates the file `target`."""

    def __init__(self, target: Path):
        self.target = Path(target)

    def __reduce__(self):
        return (Path.touch, (self.target,))


def hostile_tfidf(model_dir: Path, marker: Path) -> Path:
    """A tfidf stance model directory whose legacy model.joblib runs code when it is loaded."""
    import joblib

    model_dir.mkdir(parents=True)
    joblib.dump(Payload(marker), model_dir / "model.joblib")
    write_model_metadata(model_dir, kind="tfidf", labels=LABELS, max_length=64, base_model="tfidf",
                         preprocessor=TextPreprocessor(None))
    return model_dir


def hybrid_naming(model_dir: Path, inner: str) -> Path:
    """A hybrid stance model directory whose hybrid.json names `inner` as its learned model."""
    model_dir.mkdir(parents=True)
    shutil.copyfile(REPO / "labels" / "lexicon.yaml", model_dir / "lexicon.yaml")
    (model_dir / "hybrid.json").write_text(json.dumps({"min_rule_confidence": 0.5, "lexicon_sha": "x",
                                                      "inner": inner}), encoding="utf-8")
    write_model_metadata(model_dir, kind="hybrid", labels=LABELS, max_length=64, base_model="rules + tfidf",
                         preprocessor=TextPreprocessor(None))
    return model_dir


@pytest.fixture
def cli(tmp_path, capsys):
    """Run `python -m pipeline <stage> ...` in-process with every path under tmp_path; returns (exit code, the
    `error:` lines, stderr)."""

    def _run(stage: str, *args: str):
        base = [f"paths.work_dir={tmp_path}/work", f"paths.output_root={tmp_path}/outputs",
                f"tracking.uri=sqlite:///{tmp_path}/mlruns/mlflow.db",
                f"tracking.artifact_root={tmp_path}/mlruns/artifacts"]
        capsys.readouterr()
        code = main([stage, *args, *base])
        err = capsys.readouterr().err
        return code, [line for line in err.splitlines() if line.startswith("error:")], err

    return _run


def predict_with(cli, tmp_path, model_uri: str, *extra: str):
    return cli("predict", f"input={SEED}", f"output={tmp_path}/p.csv", f"model_uri={model_uri}", *extra)


def assert_refused(result, tmp_path, marker, *phrases):
    code, errors, err = result
    assert code == 1 and len(errors) == 1 and "Traceback" not in err, err
    assert all(p in errors[0] for p in phrases), errors[0]
    assert not marker.exists(), "the pickle ran"
    assert not (tmp_path / "p.csv").exists()


def test_file_uri_is_judged_where_it_points_not_where_it_is_copied(cli, tmp_path):
    """Item 1: model_uri=file://<dir> was downloaded under paths.output_root, which the check trusts."""
    marker = tmp_path / "code-ran"
    evil = hostile_tfidf(tmp_path / "downloads" / "evil", marker)
    result = predict_with(cli, tmp_path, f"file://{evil}")
    assert_refused(result, tmp_path, marker, "model_uri=file://", "model.joblib is a pickle",
                   "predict.trust_model_dir=true")
    assert not list((tmp_path / "outputs").rglob("model.joblib"))  # read in place, never copied to a trusted place


@pytest.mark.parametrize("name", ["absolute", "dotdot"])
def test_hybrid_inner_model_named_outside_its_directory_is_refused(cli, tmp_path, name):
    """Item 2: hybrid.json "inner": "/abs/path" or "../x" loaded that directory unchecked."""
    marker = tmp_path / "code-ran"
    evil = hostile_tfidf(tmp_path / "downloads" / "evil", marker)
    hybrid = hybrid_naming(tmp_path / "downloads" / "hybrid", str(evil) if name == "absolute" else "../evil")
    result = predict_with(cli, tmp_path, str(hybrid))
    assert_refused(result, tmp_path, marker, "hybrid.json", "a nested model must live in its parent directory")


def test_hybrid_inner_symlink_to_another_directory_is_refused(cli, tmp_path):
    """Item 3: an inner/ that is a symlink to a hostile directory was not followed by the scan, then loaded."""
    marker = tmp_path / "code-ran"
    evil = hostile_tfidf(tmp_path / "downloads" / "evil", marker)
    hybrid = hybrid_naming(tmp_path / "downloads" / "hybrid", "inner")
    (hybrid / "inner").symlink_to(evil, target_is_directory=True)
    result = predict_with(cli, tmp_path, str(hybrid))
    assert_refused(result, tmp_path, marker, "inner: leads to", "outside")


def test_a_pickle_is_judged_by_its_real_path(cli, tmp_path):
    """A model dir under paths.output_root (trusted) whose model.joblib links to a pickle elsewhere is refused;
    a hybrid whose inner model holds a pickle outside the trusted places is refused through it."""
    marker = tmp_path / "code-ran"
    evil = hostile_tfidf(tmp_path / "downloads" / "evil", marker)
    linked = tmp_path / "outputs" / "train" / "run" / "model"
    linked.mkdir(parents=True)
    shutil.copy(evil / "stance_model.json", linked)
    shutil.copy(evil / "preprocess.json", linked)
    (linked / "model.joblib").symlink_to(evil / "model.joblib")
    assert_refused(predict_with(cli, tmp_path, str(linked)), tmp_path, marker, "model.joblib is a pickle")

    hybrid = hybrid_naming(tmp_path / "downloads" / "hybrid", "inner")
    shutil.copytree(evil, hybrid / "inner")
    assert_refused(predict_with(cli, tmp_path, str(hybrid)), tmp_path, marker,
                   f"{(hybrid / 'inner' / 'model.joblib').resolve()} is a pickle")


@pytest.fixture(scope="module")
def transformer_dir(tmp_path_factory) -> Path:
    return make_stance_model(tmp_path_factory.mktemp("stance") / "model")


def test_pickled_checkpoint_says_save_as_safetensors(cli, tmp_path, transformer_dir):
    """Item 4: torch refuses a hostile pytorch_model.bin (good) but advised retrying with weights_only=False."""
    import torch

    marker = tmp_path / "code-ran"
    model = shutil.copytree(transformer_dir, tmp_path / "downloads" / "bin-model")
    (model / "model.safetensors").unlink()
    torch.save({"weight": Payload(marker)}, model / "pytorch_model.bin")
    result = predict_with(cli, tmp_path, str(model))
    assert_refused(result, tmp_path, marker, "pytorch_model.bin", "must be saved as safetensors")
    assert "weights_only" not in result[2]


def test_truncated_safetensors_is_one_error_line(cli, tmp_path, transformer_dir):
    """Item 10: a truncated model.safetensors was a 37-line SafetensorError traceback."""
    model = shutil.copytree(transformer_dir, tmp_path / "downloads" / "cut-model")
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    result = predict_with(cli, tmp_path, str(model))
    assert_refused(result, tmp_path, tmp_path / "no-marker", f"{weights}: not a complete safetensors file",
                   "truncated or corrupt")


def test_label_export_refuses_an_untrusted_model_before_any_work(cli, tmp_path):
    """Item 11: `label --export` with a hostile model ran segment, label and a rules MLflow run before refusing."""
    import sqlite3

    marker = tmp_path / "code-ran"
    evil = hostile_tfidf(tmp_path / "downloads" / "evil", marker)
    code, errors, err = cli("label", "--export", f"labeling.export_model_uri={evil}",
                            f"paths.gold={REPO / 'labels' / 'gold.csv'}",
                            f"labeling.annotations={tmp_path}/annotations.csv")
    assert code == 1 and len(errors) == 1 and "Traceback" not in err, err
    assert "labeling.export_model_uri=" in errors[0] and "predict.trust_model_dir=true" in errors[0]
    assert not marker.exists()
    assert not (tmp_path / "work").exists()  # neither segment nor label wrote a table
    db = tmp_path / "mlruns" / "mlflow.db"
    runs = sqlite3.connect(db).execute("select count(*) from runs").fetchone()[0] if db.exists() else 0
    assert runs == 0  # no rules-quality run either


def test_tfidf_model_round_trips_through_skops_without_a_pickle(make_cfg, tmp_path):
    """The tfidf kind stores its sklearn pipeline as model.skops: train → predict gives the probabilities of the
    fitted pipeline itself (what the pickle gave), and a legacy model.joblib of it still loads the same."""
    import joblib

    from pipeline.models.tfidf import fit_tfidf, tfidf_proba
    from pipeline.models.head import sample_weights
    from pipeline.training.fitting import fit_model
    from pipeline.models.trust import load_sklearn
    from pipeline.labeling.splits import holdout_split, load_labelled
    from test_train_data import make_labelled

    labelled = make_labelled(make_cfg, tmp_path / "work" / "labelled.parquet", separable=True)
    cfg = make_cfg("train", "model=tfidf", f"paths.labelled={labelled}")
    split = holdout_split(load_labelled(cfg), cfg)
    model_dir = fit_model(cfg, split, tmp_path / "fit")
    assert (model_dir / "model.skops").exists() and not list(model_dir.rglob("*.joblib"))

    preprocess = TextPreprocessor.load(model_dir)
    texts = split.test["text"].tolist() + ["اتفاق", ""]
    fitted = fit_tfidf(preprocess(split.train["text"]), split.train["label"], cfg.model.tfidf, int(cfg.seed),
                       sample_weight=sample_weights(split.train))
    served = load_predictor(model_dir).predict_proba(texts)
    np.testing.assert_allclose(served, tfidf_proba(fitted, preprocess(texts)), atol=1e-12)

    legacy = shutil.copytree(model_dir, tmp_path / "legacy", ignore=shutil.ignore_patterns("model.skops"))
    joblib.dump(load_sklearn(model_dir), legacy / "model.joblib")
    np.testing.assert_allclose(load_predictor(legacy).predict_proba(texts), served, atol=1e-12)


def test_skops_file_with_other_types_is_refused_unloaded(tmp_path):
    """model.skops is loaded against the types a tfidf pipeline is made of, not skops' whole trusted set."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    from pipeline.core.errors import PipelineError
    from pipeline.models.trust import save_sklearn

    save_sklearn(make_pipeline(FunctionTransformer(np.log1p)), tmp_path)
    write_model_metadata(tmp_path, kind="tfidf", labels=LABELS, max_length=64, base_model="tfidf",
                         preprocessor=TextPreprocessor(None))
    with pytest.raises(PipelineError, match="FunctionTransformer"):
        load_predictor(tmp_path)
