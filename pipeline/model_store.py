"""Stance models in MLflow: logging a model directory as a pyfunc model, and finding and fetching one again.

`log_stance_model(dir)` logs the predictor of pipeline.inference as an MLflow pyfunc model, so
`mlflow.pyfunc.load_model`, `spark_udf` and `mlflow models serve` give the labels and probabilities of the
predict stage. `fetch_model_dir` turns a model directory or an MLflow URI into a local stance model directory;
`resolve_model` adds predict's default (the registry alias, pipeline.registry) and the training run behind a URI,
whose config gives the segmentation rules (`segment_rules_for`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Sequence

import mlflow.pyfunc
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from pipeline import tracking
from pipeline.errors import PipelineError
from pipeline.inference import METADATA_FILE, load_predictor, read_model_metadata
from pipeline.segmentation import SegmentRules

log = logging.getLogger(__name__)

ARTIFACT_KEY = "stance_model"  # name of the model directory among the pyfunc model's artifacts
# Packages the logged pyfunc model needs besides the pipeline code it carries (code_paths).
RUNTIME_PACKAGES = ("torch", "transformers", "tokenizers", "numpy", "pandas", "scikit-learn", "arabert", "mlflow")


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


class StancePyfuncModel(mlflow.pyfunc.PythonModel):
    """The MLflow face of a stance model directory: text in, label + p_<label> out."""

    def load_context(self, context):
        self.predictor = load_predictor(context.artifacts[ARTIFACT_KEY])

    # The DataFrame hint tells MLflow that the logged signature, not the hint, describes the input.
    def predict(self, context, model_input: pd.DataFrame, params=None):
        batch_size = int((params or {}).get("batch_size", 64))
        out = self.predictor.predict(texts_from_model_input(model_input), batch_size=batch_size)
        return out[self.predictor.output_columns]


def pinned_requirements() -> list[str]:
    pins = []
    for name in RUNTIME_PACKAGES:
        try:
            version = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
        pins.append(f"{name}=={version.split('+')[0]}")  # a local tag (2.13.0+cpu) is not on PyPI
    return pins


def log_stance_model(model_dir, *, name: str = "model", registered_model_name: str | None = None,
                     input_example: Sequence[str] | None = None):
    """Log `model_dir` as an MLflow pyfunc model in the active run; returns the ModelInfo.

    The pyfunc carries the model directory as an artifact and this package's code (code_paths), so
    `mlflow.pyfunc.load_model(info.model_uri)` works in a fresh process, in Spark and in `mlflow models serve`.
    """
    from mlflow.models import infer_signature
    from mlflow.types.schema import ParamSchema, ParamSpec

    model_dir = Path(model_dir)
    predictor = load_predictor(model_dir)  # refuses a broken directory before anything is logged
    if mlflow.active_run() is None:
        raise PipelineError("log_stance_model needs an active MLflow run (use pipeline.tracking.start_run)")
    examples = [str(t) for t in (input_example or ["تم التوصل إلى اتفاق بين الجانبين."])][:5]
    example_in = pd.DataFrame({"text": examples})
    example_out = predictor.predict(examples)[predictor.output_columns]
    params = ParamSchema([ParamSpec("batch_size", "long", 64)])
    signature = infer_signature(example_in, example_out)
    signature = type(signature)(inputs=signature.inputs, outputs=signature.outputs, params=params)
    package_dir = Path(__file__).resolve().parent
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=StancePyfuncModel(),
        artifacts={ARTIFACT_KEY: str(model_dir)},
        code_paths=[str(package_dir)],
        signature=signature,
        input_example=example_in,
        pip_requirements=pinned_requirements(),
        registered_model_name=registered_model_name,
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
        if entry:
            candidate = local / entry.get("path", "")
            if (candidate / METADATA_FILE).exists():
                return candidate
    for candidate in sorted(local.rglob(METADATA_FILE)):
        return candidate.parent
    raise PipelineError(f"{local}: this MLflow model holds no stance model directory ({METADATA_FILE}); "
                        "was it logged by `pipeline train`?")



# ---------------------------------------------------------------- finding and fetching a model

def is_mlflow_uri(uri: str) -> bool:
    return "://" in uri or uri.startswith(("runs:/", "models:/"))


PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")


def refuse_untrusted_pickles(cfg, local: Path, *, key: str) -> None:
    """A model directory outside this project's MLflow store and outputs whose sklearn part is a pickle (a tfidf
    model.joblib): loading it runs whatever code it holds, so it is refused unless predict.trust_model_dir=true."""
    if bool(OmegaConf.select(cfg, "predict.trust_model_dir", default=False)):
        return
    pickles = [p for p in Path(local).rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES and p.is_file()]
    if not pickles:
        return
    where = Path(local).resolve()
    trusted_roots = [OmegaConf.select(cfg, k, default=None) for k in ("tracking.artifact_root", "paths.output_root")]
    for root in trusted_roots:
        if root and where.is_relative_to(Path(str(root)).resolve()):
            return
    raise PipelineError(
        f"{key}={local}: {pickles[0].name} is a pickle (loading it can run any code) and this directory is outside "
        "the MLflow store and paths.output_root; if you trust where it came from, add predict.trust_model_dir=true, "
        "else log it with `pipeline train` and use its runs:/ or models:/ URI")


def fetch_model_dir(cfg, uri: str, *, key: str, download_to=None) -> Path:
    """A local stance model directory for `uri`: a model dir, a downloaded MLflow model, or an MLflow URI
    (runs:/…, models:/<name>@<alias>, models:/m-…) fetched from the configured tracking store.
    `key` is the config key the URI came from, named in errors."""
    uri = str(uri)
    if not is_mlflow_uri(uri):
        local = Path(uri)
        if not local.exists():
            raise PipelineError(f"{key}={uri!r}: no such directory, and not an MLflow URI "
                                "(runs:/<run id>/model, models:/<name>@<alias>, models:/m-<id>)")
        if (local / "MLmodel").exists():  # a downloaded MLflow model: the stance model is inside it
            stance_dir = model_dir_of_pyfunc(local)
        else:
            read_model_metadata(local)  # else it must be a stance model dir itself: clear error if not
            stance_dir = local
        refuse_untrusted_pickles(cfg, stance_dir, key=key)  # what load_predictor would unpickle
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
    return model_dir_of_pyfunc(local)


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
        from pipeline.registry import served_model

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
