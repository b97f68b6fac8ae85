"""Sentence context (`model.context`, issue 22 item 3): the previous and/or the article's first sentence beside
each sentence, built by one function (pipeline.text.context) at train, evaluate and predict time alike, recorded in
the model dir (preprocess.json) and applied from there by predict, the pyfunc model and a hybrid's inner model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import LABELS
from pipeline.core.errors import PipelineError
from pipeline.text.context import CONTEXT_COLUMN, article_contexts, context_column, table_contexts
from pipeline.text.preprocess import PREPROCESS_FILE, TextPreprocessor
from test_inference import make_stance_model
from test_train_data import make_labelled

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "golden" / "seed_sentences.jsonl"


def golden_article() -> pd.DataFrame:
    rows = pd.read_json(GOLDEN, lines=True, dtype={"article_id": str})
    first = rows["article_id"].iloc[0]
    return rows[rows["article_id"] == first].sort_values("idx").reset_index(drop=True)


# ------------------------------------------------------------------------------------------ building contexts

def test_contexts_of_a_known_article():
    """Golden: what each mode puts beside each sentence of a four-sentence article."""
    texts = ["s0", "s1", "s2", "s3"]
    assert article_contexts(texts, "none") == ["", "", "", ""]
    assert article_contexts(texts, "previous") == ["", "s0", "s1", "s2"]
    assert article_contexts(texts, "first") == ["", "s0", "s0", "s0"]
    assert article_contexts(texts, "previous+first") == ["", "s0", "s0 s1", "s0 s2"]
    # a later piece of the same article gives the same contexts as the whole article
    for mode in ("previous", "first", "previous+first"):
        whole = article_contexts(texts, mode)
        for cut in (1, 2, 3):
            assert article_contexts(texts[cut:], mode, offset=cut, first="s0", previous=texts[cut - 1]) == whole[cut:]


def test_table_contexts_follow_each_articles_idx_order_on_the_seed_article():
    """The seed corpus's first article (tests/golden): shuffled and interleaved with another article, each row still
    gets the sentence before it in its own article and that article's first sentence."""
    article = golden_article()
    other = pd.DataFrame({"article_id": "other", "idx": [0, 1], "text": ["أ", "ب"]})
    table = pd.concat([article[["article_id", "idx", "text"]], other]).sample(frac=1.0, random_state=0)
    table = table.reset_index(drop=True)
    previous = dict(zip(zip(article["article_id"], article["idx"]), [""] + article["text"].tolist()[:-1]))
    previous.update({("other", 0): "", ("other", 1): "أ"})
    got = table_contexts(table, "previous")
    assert got == [previous[(a, i)] for a, i in zip(table["article_id"], table["idx"])]
    first = table_contexts(table, "first")
    assert first == ["" if i == 0 else (article["text"].iloc[0] if a != "other" else "أ")
                     for a, i in zip(table["article_id"], table["idx"])]


def test_the_model_input_preprocesses_the_context_like_the_sentence_and_none_is_todays_input():
    e5 = TextPreprocessor(None, "query: ", "previous")
    assert e5.inputs(["a", "b"], ["", "a"], "</s>") == ["query: a", "query: b </s> query: a"]
    arabert = TextPreprocessor("bert-base-arabertv02", context="previous")
    raw = ["قَالَ الوزير", "وأضاف الوزير"]
    assert arabert.inputs(raw[1:], raw[:1], "[SEP]") == [f"{arabert(raw[1:])[0]} [SEP] {arabert(raw[:1])[0]}"]
    # Default none: the inputs of today, whatever contexts are given; the model dir's preprocess.json unchanged.
    plain = TextPreprocessor("bert-base-arabertv02")
    assert plain.inputs(raw, raw, "[SEP]") == plain(raw) == TextPreprocessor("bert-base-arabertv02")(raw)
    assert plain.to_dict() == {"arabert_model": "bert-base-arabertv02"}
    assert e5.to_dict()["context"] == "previous"


def test_a_bad_mode_and_tfidf_with_context_are_refused_in_one_line(make_cfg):
    from pipeline.training.fitting import preflight

    with pytest.raises(PipelineError, match=r"model.context='next': choose one of none, previous"):
        preflight(make_cfg("train", "model=tiny", "model.context=next"))
    with pytest.raises(PipelineError, match="tfidf kind reads the sentence alone"):
        preflight(make_cfg("train", "model=tfidf", "model.context=previous"))
    preflight(make_cfg("train", "model=tfidf"))


# ------------------------------------------------------------------------------------------ train → predict

