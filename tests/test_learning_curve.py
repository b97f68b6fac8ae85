"""bench/learning_curve.py's bookkeeping: TF-IDF on a tiny synthetic labelled frame (no ../shared, no encoder)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline import LABELS
from pipeline.core.errors import PipelineError

BENCH = Path(__file__).resolve().parent.parent / "bench" / "learning_curve.py"
CUES = {"negative": "رفض تصعيد", "neutral": "اجتماع موعد", "positive": "اتفاق تقدم"}
FILLER = ["في", "جنيف", "موسكو", "واشنطن", "اليوم", "الوفد", "المحادثات", "الأمن"]


@pytest.fixture(scope="module")
def lc():
    spec = importlib.util.spec_from_file_location("learning_curve", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def data(lc):
    """Four articles of 15 sentences, five per label, each with its label's cue words among filler."""
    rng = np.random.default_rng(7)
    texts, labels, groups = [], [], []
    for article in range(4):
        for n in range(15):
            label = LABELS[n % 3]
            words = [*CUES[label].split(), *rng.choice(FILLER, size=4).tolist(), f"كلمة{article}{n}"]
            texts.append(" ".join(rng.permutation(words)))
            labels.append(label)
            groups.append(f"a{article}")
    learner = lc.TfidfLearner(np.asarray(texts, dtype=object), np.asarray(labels), {"max_iter": 200}, 0)
    return learner, np.asarray(labels), lc.loao_tasks(groups), np.asarray(groups)


def test_loao_pool_never_holds_the_held_out_article(lc, data):
    _, _, tasks, groups = data
    assert [t.name for t in tasks] == ["a0", "a1", "a2", "a3"]
    for task in tasks:
        assert set(groups[task.test]) == {task.name}
        assert task.name not in set(groups[task.pool])
        assert sorted([*task.pool, *task.test]) == list(range(len(groups)))


@pytest.mark.parametrize("order", ["random", "entropy", "least_confidence", "margin"])
def test_each_step_adds_exactly_one_batch_from_the_pool(lc, data, order):
    learner, labels, tasks, groups = data
    task = tasks[1]
    steps = lc.simulate(learner, labels, task, order, k=6, batch=4, max_labels=30, seed=(0, 0, 1))
    assert [s.labels for s in steps] == [6, 10, 14, 18, 22, 26, 30]
    for before, after in zip(steps, steps[1:]):
        assert len(after.labelled) == len(before.labelled) + 4
        assert list(after.labelled[:len(before.labelled)]) == list(before.labelled)  # labels are never taken back
    for step in steps:
        assert len(set(step.labelled.tolist())) == step.labels == len(step.labelled)
        assert set(step.labelled.tolist()) <= set(task.pool.tolist())
        assert task.name not in set(groups[step.labelled])
        assert len(step.predicted) == len(task.test) and set(step.predicted) <= set(LABELS)


def test_orders_share_the_first_labels_and_pick_differently(lc, data):
    learner, labels, tasks, _ = data
    runs = {order: lc.simulate(learner, labels, tasks[0], order, k=6, batch=5, max_labels=45, seed=(3, 1, 0))
            for order in lc.ORDERS}
    firsts = {tuple(steps[0].labelled) for steps in runs.values()}
    assert len(firsts) == 1
    assert len(set(labels[runs["random"][0].labelled])) >= 2
    assert len({tuple(steps[-1].labelled) for steps in runs.values()}) > 1


def test_the_pool_ends_the_run_before_a_partial_batch(lc, data):
    learner, labels, tasks, _ = data
    steps = lc.simulate(learner, labels, tasks[2], "entropy", k=5, batch=10, max_labels=10_000, seed=(0, 0, 2))
    assert [s.labels for s in steps] == [5, 15, 25, 35, 45]  # a pool of 45 rows


def test_curve_runs_every_order_with_monotone_label_counts(lc, data):
    learner, labels, tasks, _ = data
    points = lc.curve(learner, labels, tasks, orders=lc.ORDERS, repeats=2, k=6, batch=8, max_labels=None, seed=0)
    walked = points[points["order"] != lc.POOL]
    assert set(walked["order"]) == set(lc.ORDERS)
    for (_, _), rows in walked.groupby(["order", "repeat"]):
        assert rows["labels"].tolist() == [6, 14, 22, 30, 38]
    assert walked["macro_f1"].between(0, 1).all()
    reference = points[points["order"] == lc.POOL]
    assert reference["labels"].tolist() == [45] and len(reference) == 1
    summary = lc.summarise(points.assign(dataset="synthetic"))
    assert (summary["low"] <= summary["mean"] + 1e-12).all() and (summary["mean"] <= summary["high"] + 1e-12).all()
    assert set(summary.loc[summary["order"] != lc.POOL, "repeats"]) == {2}


def test_bad_settings_are_one_clear_error(lc, data):
    learner, labels, tasks, _ = data
    with pytest.raises(PipelineError, match="choose from"):
        lc.simulate(learner, labels, tasks[0], "stochastic", k=6, batch=4, max_labels=30, seed=(0,))
    with pytest.raises(PipelineError, match="--k 99"):
        lc.simulate(learner, labels, tasks[0], "random", k=99, batch=4, max_labels=30, seed=(0,))


def test_gains_pair_each_order_with_random_on_the_same_repeat(lc):
    import pandas as pd

    rows = [{"dataset": "d", "order": order, "repeat": repeat, "labels": labels,
             "macro_f1": 0.5 + 0.1 * repeat + (0.05 if order == "entropy" else 0.0)}
            for order in ("random", "entropy") for repeat in range(3) for labels in (10, 20)]
    gain = lc.gains(pd.DataFrame([*rows, {"dataset": "d", "order": lc.POOL, "repeat": 0, "labels": 40,
                                          "macro_f1": 0.9}]))
    assert set(gain["order"]) == {"entropy"} and gain["labels"].tolist() == [20]  # 10: the shared first labels
    assert gain["mean"].round(6).tolist() == [0.05] and gain["low"].round(6).tolist() == [0.05]
    assert gain["above_zero"].tolist() == [1.0] and gain["repeats"].tolist() == [3]
    assert lc.gains(pd.DataFrame(rows[:6])).empty  # random alone: nothing to compare
