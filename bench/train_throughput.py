"""Training throughput of the train stage against run_classification.py's padding, side by side.

All setups run the stage's own Trainer (pipeline.models.trainer.build_trainer) on the same model and sentences;
only the padding and batch order differ:
  pad to 128:                     every batch padded to max_length 128, random batches: transformers' examples/
                                  pytorch/text-classification/run_classification.py defaults
  dynamic padding, random order:  each batch padded to its longest sentence (DataCollatorWithPadding), random batches
  dynamic padding, length-grouped: the stage's default (train.group_by_length=true): batches of similar length
The setups are interleaved (A B C A B C …, --repeats rounds) so that load on a shared machine hits them alike;
each round's ratio to "pad to 128" of the same round is reported as median and min–max over the rounds.
Models: a BERT-base-sized model with AraBERT v0.2 base's dimensions (random weights: speed does not depend on
them) and the tiny model. Each trains under the recipe the stage gives it: the BERT-base stand-in as a pretrained
model (conf/train/default.yaml: its word embeddings frozen, `fitting.frozen_parameters`), the tiny model from
scratch (train=scratch: everything trains). Sentences: --data (a CSV/parquet with a text column) or the seed
corpus.

    .venv/bin/python bench/train_throughput.py --data ../shared/data/arsarcasm_v2/training_data.csv
    .venv/bin/python bench/train_throughput.py            # the seed sentences

Prints the median sentences/s per setup and the ratio (median, min–max). Timing starts after the first
optimiser step (warm-up).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from pipeline import LABELS  # noqa: E402

# bert-base-arabertv02's config.json values (vocab, width, depth): the model AraBERT fine-tuning trains.
BERT_BASE = dict(vocab_size=64000, hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072, max_position=512)
TINY = dict(vocab_size=3000, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, max_position=512)


def load_texts(args) -> list[str]:
    if args.data:
        from pipeline.core.io import read_table

        table = read_table(args.data)
        column = args.text_column if args.text_column in table.columns else table.columns[0]
        texts = [str(t) for t in table[column] if str(t).strip()]
    else:
        from pipeline.core.config import compose_config
        from pipeline.text.segmentation import SegmentRules, seed_sentences

        texts = seed_sentences(SegmentRules.from_cfg(compose_config("segment").segment))
    rng = np.random.default_rng(0)
    rng.shuffle(texts)
    return texts[: args.max_sentences]


class StepTimer:
    """Times optimiser steps after the first and records the padded width of every batch."""

    def __init__(self):
        from transformers import TrainerCallback

        timer = self

        class _Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                timer.ends.append(time.perf_counter())

        self.callback = _Callback()
        self.ends: list[float] = []
        self.widths: list[int] = []
        self.rows: list[int] = []

    def wrap(self, collator):
        def collate(features):
            batch = collator(features)
            self.widths.append(int(batch["input_ids"].shape[1]))
            self.rows.append(int(batch["input_ids"].shape[0]))
            return batch

        return collate


def run_setup(model_dir: Path, texts, labels, *, pad_to_max: bool, group: bool, batch_size: int, steps: int,
              out_dir: Path, pretrained: bool) -> dict:
    from pipeline.core.config import compose_config
    from pipeline.models.transformer import frozen_parameters
    from pipeline.models.loading import load_tokenizer_and_model
    from pipeline.models.trainer import build_trainer

    # The stage's recipe for this kind of model: a pretrained one (arabert) or one built from scratch (tiny).
    recipe = ["model=arabert", f"model.name_or_path={model_dir}", "model.preprocess_as=null"] if pretrained else \
        ["model=tiny"]
    cfg = compose_config("train", [
        *recipe, f"train.batch_size={batch_size}", "train.max_length=128",
        f"train.pad_to_max_length={str(pad_to_max).lower()}", f"train.group_by_length={str(group).lower()}",
        "train.lr=1e-5", "train.epochs=1", "train.early_stopping_patience=0", "train.min_steps=0",
    ])
    tokenizer, model = load_tokenizer_and_model(str(model_dir), LABELS)
    for param in frozen_parameters(cfg, model, pooled=False):  # what the train stage keeps fixed
        param.requires_grad = False
    timer = StepTimer()
    trainer = build_trainer(cfg, model, tokenizer, texts, labels, [], [], out_dir, max_steps=steps + 1,
                            callbacks=[timer.callback], save=False)
    trainer.data_collator = timer.wrap(trainer.data_collator)
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for quiet in (ProgressCallback, PrinterCallback):  # progress bars and loss dicts would bury the table
        trainer.remove_callback(quiet)
    trainer.train()
    # ends[0] closes the warm-up step; the next `steps` steps are timed.
    elapsed = timer.ends[-1] - timer.ends[0]
    sentences = sum(timer.rows[1: len(timer.ends)])
    return {"sentences_per_s": sentences / elapsed, "mean_width": float(np.mean(timer.widths[1:len(timer.ends)])),
            "steps": len(timer.ends) - 1}


def random_model_with_tokenizer(tokenizer_dir: str, out: Path, dims: dict) -> Path:
    """A randomly initialised BERT of `dims` that uses a real (e.g. AraBERT) tokenizer: realistic lengths."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=dims["hidden_size"], num_hidden_layers=dims["num_layers"],
                        num_attention_heads=dims["num_heads"], intermediate_size=dims["intermediate_size"],
                        max_position_embeddings=dims["max_position"], num_labels=len(LABELS),
                        id2label=dict(enumerate(LABELS)), label2id={x: i for i, x in enumerate(LABELS)})
    tokenizer.save_pretrained(out)
    BertForSequenceClassification(config).save_pretrained(out)
    return out


