"""How the encoder's forward pass runs (`predict.backend`): the same weights, the same labels and probabilities.

    eager    the model as transformers loads it (today's path; its attention is transformers' default, scaled-dot-
             product attention for BERT / XLM-R in transformers 5)
    sdpa     the same, attention forced to torch's scaled_dot_product_attention at load (`attn_implementation`)
    onnx     the model exported to ONNX (torch.onnx) and run by ONNX Runtime with its transformer graph fusions
             (attention, LayerNorm, GELU); needs the `onnx` extra: pip install -e ".[onnx]"
    inductor the model compiled by torch.compile (inductor, dynamic shapes, weights frozen into the graph); CPU,
             needs a C++ compiler; with predict.quantize=int8 the int8 model is torchao's PT2E one
             (pipeline.models.int8.export_int8), which inductor runs on the CPU's int8 units with each
             quantisation fused; needs the `inductor` extra for that: pip install -e ".[inductor]". It compiles
             in every process that loads the model (~20-30 s for BERT-base): worth it for long runs only
    auto     the fastest measured choice that can run here (AUTO_ORDER: onnx when installed, on the CPU, in fp32;
             else eager)

`prepare(model, backend, ...)` returns a callable with the model's own call signature (input_ids=, attention_mask=)
whose result has the model's output attribute (`logits` or `last_hidden_state`). Chosen once when a predictor is
loaded (pipeline.models.batching), so predict, the pyfunc model, Spark and serve run the same backend when given
the same `backend` option: a name, or a `Backend` (`option()`: the name with the onnx cache settings, built from
the predict.* keys of OPTION_KEYS by `from_config` or from a pyfunc model's model_config). The onnx export is
cached on disk across loads and processes (predict.onnx_cache; pipeline.models.onnx_cache). Measured side by side:
bench/predict_speed.py --backends.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from pipeline.core.errors import PipelineError

log = logging.getLogger(__name__)

BACKENDS = ("eager", "sdpa", "onnx", "inductor", "auto")
# `auto` never takes inductor (its warm-up is paid in every process; fp32 gains ~2 % from it, docs/predict.md,
# Headroom). `auto` takes the first of these that can run here (installed; CPU; fp32): ONNX Runtime was the fastest
# on the BERT-base shape and the tiny model (docs/predict.md, Speed); eager is always there.
AUTO_ORDER = ("onnx", "eager")
ONNX_OPSET = 17  # ONNX opset of the export (LayerNormalization needs ≥ 17)
FUSED_TYPES = ("bert", "roberta", "xlm-roberta", "electra", "distilbert")  # model_types ORT's "bert" fusions fit
OPTION_KEYS = ("backend", "onnx_cache", "onnx_cache_keep")  # the predict.* keys a Backend is built from


@dataclass(frozen=True)
class Backend:
    """The `backend` option as loaders pass it on (picklable, for Spark executors): the backend's name and where
    its onnx export is cached (None = a temporary directory per load) with how many entries are kept."""
    name: str = "eager"
    onnx_cache: str | None = None
    onnx_cache_keep: int = 1


def option(value) -> Backend:
    """A Backend from a name, a Backend, or a mapping of OPTION_KEYS (predict.* / a pyfunc model_config)."""
    if isinstance(value, Backend):
        return value
    if value is None or isinstance(value, str):
        return Backend(str(value or "eager"))
    settings = {key: value.get(key) for key in OPTION_KEYS}
    cache, keep = settings["onnx_cache"] or None, settings["onnx_cache_keep"]
    if cache is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise PipelineError(f"predict.onnx_cache_keep={keep!r}: set a whole number ≥ 1 (the cached onnx exports "
                            "kept), or predict.onnx_cache=null for no cache")
    return Backend(str(settings["backend"] or "eager"), None if cache is None else str(cache),
                   int(keep) if cache is not None else 1)


def from_config(pcfg) -> Backend:
    """The Backend of a predict config group (conf/predict)."""
    from omegaconf import OmegaConf

    return option({key: OmegaConf.select(pcfg, key, default=None) for key in OPTION_KEYS})


def check_backend(backend) -> str:
    """The backend name (of a name or Backend), validated; PipelineError naming the choices otherwise."""
    name = option(backend).name
    if name not in BACKENDS:
        raise PipelineError(f"predict.backend={name!r}: choose one of {', '.join(BACKENDS)}")
    return name


def available(backend: str, quantize: str | None = None) -> str | None:
    """None when `backend` can run here (for `quantize`), else why not (one line, with the fix)."""
    if backend == "onnx":
        missing = [m for m in ("onnxruntime", "onnx") if importlib.util.find_spec(m) is None]
        if missing:
            return (f"predict.backend=onnx needs {' and '.join(missing)}: pip install -e \".[onnx]\" "
                    "(or choose predict.backend=eager)")
    if backend == "inductor":
        if not any(shutil.which(c) for c in (os.environ.get("CXX") or "", "g++", "c++", "clang++") if c):
            return ("predict.backend=inductor compiles C++ at run time and found no C++ compiler (g++, c++ or "
                    "clang++ on PATH, or $CXX): install one, or choose predict.backend=eager")
        if quantize == "int8" and importlib.util.find_spec("torchao") is None:
            return ("predict.backend=inductor with predict.quantize=int8 needs torchao: pip install -e "
                    "\".[inductor]\" (or choose predict.backend=eager)")
    return None


def resolve(backend, *, device: str = "cpu", quantize: str | None = None) -> str:
    """The backend that will run: `auto` → the first available of AUTO_ORDER; an unavailable one is refused."""
    name = check_backend(backend)
    if name == "auto":
        return next((b for b in AUTO_ORDER if runs(b, device, quantize)), "eager")
    why = available(name, quantize)
    if why:
        raise PipelineError(why)
    if name in ("onnx", "inductor") and str(device).startswith("cuda"):
        raise PipelineError(f"predict.backend={name} runs on the CPU here; drop it, or set predict.device=cpu")
    if name == "onnx" and quantize:
        raise PipelineError(f"predict.backend=onnx runs the fp32 model only (predict.quantize={quantize} is torch's "
                            f"{quantize}); use predict.backend=eager with it")
    return name


def runs(backend: str, device: str, quantize: str | None) -> bool:
    """Whether `backend` can run here for this device and quantisation (what `auto` may pick)."""
    if backend == "onnx":
        return available(backend) is None and not str(device).startswith("cuda") and not quantize
    return available(backend, quantize) is None


def load_kwargs(backend: str) -> dict:
    """Extra from_pretrained keyword arguments the backend needs."""
    return {"attn_implementation": "sdpa"} if backend == "sdpa" else {}


def prepare(model, backend: str, *, output: str, model_dir: Path | None = None, settings=None,
            bf16_fast: bool = False):
    """A callable standing for `model` in the forward pass (see the module docstring). `output`: the attribute the
    caller reads (logits or last_hidden_state); `model_dir`: where its weights were read from and `settings` (a
    Backend) where the onnx export is cached; `bf16_fast`: whether bf16 runs fast on the device (batching.bf16_runs_fast;
    an exported int8 graph then runs what is not int8 in bf16)."""
    if backend in ("eager", "sdpa"):
        return model
    if backend == "onnx":
        return OnnxForward(model, output, model_dir=model_dir, settings=option(settings))
    if backend == "inductor":
        return InductorForward(model, output, bf16_fast=bf16_fast)
    raise PipelineError(f"predict.backend={backend!r}: choose one of {', '.join(BACKENDS)}")


class OnnxForward:
    """The model exported to ONNX and run by ONNX Runtime, fused for transformers when the model is a BERT-like
    encoder (onnxruntime.transformers.optimizer). The export is read from the cache `settings.onnx_cache` when it
    was made there before for the same weights, output, opset and versions (pipeline.models.onnx_cache); else made
    there (or, with no cache, in a temporary directory)."""

    def __init__(self, model, output: str, *, model_dir: Path | None = None, settings: Backend | None = None):
        from pipeline.models import onnx_cache

        settings = settings or Backend("onnx")
        self.output = output
        self.config = model.config
        built_from = None
        if settings.onnx_cache is not None and model_dir is not None:
            built_from = onnx_cache.recipe(Path(model_dir), output=output, model_class=type(model).__name__,
                                           opset=ONNX_OPSET, fused=fuses(model.config))

        def build(directory: Path) -> Path:
            path = directory / "model.onnx"
            export(model, path, output)
            return optimise(path, model.config)

        self.session, self.path = onnx_cache.load(settings.onnx_cache, settings.onnx_cache_keep, built_from,
                                                  build, self.open)
        log.info("predict.backend=onnx: %s loaded in ONNX Runtime (%d threads)", type(model).__name__,
                 self.session.get_session_options().intra_op_num_threads)

    @staticmethod
    def open(path: Path):
        import onnxruntime as ort
        import torch

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, input_ids, attention_mask=None, **_):
        import torch

        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        out = self.session.run(None, {"input_ids": input_ids.cpu().numpy(),
                                      "attention_mask": attention_mask.cpu().numpy()})[0]
        return SimpleNamespace(**{self.output: torch.from_numpy(out)})


class InductorForward:
    """`model` compiled by torch.compile (inductor; dynamic batch and sequence axes, so one compilation serves every
    batch; the weights frozen into the graph). `model` is a transformers model, or a graph exported by
    torch.export (int8.export_int8) that takes (input_ids, attention_mask) and returns the output tensor; such a graph
    runs under bf16 autocast where bf16 is fast (what is not int8 in it runs in bf16)."""

    def __init__(self, model, output: str, *, bf16_fast: bool = False):
        import torch
        import torch._inductor.config as inductor

        # Freezing (the weights become constants, packed once for the CPU's kernels) is what lets inductor lower
        # the int8 graph's weight packing at all; torch.compile's per-call `options` do not reach that pass, so it
        # is set process-wide (it acts only on graphs compiled without gradients).
        inductor.freezing = True
        # inductor's own lowering of the int8 weights' zero points copies a tensor with torch.tensor() and warns
        # about it at every compile: torch's internals, nothing a user can act on
        warnings.filterwarnings("ignore", message="To copy construct from a tensor", category=UserWarning,
                                module=r"torch\._inductor")
        self.output = output
        self.config = getattr(model, "config", None)
        self.graph = isinstance(model, torch.fx.GraphModule)
        self.autocast = self.graph and bf16_fast
        self.compiled = torch.compile(model, dynamic=True)
        log.info("predict.backend=inductor: the model compiles on its first batches (about half a minute for "
                 "BERT-base, once per process)")

    def __call__(self, input_ids, attention_mask=None, **_):
        import torch

        if not self.graph:
            return self.compiled(input_ids=input_ids, attention_mask=attention_mask)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            return SimpleNamespace(**{self.output: self.compiled(input_ids, attention_mask).float()})


def export(model, path: Path, output: str) -> None:
    """torch.onnx.export of `model` (input_ids, attention_mask → `output`), batch and sequence axes dynamic."""
    import torch

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return getattr(self.model(input_ids=input_ids, attention_mask=attention_mask), output)

    ids = torch.ones((2, 8), dtype=torch.long)
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
            "output": {0: "batch"} if output == "logits" else {0: "batch", 1: "sequence"}}
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(Wrapped().eval(), (ids, torch.ones_like(ids)), str(path), input_names=["input_ids",
                          "attention_mask"], output_names=["output"], dynamic_axes=axes, opset_version=ONNX_OPSET,
                          dynamo=False)


def fuses(config) -> bool:
    """Whether `optimise` fuses a model of this config (a BERT-like encoder)."""
    return getattr(config, "model_type", "") in FUSED_TYPES


def optimise(path: Path, config) -> Path:
    """ONNX Runtime's transformer fusions for a BERT-like encoder (the file as it is for another architecture)."""
    if not fuses(config):
        return path
    from onnxruntime.transformers import optimizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fused = optimizer.optimize_model(str(path), model_type="bert", num_heads=int(config.num_attention_heads),
                                         hidden_size=int(config.hidden_size), opt_level=0)
    out = path.with_name("model.fused.onnx")
    fused.save_model_to_file(str(out))
    return out
