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
(--no-compile drops the second row.) It prints ratios of one run; nothing here is a selection.
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
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile row")
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
    print(f"\n  {'row':<12} {'÷ adjacent limit, per round':<30} best")
    for key, values in adjacent.items():
        print(f"  {key:<12} {' '.join(f'{v:.0%}' for v in values):<30} {max(values):.0%}")
    if "compiled" in rows:
        print(f"  (compiled: warm-up {warmup:.0f} s before the rounds; max |p - p_eager| on 64 sentences {diff:.1e})")
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
