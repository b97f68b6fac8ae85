"""How many sentences should an analyst label? A learning-curve simulation.

    .venv/bin/python bench/learning_curve.py --encoder ~/models/multilingual-e5-small \\
        --arsarcasm ../shared/data/arsarcasm_v2/training_data.csv --out outputs/learning_curve
    .venv/bin/python bench/learning_curve.py --model tfidf --repeats 3    # no encoder, no external data: seeds only

From `--k` gold sentences an analyst labels `--batch` more at a time, picked by each `labeling.uncertainty` order
(the pipeline's own `labelstudio.uncertainty`, most uncertain first) or at random; the model is refitted and scored
after every batch. seeds: leave-one-article-out (the pool: the training articles' gold; macro-F1 pooled over the
held-out articles). ArSarcasm-v2 (`--arsarcasm`, ../shared; tweets, not news): `--arsarcasm-rows` sampled tweets from
each CSV, labels mapped as `data=arsarcasm` maps them. `--model frozen`: embeddings computed once by the frozen kind's
feature code (pipeline/models/frozen.py), its head (`head.fit_logistic`) refitted per step; `--model tfidf`: the
TF-IDF kind. A repeat redraws the first k (shared by every order) and the random order; bands: 2.5–97.5 percentile
of the repeats. Writes learning_curve.csv, learning_curve_summary.csv, learning_curve_gain.csv (order minus random,
same repeat) and learning_curve.png under --out. Results and reading: docs/train.md "How many sentences should I label?".
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pipeline import LABELS  # noqa: E402
from pipeline.core.errors import PipelineError  # noqa: E402
from pipeline.labeling.labelstudio import UNCERTAINTY_METHODS, uncertainty  # noqa: E402
from pipeline.models.metrics import macro_f1  # noqa: E402

log = logging.getLogger("learning_curve")

ORDERS = ("random", *UNCERTAINTY_METHODS)
MAX_DRAWS = 100          # draws of the first k sentences until they hold at least two classes
INTERVAL = (2.5, 97.5)   # percentiles of the repeats: the 95 % band
POOL = "all pool"        # the order name of the reference point: every pool sentence labelled


@dataclass
class Task:
    """One simulated labelling: the rows an analyst may label (pool) and the rows that score it (test)."""
    name: str
    pool: np.ndarray
    test: np.ndarray


@dataclass
class Step:
    labels: int               # sentences labelled so far
    labelled: np.ndarray      # those rows, in the order they were labelled
    predicted: np.ndarray     # the refitted model's label for each test row


class Learner(Protocol):
    def fit(self, rows: np.ndarray): ...
    def proba(self, model, rows: np.ndarray) -> np.ndarray: ...


class HeadLearner:
    """`model=frozen`: the kind's logistic-regression head on features computed once (as `frozen.fit` fits
    it), probabilities through the served `LinearHead`."""

    def __init__(self, features: np.ndarray, labels: np.ndarray, settings: dict, *, pooling: str, normalize: bool):
        self.features, self.labels, self.settings = features, labels, settings
        self.pooling, self.normalize = pooling, normalize

    def fit(self, rows: np.ndarray):
        from pipeline.models.encoder import LinearHead
        from pipeline.models.head import fit_logistic

        weight, bias = fit_logistic(self.features[rows], self.labels[rows].tolist(), LABELS, **self.settings)
        return LinearHead(weight, bias, pooling=self.pooling, normalize=self.normalize)

    def proba(self, model, rows: np.ndarray) -> np.ndarray:
        from pipeline.models.calibration import softmax

        return softmax(model.logits(self.features[rows]))


class TfidfLearner:
    """`model=tfidf`: the TF-IDF + LR kind on the (already preprocessed) texts."""

    def __init__(self, texts: np.ndarray, labels: np.ndarray, params, seed: int):
        self.texts, self.labels, self.params, self.seed = texts, labels, params, seed

    def fit(self, rows: np.ndarray):
        from pipeline.models.tfidf import fit_tfidf

        return fit_tfidf(self.texts[rows].tolist(), self.labels[rows].tolist(), self.params, self.seed)

    def proba(self, model, rows: np.ndarray) -> np.ndarray:
        from pipeline.models.tfidf import tfidf_proba

        return tfidf_proba(model, self.texts[rows].tolist())


# ------------------------------------------------------------------------------------------ the simulation

def loao_tasks(groups: Sequence[str]) -> list[Task]:
    """One task per group (article): the pool is every other group's rows, the test that group's rows."""
    groups = np.asarray(groups)
    rows = np.arange(len(groups))
    return [Task(str(g), rows[groups != g], rows[groups == g]) for g in sorted(set(groups.tolist()))]


def first_labels(pool: np.ndarray, labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """The analyst's first `k` labels: random pool rows, redrawn until they hold two classes (a head needs two)."""
    if k > len(pool):
        raise PipelineError(f"--k {k}: the pool has only {len(pool)} sentences; choose a smaller --k")
    for _ in range(MAX_DRAWS):
        picked = rng.choice(pool, size=k, replace=False)
        if len(set(labels[picked].tolist())) >= 2:
            return picked
    raise PipelineError(f"--k {k}: {MAX_DRAWS} random draws of {k} sentences never held two classes; raise --k")


