"""int8 and bf16 against fp32 on a trained stance model: label agreement and the speed-up, side by side in one run.

    .venv/bin/python bench/precision_agreement.py --model outputs/train/<run>/model \
        [--data ../shared/data/arsarcasm_v2/testing_data.csv --column tweet --n 500] [--rounds 5]

`--model` is a stance model directory written by `pipeline train` (transformer or encoder kind), e.g. the
pretrained stand-in fine-tuned with `train model=e5-small`: agreement measured on random or from-scratch weights
says little about a model whose probabilities are decisions. Sentences: the seed sentences the model never trained
on (those of the test articles in its `split.json`: the first fit, `<run>/model`; a refit `<run>/final/model` has
trained on every seed sentence and is refused, agreement on its own training sentences flatters int8), plus, with
--data, up to --n other Arabic sentences (from row --offset). A model trained on a table (`data=arsarcasm`) has no
seed sentences to hold out: give its test file (data.test_path) as --data.

Rows, each the stage's own code (`pipeline.models.base.load_predictor`; the int8 rows with --int8-backend):
  int8               predict.quantize=int8: dynamic int8 Linear layers but those pipeline.models.int8 keeps in
                     fp32, inputs smoothed; no re-check
  int8_recheck       the same with predict.recheck_margin (conf default, or --recheck-margin): close calls scored
                     again one precision up, bf16 where bf16 is fast and then fp32 (the re-check ladder), else fp32
  bf16, bf16_recheck predict.quantize=bf16 (the model in bfloat16), without and with the re-check; on a CPU without
                     a bf16 unit (AMX, AVX512-BF16) the predictor runs fp32 and the row says so
  --unsmoothed       the same layers in int8 without input smoothing
  --nearest          the int8 recipe before GPTQ rounding (same backend): each weight rounded to the nearest int8
                     value, inputs smoothed by alpha 0.85 on both paths
  --all-linear       the recipe before issue 21 (every Linear layer, per-tensor weights)
  --weights-only     diagnostic, not timed: the int8 weights with fp32 activations, the ceiling of any int8 scheme
                     with per-channel weights on this model
The rounds are interleaved (fp32, int8, …, fp32, int8, …) and each speed-up is reported per round as median and
min–max. Threads: torch's default (every core), unless OMP_NUM_THREADS says otherwise.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def unseen_seed_sentences(model_dir: str) -> tuple[list[str], list[str]]:
    """(sentences, article ids) of the seed articles the model was tested on, never trained on (its split.json)."""
    from pipeline.training import state as train_state
    from pipeline.core.io import read_text_strict
    from pipeline.text.segmentation import SEEDS_DIR, article_id_for, split_sentences

    record = train_state.read_split(Path(model_dir))
    if record is not None and record.get("by") != "group" and not record.get("seen_all"):
        return [], []  # a model trained on a table: its unseen sentences are the --data file it was tested on
    if record is None or record.get("by") != "group":
        raise SystemExit(f"error: {model_dir}: no split.json naming its test articles: cannot tell which seed "
                         "sentences it trained on; give the first fit of a train run on the seeds, <run dir>/model")
    if record.get("seen_all"):
        raise SystemExit(f"error: {model_dir} was refit on every labelled row (train.refit=all): every seed sentence "
                         "is one of its training sentences; give the same run's first fit, <run dir>/model")
    articles = sorted(set(record.get("test") or []))
    texts = [s.text for path in sorted(SEEDS_DIR.glob("*.txt")) if article_id_for(path) in articles
             for s in split_sentences(read_text_strict(path)).sentences]
    return texts, articles


def sentences(model_dir: str, data: str | None, column: str, n: int,
              offset: int = 0) -> tuple[list[str], int, list[str]]:
    seeds, articles = unseen_seed_sentences(model_dir)
    if not articles and not data:
        raise SystemExit(f"error: {model_dir} was trained on a table, not the seed articles: give --data, a file of "
                         "sentences it never trained on (the table's data.test_path)")
    extra: list[str] = []
    if data:
        from pipeline.core.io import read_table

        frame = read_table(Path(data))
        if column not in frame.columns:
            raise SystemExit(f"error: {data}: no column {column!r}; pass --column")
        extra = frame[column].dropna().astype(str).iloc[offset:offset + n].tolist()
    return seeds + extra, len(seeds), articles


def all_linear_int8(predictor):
    """The int8 recipe before issue 21, for comparison: every Linear layer of the encoder dynamic int8, weights
    with one scale per tensor (the head of an encoder-kind model is numpy, outside the module)."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = getattr(predictor.model, predictor.model.base_model_prefix, None)
        if base is None:
            predictor.model = torch.ao.quantization.quantize_dynamic(predictor.model, {torch.nn.Linear},
                                                                     dtype=torch.qint8)
        else:
            setattr(predictor.model, predictor.model.base_model_prefix,
                    torch.ao.quantization.quantize_dynamic(base, {torch.nn.Linear}, dtype=torch.qint8))
    predictor.forward = predictor.model
    return predictor


