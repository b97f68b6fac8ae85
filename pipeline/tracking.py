"""MLflow set-up shared by every stage that logs: store, experiment, runs, params and tags."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import subprocess
from pathlib import Path
from typing import Any, Iterator, Mapping

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

MAX_PARAM_CHARS = 500  # MLflow rejects longer param values (the limit is 6000 on recent servers, 500 on old)


# mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI (for subprocesses); a value we put there ourselves
# must not shadow the next config's store when several configs run in one process (tests, `all`).
_URIS_SET_HERE: set[str] = set()


def tracking_uri(cfg: DictConfig) -> str:
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    if from_env and from_env not in _URIS_SET_HERE:
        return from_env
    return str(cfg.tracking.uri)


def setup(cfg: DictConfig):
    """Point MLflow at the configured store and make sure the experiment exists; returns the mlflow module."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    if os.environ.get("MLFLOW_TRACKING_URI") == uri and uri == str(cfg.tracking.uri):
        _URIS_SET_HERE.add(uri)
    name = str(cfg.tracking.experiment)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        artifact_location = None
        if not uri.startswith(("http://", "https://", "databricks")):
            # A local store needs an explicit artifact location, else artifacts land under the CWD.
            artifact_location = Path(cfg.tracking.artifact_root).resolve().as_uri()
        mlflow.create_experiment(name, artifact_location=artifact_location)
    mlflow.set_experiment(name)
    return mlflow


def flatten_config(cfg: DictConfig) -> dict[str, str]:
    """The composed config as flat `a.b.c` params, long values cut so that no run crashes on them."""
    flat: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            text = str(node)
            flat[prefix[:-1]] = text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."

    walk(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False), "")
    return flat


def git_tags() -> dict[str, str]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git_commit": commit, "git_dirty": str(bool(dirty)).lower()}


def file_digest(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


@contextlib.contextmanager
def start_run(cfg: DictConfig, run_name: str, *, nested: bool = False, tags: Mapping[str, str] | None = None,
              log_params: bool = True, run_id: str | None = None) -> Iterator[Any]:
    """One MLflow run with the config as params and artifact; an exception marks it FAILED.

    `run_id` reopens an existing run (a resumed train run): its params are already logged and are kept."""
    mlflow = setup(cfg)
    # Inside a sweep's or a CV's parent run, a run becomes its child.
    nested = nested or mlflow.active_run() is not None
    if run_id:
        log_params = False
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name, nested=nested) as run:
        mlflow.set_tags({"stage": str(cfg.stage), **git_tags(), **(tags or {})})
        if log_params:
            mlflow.log_params(flatten_config(cfg))
            mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        yield run  # mlflow's ActiveRun marks the run FAILED when the block raises