@pytest.fixture(scope="module")
def fitted(tmp_path_factory, small_encoder):
    """Frozen-encoder models fitted on the same labelled seeds without and with context (and a hybrid)."""
    from pipeline.core.config import compose_config
    from pipeline.labeling.splits import holdout_split, load_labelled
    from pipeline.training.fitting import fit_model

    root = tmp_path_factory.mktemp("context")

    def cfg_for(name, *overrides):
        return compose_config("train", [f"paths.work_dir={root}/work", f"paths.output_root={root}/outputs",
                                        f"paths.run_dir={root}/runs/{name}", f"paths.labelled={labelled}",
                                        "model=frozen", f"model.name_or_path={small_encoder}", *overrides])

    labelled = make_labelled(lambda stage, *o: compose_config(stage, [f"paths.work_dir={root}/work",
                                                                      f"paths.output_root={root}/outputs",
                                                                      f"paths.run_dir={root}/runs/{stage}", *o]),
                             root / "labelled.parquet", separable=True)
    out = {}
    for name, overrides in (("none", []), ("previous", ["model.context=previous"]),
                            ("hybrid", ["model.context=previous", "train.hybrid.enabled=true"])):
        cfg = cfg_for(name, *overrides)
        data = load_labelled(cfg)
        out[name] = fit_model(cfg, holdout_split(data, cfg), root / name)
        out[f"{name}-data"] = data
    out["labelled"] = labelled
    return out


def test_train_records_the_context_and_every_loader_applies_it(fitted):
    from pipeline.models.base import load_predictor
    from pipeline.models.hybrid import INNER_DIR

    assert "context" not in json.loads((fitted["none"] / PREPROCESS_FILE).read_text())
    assert json.loads((fitted["previous"] / PREPROCESS_FILE).read_text())["context"] == "previous"
    assert json.loads((fitted["hybrid"] / INNER_DIR / PREPROCESS_FILE).read_text())["context"] == "previous"
    assert load_predictor(fitted["previous"]).context == "previous"
    assert load_predictor(fitted["hybrid"]).context == "previous"
    # the labelled rows carry each sentence's context in every mode, from its whole article, labelled or not
    labelled = pd.read_parquet(fitted["labelled"])
    for mode in ("previous", "first", "previous+first"):
        assert fitted["none-data"].frame[context_column(mode)].tolist() == table_contexts(labelled, mode)


def test_predictions_change_when_the_model_reads_context(fitted):
    from pipeline.models.base import load_predictor

    article = golden_article()
    texts, contexts = article["text"].tolist(), table_contexts(article, "previous")
    with_context = load_predictor(fitted["previous"])
    p_ctx = with_context.predict_proba(texts, context=contexts)
    p_alone = with_context.predict_proba(texts, context=[""] * len(texts))
    assert np.allclose(p_ctx[0], p_alone[0])                       # the first sentence has no previous one
    assert not np.allclose(p_ctx[1:], p_alone[1:])                 # the others read it
    # a model without context ignores any context it is given: its inputs are today's
    plain = load_predictor(fitted["none"])
    assert np.array_equal(plain.predict_proba(texts, context=contexts), plain.predict_proba(texts))


def test_a_cut_context_is_not_a_truncated_sentence(fitted):
    from pipeline.models.base import load_predictor

    predictor = load_predictor(fitted["previous"])
    long = " ".join(["اتفاق مثمر وبناء"] * 200)
    out = predictor.predict(["اتفاق مثمر", long], context=[long, ""])
    assert out["truncated"].tolist() == [False, True]
    # the separator in the joined text is the tokenizer's own special token: [CLS] sentence [SEP] context [SEP]
    ids = predictor.tokenizer(predictor.preprocessor.inputs(["روسيا"], ["الناتو"], predictor.context_separator))
    assert ids["input_ids"][0].count(predictor.tokenizer.sep_token_id) == 2


def test_the_pyfunc_model_builds_the_context_from_its_input_order(fitted):
    from pipeline.models.base import load_predictor
    from pipeline.models.store import contexts_from_model_input

    article = golden_article()
    texts = article["text"].tolist()
    expected = table_contexts(article, "previous")
    assert contexts_from_model_input(pd.DataFrame({"text": texts}), texts, "previous") == expected
    assert contexts_from_model_input(texts, texts, "previous") == expected
    two = pd.DataFrame({"text": texts[:2] + texts[:2], "article_id": ["a", "a", "b", "b"]})
    assert contexts_from_model_input(two, two["text"].tolist(), "previous") == ["", texts[0], "", texts[0]]
    given = pd.DataFrame({"text": texts[:2], CONTEXT_COLUMN: ["x", "y"]})
    assert contexts_from_model_input(given, texts[:2], "previous") == ["x", "y"]
    assert contexts_from_model_input(pd.DataFrame({"text": texts}), texts, "none") is None
    assert load_predictor(fitted["previous"]).context == "previous"


# ------------------------------------------------------------------------------------------ predict's chunks

@pytest.fixture(scope="module")
def context_model(tmp_path_factory) -> Path:
    return make_stance_model(tmp_path_factory.mktemp("ctx") / "model", seed=5,
                             preprocessor=TextPreprocessor(None, context="previous+first"))


def spy_contexts(monkeypatch) -> list[tuple[str, str]]:
    """Every (sentence, context) pair the predictor is given."""
    from pipeline.models.base import StancePredictor

    seen: list[tuple[str, str]] = []
    real = StancePredictor.predict_proba_truncated

    def spy(self, texts, batch_size=64, context=None):
        seen.extend(zip(texts, context if context is not None else [None] * len(texts)))
        return real(self, texts, batch_size, context)

    monkeypatch.setattr(StancePredictor, "predict_proba_truncated", spy)
    return seen


