"""int8 on the CPU's AMX int8 kernels: the eager experiment and predict.backend=inductor's int8 against bf16 and the
default int8, behind docs/predict.md's "Headroom" (issue 21 asks for int8 at >= 3x the fp32 limit with >= 99 % of
fp32's labels). The `amx-int8` rows are an experiment, not a predict option.

    .venv/bin/python bench/int8_amx.py --data ../shared/data/arsarcasm_v2/testing_data.csv --column tweet \
        [--model outputs/train/<run>/model --agreement-offset 2000 [--recheck-margin 0.1/0.03 ...]]

1. Matrix products of the BERT-base shapes (2048 rows), FLOP/s: fp32 and bf16 `F.linear`, and oneDNN's int8 product
   (`torch.ops.onednn.qlinear_pointwise`: uint8 inputs, int8 weights with a scale per output channel).
2. With --model (a stance model directory, e.g. a fine-tuned stand-in): label agreement with fp32 of bf16, the shipped
   int8, amx-int8 and int8 (inductor) on --agreement-n sentences of --data from row --agreement-offset (sentences
   the model never trained on); and of int8 (inductor) with its re-check ladder at each --recheck-margin INT8/BF16
   (default: conf/predict's predict.recheck_margin), with the shares of sentences it scored again in bf16 and fp32.
3. The same model and sentences as bench/predict_speed.py (BERT-base shape, random weights), rows in interleaved
   rounds, each ÷ the fp32 limit of the probes beside it: the predictor in fp32, in bf16 and in the shipped int8
   (`predict.quantize=int8`), and `amx-int8`: every encoder Linear layer on the oneDNN int8 product, its input
   quantised to uint8 with one static scale per layer (ranges from the shipped calibration sentences), inputs
   smoothed as the shipped int8 smooths them, the feed-forward down-projection's --outlier-channels widest input
   channels kept in fp32 beside it (--keep-down: the whole down-projection in fp32, as shipped); the rest fp32.
   And `int8 (inductor)`: the predictor with predict.quantize=int8 and predict.backend=inductor (torchao's PT2E
   quantiser, inductor-compiled, what is not int8 in bf16; pipeline.models.int8.export_int8), where it can run
   (torchao installed: pip install -e ".[inductor]"; a C++ compiler). Its compile time is printed, not timed.
   With --model, also int8 (inductor) with each re-check setting: a random-weight model's margins say nothing, so
   its ladder's margins are set to send the shares of part 2 to bf16 and to fp32 (where the CPU has a bf16 unit).
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


GEMM_ROWS = 2048
UINT8_MAX = 255
INT8_MAX = 127
SCALE_FLOOR = 1e-8
# The experiments' batches are cut as bf16's are (at least BF16_MIN_BATCH_TOKENS tokens before padding cuts them):
# AMX's products want many rows, int8's as bf16's (the predictor reads its precision to choose).
AMX_BATCHES = "bf16"


class OnednnInt8Linear(torch.nn.Module):
    """y = x W^T + b with x quantised to uint8 (one static scale), W int8 per output channel, on oneDNN; input
    channels in `outliers` skip the int8 product and are added back in fp32."""

    def __init__(self, linear, low: float, high: float, inverse_smoothing=None, outliers=None, post="none"):
        super().__init__()
        weight = linear.weight.detach().float().clone()
        if inverse_smoothing is not None:
            weight = weight / inverse_smoothing  # the columns times s: the same function
        self.outliers = outliers
        if outliers is not None:
            self.outlier_weight = weight[:, outliers].t().contiguous()
            weight[:, outliers] = 0
        self.weight_scale = (weight.abs().amax(dim=1) / INT8_MAX).clamp_min(SCALE_FLOOR)
        packed = torch.round(weight / self.weight_scale[:, None]).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
        self.packed = torch.ops.onednn.qlinear_prepack(packed, None)
        self.weight_zero = torch.zeros(len(self.weight_scale), dtype=torch.long)
        self.scale = max(high - low, SCALE_FLOOR) / UINT8_MAX
        self.zero = min(max(int(round(-low / self.scale)), 0), UINT8_MAX)
        self.bias = None if linear.bias is None else linear.bias.detach().float().clone()
        self.inverse_smoothing = inverse_smoothing
        self.post = post

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1]).float()
        if self.inverse_smoothing is not None:
            x = x * self.inverse_smoothing
        q = torch.quantize_per_tensor(x, self.scale, self.zero, torch.quint8).int_repr()
        y = torch.ops.onednn.qlinear_pointwise(q, self.scale, self.zero, self.packed, self.weight_scale,
                                               self.weight_zero, self.bias, 1.0, 0, torch.float32, self.post, [],
                                               "none")
        if self.outliers is not None:
            y = torch.addmm(y, x[:, self.outliers], self.outlier_weight)
        return y.reshape(*shape[:-1], y.shape[-1])


def amx_int8(predictor, *, outlier_channels: int, keep_down: bool):
    """Replace the predictor's encoder Linear layers by OnednnInt8Linear, calibrated as the shipped int8 is."""
    from pipeline.models import int8

    model = predictor.model
    modules = dict(model.named_modules())
    kept = set(int8.fp32_linear_names(model))
    smoothed = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n not in kept]
    down_shape = (model.config.intermediate_size, model.config.hidden_size)
    downs = [] if keep_down else [n for n in sorted(kept)
                                  if (modules[n].in_features, modules[n].out_features) == down_shape]
    names = smoothed + downs
    ranges = int8.input_ranges(predictor, names)  # largest |input| per channel, calibration sentences
    inverse = {}
    for name in smoothed:
        widest_weight = modules[name].weight.detach().abs().amax(dim=0).float().clamp_min(int8.SCALE_FLOOR)
        alpha = int8.SMOOTHING_ALPHA["static"]  # static input ranges, as the inductor int8's
        s = (ranges[name].clamp_min(int8.SCALE_FLOOR) ** alpha
             / widest_weight ** (1 - alpha)).clamp_min(int8.SCALE_FLOOR)
        inverse[name] = 1.0 / s
    outliers = {n: torch.topk(ranges[n], outlier_channels).indices.sort().values
                for n in downs if outlier_channels}
    low, high = {}, {}

    def record(name):
        def hook(_module, args):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            if name in inverse:
                x = x * inverse[name]
            if name in outliers:
                keep = torch.ones(x.shape[-1], dtype=torch.bool)
                keep[outliers[name]] = False
                x = x[:, keep]
            low[name] = min(low.get(name, 0.0), float(x.min()))
            high[name] = max(high.get(name, 0.0), float(x.max()))
        return hook

    hooks = [modules[n].register_forward_pre_hook(record(n)) for n in names]
    try:
        predictor.scores_from_ids(int8.calibration_ids(predictor), 1)
    finally:
        for hook in hooks:
            hook.remove()
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        post = "none"
        if parent_name.endswith("intermediate") and getattr(model.config, "hidden_act", None) == "gelu":
            post, parent.intermediate_act_fn = "gelu", torch.nn.Identity()  # GELU fused into the product
        setattr(parent, child, OnednnInt8Linear(modules[name], low[name], high[name], inverse.get(name),
                                                outliers.get(name), post))
    from pipeline.models import backends

    predictor.forward = backends.prepare(model, predictor.backend, output=predictor.output)
    predictor.quantize = AMX_BATCHES
    return predictor