def simulate(learner: Learner, labels: np.ndarray, task: Task, order: str, *, k: int, batch: int,
             max_labels: int, seed: Sequence[int]) -> list[Step]:
    """Label k, fit, score; then label `batch` more (chosen by `order`), refit, score; until `max_labels` or the
    pool cannot give a whole batch. The first k depend on `seed` only, so every order starts alike."""
    if order not in ORDERS:
        raise PipelineError(f"order {order!r}: choose from {', '.join(ORDERS)}")
    if batch < 1:
        raise PipelineError(f"--batch {batch}: label at least one sentence per step")
    labelled = first_labels(task.pool, labels, k, np.random.default_rng(list(seed)))
    pick_rng = np.random.default_rng([*seed, 1])
    remaining = np.setdiff1d(task.pool, labelled)
    steps = []
    while True:
        model = learner.fit(labelled)
        predicted = np.asarray(LABELS)[learner.proba(model, task.test).argmax(axis=1)]
        steps.append(Step(len(labelled), labelled.copy(), predicted))
        if len(labelled) + batch > max_labels or len(remaining) < batch:
            return steps
        if order == "random":
            pick = pick_rng.choice(remaining, size=batch, replace=False)
        else:  # most uncertain first, as `label --export` orders the tasks (ties: pool order)
            scores = uncertainty(learner.proba(model, remaining), order)
            pick = remaining[np.argsort(-scores, kind="stable")[:batch]]
        labelled = np.concatenate([labelled, pick])
        remaining = np.setdiff1d(remaining, pick)


def curve(learner: Learner, labels: np.ndarray, tasks: list[Task], *, orders: Sequence[str], repeats: int, k: int,
          batch: int, max_labels: int | None, seed: int) -> pd.DataFrame:
    """order, repeat, labels, macro_f1: at each label count, macro-F1 over every task's test rows pooled (LOAO: the
    out-of-fold predictions of all folds), plus the `POOL` reference: every pool row labelled (one fit, no repeat).
    The budget is capped by the smallest pool, so every task reaches every label count."""
    cap = min(len(t.pool) for t in tasks)
    cap = cap if max_labels is None else min(cap, int(max_labels))
    truth = np.concatenate([labels[t.test] for t in tasks])
    rows = []
    for repeat in range(repeats):
        for order in orders:
            runs = [simulate(learner, labels, t, order, k=k, batch=batch, max_labels=cap, seed=(seed, repeat, n))
                    for n, t in enumerate(tasks)]
            for steps in zip(*runs):
                counts = {s.labels for s in steps}
                assert len(counts) == 1, f"tasks disagree on the label count: {counts}"
                predicted = np.concatenate([s.predicted for s in steps])
                rows.append({"order": order, "repeat": repeat, "labels": steps[0].labels,
                             "macro_f1": macro_f1(truth, predicted)})
    pooled = np.concatenate([np.asarray(LABELS)[learner.proba(learner.fit(t.pool), t.test).argmax(axis=1)]
                             for t in tasks])
    rows.append({"order": POOL, "repeat": 0, "labels": int(round(np.mean([len(t.pool) for t in tasks]))),
                 "macro_f1": macro_f1(truth, pooled)})
    return pd.DataFrame(rows)


