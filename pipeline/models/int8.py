"""`predict.quantize=int8`: dynamic int8 Linear layers on the CPU, with activation outliers smoothed into the weights.

The recipe (measured with bench/precision_agreement.py on sentences the model never trained on; docs/train.md, int8):
  * weights int8 with one scale per output channel; each layer input quantised on the fly (torch's dynamic int8);
  * kept in fp32: each layer's feed-forward down-projection (its GELU inputs carry a few very large values that
    no input scaling tames), the pooler and the classification head (one token per sentence, nothing to gain);
  * SmoothQuant-style input scaling for every int8 layer: a few input channels of BERT-like encoders run far larger
    than the rest, and one scale per tensor then turns the rest into noise. Each input channel j is divided by
    s_j = a_j**alpha / w_j**(1 - alpha) (a_j: its largest magnitude over the calibration sentences, w_j: the largest
    weight reading it) and the weight column multiplied by s_j: the same function in fp32, an input that int8
    represents evenly. In a post-LayerNorm encoder the scaled input is also the residual stream, so the division is
    a multiply before the layer (`SmoothedLinear`), not folded into the LayerNorm;
  * each weight rounded to int8 by GPTQ (Frantar et al., 2022), not to the nearest value: one input column after the
    other, the rounding error of a column is spread over the columns not yet rounded, weighted by the calibration
    inputs' second moments, so that the layer's output on those inputs moves as little as the int8 grid allows. The
    scales are the quantiser's own (one per output channel); only which grid point each weight takes changes. On the
    fine-tuned stand-ins' unseen sentences the compiled int8 then kept 99.4 % and 98.9 % of fp32's labels, against
    98.6 % and 94.9 % rounded to the nearest (docs/train.md, int8, GPTQ rounding).
On a CPU with AMX the int8 layers are packed for oneDNN (`int8_engine`), whose int8 kernels use the AMX tiles;
elsewhere for torch's default engine (x86: fbgemm's AVX2 / AVX512-VNNI kernels). With predict.backend=inductor the
int8 model is torchao's PT2E one instead (`export_int8`): the same smoothing, the same layers kept out of int8, static
input scales from the same calibration, exported and compiled so that inductor fuses each quantisation into the
operation before it (backends.InductorForward). The calibration sentences ship with the code (CALIBRATION_FILE, every
other seed sentence): the same scales wherever a model is loaded (predict, Spark executors, the pyfunc model, serve),
from one fp32 pass over them at load.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch  # imported only when a model is quantised (batching imports this module then)

log = logging.getLogger(__name__)

CALIBRATION_FILE = Path(__file__).with_name("int8_calibration.txt")
# How far the input range moves into the weights (SmoothQuant's alpha), per int8 path (docs/train.md, int8): with
# inputs quantised per batch (dynamic, the eager path) 0.5, 0.7 and 0.85 were compared on a fine-tuned stand-in and
# 0.85 kept the most labels; with static input scales from the calibration (the inductor path) 0.5 moved the
# probabilities 1.1-1.4x less on average, and their largest move 1.5-3x less, than 0.85 (both with GPTQ weights; a
# scratch simulation on both stand-ins, docs/train.md, int8, GPTQ rounding).
SMOOTHING_ALPHA = {"dynamic": 0.85, "static": 0.5}
SCALE_FLOOR = 1e-5  # an input channel or weight column that is all zeros keeps a finite scale
# GPTQ: the share of the mean diagonal added to each layer's input second-moment matrix (its dampening; keeps the
# inverse well-conditioned where the calibration leaves directions unseen), and the columns rounded per block (the
# error of a block reaches the later columns in one matrix product)
GPTQ_DAMPING = 0.01
GPTQ_BLOCK = 128


def calibration_sentences() -> list[str]:
    return [line for line in CALIBRATION_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]


def calibration_ids(predictor) -> list[list[int]]:
    """The calibration sentences as `predictor` encodes its inputs (its preprocessing, context separator, cut)."""
    texts = predictor.preprocessor.inputs(calibration_sentences(), None, predictor.context_separator)
    return predictor.encode(texts)[0]


def smooth_predictor(predictor, alpha: float) -> SmoothedMoments:
    """Smooth the int8 layers of `predictor`'s model (still fp32) in place by `alpha`, on input ranges measured on
    the calibration sentences: {name of the smoothed Linear (`<layer>.linear`, the layer either int8 path quantises):
    the second moments of its (smoothed) inputs over the same sentences, what `gptq_round` weighs errors by}."""
    names = int8_linear_names(predictor.model)
    ranges, moments = input_statistics(predictor, names)
    scales = smooth(predictor.model, ranges, alpha)
    log.debug("int8: %d Linear layers smoothed on %d calibration sentences", len(names), len(calibration_sentences()))
    return SmoothedMoments({f"{name}.linear": (moments[name], scales[name]) for name in names})


class SmoothedMoments(Mapping):
    """{smoothed Linear name: the second moments of its inputs after smoothing}, each computed when read: a layer
    that reads x / s has those of x divided by s_i * s_j. Layers that read one input (query, key and value) share one
    matrix of x's (`input_statistics`), so only the matrix of the layer GPTQ is rounding is held twice."""

    def __init__(self, layers: dict):
        self.layers = layers  # {name: (second moments of x, smoothing scale s)}

    def __getitem__(self, name):
        moments, scale = self.layers[name]
        return moments / torch.outer(scale, scale).double()

    def __iter__(self):
        return iter(self.layers)

    def __len__(self):
        return len(self.layers)