def pt2e_available() -> str | None:
    """Why the int8 (inductor) row (predict.quantize=int8 with predict.backend=inductor) cannot run here, or None."""
    from pipeline.models import backends

    return backends.available("inductor", "int8")


def best_seconds(fn, repeats: int = 8) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def gemm_rates(hidden: int, intermediate: int) -> list[tuple[str, dict]]:
    out = []
    for k, n in [(hidden, hidden), (hidden, intermediate), (intermediate, hidden)]:
        x, w, b = torch.randn(GEMM_ROWS, k), torch.randn(n, k), torch.randn(n)
        flops = 2 * GEMM_ROWS * k * n
        xb, wb, bb = x.bfloat16(), w.bfloat16(), b.bfloat16()
        packed = torch.ops.onednn.qlinear_prepack(torch.randint(-INT8_MAX, INT8_MAX, (n, k), dtype=torch.int8), None)
        xq = torch.randint(0, UINT8_MAX, (GEMM_ROWS, k), dtype=torch.uint8)
        scales, zeros = torch.full((n,), 0.01), torch.zeros(n, dtype=torch.long)
        rates = {
            "fp32": flops / best_seconds(lambda: torch.nn.functional.linear(x, w, b)),
            "bf16": flops / best_seconds(lambda: torch.nn.functional.linear(xb, wb, bb)),
            "int8 (oneDNN)": flops / best_seconds(lambda: torch.ops.onednn.qlinear_pointwise(
                xq, 0.05, 128, packed, scales, zeros, b, 1.0, 0, torch.float32, "none", [], "none")),
        }
        out.append((f"{k}->{n}", rates))
    return out