def default_recheck_margin() -> dict:
    """predict.recheck_margin of conf/predict: {precision: margin}."""
    from omegaconf import OmegaConf

    from pipeline.models.batching import recheck_option

    return recheck_option(OmegaConf.load(REPO / "conf" / "predict" / "default.yaml").recheck_margin)


def unsmoothed_int8(predictor):
    """The int8 recipe before input smoothing, for comparison: the same layers dynamic int8, inputs as they are."""
    from pipeline.models import int8

    predictor.model = int8.quantize_dynamic(predictor.model, int8.int8_linear_names(predictor.model))
    predictor.forward = predictor.model
    return predictor


ALPHA_BEFORE_GPTQ = 0.85  # both int8 paths' smoothing before GPTQ rounding


def nearest_rounding_int8(model_dir: str, backend: str, recheck_margin=None):
    """The int8 predictor as it was before GPTQ rounding: its weights left as the quantiser rounds them (to the
    nearest int8 value) and its inputs smoothed by ALPHA_BEFORE_GPTQ."""
    from unittest import mock

    from pipeline.models import int8
    from pipeline.models.base import load_predictor

    before = dict.fromkeys(int8.SMOOTHING_ALPHA, ALPHA_BEFORE_GPTQ)
    with mock.patch.object(int8, "regptq_dynamic", lambda *a: None), \
            mock.patch.object(int8, "regptq_graph", lambda *a: None), \
            mock.patch.dict(int8.SMOOTHING_ALPHA, before):
        return load_predictor(model_dir, quantize="int8", backend=backend, recheck_margin=recheck_margin)


def weights_only_int8(predictor):
    """Diagnostic, not a speed path: the Linear weights that predict.quantize=int8 quantises, rounded to their int8
    values (one scale per output channel, as pipeline.models.int8 does), activations left in fp32. What these labels
    lose is lost to the weights' rounding alone, whatever an int8 scheme does with the activations (static ranges,
    SmoothQuant-style scaling): the ceiling of int8 with per-channel weights on this model."""
    import torch

    from pipeline.models.int8 import fp32_linear_names

    keep = set(fp32_linear_names(predictor.model))
    with torch.no_grad():
        for name, module in predictor.model.named_modules():
            if isinstance(module, torch.nn.Linear) and name not in keep:
                scale = module.weight.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127
                module.weight.copy_((module.weight / scale).round().clamp(-127, 127) * scale)
    return predictor


