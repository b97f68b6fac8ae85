"""Sentences per second of the predict stage's predictor against transformers.pipeline and the machine's limit.

This times the predictor (tokenise + forward), not the whole `python -m pipeline predict` stage: reading and
segmenting the articles, the rule pass and the analyst columns, and writing the outputs come on top
(bench/predict_memory.py times the whole stage).

    .venv/bin/python bench/predict_speed.py --data ../shared/data/arsarcasm_v2/testing_data.csv --column tweet

Everything is measured side by side in one run, on the same model and the same sentences:
  * predictor   pipeline.models.base.StancePredictor.predict (length-sorted batches padded per batch,
                one tokenizer pass, torch.inference_mode, threads from the machine)
  * pipe        transformers.pipeline("text-classification") with default settings (one sentence at a time)
  * pipe bs64   the same with batch_size=64 (padding every batch to its longest sentence, unsorted)
  * limit       matmul FLOP/s (fp32 torch.mm, best of several) ÷ (2 × non-embedding parameters × mean tokens)
  * int8        the predictor with predict.quantize=int8, and its label agreement with fp32
  * bf16        the predictor with predict.quantize=bf16 (the model in bfloat16; AMX or AVX512-BF16 on a CPU,
                else it runs fp32 and the row says so), and its label agreement with fp32
Models: BERT-base size (AraBERT's shape: hidden 768, 12 layers, 12 heads, intermediate 3072) with random
weights (speed does not depend on the weights), and the tiny test model. Their tokenizers are WordPiece models
trained on the benchmark's own corpus (no hub here); the embedding matrix is sized to that vocabulary, which
changes no FLOP count (a lookup) and is left out of the limit anyway.

Random weights give near-tied probabilities, where int8 noise flips labels that no trained model would
hesitate on; so int8 agreement is also measured on a small BERT (4 layers, hidden 256) trained from scratch,
in this run, on other labelled sentences of --data (--label-column, mapped by conf/data/arsarcasm.yaml): a model
whose labels are decisions.
The AraBERT text preprocessing (part of the predictor, same for every method) is timed separately.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline import LABELS  # noqa: E402
from pipeline.text.arabic import has_arabic  # noqa: E402
from pipeline.text.segmentation import seed_sentences  # noqa: E402

BERT_BASE = dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072)


def arsarcasm_label_map() -> dict[str, str]:
    """ArSarcasm's raw labels (--label-column) -> ours, from conf/data/arsarcasm.yaml."""
    from omegaconf import OmegaConf

    return {str(k): str(v) for k, v in OmegaConf.load(REPO / "conf" / "data" / "arsarcasm.yaml").label_map.items()}


def load_corpus(args) -> tuple[list[str], list[str] | None]:
    """All usable sentences (texts, labels or None) of --data, else the seed sentences."""
    if args.data:
        from pipeline.core.io import read_table

        frame = read_table(args.data)
        frame = frame[frame[args.column].map(lambda t: bool(t.strip()) and has_arabic(t))]
        labels = frame[args.label_column].tolist() if args.label_column in frame.columns else None
        return frame[args.column].tolist(), labels
    return seed_sentences(), None


def add_sample_arguments(parser, *, rounds: int, shape: bool = False) -> None:
    """The sentences, batch size, rounds, model shape and threads every predictor bench shares (bench/fp32_headroom.py,
    bench/int8_amx.py time this bench's sample); `shape`: a --shape option (one model: base or tiny)."""
    parser.add_argument("--data", help="CSV of real Arabic sentences (e.g. ../shared/data/arsarcasm_v2/testing_data.csv)")
    parser.add_argument("--column", default="tweet", help="text column of --data")
    parser.add_argument("--label-column", default="sentiment", help="raw labels, mapped by conf/data/arsarcasm.yaml, for the trained agreement model")
    parser.add_argument("--n", type=int, default=300, help="sentences timed per method")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--base-vocab", type=int, default=8000,
                        help="WordPiece vocabulary of the BERT-base tokenizer (8000 on tweets gives AraBERT-like "
                             "token counts; the model's embedding is sized to it, which does not change its speed)")
    parser.add_argument("--threads", type=int, default=0, help="0 = every core this process may use")
    parser.add_argument("--rounds", type=int, default=rounds, help="interleaved timing rounds; each method keeps its best")
    if shape:
        parser.add_argument("--shape", choices=("base", "tiny"), default="base",
                            help="base: the BERT-base shape; tiny: the test model (fast, for the bench's own test)")