@contextlib.contextmanager
def one_thread():
    """torch on one thread inside (a context or a decorator), as it was after: the calibration passes and GPTQ give
    the same numbers whatever the thread count of the process that loads the model. GPTQ carries each rounding's
    error on, so a last-bit difference in a sum moves later weights to other grid points, and the static input
    scales are read off histograms, where it can move a range by a bin: on a stand-in, loads at 1 and 2 threads kept
    99.4 and 98.8 % of fp32's labels, and 98.6 % with only the input scales' pass on 2 threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@one_thread()
def quantize_predictor(predictor):
    """The int8 model of `predictor` (a batching.TransformerPredictor whose model is still fp32): smoothed
    (`smooth_predictor`), then dynamic int8 with GPTQ-rounded weights."""
    moments = smooth_predictor(predictor, SMOOTHING_ALPHA["dynamic"])
    fp32 = {name: predictor.model.get_submodule(name).weight.detach().clone() for name in moments}
    model = quantize_dynamic(predictor.model, list(moments))
    regptq_dynamic(model, fp32, moments)
    return model


@one_thread()
def export_int8(predictor):
    """The int8 graph of `predictor` for predict.backend=inductor: its model (still fp32) smoothed as
    `quantize_predictor` smooths it, exported with dynamic batch and sequence axes (input_ids, attention_mask ->
    the predictor's output tensor), quantised by torchao's PT2E X86InductorQuantizer (int8 weights per output
    channel, uint8 inputs with static scales from the calibration sentences; the layers of `fp32_linear_names` left
    out) and converted: a torch.fx.GraphModule that backends.InductorForward compiles."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86

    model = predictor.model
    moments = smooth_predictor(predictor, SMOOTHING_ALPHA["static"])
    positions = int(getattr(model.config, "max_position_embeddings", None) or predictor.max_length)
    batch = torch.export.Dim("batch", min=1, max=EXPORT_MAX_BATCH)
    length = torch.export.Dim("length", min=2, max=positions)
    # two tensors: one passed twice would be traced as one input (the mask read as the ids)
    example = (torch.ones((2, 8), dtype=torch.long), torch.ones((2, 8), dtype=torch.long))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        graph = torch.export.export(_OutputOf(model, predictor.output).eval(), example, dynamic_shapes={
            "input_ids": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length}}).module()
        graph.graph.eliminate_dead_code()  # a pooler whose output is not read would leave a dangling pattern
        graph.recompile()
        quantizer = x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())
        for name in fp32_linear_names(model):
            quantizer.set_module_name_qconfig(f"model.{name}", None)
        prepared = prepare_pt2e(graph, quantizer)
        for row in calibration_ids(predictor):  # one sentence at a time: no padding positions in the ranges
            ids = torch.tensor([row])
            prepared(ids, torch.ones_like(ids))
        converted = convert_pt2e(prepared)
    regptq_graph(converted, {name: model.get_submodule(name).weight.detach() for name in moments}, moments,
                 module_prefix="model.")  # _OutputOf's attribute
    return converted


EXPORT_MAX_BATCH = 1 << 16  # the exported graph's largest batch (torch.export needs a bound)


class _OutputOf(torch.nn.Module):
    """model(input_ids, attention_mask) -> its `output` tensor (what torch.export traces)."""

    def __init__(self, model, output: str):
        super().__init__()
        self.model, self.output = model, output

    def forward(self, input_ids, attention_mask):
        return getattr(self.model(input_ids=input_ids, attention_mask=attention_mask), self.output)


def int8_linear_names(model) -> list[str]:
    keep = set(fp32_linear_names(model))
    return [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear) and name not in keep]


