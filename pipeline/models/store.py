"""Stance models in MLflow: logging a model directory as a pyfunc model, and finding and fetching one again.

`log_stance_model(dir)` logs the predictor of pipeline.models.base as an MLflow pyfunc model, so
`mlflow.pyfunc.load_model`, `spark_udf` and `mlflow models serve` give the labels and probabilities of the
predict stage. `fetch_model_dir` turns a model directory or an MLflow URI into a local stance model directory;
`resolve_model` adds predict's default (the registry alias, pipeline.models.serving) and the training run behind a URI,
whose config gives the segmentation rules (`segment_rules_for`).

MLflow is imported where it is used, not with this module: predict from a local model directory never loads it
(the pyfunc class is built on first use, `StancePyfuncModel` below).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from pipeline.core import tracking
from pipeline.core.errors import PipelineError
from pipeline.models import backends
from pipeline.models.base import METADATA_FILE, load_predictor, read_model_metadata
from pipeline.models.trust import check_model_dir, nested_dir
from pipeline.text.context import CONTEXT_COLUMN, article_contexts, table_contexts
from pipeline.text.segmentation import SegmentRules

log = logging.getLogger(__name__)

ARTIFACT_KEY = "stance_model"  # name of the model directory among the pyfunc model's artifacts
# Packages the logged pyfunc model needs besides the pipeline code it carries (code_paths).
RUNTIME_PACKAGES = ("torch", "transformers", "tokenizers", "numpy", "pandas", "scikit-learn", "skops", "arabert",
                    "mlflow")


# ---------------------------------------------------------------- MLflow pyfunc

def texts_from_model_input(model_input) -> list[str]:
    """The sentences of a pyfunc input: a DataFrame with a `text` column (or a single column), a Series or a list."""
    if isinstance(model_input, pd.DataFrame):
        if "text" in model_input.columns:
            column = model_input["text"]
        elif model_input.shape[1] == 1:
            column = model_input.iloc[:, 0]
        else:
            raise PipelineError(f"model input needs a 'text' column; got columns {list(model_input.columns)}")
        return ["" if v is None else str(v) for v in column.tolist()]
    if isinstance(model_input, pd.Series):
        return ["" if v is None else str(v) for v in model_input.tolist()]
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, dict) and "text" in model_input:
        value = model_input["text"]
        return [value] if isinstance(value, str) else [str(v) for v in value]
    return [str(v) for v in np.asarray(model_input, dtype=object).ravel().tolist()]


def contexts_from_model_input(model_input, texts: list[str], mode: str) -> list[str] | None:
    """The sentence contexts of a pyfunc input for a model that reads them (`mode`, pipeline.text.context): the
    input's `sentence_context` column as given; else built from the input's order, as predict reads a sentence
    table: rows grouped into articles by an `article_id` column (one article without one), in `idx` order (row
    order without one). None for a model without context."""
    if mode == "none":
        return None
    if isinstance(model_input, pd.DataFrame):
        if CONTEXT_COLUMN in model_input.columns:
            return ["" if v is None else str(v) for v in model_input[CONTEXT_COLUMN].tolist()]
        table = pd.DataFrame({"text": texts, **{c: model_input[c].to_numpy() for c in ("article_id", "idx")
                                                 if c in model_input.columns}})
        return table_contexts(table, mode)
    return article_contexts(texts, mode)


_PYFUNC_CLASS = None


def _pyfunc_class():
    """StancePyfuncModel: the MLflow face of a stance model directory, text in, label + p_<label> out.

    Built on first use, so that importing this module does not import MLflow; it lives on as
    `pipeline.models.store.StancePyfuncModel` (module `__getattr__`), the name a logged model's pickle refers to."""
    global _PYFUNC_CLASS
    if _PYFUNC_CLASS is None:
        import mlflow.pyfunc

        class StancePyfuncModel(mlflow.pyfunc.PythonModel):
            def load_context(self, context):
                self.predictor = load_predictor(context.artifacts[ARTIFACT_KEY], **predictor_options(context.model_config))

            # The DataFrame hint tells MLflow that the logged signature, not the hint, describes the input.
            def predict(self, context, model_input: pd.DataFrame, params=None):
                batch_size = int((params or {}).get("batch_size", 64))
                texts = texts_from_model_input(model_input)
                out = self.predictor.predict(texts, batch_size=batch_size, context=contexts_from_model_input(
                    model_input, texts, self.predictor.context))
                return out[self.predictor.output_columns]

        StancePyfuncModel.__qualname__ = "StancePyfuncModel"  # pickled by reference to this module's attribute
        StancePyfuncModel.__module__ = __name__
        _PYFUNC_CLASS = StancePyfuncModel
    return _PYFUNC_CLASS


