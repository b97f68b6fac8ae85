"""Where the fp32 predictor's time goes, against the fp32 FLOP limit: the evidence for docs/predict.md's "fp32
headroom" (issue 21 asks for >= 90 % of the limit).

    .venv/bin/python bench/fp32_headroom.py --data ../shared/data/arsarcasm_v2/testing_data.csv --column tweet

The model and the sentences are bench/predict_speed.py's (the BERT-base shape, random weights; the same 300 tweets),
and so is the limit: the best fp32 matmul probe ÷ (2 × non-embedding parameters × mean real tokens per sentence).
The predictor's rate ÷ that limit is a product of three factors, each measured here on one profiled pass:

  real tokens ÷ padded tokens      what the length-sorted batches pad (the matrix products run on padded rows)
  matrix-product rate ÷ probe      FLOPs of every Linear call (counted by hooks) ÷ the time torch spends in them
                                   (aten::addmm / aten::mm, profiler), ÷ the probe's FLOP/s
  matrix-product share             that time ÷ the pass's whole time (the rest: attention, GELU, LayerNorm, adds,
                                   copies, listed by operator)

Rows timed side by side in interleaved rounds, each ÷ the limit of the probes beside it:
  predictor      the predict stage's predictor (predict.backend=eager)
  compiled       the same predictor with its forward pass compiled by torch.compile (dynamic shapes, inductor with
                 weight freezing): what fusing the elementwise work gives; its warm-up is reported, not timed
  packed         an experiment, not a predict option: the sentences packed into rows of --pack-length tokens
                 (first-fit by decreasing length, --pack-rows rows per batch, the last batch filled with empty rows),
                 each sentence attending to itself only (a block-diagonal mask), positions restarting per sentence,
                 and its [CLS] state read back through the model's pooler and classifier: every batch has one shape
                 and almost no padding. BERT models only (the bench's).
  packed+compiled  the same compiled by torch.compile with static shapes (one shape, so inductor packs every
                 weight for it; the warm-up is reported, not timed)
(--no-compile drops the compiled rows.) It prints ratios of one run; nothing here is a selection.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import predict_speed  # noqa: E402  (sets the repository on sys.path and the offline environment)

warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import torch  # noqa: E402


GEMM_OPS = ("aten::addmm", "aten::mm")  # what a Linear layer runs on the CPU
LISTED_OPS = 6  # other operators listed by their share of the pass
# The packed rows' shape: 128 tokens (the bench model's max_length) x 8 rows = 1,024 rows per matrix product; in a
# scratch sweep on the BERT-base shape (3 Dec) 256 x 4 ran as fast, and 128 x 16 slower on 300 sentences (its last
# batch mostly empty).
PACK_LENGTH, PACK_ROWS = 128, 8


def linear_flops(model, run) -> float:
    """FLOPs of every Linear call while `run()` runs: 2 × rows × in × out, counted by forward hooks."""
    total = [0.0]

    def count(module, args, _output):
        rows = args[0].numel() // args[0].shape[-1]
        total[0] += 2.0 * rows * module.in_features * module.out_features

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return total[0]


def profile_pass(predictor, texts: list[str], batch_size: int) -> dict:
    """One predictor pass under torch.profiler: seconds in the matrix products, in each other operator, in all."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        predictor.predict(texts, batch_size=batch_size)
    by_op = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}
    total = sum(by_op.values())
    gemm = sum(by_op.get(op, 0.0) for op in GEMM_OPS)
    others = sorted(((k, v) for k, v in by_op.items() if k not in GEMM_OPS), key=lambda kv: -kv[1])
    return {"total_s": total, "gemm_s": gemm, "others": others[:LISTED_OPS]}