def fp32_linear_names(model) -> list[str]:
    """Names of the Linear layers int8 leaves in fp32: feed-forward down-projections (in_features = the config's
    intermediate_size, out_features = hidden_size), the pooler and anything outside the encoder (the head)."""
    config = model.config
    base = model.base_model_prefix if getattr(model, model.base_model_prefix, None) is not None else ""
    down = (int(getattr(config, "intermediate_size", -1)), int(getattr(config, "hidden_size", -1)))
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        inside = not base or name.startswith(base + ".")
        if not inside or (module.in_features, module.out_features) == down or ".pooler." in f".{name}.":
            names.append(name)
    return names


def input_ranges(predictor, names: list[str]) -> dict:
    """Largest |input| per input channel of each named Linear layer over the calibration sentences."""
    return input_statistics(predictor, names, with_moments=False)[0]


def input_statistics(predictor, names: list[str], with_moments: bool = True) -> tuple[dict, dict]:
    """({name: largest |input| per input channel}, {name: the inputs' second moments, mean of x x^T (float64), one
    matrix shared by the layers that read the same input tensor; empty without `with_moments`}) of each named Linear
    layer over the calibration sentences, read one sentence at a time (no padding positions among them),
    preprocessed as the predictor preprocesses."""
    modules = dict(predictor.model.named_modules())
    ranges: dict[str, torch.Tensor] = {}
    moments: dict[str, torch.Tensor] = {}
    rows: dict[str, int] = {}
    shares: dict[str, str] = {}  # layer -> the layer before it that read the very same input tensor
    last = {"input": None, "name": None}

    def record(name):
        def hook(_module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1])
            seen = x.abs().amax(dim=0).float()
            ranges[name] = seen if name not in ranges else torch.maximum(ranges[name], seen)
            if not with_moments:
                return
            owner = last["name"] if args[0] is last["input"] else name  # query, key, value: one input, one matrix
            if shares.setdefault(name, owner) != owner:
                raise RuntimeError(f"int8 calibration: {name} read another layer's input in one sentence, not in "
                                   "another")
            if owner != name:
                return
            last["input"], last["name"] = args[0], name
            x = x.double()
            moments[name] = moments[name] + x.T @ x if name in moments else x.T @ x
            rows[name] = rows.get(name, 0) + x.shape[0]
        return hook

    hooks = [modules[name].register_forward_pre_hook(record(name)) for name in names]
    try:
        predictor.scores_from_ids(calibration_ids(predictor), 1)
    finally:
        for hook in hooks:
            hook.remove()
    means = {name: value / rows[name] for name, value in moments.items()}
    return ranges, {name: means[owner] for name, owner in shares.items()}


def gptq_round(weight, scale, zero_point, moments, qmin: int, qmax: int):
    """The int8 values (torch.int8, the shape of `weight` [out, in]) of a Linear weight on the grid of `scale` and
    `zero_point` (one per output channel), rounded by GPTQ: input columns in order, each rounded to the nearest
    grid point after the errors of the columns before it were spread onto it through the inverse of `moments` (the
    layer inputs' second moments, [in, in]). Columns the calibration never saw (zero second moment) are rounded to
    the nearest and pass no error on."""
    h = moments.detach().double().clone()
    unseen = torch.diagonal(h) == 0
    h[unseen, :] = 0
    h[:, unseen] = 0
    h[unseen, unseen] = 1
    h.diagonal().add_(GPTQ_DAMPING * torch.diagonal(h).mean())
    # the upper Cholesky factor of the inverse (in float64, then float32 as the weights): row i holds how column i's
    # error is spread onto the later columns
    spread = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).float()
    # one row per input column (contiguous), float32: the updates are the whole cost
    w = weight.detach().float().t().contiguous()
    scale, zero_point = scale.detach().float(), zero_point.detach().float()
    q = torch.empty_like(w)
    columns = w.shape[0]
    for start in range(0, columns, GPTQ_BLOCK):
        end = min(start + GPTQ_BLOCK, columns)
        block = w[start:end]
        errors = torch.empty_like(block)
        for j in range(end - start):
            i = start + j
            value = torch.clamp(torch.round(block[j] / scale) + zero_point, qmin, qmax)
            q[i] = value
            errors[j] = (block[j] - (value - zero_point) * scale) / spread[i, i]
            block[j:].addr_(spread[i, i:end], errors[j], alpha=-1)
        w[end:].addmm_(spread[start:end, end:].t(), errors, alpha=-1)
    return q.t().to(torch.int8)