def __getattr__(name: str):
    if name == "StancePyfuncModel":
        return _pyfunc_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def pinned_requirements() -> list[str]:
    pins = []
    for name in RUNTIME_PACKAGES:
        try:
            version = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
        pins.append(f"{name}=={version.split('+')[0]}")  # a local tag (2.13.0+cpu) is not on PyPI
    return pins


# The predict.* options a pyfunc model takes from its model_config (the backend's: backends.OPTION_KEYS).
PYFUNC_OPTIONS = (*backends.OPTION_KEYS, "quantize", "recheck_margin")


def model_config_of(model_config) -> dict:
    """The PYFUNC_OPTIONS given in a model_config ("" as None), as a model is logged with them."""
    config = dict(model_config or {})
    return {key: None if config[key] == "" else config[key] for key in PYFUNC_OPTIONS if key in config}


def predictor_options(model_config) -> dict:
    """load_predictor's options from a pyfunc model's model_config: logged with the model from predict.backend /
    onnx_cache / onnx_cache_keep / quantize / recheck_margin (log_stance_model), or given at load: mlflow.pyfunc.load_model(uri,
    model_config={...}), mlflow.pyfunc.spark_udf(..., model_config={...}). `mlflow models serve` serves the logged
    ones. A model logged without a key gets load_predictor's default (eager, no onnx cache, fp32)."""
    config = model_config_of(model_config)
    options = {"quantize": config["quantize"] or None} if "quantize" in config else {}
    if config.get("recheck_margin") is not None:
        options["recheck_margin"] = config["recheck_margin"]
    if any(key in config for key in backends.OPTION_KEYS):
        options["backend"] = backends.option(config)
    return options


def served_options(cfg) -> dict:
    """The model_config a trained model is logged with: predict.backend, onnx_cache, onnx_cache_keep, quantize and
    recheck_margin of the run's config."""
    from omegaconf import OmegaConf

    from pipeline.models.batching import recheck_option

    options = {key: OmegaConf.select(cfg, f"predict.{key}", default=None) for key in PYFUNC_OPTIONS}
    return {**options, "recheck_margin": recheck_option(options["recheck_margin"])}


def log_stance_model(model_dir, *, name: str = "model", registered_model_name: str | None = None,
                     input_example: Sequence[str] | None = None, model_config: dict | None = None):
    """Log `model_dir` as an MLflow pyfunc model in the active run; returns the ModelInfo.

    The pyfunc carries the model directory as an artifact and this package's code (code_paths), so
    `mlflow.pyfunc.load_model(info.model_uri)` works in a fresh process, in Spark and in `mlflow models serve`.
    `model_config`: the predictor options it is served with (predictor_options: PYFUNC_OPTIONS).
    """
    import mlflow.pyfunc
    from mlflow.models import infer_signature
    from mlflow.types.schema import ParamSchema, ParamSpec

    model_dir = Path(model_dir)
    # Refuses a broken directory or option before anything is logged. In a train run the model the fit left in
    # memory (pipeline.models.reuse): MLflow's own validation of the input example then loads the logged copy.
    predictor = load_predictor(model_dir, **predictor_options(model_config))
    if mlflow.active_run() is None:
        raise PipelineError("log_stance_model needs an active MLflow run (use pipeline.core.tracking.start_run)")
    examples = [str(t) for t in (input_example or ["تم التوصل إلى اتفاق بين الجانبين."])][:5]
    example_in = pd.DataFrame({"text": examples})
    example_out = predictor.predict(examples)[predictor.output_columns]
    params = ParamSchema([ParamSpec("batch_size", "long", 64)])
    signature = infer_signature(example_in, example_out)
    inputs = signature.inputs
    if predictor.context != "none":  # what the pyfunc builds the sentence context from (contexts_from_model_input)
        from mlflow.types.schema import ColSpec, Schema

        inputs = Schema([*inputs.inputs, *(ColSpec("string", c, required=False)
                                           for c in (CONTEXT_COLUMN, "article_id"))])
    signature = type(signature)(inputs=inputs, outputs=signature.outputs, params=params)
    package_dir = Path(__file__).resolve().parents[1]  # the whole pipeline package
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=_pyfunc_class()(),
        artifacts={ARTIFACT_KEY: str(model_dir)},
        code_paths=[str(package_dir)],
        signature=signature,
        input_example=example_in,
        pip_requirements=pinned_requirements(),
        registered_model_name=registered_model_name,
        model_config=model_config_of(model_config) or None,
    )