def pack(lengths, row_length: int) -> list[list[int]]:
    """Sentence indices by row: first fit by decreasing length, each row at most `row_length` tokens."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if lengths[i] > row_length:
            raise ValueError(f"a sentence of {lengths[i]} tokens does not fit a row of {row_length}")
        row = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if row is None:
            rows.append([])
            room.append(row_length)
            row = len(rows) - 1
        rows[row].append(i)
        room[row] -= lengths[i]
    return rows


def packed_batches(ids: list[list[int]], row_length: int, rows_per_batch: int, pad_id: int = 0) -> list[tuple]:
    """(input_ids, position_ids, mask, starts) per batch of `rows_per_batch` packed rows, every batch one shape:
    mask[b, 0, q, k] is True where token q may attend to token k (the same sentence; a padding position attends to
    itself, so that no softmax row is empty); starts: (sentence, row, first position) of each sentence."""
    rows = pack([len(x) for x in ids], row_length)
    batches = []
    for first in range(0, len(rows), rows_per_batch):
        input_ids = torch.full((rows_per_batch, row_length), pad_id, dtype=torch.long)
        positions = torch.zeros((rows_per_batch, row_length), dtype=torch.long)
        sentence = torch.zeros((rows_per_batch, row_length), dtype=torch.long)  # 0: padding
        starts = []
        for r, members in enumerate(rows[first:first + rows_per_batch]):
            at = 0
            for k, i in enumerate(members):
                n = len(ids[i])
                input_ids[r, at:at + n] = torch.tensor(ids[i])
                positions[r, at:at + n] = torch.arange(n)
                sentence[r, at:at + n] = k + 1
                starts.append((i, r, at))
                at += n
        mask = (sentence[:, :, None] == sentence[:, None, :]) & (sentence[:, None, :] > 0)
        mask |= torch.eye(row_length, dtype=torch.bool)
        batches.append((input_ids, positions, mask[:, None], starts))
    return batches


class PackedEncoder(torch.nn.Module):
    """A BERT sequence classifier's encoder on packed rows: (input_ids, position_ids, mask) -> hidden states."""

    def __init__(self, model):
        super().__init__()
        self.bert = model.bert

    def forward(self, input_ids, position_ids, mask):
        return self.bert(input_ids=input_ids, position_ids=position_ids, attention_mask=mask,
                         token_type_ids=torch.zeros_like(input_ids)).last_hidden_state


def packed_probabilities(model, encoder, batches, n: int) -> np.ndarray:
    """(n, labels) softmax probabilities: each sentence's [CLS] state through the model's pooler and classifier."""
    probs = np.empty((n, model.config.num_labels))
    with torch.inference_mode():
        for input_ids, positions, mask, starts in batches:
            hidden = encoder(input_ids, positions, mask)
            first = torch.stack([hidden[r, at] for _, r, at in starts])
            logits = model.classifier(model.bert.pooler(first[:, None, :]))
            probs[[i for i, _, _ in starts]] = torch.softmax(logits.double(), dim=-1).numpy()
    return probs