def sample_order(n: int) -> np.ndarray:
    return np.random.default_rng(0).permutation(n)


def timed_sentences(corpus: list[str], n: int) -> list[str]:
    """The n sentences every predictor bench times: a fixed random sample of the corpus (cycled when it is smaller)."""
    texts = [corpus[i] for i in sample_order(len(corpus))[:n]]
    while len(texts) < n:
        texts += texts[: n - len(texts)]
    return texts


def build_model(corpus: list[str], root: Path, name: str, base_vocab: int) -> Path:
    """A stance model directory of shape `name`: "base" (BERT_BASE, random weights) or "tiny" (the test model)."""
    from pipeline.models.base import write_model_metadata
    from pipeline.models.tiny import build_tiny_bert
    from pipeline.text.preprocess import TextPreprocessor

    shape = {**BERT_BASE, "vocab_size": base_vocab} if name == "base" else {}
    model_dir = build_tiny_bert(corpus, root / name, LABELS, **shape)
    write_model_metadata(model_dir, kind="transformer", labels=LABELS, max_length=128, base_model=name,
                         preprocessor=TextPreprocessor(None))
    return model_dir


def matmul_flops(n: int = 2048, repeats: int = 8) -> float:
    """Best fp32 matmul rate of this machine with the current thread setting, in FLOP/s."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def non_embedding_params(model) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if ".embeddings." not in name)


def rate(fn, texts: list[str], warmup: int = 8) -> tuple[float, object]:
    if warmup:
        fn(texts[:warmup])
    t = time.perf_counter()
    out = fn(texts)
    return len(texts) / (time.perf_counter() - t), out


def train_small_model(model_dir: Path, corpus: list[str], texts: list[str], labels: list[str], epochs: int) -> Path:
    """A small BERT (4 layers, hidden 256) trained from scratch on (texts, labels): a model whose labels are
    decisions, for measuring int8 agreement; random weights only give near-ties."""
    from transformers import AutoModelForSequenceClassification

    from pipeline.models.base import load_predictor, write_model_metadata
    from pipeline.text.preprocess import TextPreprocessor
    from pipeline.models.tiny import build_tiny_bert

    build_tiny_bert(corpus, model_dir, LABELS, vocab_size=16000, hidden_size=256, num_layers=4, num_heads=4,
                    intermediate_size=1024)
    write_model_metadata(model_dir, kind="transformer", labels=LABELS, max_length=64, base_model="small-scratch",
                         preprocessor=TextPreprocessor(None))
    predictor = load_predictor(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    names = arsarcasm_label_map()
    y = torch.tensor([LABELS.index(names.get(label, label)) for label in labels])
    ids, _ = predictor.encode(texts)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.01)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(ids), generator=generator).split(32):
            rows = [ids[i] for i in batch.tolist()]
            width = max(map(len, rows))
            input_ids = torch.full((len(rows), width), predictor.pad_id)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for j, row in enumerate(rows):
                input_ids[j, :len(row)] = torch.tensor(row)
                mask[j, :len(row)] = 1
            loss = model(input_ids=input_ids, attention_mask=mask, labels=y[batch]).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    model.save_pretrained(model_dir)
    return model_dir


def agreement(model_dir: Path, texts: list[str], labels: list[str] | None, batch_size: int) -> dict:
    from pipeline.models.base import load_predictor

    fp32 = load_predictor(model_dir).predict(texts, batch_size=batch_size)
    int8 = load_predictor(model_dir, quantize="int8").predict(texts, batch_size=batch_size)
    bf16 = load_predictor(model_dir, quantize="bf16").predict(texts, batch_size=batch_size)
    out = {"int8_agreement": float((fp32["label"] == int8["label"]).mean()),
           "bf16_agreement": float((fp32["label"] == bf16["label"]).mean()),
           "label_shares": fp32["label"].value_counts(normalize=True).round(3).to_dict()}
    if labels is not None:
        names = arsarcasm_label_map()
        gold = np.array([names.get(x, x) for x in labels], dtype=object)
        out["fp32_accuracy"] = float((fp32["label"].to_numpy() == gold).mean())
        out["int8_accuracy"] = float((int8["label"].to_numpy() == gold).mean())
    return out


def bench_model(name: str, model_dir: Path, texts: list[str], args) -> dict:
    """Every method on the same sentences, in `args.rounds` interleaved rounds, each next to a matmul probe.

    The machine is shared: each method's best round and the best matmul probe of the run are kept, so that
    a burst of someone else's load does not decide a ratio.
    """
    from transformers import pipeline as hf_pipeline

    from pipeline.models.base import load_predictor

    predictor = load_predictor(model_dir)
    int8 = load_predictor(model_dir, quantize="int8")
    bf16 = load_predictor(model_dir, quantize="bf16")
    pipe = hf_pipeline("text-classification", model=str(model_dir), tokenizer=str(model_dir), device="cpu")
    ids, _ = predictor.encode(predictor.preprocessor(texts))
    mean_tokens = float(np.mean([len(x) for x in ids]))
    params = non_embedding_params(predictor.model)
    methods = {
        "predictor": lambda t: predictor.predict(t, batch_size=args.batch_size),
        "pipe_default": lambda t: pipe(t),
        "pipe_bs64": lambda t: pipe(t, batch_size=64),
        "int8": lambda t: int8.predict(t, batch_size=args.batch_size),
        "bf16": lambda t: bf16.predict(t, batch_size=args.batch_size),
    }
    methods.update(backend_methods(model_dir, texts, args, predictor))
    rates: dict[str, list[float]] = {k: [] for k in methods}
    probes: list[float] = []
    outputs = {}
    for fn in methods.values():
        fn(texts[:8])  # warm-up: first-call allocations and lazy initialisation
    adjacent: dict[str, list[float]] = {k: [] for k in methods}  # rate ÷ limit from the probes around it
    for _ in range(args.rounds):
        for key, fn in methods.items():
            before = matmul_flops(repeats=3)
            r, outputs[key] = rate(fn, texts, warmup=0)
            after = matmul_flops(repeats=3)
            probes += [before, after]
            rates[key].append(r)
            adjacent[key].append(r / (max(before, after) / (2 * params * mean_tokens)))
    flops = max(probes)
    result = {"model": name, "sentences": len(texts), "mean_tokens": round(mean_tokens, 1),
              "non_embedding_params": params, "threads": torch.get_num_threads(), "rounds": args.rounds,
              "matmul_gflops": round(flops / 1e9, 1), "matmul_gflops_probes": [round(p / 1e9) for p in probes],
              "limit": flops / (2 * params * mean_tokens),
              "rates_per_round": {k: [round(x, 2) for x in v] for k, v in rates.items()},
              "ratio_to_adjacent_limit_per_round": {k: [round(x, 3) for x in v] for k, v in adjacent.items()}}
    result.update({k: max(v) for k, v in rates.items()})
    fp32 = outputs["predictor"]
    for key in ("int8", "bf16"):
        q = outputs[key]
        result[f"{key}_agreement_random_head"] = float((q["label"] == fp32["label"]).mean())
        result[f"{key}_max_abs_prob_diff_random_head"] = float(np.abs(
            q[predictor.prob_columns].to_numpy() - fp32[predictor.prob_columns].to_numpy()).max())
    result["bf16_ran_fp32"] = bf16.quantize is None
    return result


def backend_methods(model_dir: Path, texts: list[str], args, reference) -> dict:
    """predict.backend choices other than eager (--backends), each checked against eager to 1e-4 first; plus,
    for comparison only, eager with transformers' manual attention instead of its default (sdpa)."""
    from pipeline.models import backends
    from pipeline.models.base import load_predictor

    out = {}
    expected = reference.predict_proba(texts[:64], batch_size=args.batch_size)
    for name in [b for b in (args.backends or "").split(",") if b and b != "eager"]:
        why = backends.available(name) if name in backends.BACKENDS else "not a predict.backend"
        if why:
            print(f"  (skipping backend {name}: {why})")
            continue
        t = time.perf_counter()
        predictor = load_predictor(model_dir, backend=name)
        diff = float(np.abs(predictor.predict_proba(texts[:64], batch_size=args.batch_size) - expected).max())
        print(f"  backend {name}: loaded and warmed up in {time.perf_counter() - t:.1f} s; "
              f"max |p - p_eager| on 64 sentences {diff:.1e}")
        out[f"backend_{name}"] = (lambda p: lambda t: p.predict(t, batch_size=args.batch_size))(predictor)
    if args.manual_attention:
        manual = load_predictor(model_dir)
        manual.model.set_attn_implementation("eager")
        out["manual_attention"] = lambda t: manual.predict(t, batch_size=args.batch_size)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_sample_arguments(parser, rounds=2)
    parser.add_argument("--train-n", type=int, default=1500, help="other labelled sentences to train the agreement model on (0 = skip)")
    parser.add_argument("--train-epochs", type=int, default=2)
    parser.add_argument("--models", default="tiny,base", help="comma list of tiny,base")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--backends", default="onnx",
                        help="predict.backend choices timed beside eager (pipeline.models.backends); '' = none")
    parser.add_argument("--manual-attention", action="store_true",
                        help="also time eager with transformers' manual attention (its default is sdpa)")
    args = parser.parse_args(argv)

    from pipeline.models.batching import set_threads
    from pipeline.text.preprocess import TextPreprocessor

    threads = set_threads(args.threads or len(os.sched_getaffinity(0)))
    corpus, labels = load_corpus(args)
    order = sample_order(len(corpus))
    texts = timed_sentences(corpus, args.n)
    timed_labels = [labels[i] for i in order[: args.n]] if labels is not None else None
    rest = order[args.n: args.n + args.train_n]
    print(f"{len(texts)} sentences from {args.data or 'seeds/'}; {threads} threads; torch {torch.__version__}")

    pre = TextPreprocessor("bert-base-arabertv02")
    t = time.perf_counter()
    pre(texts)
    preprocess_rate = len(texts) / (time.perf_counter() - t)

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            model_dir = build_model(corpus, Path(tmp), name, args.base_vocab)
            results.append(bench_model(name, model_dir, texts, args))
            print_result(results[-1])
        if labels is not None and args.train_n and len(rest):
            t = time.perf_counter()
            small = train_small_model(Path(tmp) / "small", corpus, [corpus[i] for i in rest],
                                      [labels[i] for i in rest], args.train_epochs)
            trained = {"train_sentences": len(rest), "train_seconds": time.perf_counter() - t,
                       **agreement(small, texts, timed_labels, args.batch_size)}
            print(f"\n== int8 / bf16 agreement on a trained model (4-layer BERT, hidden 256, trained from scratch on "
                  f"{len(rest)} labelled sentences in {trained['train_seconds']:.0f} s): "
                  f"{trained['int8_agreement']:.1%} / {trained['bf16_agreement']:.1%} identical labels on the "
                  f"{len(texts)} timed sentences "
                  f"(accuracy fp32 {trained['fp32_accuracy']:.1%}, int8 {trained['int8_accuracy']:.1%}; "
                  f"fp32 label shares {trained['label_shares']})")
            results.append({"model": "small-trained", **trained})
    print(f"\nAraBERT v02 text preprocessing (part of the predictor, the same for every method): "
          f"{preprocess_rate:,.0f} sentences/s")
    if args.json:
        Path(args.json).write_text(json.dumps({"preprocess_rate": preprocess_rate, "results": results}, indent=2))
    return 0