def model_dir_of_pyfunc(local_model_path) -> Path:
    """The stance model directory inside a downloaded pyfunc model (artifacts/<ARTIFACT_KEY>)."""
    import yaml

    local = Path(local_model_path)
    if (local / METADATA_FILE).exists():
        return local
    mlmodel = local / "MLmodel"
    if mlmodel.exists():
        conf = yaml.safe_load(mlmodel.read_text(encoding="utf-8")) or {}
        artifacts = (conf.get("flavors", {}).get("python_function", {}).get("artifacts") or {})
        entry = artifacts.get(ARTIFACT_KEY)
        if entry and entry.get("path"):
            candidate = nested_dir(local, entry["path"], source="MLmodel")
            if (candidate / METADATA_FILE).exists():
                return candidate
    for candidate in sorted(local.rglob(METADATA_FILE)):
        return nested_dir(local, str(candidate.parent.relative_to(local)), source=METADATA_FILE)
    raise PipelineError(f"{local}: this MLflow model holds no stance model directory ({METADATA_FILE}); "
                        "was it logged by `pipeline train`?")



# ---------------------------------------------------------------- finding and fetching a model

def is_mlflow_uri(uri: str) -> bool:
    return "://" in uri or uri.startswith(("runs:/", "models:/"))


# URIs resolved against the configured MLflow store (tracking.uri): what they fetch was logged there, so trusted.
STORE_SCHEMES = ("runs", "models", "mlflow-artifacts")


def uri_origin(uri: str) -> str:
    """Where a model URI points: "store" (the configured MLflow store), "local" (a path, or a file: URI) or
    "remote" (any other scheme MLflow can download from: s3://, https://, ...)."""
    from urllib.parse import urlparse

    if not is_mlflow_uri(uri):
        return "local"
    scheme = urlparse(uri).scheme.lower()
    return "store" if scheme in STORE_SCHEMES else "local" if scheme == "file" else "remote"


def local_path(uri: str, key: str) -> Path:
    """The directory a path or a file: URI names (file:// is read in place, not copied)."""
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    if not uri.lower().startswith("file:"):
        return Path(uri)
    parsed = urlparse(uri)
    if parsed.netloc not in ("", "localhost"):
        raise PipelineError(f"{key}={uri!r}: a file: URI on another host; give a local directory")
    return Path(url2pathname(parsed.path))


def fetch_model_dir(cfg, uri: str, *, key: str, download_to=None) -> Path:
    """A local stance model directory for `uri`: a model dir, a downloaded MLflow model, or an MLflow URI
    (runs:/…, models:/<name>@<alias>, models:/m-…) fetched from the configured tracking store.
    `key` is the config key the URI came from, named in errors. Whether the directory may be loaded is decided
    here, before anything in it is loaded (pipeline.models.trust.check_model_dir)."""
    uri = str(uri)
    origin = uri_origin(uri)
    if origin == "local":
        local = local_path(uri, key)
        if not local.exists():
            raise PipelineError(f"{key}={uri!r}: no such directory, and not an MLflow URI "
                                "(runs:/<run id>/model, models:/<name>@<alias>, models:/m-<id>)")
        if (local / "MLmodel").exists():  # a downloaded MLflow model: the stance model is inside it
            stance_dir = model_dir_of_pyfunc(local)
        else:
            read_model_metadata(local)  # else it must be a stance model dir itself: clear error if not
            stance_dir = local
        check_model_dir(cfg, stance_dir, key=key, shown=uri, origin=origin)
        return stance_dir

    mlflow = tracking.setup(cfg)  # the store the config names, whatever ran before in this process
    if download_to is not None:
        Path(download_to).mkdir(parents=True, exist_ok=True)
    try:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=uri, dst_path=None if download_to is None else str(download_to))
    except Exception as exc:  # MLflow raises many types; the user needs the URI and the reason
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PipelineError(
            f"{key}={uri!r}: cannot be loaded from {tracking.tracking_uri(cfg)} ({first[:300]}); "
            "check the run id / model name and alias (`mlflow ui`), or give a local model directory"
        ) from None
    try:
        stance_dir = model_dir_of_pyfunc(local)
        check_model_dir(cfg, stance_dir, key=key, shown=uri, origin=origin)
    except PipelineError:
        if origin == "remote":  # a refused copy must not stay where paths.output_root would vouch for it
            shutil.rmtree(local, ignore_errors=True)
        raise
    return stance_dir