@pytest.mark.parametrize("as_table", [False, True], ids=["text-file", "sentence-table"])
def test_context_is_right_across_predicts_chunk_boundaries(make_cfg, context_model, tmp_path, monkeypatch, as_table):
    """predict.chunk_sentences=2 splits the article over chunks (and a sentence table without article_id is read in
    pieces of 2 rows): every sentence still gets the sentence before it and the article's first."""
    from pipeline.core.io import read_table
    from pipeline.stages.predict import predict

    article = golden_article()
    if as_table:
        source = tmp_path / "sentences.csv"
        pd.DataFrame({"text": article["text"], "sentence_id": article["sentence_id"]}).to_csv(source, index=False)
    else:
        source = REPO / "seeds" / f"{article['article_id'].iloc[0]}.txt"
    seen = spy_contexts(monkeypatch)
    outputs = {}
    for chunk in (2, 1000):
        seen.clear()
        out = tmp_path / f"out-{chunk}.csv"
        predict(make_cfg("predict", f"input={source}", f"output={out}", f"model_uri={context_model}",
                         f"predict.chunk_sentences={chunk}", "predict.plot=false"))
        texts = article["text"].tolist()
        assert [t for t, _ in seen] == texts
        assert [c for _, c in seen] == table_contexts(article, "previous+first")
        outputs[chunk] = read_table(out, restore=True)
    assert outputs[2][[f"p_{x}" for x in LABELS]].equals(outputs[1000][[f"p_{x}" for x in LABELS]])
    assert context_column("previous+first") not in outputs[2].columns     # the context is no output column


def test_a_model_without_context_gets_todays_rows(make_cfg, tmp_path, monkeypatch):
    from pipeline.stages.predict import predict

    model = make_stance_model(tmp_path / "plain")
    seen = spy_contexts(monkeypatch)
    source = next((REPO / "seeds").glob("*.txt"))
    predict(make_cfg("predict", f"input={source}", f"output={tmp_path / 'o.csv'}", f"model_uri={model}",
                     "predict.chunk_sentences=2", "predict.plot=false"))
    assert seen and all(c is None for _, c in seen)


def test_the_logged_pyfunc_model_reads_article_ids_and_gives_the_stages_answer(make_cfg, context_model, tmp_path):
    import mlflow

    from pipeline.core import tracking
    from pipeline.models.base import load_predictor
    from pipeline.models.store import log_stance_model

    cfg = make_cfg("train")
    with tracking.start_run(cfg, "context-pyfunc"):
        info = log_stance_model(context_model)
    article = golden_article()
    texts = article["text"].tolist()[:4]
    frame = pd.DataFrame({"text": texts + texts[:2], "article_id": ["a"] * 4 + ["b"] * 2})
    served = mlflow.pyfunc.load_model(info.model_uri).predict(frame)
    expected = load_predictor(context_model).predict(frame["text"].tolist(),
                                                     context=table_contexts(frame, "previous+first"))
    assert np.allclose(served[[f"p_{x}" for x in LABELS]].to_numpy(),
                       expected[[f"p_{x}" for x in LABELS]].to_numpy())


class _Stop(Exception):
    pass


@pytest.mark.parametrize("mode", ["none", "previous"])
def test_the_trainer_reads_todays_texts_without_context_and_sentence_sep_context_with_it(make_cfg, tmp_path,
                                                                                     monkeypatch, mode):
    from pipeline.labeling.splits import holdout_split, load_labelled
    from pipeline.models import transformer
    from pipeline.training.fitting import fit_model

    """The split is made under model.context=none and fitted under `mode`, as a nested selection over
    model.context fits its candidates: the fit takes its own mode's contexts from the rows."""
    labelled = make_labelled(make_cfg, tmp_path / "work" / "labelled.parquet")
    split_cfg = make_cfg("train", "model=tiny", f"paths.labelled={labelled}")
    split = holdout_split(load_labelled(split_cfg), split_cfg)
    cfg = make_cfg("train", "model=tiny", f"paths.labelled={labelled}", f"model.context={mode}")
    seen = {}

    def capture(cfg, model, tokenizer, train_texts, *args, **kwargs):
        seen["texts"], seen["sep"] = list(train_texts), tokenizer.sep_token
        raise _Stop

    monkeypatch.setattr(transformer, "build_trainer", capture)
    with pytest.raises(_Stop):
        fit_model(cfg, split, tmp_path / "fit")
    today = TextPreprocessor("bert-base-arabertv02")(split.train["text"])
    if mode == "none":
        assert seen["texts"] == today
    else:
        contexts = split.train[context_column(mode)].tolist()
        prep = TextPreprocessor("bert-base-arabertv02")
        assert seen["texts"] == [t if not c else f"{t} {seen['sep']} {prep([c])[0]}" for t, c in zip(today, contexts)]
        assert sum(bool(c) for c in contexts) > len(contexts) / 2