def summarise(points: pd.DataFrame) -> pd.DataFrame:
    """Mean and the 95 % percentile interval of the repeats per dataset, order and label count, and the share of
    repeats above zero (meaningful for `gains`)."""
    grouped = points.groupby(["dataset", "order", "labels"], sort=False)["macro_f1"]
    return grouped.agg(mean="mean", low=lambda v: np.percentile(v, INTERVAL[0]),
                       high=lambda v: np.percentile(v, INTERVAL[1]), repeats="count",
                       above_zero=lambda v: float((v > 0).mean())).reset_index()


def gains(points: pd.DataFrame) -> pd.DataFrame:
    """Each uncertainty order's macro-F1 minus random's on the same repeat, summarised, after the first k (where
    every order has the same labels, so the gain is 0 by construction)."""
    walked = points[~points["order"].isin([POOL, "random"])]
    walked = walked[walked["labels"] > walked.groupby("dataset")["labels"].transform("min")]
    walked = walked.set_index(["dataset", "labels", "repeat"])
    random = points[points["order"] == "random"].set_index(["dataset", "labels", "repeat"])["macro_f1"]
    if walked.empty or random.empty:
        return summarise(points.iloc[:0])
    diff = walked.assign(macro_f1=walked["macro_f1"] - random.reindex(walked.index).to_numpy())
    return summarise(diff.reset_index())


# ------------------------------------------------------------------------------------------ data and model

def seed_data(cfg) -> tuple[pd.DataFrame, list[Task]]:
    from pipeline.labeling.gold import load_gold

    gold = load_gold(Path(str(cfg.paths.gold))).reset_index(drop=True)
    return gold[["text", "label"]].assign(group=gold["article_id"].astype(str)), loao_tasks(gold["article_id"])


def arsarcasm_data(train_csv: Path, test_csv: Path, rows: int, seed: int) -> tuple[pd.DataFrame, list[Task]]:
    """The pool and test samples, labels mapped by `data=arsarcasm` (its label_map), sampled by `data.max_rows`."""
    from pipeline.core.config import compose_config
    from pipeline.labeling.splits import load_labelled

    cfg = compose_config("train", ["data=arsarcasm", f"data.path={train_csv}", f"data.test_path={test_csv}",
                                   f"data.max_rows={rows}", f"seed={seed}"])
    data = load_labelled(cfg)
    frame = pd.concat([data.frame, data.test_frame], ignore_index=True)[["text", "label"]]
    pool, test = np.arange(len(data.frame)), np.arange(len(data.frame), len(frame))
    return frame.assign(group="arsarcasm"), [Task("arsarcasm", pool, test)]


def learners(cfg, model: str, frames: dict[str, pd.DataFrame], work: Path, batch_size: int) -> dict[str, Learner]:
    """One learner per dataset; the frozen encoder's embeddings are computed here, once per sentence."""
    from pipeline.text.preprocess import TextPreprocessor

    preprocess = TextPreprocessor.from_cfg(cfg)
    out = {}
    if model == "tfidf":
        for name, frame in frames.items():
            texts = np.asarray(preprocess(frame["text"]), dtype=object)
            out[name] = TfidfLearner(texts, frame["label"].to_numpy(), cfg.model.tfidf, int(cfg.seed))
        return out
    from pipeline.models.head import head_settings
    from pipeline.models.frozen import frozen_encoder, sentence_features

    first = next(iter(frames.values()))
    predictor, pooling, normalize, _ = frozen_encoder(cfg, first["text"], work, work / "encoder", preprocess)
    for name, frame in frames.items():
        started = time.perf_counter()
        features = sentence_features(predictor, frame["text"].tolist(), batch_size=batch_size, normalize=normalize)
        log.info("%s: %d sentences embedded in %.0f s", name, len(frame), time.perf_counter() - started)
        out[name] = HeadLearner(features, frame["label"].to_numpy(), head_settings(cfg),
                                pooling=pooling, normalize=normalize)
    return out


# ------------------------------------------------------------------------------------------ outputs