def check_model_uri(cfg, uri: str, *, key: str) -> None:
    """Decide up front, before a stage does any work, whether the model `uri` may be loaded (fetch_model_dir's
    check; a remote model is fetched into a temporary directory for it). A model from the store is trusted."""
    if uri_origin(str(uri)) == "store":
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="model-check-") as tmp:
        fetch_model_dir(cfg, uri, key=key, download_to=tmp)


def model_identity(uri: str, model_dir: Path) -> str:
    """A model as predicted with: the URI and a digest of the model directory's files (predict's parts manifest,
    the Spark job's staged copy)."""
    import hashlib

    h = hashlib.sha256()
    for path in sorted(p for p in Path(model_dir).rglob("*") if p.is_file()):
        h.update(f"{path.relative_to(model_dir)}\x1f{path.stat().st_size}\x1f".encode())
        if path.stat().st_size <= 1 << 20:
            h.update(path.read_bytes())
    return f"{uri}#{h.hexdigest()[:16]}"


@dataclass
class ResolvedModel:
    model_dir: Path
    uri: str                 # what was asked for, or the URI the default resolved to
    run_id: str | None       # the training run, when known: its config gives the segmentation rules


def source_run_id(uri: str) -> str | None:
    """The training run behind an MLflow model URI, or None when it cannot be told."""
    from mlflow import MlflowClient

    client = MlflowClient()
    try:
        if uri.startswith("runs:/"):
            return uri[len("runs:/"):].split("/")[0]
        if uri.startswith("models:/"):
            rest = uri[len("models:/"):].strip("/")
            if rest.startswith("m-") and "/" not in rest and "@" not in rest:
                return client.get_logged_model(rest).source_run_id
            if "@" in rest:
                name, alias = rest.split("@", 1)
                version = client.get_model_version_by_alias(name, alias)
            else:
                name, number = rest.rsplit("/", 1)
                version = client.get_model_version(name, number)
            if version.run_id:
                return version.run_id
            model_id = getattr(version, "model_id", None)
            return client.get_logged_model(model_id).source_run_id if model_id else None
    except Exception as exc:  # lineage is a nicety; the model itself is what must resolve
        log.debug("no source run for %s: %s", uri, exc)
    return None


def resolve_model(cfg: DictConfig, download_to: Path) -> ResolvedModel:
    """Turn `model_uri` (or, without one, the served model: models:/<tracking.register>@<tracking.alias>) into a
    local stance model directory."""
    uri = OmegaConf.select(cfg, "model_uri", default=None)
    run_id = None
    if uri in (None, ""):
        from pipeline.models.serving import served_model

        served = served_model(cfg)
        uri, run_id = served.uri, served.run_id
    uri = str(uri)
    model_dir = fetch_model_dir(cfg, uri, key="model_uri", download_to=download_to)
    if not is_mlflow_uri(uri):
        return ResolvedModel(model_dir, uri, None)
    return ResolvedModel(model_dir, uri, run_id or source_run_id(uri))


def segment_rules_for(cfg: DictConfig, model: ResolvedModel) -> SegmentRules:
    """The segmentation rules the model was trained with (its run's config.yaml); else today's config."""
    if model.run_id:
        try:
            import mlflow

            text = mlflow.artifacts.load_text(f"runs:/{model.run_id}/config.yaml")
            trained = OmegaConf.create(text)
            if OmegaConf.select(trained, "segment") is not None:
                log.info("predict: segmentation rules from the training run %s", model.run_id)
                return SegmentRules.from_cfg(trained.segment)
        except Exception as exc:
            log.warning("predict: cannot read config.yaml of run %s (%s); using the current segment config",
                        model.run_id, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    else:
        log.info("predict: model %s has no training run to take segmentation rules from; using the "
                 "current segment config", model.uri)
    return SegmentRules.from_cfg(cfg.segment)