def compiled_predictor(model_dir: Path):
    """The predictor with its forward pass compiled (dynamic shapes, inductor weight freezing), and its warm-up time
    is paid by the caller's first call."""
    import torch._inductor.config as inductor

    from pipeline.models.base import load_predictor

    inductor.freezing = True
    predictor = load_predictor(model_dir)
    predictor.forward = torch.compile(predictor.model, dynamic=True)
    return predictor


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    predict_speed.add_sample_arguments(parser, rounds=3, shape=True)
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile rows")
    parser.add_argument("--pack-length", type=int, default=PACK_LENGTH, help="tokens per packed row")
    parser.add_argument("--pack-rows", type=int, default=PACK_ROWS, help="packed rows per batch")
    args = parser.parse_args(argv)

    from pipeline.models.base import load_predictor
    from pipeline.models.batching import set_threads

    threads = set_threads(args.threads or len(os.sched_getaffinity(0)))
    corpus, _ = predict_speed.load_corpus(args)
    texts = predict_speed.timed_sentences(corpus, args.n)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = predict_speed.build_model(corpus, Path(tmp), args.shape, args.base_vocab)
        predictor = load_predictor(model_dir)
        ids, _ = predictor.encode(predictor.preprocessor(texts))
        lengths = np.array([len(x) for x in ids])
        params = predict_speed.non_embedding_params(predictor.model)
        padded = sum(len(rows) * int(lengths[rows].max()) for rows in predictor.batches(lengths, args.batch_size))
        rows = {"predictor": lambda t: predictor.predict(t, batch_size=args.batch_size)}
        predictor.predict(texts[:8])
        if not args.no_compile:
            t = time.perf_counter()
            compiled = compiled_predictor(model_dir)
            compiled.predict(texts, batch_size=args.batch_size)  # compiles every graph the batches need
            warmup = time.perf_counter() - t
            diff = float(np.abs(compiled.predict_proba(texts[:64]) - predictor.predict_proba(texts[:64])).max())
            rows["compiled"] = lambda t: compiled.predict(t, batch_size=args.batch_size)
        packed = {}
        if hasattr(predictor.model, "bert"):
            def packed_row(encoder):
                # what the stage does per call: tokenise, pack, run
                def run(t):
                    token_ids, _ = predictor.encode(predictor.preprocessor(t))
                    batches = packed_batches(token_ids, args.pack_length, args.pack_rows, predictor.pad_id)
                    return packed_probabilities(predictor.model, encoder, batches, len(t))
                return run

            encoder = PackedEncoder(predictor.model).eval()
            rows["packed"] = packed_row(encoder)
            packed["packed"] = float(np.abs(rows["packed"](texts) - predictor.predict_proba(texts)).max())
            if not args.no_compile:
                t = time.perf_counter()
                rows["packed+compiled"] = packed_row(torch.compile(encoder, dynamic=False))
                probs = rows["packed+compiled"](texts)
                packed["warm-up"] = time.perf_counter() - t
                packed["packed+compiled"] = float(np.abs(probs - predictor.predict_proba(texts)).max())

        adjacent: dict[str, list[float]] = {k: [] for k in rows}
        probes: list[float] = []
        for _ in range(args.rounds):
            for key, fn in rows.items():
                before = predict_speed.matmul_flops(repeats=3)
                rate, _ = predict_speed.rate(fn, texts, warmup=0)
                after = predict_speed.matmul_flops(repeats=3)
                probes += [before, after]
                adjacent[key].append(rate / (max(before, after) / (2 * params * lengths.mean())))

        flops = linear_flops(predictor.model, lambda: predictor.predict(texts, batch_size=args.batch_size))
        probe = max(probes)
        prof = profile_pass(predictor, texts, args.batch_size)

    real = float(lengths.sum())
    padding_factor = real / padded
    gemm_rate = flops / prof["gemm_s"] / probe if prof["gemm_s"] else float("nan")
    gemm_share = prof["gemm_s"] / prof["total_s"]
    print(f"{len(texts)} sentences, {lengths.mean():.1f} tokens each; {args.shape} shape, {params / 1e6:.1f}M "
          f"non-embedding params; {threads} threads; best matmul probe {probe / 1e9:.0f} GFLOP/s; torch {torch.__version__}")
    print(f"\n  {'row':<16} {'÷ adjacent limit, per round':<30} best")
    for key, values in adjacent.items():
        print(f"  {key:<16} {' '.join(f'{v:.0%}' for v in values):<30} {max(values):.0%}")
    if "compiled" in rows:
        print(f"  (compiled: warm-up {warmup:.0f} s before the rounds; max |p - p_eager| on 64 sentences {diff:.1e})")
    if packed:
        fill = float(lengths.sum()) / (len(packed_batches(ids, args.pack_length, args.pack_rows))
                                        * args.pack_rows * args.pack_length)
        print(f"  (packed: rows of {args.pack_length} tokens x {args.pack_rows}, real ÷ packed tokens {fill:.1%}; "
              + "; ".join(f"{k}: max |p - p_eager| {v:.1e}" for k, v in packed.items() if k != "warm-up")
              + (f"; packed+compiled: warm-up {packed['warm-up']:.0f} s" if "warm-up" in packed else "") + ")")
    print("\n  the predictor's ratio to the limit, as a product (one profiled pass):")
    print(f"    real tokens ÷ padded tokens     {padding_factor:6.1%}   ({int(real)} of {padded})")
    print(f"    matrix-product rate ÷ probe     {gemm_rate:6.1%}   ({flops / prof['gemm_s'] / 1e9:.0f} GFLOP/s in "
          f"{' / '.join(GEMM_OPS)})")
    print(f"    matrix-product share of time    {gemm_share:6.1%}")
    print(f"    product                         {padding_factor * gemm_rate * gemm_share:6.1%}   "
          f"(profiler overhead included; the rounds above are without it)")
    print("  the rest of the time, by operator: " + ", ".join(
        f"{name} {seconds / prof['total_s']:.1%}" for name, seconds in prof["others"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
