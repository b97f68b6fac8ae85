"""The model-kind registry (pipeline/models/kinds.py): the one place that names kinds. A kind registered in a few
lines trains and predicts through the real stages; a pooled fine-tuning answers the kind it writes."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from pipeline import LABELS
from pipeline.core.io import read_json_file, write_text_atomic
from pipeline.models import kinds
from pipeline.models.base import StancePredictor, write_model_metadata
from pipeline.models.calibration import Calibration
from test_train_data import labelled  # noqa: F401 (a fixture)

PRIOR_FILE = "prior.json"


class PriorPredictor(StancePredictor):
    """Every sentence gets the training rows' class frequencies."""

    kind = "prior"

    def __init__(self, model_dir, meta):
        super().__init__(model_dir, meta)
        prior = read_json_file(self.model_dir / PRIOR_FILE, "the prior kind writes it")
        self.prior = np.array([prior[label] for label in self.labels])

    def _scores(self, texts, batch_size):
        return np.tile(self.prior, (len(texts), 1)), np.zeros(len(texts), dtype=bool)


def fit_prior(cfg, split, work_dir, out, preprocess, *, resume_from=None):
    counts = split.train["label"].value_counts()
    prior = {label: (float(counts.get(label, 0)) + 1) / (len(split.train) + len(LABELS)) for label in LABELS}
    write_model_metadata(out, kind="prior", labels=LABELS, max_length=8, base_model="class frequencies",
                         preprocessor=preprocess)
    write_text_atomic(out / PRIOR_FILE, json.dumps(prior))


PRIOR = SimpleNamespace(written_kind=lambda cfg: "prior", fit=fit_prior, load=lambda d, meta, **_: PriorPredictor(d, meta))


@pytest.fixture
def prior_kind():
    kinds.register(kinds.Kind("prior", PRIOR))
    try:
        yield
    finally:
        kinds.unregister("prior")


def test_a_registered_kind_trains_and_predicts_through_the_stages(prior_kind, make_cfg, labelled, tmp_path):
    from pipeline.stages.predict import predict
    from pipeline.stages.train import train

    skewed = pd.read_parquet(labelled)
    skewed.loc[skewed.index % 6 == 1, "label"] = "positive"  # half the neutral rows: the classes' shares differ
    skewed.to_parquet(tmp_path / "skewed.parquet", index=False)
    trained = train(make_cfg("train", "model=tfidf", "model.kind=prior", "model.name=prior", "train.refit=none",
                             "train.baselines=[majority]", f"paths.labelled={tmp_path / 'skewed.parquet'}"))
    prior = json.loads((Path(trained["model_dir"]) / PRIOR_FILE).read_text())
    assert json.loads((Path(trained["model_dir"]) / "stance_model.json").read_text())["kind"] == "prior"

    article = tmp_path / "article.txt"
    article.write_text("وقعت روسيا الاتفاق أمس. ورحب الجانبان بالخطوة.\n", encoding="utf-8")
    out = tmp_path / "predictions.parquet"
    predict(make_cfg("predict", f"input={article}", f"output={out}", f"model_uri={trained['model_dir']}"))
    rows = pd.read_parquet(out)
    assert len(rows) >= 1
    assert len(set(prior.values())) == len(LABELS) and set(rows["label"]) == {max(prior, key=prior.get)}
    # The prior, with the temperature train fitted on out-of-fold fits of the same kind (train.calibrate).
    calibration = Calibration.load(trained["model_dir"])
    expected = calibration.apply(np.array([[prior[label] for label in LABELS]]))
    np.testing.assert_allclose(rows[[f"p_{label}" for label in LABELS]].to_numpy(),
                               np.repeat(expected, len(rows), axis=0), atol=1e-9)


def test_an_unknown_kind_is_one_line_naming_the_known_ones(make_cfg):
    from pipeline.core.errors import PipelineError
    from pipeline.training.fitting import stance_kind

    with pytest.raises(PipelineError, match=r"model.kind='nope' is not known; use transformer, tiny, tfidf, frozen"):
        stance_kind(make_cfg("train", "model=tfidf", "model.kind=nope"))
    assert "prior" not in kinds.config_kinds()  # the throwaway kind was removed again


def test_stance_kind_is_the_kind_the_fit_writes(make_cfg):
    """A pooled fine-tuning writes an encoder dir (head.json): its tags and report say "encoder"."""
    from pipeline.training.fitting import stance_kind

    assert stance_kind(make_cfg("train", "model=tiny")) == "transformer"
    assert stance_kind(make_cfg("train", "model=tiny", "model.pooling=mean")) == "encoder"
    assert stance_kind(make_cfg("train", "model=frozen")) == "encoder"
    assert stance_kind(make_cfg("train", "model=tfidf")) == "tfidf"
    # Runs stay tagged by how they were fitted: a frozen encoder and a fine-tuned one both write "encoder".
    assert [kinds.fit_method(make_cfg("train", f"model={m}")) for m in ("tiny", "frozen", "tfidf")] == \
        ["transformer", "frozen", "tfidf"]
    assert kinds.keeps_checkpoints(make_cfg("train", "model=tiny", "model.pooling=mean"))
    assert not kinds.keeps_checkpoints(make_cfg("train", "model=frozen"))
