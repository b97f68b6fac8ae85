"""A train run reads the pretrained encoder once (issue 21): the frozen kind loaded it for the fit, each calibration
fold and the refit, and every fitted model was read back from disk for its validation, calibration and scoring
(20 loads of the same weights for one frozen run). `train.reuse_models=true` (the default, pipeline.models.reuse)
keeps them in memory; its outputs (metrics, temperatures, head weights) are those of the run that reads the disk."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from test_train_data import labelled, make_labelled  # noqa: F401 (labelled is a fixture)

pytestmark = pytest.mark.slow

COMMON = ["train.baselines=[majority]", "evaluate.bootstrap=50"]
FROZEN = ["model=frozen", "model.text_prefix=''"]
FINE_TUNED = ["model=e5-small", "train.min_steps=8", "train.batch_size=8"]


@pytest.fixture
def loads(monkeypatch):
    """Counter of model loads from disk, by resolved directory (tokenizers apart)."""
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    seen: Counter = Counter()
    for cls, what in ((AutoModel, "model"), (AutoModelForSequenceClassification, "model"),
                      (AutoTokenizer, "tokenizer")):
        real = cls.from_pretrained

        def counting(source, *args, _real=real, _what=what, **kwargs):
            seen[(_what, str(Path(str(source)).resolve()))] += 1
            return _real(source, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", counting)
    return seen


def model_loads(seen: Counter, under: Path | None = None) -> int:
    return sum(n for (what, where), n in seen.items()
               if what == "model" and (under is None or where.startswith(str(Path(under).resolve()))))


def run_train(make_cfg, overrides) -> dict:
    from pipeline.stages.train import train

    return train(make_cfg("train", *COMMON, *overrides))


def outputs(result: dict) -> dict:
    """What must not change: the test metrics, the first fit's and the served model's temperature and head."""
    served = Path(result["model_dir"])
    first = Path(result["model_dir"]).parents[1] / "model"
    out = {"metrics": result["metrics"]}
    for name, folder in (("first", first), ("served", served)):
        for file in ("calibration.json", "head.json", "stance_model.json"):
            if (folder / file).exists():
                out[f"{name}/{file}"] = json.loads((folder / file).read_text())
    return out


def test_a_frozen_train_run_loads_the_pretrained_encoder_once(make_cfg, labelled, small_encoder, loads):
    overrides = [*FROZEN, f"model.name_or_path={small_encoder}", f"paths.labelled={labelled}"]
    result = run_train(make_cfg, overrides)
    assert Path(result["model_dir"]).parent.name == "final"  # refit on all rows, calibrated by inner folds
    assert model_loads(loads, small_encoder) == 1  # the fit, three calibration folds and the refit share it
    assert model_loads(loads) == 2  # + MLflow validating the logged model (its input example)
    assert loads[("tokenizer", str(Path(small_encoder).resolve()))] == 1


def test_frozen_outputs_are_those_of_the_run_that_reads_the_disk(make_cfg, labelled, small_encoder, loads):
    overrides = [*FROZEN, f"model.name_or_path={small_encoder}", f"paths.labelled={labelled}"]
    kept = outputs(run_train(make_cfg, overrides))
    assert model_loads(loads, small_encoder) == 1
    read = outputs(run_train(make_cfg, [*overrides, "train.reuse_models=false"]))
    assert model_loads(loads, small_encoder) == 1 + 5  # fit, 3 folds, refit: the code before this change
    assert "first/head.json" in kept and "served/calibration.json" in kept
    assert kept == read


def test_a_fine_tuned_run_copies_the_weights_it_read_once_and_trains_the_same(make_cfg, labelled, small_encoder,
                                                                              loads):
    """Fine-tuning changes the weights: each fit gets a copy of the one read, with the random state a fresh load
    leaves (its new head is drawn from it), and so trains exactly as before."""
    overrides = [*FINE_TUNED, f"model.name_or_path={small_encoder}", f"paths.labelled={labelled}"]
    kept = outputs(run_train(make_cfg, overrides))
    assert model_loads(loads, small_encoder) == 1
    assert model_loads(loads) == 2  # + MLflow validating the logged model; scoring, calibration from memory
    read = outputs(run_train(make_cfg, [*overrides, "train.reuse_models=false"]))
    assert kept == read


def test_a_model_built_from_scratch_is_scored_and_calibrated_from_memory(make_cfg, labelled, loads):
    overrides = ["model=tiny", "train.epochs=2", f"paths.labelled={labelled}"]
    kept = outputs(run_train(make_cfg, overrides))
    fitted = sum(n for (what, where), n in loads.items() if what == "model" and "base_model" not in where)
    assert fitted == 1  # MLflow validating the logged model (its input example)
    loads.clear()
    read = outputs(run_train(make_cfg, [*overrides, "train.reuse_models=false"]))
    assert sum(n for (what, where), n in loads.items() if what == "model" and "base_model" not in where) > 4
    assert kept == read


def test_a_kind_that_tunes_the_encoder_gets_its_own_copy(make_cfg, labelled, small_encoder, loads):
    """model=contrastive tunes the encoder it gets from the frozen kind's code: with the shared copy, each later
    fit of the run (calibration folds, refit) would start from the weights the previous one tuned."""
    overrides = ["model=contrastive", f"model.name_or_path={small_encoder}", f"paths.labelled={labelled}",
                 "model.text_prefix=''", "train.contrastive.pairs_per_sentence=2"]
    kept = outputs(run_train(make_cfg, overrides))
    assert model_loads(loads, small_encoder) == 1
    read = outputs(run_train(make_cfg, [*overrides, "train.reuse_models=false"]))
    assert "served/head.json" in kept
    assert kept == read