def print_result(r: dict) -> None:
    print(f"\n== {r['model']}: {r['non_embedding_params'] / 1e6:.1f}M non-embedding params, "
          f"{r['mean_tokens']} tokens/sentence, matmul {r['matmul_gflops']} GFLOP/s, {r['threads']} threads")
    limit = r["limit"]
    print(f"  {'method':<38} {'sent/s':>9}   {'÷ limit':>7}   {'÷ adjacent limit, per round':<28} vs pipeline default")
    rows = [("predictor", "predictor (fp32, backend eager)"), ("pipe_default", "transformers.pipeline default"),
            ("pipe_bs64", "transformers.pipeline batch_size=64"), ("int8", "predictor int8"),
            ("bf16", "predictor bf16" + (" (ran fp32: no bf16 unit)" if r.get("bf16_ran_fp32") else ""))]
    rows += [(k, f"predictor (fp32, backend {k.split('_', 1)[1]})") for k in r if k.startswith("backend_")]
    rows += [("manual_attention", "predictor, manual attention")] if "manual_attention" in r else []
    for key, label in rows:
        per_round = " ".join(f"{x:.0%}" for x in r["ratio_to_adjacent_limit_per_round"][key])
        print(f"  {label:<38} {r[key]:>9.1f}   {r[key] / limit:7.1%}   {per_round:<28} "
              f"{r[key] / r['pipe_default']:5.2f}x")
    print(f"  {'fp32 limit':<38} {limit:>9.1f} sentences/s")
    print(f"  label agreement with fp32 (random weights: near-tied probabilities, see the trained model below): "
          f"int8 {r['int8_agreement_random_head']:.1%}, bf16 {r['bf16_agreement_random_head']:.1%}")


if __name__ == "__main__":
    raise SystemExit(main())