def regptq_graph(graph, weights: dict, moments: Mapping, module_prefix: str = "") -> None:
    """Re-round, in place, the int8 weights of a converted PT2E graph (`export_int8`) with `gptq_round`, on the
    scales its quantiser chose: `weights` and `moments` by the name of the Linear module each weight belongs to (as
    the graph's nn_module_stack names it). Every int8 weight of the graph must be among them."""
    done = set()
    for node in graph.graph.nodes:
        if node.op != "call_function" or "dequantize_per_channel" not in str(node.target):
            continue
        values, scale, zero_point, axis, qmin, qmax = node.args[:6]
        # the innermost module of the Linear that reads this weight
        name = list(next(iter(node.users)).meta["nn_module_stack"].values())[-1][0].removeprefix(module_prefix)
        if axis != 0 or name not in weights:
            raise RuntimeError(f"int8: weight of {name} (axis {axis}) is not one GPTQ rounds")
        getattr(graph, values.target).copy_(gptq_round(weights[name], getattr(graph, scale.target),
                                                       getattr(graph, zero_point.target), moments[name], qmin, qmax))
        done.add(name)
    if done != set(weights):
        raise RuntimeError(f"int8: no int8 weight in the graph for {sorted(set(weights) - done)}")


class SmoothedLinear(torch.nn.Module):
    """x / s before a Linear layer whose weight columns were multiplied by s (the same function in fp32)."""

    def __init__(self, linear, scale):
        super().__init__()
        self.linear = linear
        self.register_buffer("inverse_scale", (1.0 / scale).to(linear.weight.dtype))

    def forward(self, x):
        return self.linear(x * self.inverse_scale)


def smooth(model, ranges: dict, alpha: float) -> dict:
    """Wrap each Linear layer named in `ranges` in a SmoothedLinear, its weight columns scaled (in place); the
    scales, {name: s}."""
    scales = {}
    with torch.no_grad():
        for name, observed in ranges.items():
            linear = model.get_submodule(name)
            weight = linear.weight.detach().abs().amax(dim=0).float().clamp_min(SCALE_FLOOR)
            scale = (observed.clamp_min(SCALE_FLOOR) ** alpha / weight ** (1 - alpha)).clamp_min(SCALE_FLOOR)
            linear.weight.mul_(scale.to(linear.weight.dtype))
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, SmoothedLinear(linear, scale))
            scales[name] = scale
    return scales


def regptq_dynamic(model, weights: dict, moments: Mapping) -> None:
    """Re-round, in place, the weights of the dynamic int8 Linear layers of `model` (`quantize_dynamic`) with
    `gptq_round`, on the scales torch's quantiser chose, packed again for the engine that packed them:
    `weights` (their fp32 weights) and `moments` by layer name."""
    info = torch.iinfo(torch.int8)
    with packing_engine():
        for name, fp32 in weights.items():
            layer = model.get_submodule(name)
            packed = layer.weight()
            scale, zero_point = packed.q_per_channel_scales(), packed.q_per_channel_zero_points()
            values = gptq_round(fp32, scale, zero_point, moments[name], info.min, info.max)
            layer.set_weight_bias(torch._make_per_channel_quantized_tensor(
                values, scale, zero_point, packed.q_per_channel_axis()), layer.bias())


def int8_engine() -> str | None:
    """The quantized engine to pack int8 layers for: oneDNN on a CPU with AMX (bench/predict_speed.py, BERT-base
    shape: 1.2x the int8 speed of the default engine, fbgemm; docs/predict.md), else None (torch's default).
    Only where it was measured: on CPUs without AMX fbgemm's kernels are the ones torch's x86 engine prefers."""
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return "onednn" if amx and "onednn" in torch.backends.quantized.supported_engines else None


def quantize_dynamic(model, names: list[str]):
    """torch's dynamic int8 (CPU) of the named Linear layers, one weight scale per output channel, packed for
    `int8_engine()`. The packed weights keep their engine, so torch's process-wide engine setting is switched only
    while packing and then restored."""
    with warnings.catch_warnings(), packing_engine():  # torch marks torch.ao as deprecated; still the CPU int8 path
        warnings.simplefilter("ignore")
        qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
        return torch.ao.quantization.quantize_dynamic(model, {name: qconfig for name in names}, dtype=torch.qint8)


@contextlib.contextmanager
def packing_engine():
    """torch's quantized engine set to `int8_engine()` inside, restored after (also on an error): packed weights
    keep the engine that packed them, the process-wide setting is left as it was."""
    engine, previous = int8_engine(), torch.backends.quantized.engine
    try:
        if engine:
            torch.backends.quantized.engine = engine
        yield
    finally:
        torch.backends.quantized.engine = previous