TITLES = {"seeds": "seeds: leave-one-article-out, 5 news articles, {test} gold sentences\n"
                   "(macro-F1 pooled over the 5 held-out articles)",
          "arsarcasm": "ArSarcasm-v2 sentiment (tweets, not news)\n"
                       "(pool: {pool} sampled tweets; macro-F1 on {test} sampled test tweets)"}


def plot(summary: pd.DataFrame, path: Path, *, model: str, repeats: int, sizes: dict[str, dict[str, int]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.core.io import atomic_path

    datasets = list(dict.fromkeys(summary["dataset"]))
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.6 * len(datasets), 4.2), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        rows = summary[summary["dataset"] == dataset]
        for order in ORDERS:
            line = rows[rows["order"] == order]
            if line.empty:
                continue
            drawn = ax.plot(line["labels"], line["mean"], marker="o", markersize=3, label=order)[0]
            ax.fill_between(line["labels"], line["low"], line["high"], color=drawn.get_color(), alpha=0.15)
        ref = rows[rows["order"] == POOL]
        if not ref.empty:
            ax.axhline(float(ref["mean"].iloc[0]), color="grey", linestyle="--", linewidth=1,
                       label=f"all {int(ref['labels'].iloc[0])} pool sentences labelled")
        ax.set_title(TITLES.get(dataset, dataset).format(**sizes[dataset]), fontsize=9)
        ax.set_xlabel("sentences labelled")
        ax.set_ylabel("macro-F1")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"model={model}; line: mean, band: 95 % interval over {repeats} repeats (first labels and random "
                 "order redrawn)", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def table(summary: pd.DataFrame, what: str, *, gain: bool = False) -> str:
    """Per dataset: one row per label count, one column per order: `mean (low–high)`; a gain also gives the share
    of repeats where the order beat random."""
    parts = []
    for dataset, rows in summary.groupby("dataset", sort=False):
        walked = rows[rows["order"] != POOL]
        cells = [f"{m:+.3f} ({lo:+.2f}..{hi:+.2f}) {share:4.0%}" if gain else f"{m:.3f} ({lo:.2f}–{hi:.2f})"
                 for m, lo, hi, share in zip(walked["mean"], walked["low"], walked["high"], walked["above_zero"])]
        wide = walked.assign(cell=cells).pivot(index="labels", columns="order", values="cell")
        ref = rows[rows["order"] == POOL]
        parts.append(f"{dataset}: {what}\n{wide[[o for o in ORDERS if o in wide.columns]].to_string()}"
                     + (f"\nall {int(ref['labels'].iloc[0])} pool sentences labelled: {float(ref['mean'].iloc[0]):.3f}"
                        if not ref.empty else ""))
    return "\n\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("frozen", "tfidf"), default="frozen")
    parser.add_argument("--encoder", type=Path, help="model dir of the frozen encoder (--model frozen), e.g. the "
                        "pretrained stand-in ~/models/multilingual-e5-small")
    parser.add_argument("--arsarcasm", type=Path, help="ArSarcasm-v2 training_data.csv (the pool); none: seeds only")
    parser.add_argument("--arsarcasm-test", type=Path, help="its test CSV (default: testing_data.csv beside it)")
    parser.add_argument("--arsarcasm-rows", type=int, default=2000, help="tweets sampled from each CSV")
    parser.add_argument("--k", type=int, default=10, help="gold sentences to start from")
    parser.add_argument("--batch", type=int, default=5, help="sentences labelled per step on the seeds")
    parser.add_argument("--arsarcasm-batch", type=int, default=40, help="sentences labelled per step on ArSarcasm")
    parser.add_argument("--arsarcasm-max-labels", type=int, default=490, help="labels at most on ArSarcasm")
    parser.add_argument("--orders", default=",".join(ORDERS), help=f"comma-separated, of {', '.join(ORDERS)}")
    parser.add_argument("--repeats", type=int, default=20, help="simulations per order (first labels redrawn)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the embeddings")
    parser.add_argument("--batch-size", type=int, default=32, help="sentences per encoder forward pass")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "learning_curve")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def run(args) -> int:
    from pipeline.core.config import compose_config
    from pipeline.core.io import CsvStyle, write_table_atomic

    orders = [o.strip() for o in args.orders.split(",") if o.strip()]
    unknown = sorted(set(orders) - set(ORDERS))
    if unknown or not orders:
        raise PipelineError(f"--orders {args.orders!r}: choose from {', '.join(ORDERS)}")
    if args.repeats < 1:
        raise PipelineError(f"--repeats {args.repeats}: at least one")
    overrides = [f"model={args.model}", f"seed={args.seed}"]
    if args.model == "frozen":
        if args.encoder is None or not (args.encoder.expanduser() / "config.json").exists():
            where = f"--encoder {args.encoder}: not a model directory (no config.json)" if args.encoder else \
                "--model frozen needs --encoder DIR"
            raise PipelineError(f"{where}; build the pretrained stand-in with ../shared/tools/pretrained-standin/"
                                "get.sh ~/models/multilingual-e5-small .venv/bin/python, or use --model tfidf")
        overrides.append(f"model.name_or_path={args.encoder.expanduser().resolve()}")
    sources = {}
    if args.arsarcasm:
        train_csv = args.arsarcasm.expanduser().resolve()
        test_csv = (args.arsarcasm_test or train_csv.with_name("testing_data.csv")).expanduser().resolve()
        for path in (train_csv, test_csv):
            if not path.exists():
                raise PipelineError(f"{path}: not found; --arsarcasm takes ArSarcasm-v2's training_data.csv "
                                    "(../shared/data/arsarcasm_v2), --arsarcasm-test its testing_data.csv")
        sources["arsarcasm"] = (train_csv, test_csv)
    out = args.out.expanduser().resolve()
    os.chdir(REPO)  # conf/ and labels/gold.csv are the repository's
    import torch

    torch.set_num_threads(max(1, args.threads))
    cfg = compose_config("train", overrides)
    frames, tasks = {}, {}
    frames["seeds"], tasks["seeds"] = seed_data(cfg)
    if "arsarcasm" in sources:
        frames["arsarcasm"], tasks["arsarcasm"] = arsarcasm_data(*sources["arsarcasm"], args.arsarcasm_rows, args.seed)
    settings = {"seeds": (args.batch, None), "arsarcasm": (args.arsarcasm_batch, args.arsarcasm_max_labels)}
    points = []
    with tempfile.TemporaryDirectory() as tmp:
        fitted = learners(cfg, args.model, frames, Path(tmp), args.batch_size)
        for name, learner in fitted.items():
            started = time.perf_counter()
            batch, max_labels = settings[name]
            result = curve(learner, frames[name]["label"].to_numpy(), tasks[name], orders=orders,
                           repeats=args.repeats, k=args.k, batch=batch, max_labels=max_labels, seed=args.seed)
            points.append(result.assign(dataset=name, model=args.model))
            log.info("%s: %d curve points in %.0f s", name, len(result), time.perf_counter() - started)
    points = pd.concat(points, ignore_index=True)[["dataset", "model", "order", "repeat", "labels", "macro_f1"]]
    summary, gain = summarise(points), gains(points)
    style = CsvStyle.from_cfg(cfg)
    write_table_atomic(points, out / "learning_curve.csv", csv=style)
    write_table_atomic(summary.drop(columns="above_zero"), out / "learning_curve_summary.csv", csv=style)
    write_table_atomic(gain, out / "learning_curve_gain.csv", csv=style)
    sizes = {name: {"test": sum(len(t.test) for t in ts), "pool": max(len(t.pool) for t in ts)}
             for name, ts in tasks.items()}
    png = plot(summary, out / "learning_curve.png", model=args.model, repeats=args.repeats, sizes=sizes)
    print(table(summary, "macro-F1 mean (95 % interval over repeats) by sentences labelled"))
    if not gain.empty:
        print("\n" + table(gain, "gain over random order on the same repeat (same first labels): mean (95 % "
                            "interval), share of repeats above random", gain=True))
    if "arsarcasm" not in sources:
        print("\n(ArSarcasm skipped: give --arsarcasm ../shared/data/arsarcasm_v2/training_data.csv)")
    print(f"\nlearning curve: {out / 'learning_curve.csv'}, {out / 'learning_curve_summary.csv'}, "
          f"{out / 'learning_curve_gain.csv'}, {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