MARGIN_BINS = (0.0, 0.02, 0.05, 0.1, 1.01)  # fp32 top-two probability margins the agreement is broken down by


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="stance model directory (transformer or encoder kind)")
    parser.add_argument("--data", help="CSV/parquet of more Arabic sentences")
    parser.add_argument("--column", default="tweet")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--offset", type=int, default=0, help="skip this many --data rows (another sample)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--all-linear", action="store_true",
                        help="also time the int8 recipe before issue 21 (every Linear layer, per-tensor weights)")
    parser.add_argument("--recheck-margin", type=float, default=None,
                        help="one margin for int8_recheck and bf16_recheck (default: each precision's "
                             "predict.recheck_margin of conf/predict)")
    parser.add_argument("--unsmoothed", action="store_true",
                        help="also time the int8 recipe without input smoothing (the same layers in int8)")
    parser.add_argument("--nearest", action="store_true",
                        help="also time the int8 rows' recipe with weights rounded to the nearest (before GPTQ)")
    parser.add_argument("--int8-backend", default="eager",
                        help="predict.backend of the int8 rows (inductor: torchao's PT2E int8, compiled; its compile "
                             "is the warm-up pass, not timed)")
    parser.add_argument("--weights-only", action="store_true",
                        help="also the diagnostic row: int8-rounded weights with fp32 activations (no timing)")
    args = parser.parse_args()

    import numpy as np

    from pipeline import LABELS
    from pipeline.models.base import load_predictor
    from pipeline.models.batching import top_two_margins

    texts, n_seed, articles = sentences(args.model, args.data, args.column, args.n, args.offset)
    recheck_margin = args.recheck_margin if args.recheck_margin is not None else default_recheck_margin()
    predictors = {"fp32": load_predictor(args.model)}
    for quantize in ("int8", "bf16"):
        backend = args.int8_backend if quantize == "int8" else "eager"
        predictors[quantize] = load_predictor(args.model, quantize=quantize, backend=backend)
        predictors[f"{quantize}_recheck"] = load_predictor(args.model, quantize=quantize, backend=backend,
                                                           recheck_margin=recheck_margin)
    if args.unsmoothed:
        predictors["int8_unsmoothed"] = unsmoothed_int8(load_predictor(args.model))
    if args.nearest:
        predictors["int8_nearest"] = nearest_rounding_int8(args.model, args.int8_backend)
    if args.all_linear:
        predictors["int8_all_linear"] = all_linear_int8(load_predictor(args.model))
    probs = {name: p.predict_proba(texts, batch_size=args.batch_size) for name, p in predictors.items()}  # warm-up
    if args.weights_only:
        probs["int8_weights_only"] = weights_only_int8(load_predictor(args.model)).predict_proba(
            texts, batch_size=args.batch_size)
    seconds: dict[str, list[float]] = {name: [] for name in predictors}
    for _ in range(args.rounds):
        for name, predictor in predictors.items():
            started = time.perf_counter()
            predictor.predict_proba(texts, batch_size=args.batch_size)
            seconds[name].append(time.perf_counter() - started)
    labels = {name: p.argmax(axis=1) for name, p in probs.items()}
    margin = top_two_margins(probs["fp32"])
    seeds = (f"{n_seed} seed news sentences of its test article(s) {', '.join(articles)}" if articles
             else "no seed sentences: a model trained on a table")
    print(f"model {args.model}: {len(texts)} sentences ({seeds}, never trained on; the rest from --data), "
          f"{args.rounds} interleaved rounds; int8 rows with predict.backend={args.int8_backend}")
    print("  fp32 label shares: " + ", ".join(f"{LABELS[i]} {np.mean(labels['fp32'] == i):.2f}"
                                             for i in range(len(LABELS)))
          + f"; fp32 top-two probability margin < 0.02 on {np.mean(margin < 0.02):.1%} of the sentences")
    bins = np.digitize(margin, MARGIN_BINS[1:-1])
    print("  sentences by fp32 margin: " + ", ".join(
        f"[{lo:g}, {min(hi, 1):g}) {np.mean(bins == i):.1%}" for i, (lo, hi) in enumerate(zip(MARGIN_BINS, MARGIN_BINS[1:]))))
    for name in [n for n in probs if n != "fp32"]:
        agree = labels["fp32"] == labels[name]
        seed = f"{agree[:n_seed].mean():.3f}" if n_seed else "-"
        rest = f"{agree[n_seed:].mean():.3f}" if len(texts) > n_seed else "-"
        if name in seconds:
            ratios = [f / i for f, i in zip(seconds["fp32"], seconds[name])]
            speed = f"speed-up {statistics.median(ratios):.2f}x (min {min(ratios):.2f}, max {max(ratios):.2f})"
        else:
            speed = "diagnostic, not timed"
        ran_fp32 = name in predictors and name != "fp32" and not name.startswith("int8_") and \
            getattr(predictors[name], "quantize", None) is None
        note = " (ran fp32: this CPU has no bf16 unit)" if ran_fp32 else ""
        print(f"  {name}: label agreement with fp32 {agree.mean():.3f} overall, {seed} on the seed sentences, "
              f"{rest} on --data; |p - p_fp32| max {np.abs(probs[name] - probs['fp32']).max():.3f}, mean "
              f"{np.abs(probs[name] - probs['fp32']).mean():.4f}; {speed}{note}")
        print("    agreement by fp32 margin: " + ", ".join(
            f"[{lo:g}, {min(hi, 1):g}) {agree[bins == i].mean():.3f}" if np.any(bins == i) else f"[{lo:g}, {min(hi, 1):g}) -"
            for i, (lo, hi) in enumerate(zip(MARGIN_BINS, MARGIN_BINS[1:]))))
    for name in predictors:
        print(f"  {name}: {len(texts) / statistics.median(seconds[name]):.1f} sentences/s (median of rounds)")
    for name in ("int8_recheck", "bf16_recheck"):
        counts = predictors[name].rechecked
        print(f"  {name}: " + "; ".join(
            f"{counts[step.precision] / max(counts['scored'], 1):.1%} of the sentences scored again in "
            f"{step.precision} (their {step.below} top-two margin below {step.margin:g})"
            for step in predictors[name].ladder))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