def recheck_setting(text: str) -> dict[str, float]:
    """--recheck-margin INT8/BF16 (e.g. 0.1/0.03) as predict.recheck_margin."""
    try:
        int8_margin, bf16_margin = (float(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give the int8 and the bf16 margin as INT8/BF16, e.g. 0.1/0.03")
    return {"int8": int8_margin, "bf16": bf16_margin}


def setting_name(setting: dict[str, float]) -> str:
    return f"re-check {setting['int8']:g}/{setting['bf16']:g}"


def with_ladder(predictor, ladder: list):
    """A shallow copy of the predictor (its compiled int8 model shared) climbing `ladder`, its counts reset."""
    import copy
    from collections import Counter

    other = copy.copy(predictor)
    other.ladder, other.rechecked = ladder, Counter()
    return other


def with_margins(predictor, setting: dict[str, float]):
    """The predictor with its ladder's margins taken from `setting` (predict.recheck_margin)."""
    import dataclasses

    return with_ladder(predictor, [dataclasses.replace(step, margin=setting[step.below]) for step in predictor.ladder])


def below(margins: np.ndarray, count: int) -> float:
    """A margin that exactly the `count` smallest of `margins` fall below (0: none)."""
    ordered = np.sort(margins)
    if count <= 0:
        return 0.0
    if count >= len(ordered):
        return float(min(ordered[-1] * 2 + 1e-9, 0.999))
    return float((ordered[count - 1] + ordered[count]) / 2)


def at_shares(int8_predictor, ladder: list, texts: list[str], shares: tuple[float, float], batch_size: int):
    """int8_predictor (no ladder of its own) climbing `ladder` (bf16, then fp32), its margins set so that shares[0] of
    `texts` climb to bf16 and shares[1] on to fp32: a random-weight model's margins say nothing, so the re-check of
    the BERT-base shape is timed at the shares a fine-tuned model's margins gave (part 2)."""
    from pipeline.models.batching import top_two_margins

    ids, _ = int8_predictor.encode(int8_predictor.preprocessor(texts))
    int8_margins = top_two_margins(int8_predictor.scores_from_ids(ids, batch_size))
    first = below(int8_margins, round(shares[0] * len(texts)))
    climbed = np.flatnonzero(int8_margins < first)
    bf16_margins = top_two_margins(int8_predictor.scores_from_ids(
        [ids[r] for r in climbed], batch_size, forward=ladder[0].forward, matrix_unit=True)) \
        if len(climbed) else np.zeros(0)
    second = below(bf16_margins, round(shares[1] * len(texts)))
    return with_margins(with_ladder(int8_predictor, ladder), {"int8": first, "bf16": second})


def full_ladder(fp32_model, device: str, output: str) -> list | None:
    """The int8 ladder of `fp32_model` with both rungs, bf16 and fp32 (margins set later); None where bf16 is not
    fast (the ladder then goes straight to fp32: nothing of the bf16 rung to time)."""
    from pipeline.models.batching import recheck_ladder

    ladder = recheck_ladder(fp32_model, "int8", 0.5, 0.5, device=device, backend="eager", output=output)
    return ladder if [step.precision for step in ladder] == ["bf16", "fp32"] else None


def agreement(args, why_not: str | None, options: dict, texts: list[str]) -> dict[str, tuple[float, float]]:
    """Part 2: label agreement with fp32 of --model's precisions, and of int8 (inductor) with each re-check setting;
    returns each setting's shares of sentences scored again in bf16 and in fp32."""
    from pipeline.models.base import load_predictor

    sample = texts
    if args.data:
        from pipeline.core.io import read_table

        frame = read_table(Path(args.data))
        sample = frame[args.column].dropna().astype(str).iloc[
            args.agreement_offset:args.agreement_offset + args.agreement_n].tolist()
    reference = load_predictor(args.model).predict_proba(sample)
    rows = {"bf16": load_predictor(args.model, quantize="bf16", recheck_margin=0),
            "int8 (shipped)": load_predictor(args.model, quantize="int8", recheck_margin=0),
            "amx-int8": amx_int8(load_predictor(args.model), **options)}
    if not why_not:  # one compiled model, its ladder's margins set per row
        widest = {key: max(s[key] for s in args.recheck_margin) for key in ("int8", "bf16")}
        ladder = load_predictor(args.model, quantize="int8", backend="inductor", recheck_margin=widest)
        rows["int8 (inductor)"] = with_margins(ladder, {"int8": 0.0, "bf16": 0.0})
        for setting in args.recheck_margin:
            rows[f"int8 (inductor), {setting_name(setting)}"] = with_margins(ladder, setting)
    print(f"\n2. label agreement with fp32, {args.model}, {len(sample)} sentences"
          + (f" of --data from row {args.agreement_offset}" if args.data else "") + ":")
    shares = {}
    for key, predictor in rows.items():
        probs = predictor.predict_proba(sample)
        agree = float((probs.argmax(1) == reference.argmax(1)).mean())
        counts = getattr(predictor, "rechecked", None)
        climbed = ""
        if ", re-check" in key:
            shares[key.split(", ")[-1]] = tuple(counts[p] / counts["scored"] for p in ("bf16", "fp32"))
            climbed = "; " + ", ".join(f"{counts[step.precision] / counts['scored']:.1%} scored again in "
                                       f"{step.precision}" for step in predictor.ladder)
        print(f"  {key:<34} {agree:.1%}   max |p - p_fp32| {np.abs(probs - reference).max():.3f}{climbed}")
    return shares


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    predict_speed.add_sample_arguments(parser, rounds=3, shape=True)
    parser.add_argument("--outlier-channels", type=int, default=16)
    parser.add_argument("--keep-down", action="store_true", help="the down-projections stay fp32, as shipped")
    parser.add_argument("--model", help="a stance model directory to measure label agreement on")
    parser.add_argument("--agreement-n", type=int, default=500, help="sentences of --data compared with --model")
    parser.add_argument("--agreement-offset", type=int, default=2000, help="first --data row of the agreement sample")
    parser.add_argument("--recheck-margin", type=recheck_setting, action="append",
                        help="INT8/BF16: a predict.recheck_margin setting of int8 (inductor)'s re-check ladder to "
                             "measure with --model (repeatable; default: conf/predict's)")
    args = parser.parse_args(argv)
    if "onednn" not in torch.backends.quantized.supported_engines:
        raise SystemExit("error: this torch has no oneDNN quantized engine; the experiment needs an x86 CPU build")
    if not args.recheck_margin:
        from omegaconf import OmegaConf

        from pipeline.models.batching import recheck_option

        args.recheck_margin = [recheck_option(OmegaConf.load(predict_speed.REPO / "conf" / "predict" /
                                                             "default.yaml").recheck_margin)]

    from pipeline.models.base import load_predictor
    from pipeline.models.batching import set_threads

    threads = set_threads(args.threads or len(os.sched_getaffinity(0)))
    why_not = pt2e_available()
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    print(f"{threads} threads; AMX {'yes' if amx else 'no'}; torch {torch.__version__}")
    if args.shape == "base":
        print(f"\n1. matrix products, {GEMM_ROWS} rows, GFLOP/s (best of 8):")
        base = predict_speed.BERT_BASE
        for name, rates in gemm_rates(base["hidden_size"], base["intermediate_size"]):
            print(f"  {name:<10} " + "   ".join(f"{k} {v / 1e9:,.0f}" for k, v in rates.items())
                  + f"   (int8 ÷ fp32 {rates['int8 (oneDNN)'] / rates['fp32']:.1f}x, "
                    f"÷ bf16 {rates['int8 (oneDNN)'] / rates['bf16']:.1f}x)")

    corpus, _ = predict_speed.load_corpus(args)
    texts = predict_speed.timed_sentences(corpus, args.n)
    options = dict(outlier_channels=args.outlier_channels, keep_down=args.keep_down)
    shares = agreement(args, why_not, options, texts) if args.model else {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = predict_speed.build_model(corpus, Path(tmp), args.shape, args.base_vocab)
        predictors = {"fp32": load_predictor(model_dir), "bf16": load_predictor(model_dir, quantize="bf16")}
        started = time.perf_counter()
        predictors["int8 (shipped)"] = load_predictor(model_dir, quantize="int8", recheck_margin=0)
        print(f"\n(int8 (shipped): loaded, calibrated and GPTQ-rounded in {time.perf_counter() - started:.1f} s)")
        predictors["amx-int8"] = amx_int8(load_predictor(model_dir), **options)
        if why_not:
            print(f"\n(no int8 (inductor) row: {why_not})")
        else:
            started = time.perf_counter()
            compiled = load_predictor(model_dir, quantize="int8", backend="inductor", recheck_margin=0)
            predictors["int8 (inductor)"] = compiled
            compiled.predict(texts, batch_size=args.batch_size)  # compiles what the batches need
            print(f"\n(int8 (inductor): quantised and compiled in {time.perf_counter() - started:.0f} s "
                  "before the rounds)")
            ladder = full_ladder(predictors["fp32"].model, compiled.device, compiled.output) if shares else None
            for name, (to_bf16, to_fp32) in (shares.items() if ladder else ()):
                predictors[f"int8 (inductor), {name}"] = at_shares(compiled, ladder, texts, (to_bf16, to_fp32),
                                                                   args.batch_size)
        ids, _ = predictors["fp32"].encode(predictors["fp32"].preprocessor(texts))
        mean_tokens = float(np.mean([len(x) for x in ids]))
        params = predict_speed.non_embedding_params(predictors["fp32"].model)
        for predictor in predictors.values():
            predictor.predict(texts[:8])
        adjacent: dict[str, list[float]] = {k: [] for k in predictors}
        for _ in range(args.rounds):
            for key, predictor in predictors.items():
                before = predict_speed.matmul_flops(repeats=3)
                rate, _ = predict_speed.rate(lambda t: predictor.predict(t, batch_size=args.batch_size), texts, 0)
                after = predict_speed.matmul_flops(repeats=3)
                adjacent[key].append(rate / (max(before, after) / (2 * params * mean_tokens)))
        print(f"\n3. predictors, {args.shape} shape ({params / 1e6:.1f}M non-embedding params), {len(texts)} sentences "
              f"({mean_tokens:.1f} tokens each), ÷ the adjacent fp32 limit per round"
              + ("; the re-check rows at the shares of part 2 (then: scored again in bf16 / in fp32)" if shares else "")
              + ":")
        for key, values in adjacent.items():
            counts = getattr(predictors[key], "rechecked", None)
            climbed = ""
            if ", re-check" in key:
                climbed = "   " + " / ".join(f"{counts[step.precision] / counts['scored']:.1%}"
                                             for step in predictors[key].ladder)
            print(f"  {key:<34} {' '.join(f'{v:.0%}' for v in values):<24} best {max(values):.0%}{climbed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