SETUPS = (  # name, pad to max_length, group by length
    ("pad to 128 (run_classification)", True, False),
    ("dynamic padding, random order", False, False),
    ("dynamic padding, length-grouped", False, True),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="CSV/parquet with sentences (default: the seed corpus)")
    parser.add_argument("--text-column", default="tweet")
    parser.add_argument("--models", default="bert-base,tiny")
    parser.add_argument("--batch-size", type=int, default=16, help="the stage's default train.batch_size")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per setup and round (BERT-base); tiny runs 5x more")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds of all setups")
    parser.add_argument("--max-sentences", type=int, default=2000)
    parser.add_argument("--tokenizer", help="a local tokenizer dir (e.g. a downloaded AraBERT) for the BERT-base model; "
                        "default: a word-level vocabulary built from the data, which gives shorter sequences")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()

    import logging

    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars per setup would bury the table
    logging.getLogger("pipeline").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    from pipeline.text.preprocess import TextPreprocessor
    from pipeline.models.tiny import build_tiny_bert

    default_threads = torch.get_num_threads()
    texts = TextPreprocessor("bert-base-arabertv02")(load_texts(args))
    labels = [LABELS[i % 3] for i in range(len(texts))]
    print(f"data: {args.data or 'seed corpus'}: {len(texts)} sentences; batch {args.batch_size}; "
          f"{args.repeats} interleaved rounds; torch threads {args.threads or default_threads} "
          f"(tiny: {args.threads or 1}); device {'cuda' if torch.cuda.is_available() else 'cpu'}")
    print(f"{'model':<10} {'setup':<34} {'tokens/row':>10} {'sentences/s':>12} {'ratio (median)':>15} {'min–max':>13}",
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            dims = BERT_BASE if name == "bert-base" else TINY
            steps = args.steps if name == "bert-base" else args.steps * 5
            # A tiny model gains nothing from a second thread and suffers badly when the cores are shared.
            torch.set_num_threads(args.threads or (1 if name == "tiny" else default_threads))
            if name == "bert-base" and args.tokenizer:
                model_dir = random_model_with_tokenizer(args.tokenizer, Path(tmp) / name, dims)
            else:
                model_dir = build_tiny_bert(texts, Path(tmp) / name, LABELS, **dims)
            rounds: list[dict[str, dict]] = []
            for _ in range(max(1, args.repeats)):
                rounds.append({setup: run_setup(model_dir, texts, labels, pad_to_max=pad, group=group,
                                                batch_size=args.batch_size, steps=steps, out_dir=Path(tmp) / "out",
                                                pretrained=name == "bert-base")
                               for setup, pad, group in SETUPS})
            base = SETUPS[0][0]
            for setup, _, _ in SETUPS:
                speeds = np.array([r[setup]["sentences_per_s"] for r in rounds])
                ratios = np.array([r[setup]["sentences_per_s"] / r[base]["sentences_per_s"] for r in rounds])
                width = np.mean([r[setup]["mean_width"] for r in rounds])
                print(f"{name:<10} {setup:<34} {width:>10.1f} {np.median(speeds):>12.1f} "
                      f"{np.median(ratios):>14.2f}x {ratios.min():>6.2f}–{ratios.max():.2f}x", flush=True)


if __name__ == "__main__":
    main()
