"""MLflow set-up shared by every stage that logs: store, experiment, runs, params and tags."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator, Mapping

from omegaconf import DictConfig, OmegaConf

from pipeline.core import distributed, provenance, run_owners
from pipeline.core.errors import PipelineError

log = logging.getLogger(__name__)

MAX_PARAM_CHARS = 500  # MLflow rejects longer param values (the limit is 6000 on recent servers, 500 on old)
# MLflow's marker for a model-training experiment (not a GenAI one). MLflow 3.17's UI does not pick the view by it:
# it opens every experiment in the view of its global "GenAI | Model training" switch (GenAI until the user clicks
# Model training, then remembered by the browser), so the description below starts by saying where the runs are.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
NOTE_TAG = "mlflow.note.content"  # an experiment's or a run's description in the UI
EXPERIMENT_DESCRIPTION = (  # its first line is what the UI shows until the description is unfolded
    "The runs are in the **Model training** view (the switch at the top left); "
    "[open the headline view]({headline}): scores as columns, score charts first. "
    "Stance toward the agreement (negative / neutral / positive) in Arabic news sentences, by the `pipeline` "
    "project: one run per `train` (test macro-F1 with a bootstrap interval, baselines on the same rows, calibration, "
    "the served model), `evaluate` (the cross-validated, honest number), `rules` (the lexicon against gold) and "
    "sweep (`--multirun`, child runs named by their swept values).")
# Earlier descriptions of ours start like this; they are replaced by the current one (one written in the UI is kept).
OUR_DESCRIPTION_START = "The runs are in the **Model training** view"


# mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI (for subprocesses); a value we put there ourselves
# must not shadow the next config's store when several configs run in one process (tests, `all`).
_URIS_SET_HERE: set[str] = set()


def tracking_uri(cfg: DictConfig) -> str:
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    if from_env and from_env not in _URIS_SET_HERE:
        return from_env
    return str(cfg.tracking.uri)


# Seconds a tracking server gets to answer the reachability check before the stage fails (instead of MLflow's
# minutes of retries followed by pages of tracebacks).
REACHABLE_TIMEOUT_S = 5.0
_REACHABLE: set[str] = set()


def check_reachable(cfg: DictConfig) -> None:
    """Fail fast, in one line, when the configured tracking store is an http(s) server that does not answer.

    Called before a stage that logs does any work, so a stopped server costs seconds, not a finished training.
    A local store (sqlite, file) needs no check.
    """
    uri = tracking_uri(cfg)
    if not uri.startswith(("http://", "https://")) or uri in _REACHABLE:
        return
    parsed = urllib.parse.urlsplit(uri)
    host = parsed.hostname or "localhost"
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    fix = ("start the server (e.g. `mlflow server --host 127.0.0.1 --port {port}`), or point tracking.uri / "
           "MLFLOW_TRACKING_URI at a running one, or use the local store tracking.uri=sqlite:///mlruns/mlflow.db")
    fix = fix.format(port=port)
    try:
        with socket.create_connection((host, port), timeout=REACHABLE_TIMEOUT_S):
            pass
    except OSError as exc:
        raise PipelineError(f"MLflow tracking server {uri} is not reachable ({exc.strerror or exc}); {fix}") from None
    health = urllib.parse.urljoin(uri.rstrip("/") + "/", "health")
    try:
        with urllib.request.urlopen(health, timeout=REACHABLE_TIMEOUT_S) as response:
            response.read(64)
    except urllib.error.HTTPError:
        pass  # it answers HTTP: a proxy or an older server without /health is still a server
    except (OSError, ValueError) as exc:
        raise PipelineError(f"MLflow tracking server {uri} does not answer ({exc}); {fix}") from None
    _REACHABLE.add(uri)


def _store_db(uri: str) -> Path | None:
    """The database file of a local SQLite store; None for other stores."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


# Stores found read-only (uri -> why), as of their last `setup`: predict reads from them, nothing writes.
_READ_ONLY: dict[str, str] = {}
# Stores whose runs of dead processes this process has marked KILLED (once per store and process).
_TIDIED: set[str] = set()


def _read_only_reason(db: Path) -> str | None:
    """Why a local SQLite store cannot be written (a read-only mount, a directory without write permission);
    None when it can. SQLite writes a journal beside the database, so its directory must be writable too."""
    folder = db.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"{folder} cannot be created: {exc.strerror or exc}"
    if db.exists() and not os.access(db, os.W_OK):
        return f"{db} is not writable"
    if not os.access(folder, os.W_OK):
        return f"{folder} is not writable"
    return None


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[str | None]:
    """Inter-process lock around the first use of a SQLite store; yields why the store is read-only (None when
    it is writable, and for stores other than a local SQLite file).

    MLflow creates and migrates the schema on first use; two processes doing that at once on a fresh file fail
    with `table runs already exists` / `duplicate column name`, and two creating the same experiment collide too.
    A read-only store is only read (its schema exists; reads need no lock).
    """
    db = _store_db(uri)
    reason = None if db is None else _read_only_reason(db)
    if db is None or reason is not None:
        yield reason
        return
    try:
        fh = open(db.parent / f".{db.name}.lock", "a")
    except OSError as exc:  # e.g. a lock file left read-only by someone else
        yield f"{db.parent / f'.{db.name}.lock'} cannot be opened: {exc.strerror or exc}"
        return
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield None
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_only_error(uri: str, reason: str, doing: str) -> PipelineError:
    """The one line for a write to a read-only store: which store, why, and the fixes."""
    db = _store_db(uri)
    where = f"make {db.parent} writable, or " if db is not None else ""
    return PipelineError(
        f"MLflow store {uri} is read-only ({reason}): {doing} writes to it; {where}point tracking.uri (or "
        "MLFLOW_TRACKING_URI) at a writable store, e.g. tracking.uri=sqlite:///<a writable dir>/mlflow.db "
        "(predict still reads models from a read-only store)")


def require_writable(cfg: DictConfig, doing: str) -> None:
    """PipelineError (one line) when the configured store was found read-only by `setup`."""
    uri = tracking_uri(cfg)
    if uri in _READ_ONLY:
        raise read_only_error(uri, _READ_ONLY[uri], doing)


def setup(cfg: DictConfig):
    """Point MLflow at the configured store and make sure the experiment exists; returns the mlflow module.

    A read-only local store (a mounted share, `chmod -R a-w mlruns`) is opened for reading: nothing is written
    (no experiment tags, no run marked KILLED), and `require_writable` refuses the writers in one line. The first
    time a process opens a writable store, runs left RUNNING by dead processes are marked KILLED (run_owners)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    check_reachable(cfg)
    import mlflow

    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    if os.environ.get("MLFLOW_TRACKING_URI") == uri and uri == str(cfg.tracking.uri):
        _URIS_SET_HERE.add(uri)
    name = str(cfg.tracking.experiment)
    # The first call opens (creates, migrates) the store; under the lock, so is the experiment's creation.
    with _store_lock(uri) as read_only:
        if read_only is not None:
            if not _store_db(uri).exists():
                raise PipelineError(f"MLflow store {uri} does not exist and cannot be created ({read_only}); "
                                    "point tracking.uri (or MLFLOW_TRACKING_URI) at an existing store or a "
                                    "writable directory")
            if uri not in _READ_ONLY:
                log.info("MLflow store %s is read-only (%s): reading only", uri, read_only)
            _READ_ONLY[uri] = read_only
            experiment = mlflow.get_experiment_by_name(name)
            if experiment is not None:
                mlflow.set_experiment(name)
            return mlflow
        _READ_ONLY.pop(uri, None)
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is None:
            artifact_location = None
            if not uri.startswith(("http://", "https://", "databricks")):
                # A local store needs an explicit artifact location, else artifacts land under the CWD.
                artifact_location = Path(cfg.tracking.artifact_root).resolve().as_uri()
            try:
                mlflow.create_experiment(name, artifact_location=artifact_location)
            except mlflow.exceptions.MlflowException:
                # Another process (on a server store, where the file lock does not reach) created it first.
                if mlflow.get_experiment_by_name(name) is None:
                    raise
            experiment = mlflow.get_experiment_by_name(name)
        mark_experiment(experiment)
    mlflow.set_experiment(name)
    if uri not in _TIDIED:
        _TIDIED.add(uri)
        try:
            run_owners.mark_dead_runs(mlflow.MlflowClient(), experiment.experiment_id)
        except mlflow.exceptions.MlflowException as exc:  # housekeeping: a store that refuses it still serves
            log.warning("runs of dead processes not checked in %s: %s", uri, str(exc).splitlines()[0])
    return mlflow


def mark_dead_runs(cfg: DictConfig) -> list[str]:
    """Mark KILLED the RUNNING runs of the configured experiment whose process is gone (what `setup` does once
    per store and process); returns their ids."""
    _TIDIED.add(tracking_uri(cfg))  # done here, not by setup: the ids are this call's answer
    mlflow = setup(cfg)
    require_writable(cfg, "marking runs of dead processes KILLED")
    experiment = mlflow.get_experiment_by_name(str(cfg.tracking.experiment))
    return run_owners.mark_dead_runs(mlflow.MlflowClient(), experiment.experiment_id)


def mark_experiment(experiment, client=None) -> None:
    """Tag the experiment as model development and give it a description, unless it already has them (a
    description someone wrote in the UI is kept; one of ours is brought up to date); store the headline view of
    its runs (ours: kept up to date). `client`: an MlflowClient (default: the current tracking URI's)."""
    from mlflow import MlflowClient

    client = client or MlflowClient()
    tags = dict(experiment.tags or {})
    if EXPERIMENT_KIND_TAG not in tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    description = EXPERIMENT_DESCRIPTION.format(headline=headline_path(experiment.experiment_id))
    if tags.get(NOTE_TAG, OUR_DESCRIPTION_START).startswith(OUR_DESCRIPTION_START) and tags.get(NOTE_TAG) != description:
        client.set_experiment_tag(experiment.experiment_id, NOTE_TAG, description)
    view = json.dumps(headline_view(), separators=(",", ":"))
    if tags.get(VIEW_TAG_PREFIX + VIEW_KEY) != view:
        client.set_experiment_tag(experiment.experiment_id, VIEW_TAG_PREFIX + VIEW_KEY, view)


# The runs page as the README's comparison needs it, with no clicks: a view saved in MLflow's own "share" format
# (the UI's Share button writes the experiment tag mlflow.sharedViewState.<key>; `?viewStateShareKey=<key>` opens it).
# The runs table shows the headline scores as columns: held-out test macro-F1 with its interval (train runs), the
# pooled cross-validated one (evaluate runs), the rules' (label's rules runs), each beside its baselines; the chart
# view opens on a "Headline" section with those and the per-step validation curve, every other metric under the
# collapsed "Model metrics" below it. The metric names stay as they are (pipeline.models.serving, the tests and the docs
# read them); this only orders what is shown.
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
VIEW_KEY = "pipeline-headline"
HEADLINE_COLUMNS = ("test_macro_f1", "test_macro_f1_ci_low", "test_macro_f1_ci_high", "baseline_tfidf_test_macro_f1",
                    "baseline_rules_test_macro_f1", "oof_macro_f1", "oof_macro_f1_ci_low", "oof_macro_f1_ci_high",
                    "baseline_rules_oof_macro_f1", "rules_macro_f1")
HEADLINE_COLUMN_PX = 110  # wide enough for most of a name and 5 digits of the value
HEADLINE_BARS = ("test_macro_f1", "baseline_tfidf_test_macro_f1", "baseline_rules_test_macro_f1", "oof_macro_f1",
                 "baseline_tfidf_oof_macro_f1", "rules_macro_f1")
HEADLINE_LINES = ("val_macro_f1",)  # per-step curves of the train runs that validate
HEADLINE_SECTION = "Headline"
MODEL_METRICS_SECTION, SYSTEM_METRICS_SECTION = "Model metrics", "System metrics"  # the UI's own section names


def headline_view() -> dict:
    """The saved view (MLflow UI state: selected columns, chart cards and sections)."""
    def uuid(name: str) -> str:
        return "pipeline-" + hashlib.sha256(name.encode()).hexdigest()[:12]

    headline = uuid(HEADLINE_SECTION)
    card = {"runsCountToCompare": 20, "metricSectionId": headline, "deleted": False, "isGenerated": True,
            "selectedMetricKeys": None}
    charts = [{**card, "uuid": uuid(m), "type": "BAR", "metricKey": m, "displayName": m} for m in HEADLINE_BARS]
    charts += [{**card, "uuid": uuid(m), "type": "LINE", "metricKey": m, "displayName": m, "lineSmoothness": 0,
                "xAxisKey": "step", "xAxisScaleType": "linear", "scaleType": "linear", "selectedXAxisMetricKey": "",
                "useGlobalXaxisKey": True, "useGlobalLineSmoothing": True, "yAxisKey": "metric",
                "yAxisExpressions": [], "ignoreOutliers": False, "range": {}} for m in HEADLINE_LINES]
    sections = [{"uuid": headline, "name": HEADLINE_SECTION, "display": True, "isReordered": False,
                 "deleted": False, "isGenerated": True}]
    sections += [{"uuid": uuid(name), "name": name, "display": False, "isReordered": False, "deleted": False,
                  "isGenerated": True} for name in (MODEL_METRICS_SECTION, SYSTEM_METRICS_SECTION)]
    columns = [f"metrics.`{m}`" for m in HEADLINE_COLUMNS]
    return {"selectedColumns": ["attributes.`Models`", *columns], "columnOrder": columns,
            "columnWidths": {c: HEADLINE_COLUMN_PX for c in columns},
            "compareRunCharts": charts, "compareRunSections": sections, "isAccordionReordered": True,
            "hideEmptyCharts": True, "orderByKey": "attributes.start_time", "orderByAsc": False}


def headline_path(experiment_id: str) -> str:
    """The UI's address of the experiment's runs in the headline view (after the server's /)."""
    return f"#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}&workflowType=machine_learning"


def headline_url(cfg: DictConfig, experiment_id: str) -> str:
    """The runs page of the experiment in the headline view, at `tracking.ui_url` (what `make ui` serves)."""
    base = str(OmegaConf.select(cfg, "tracking.ui_url", default="") or "http://127.0.0.1:5000").rstrip("/")
    return f"{base}/{headline_path(experiment_id)}"


_RUN_NAME_SUFFIX: list[str] = []


@contextlib.contextmanager
def run_name_suffix(suffix: str) -> Iterator[None]:
    """Runs started inside get `suffix` after their name, e.g. a sweep job's `lr=1e-4`."""
    _RUN_NAME_SUFFIX.append(suffix)
    try:
        yield
    finally:
        _RUN_NAME_SUFFIX.pop()


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


@contextlib.contextmanager
def start_run(cfg: DictConfig, run_name: str, *, nested: bool = False, tags: Mapping[str, str] | None = None,
              log_params: bool = True, run_id: str | None = None) -> Iterator[Any]:
    """One MLflow run with the config as params and artifact; an exception marks it FAILED.

    `run_id` reopens an existing run (a resumed train run): its params are already logged and are kept."""
    mlflow = setup(cfg)
    # Inside a sweep's or a CV's parent run, a run becomes its child.
    nested = nested or mlflow.active_run() is not None
    if _RUN_NAME_SUFFIX and _RUN_NAME_SUFFIX[-1]:
        run_name = f"{run_name} {_RUN_NAME_SUFFIX[-1]}"
    if run_id:
        log_params = False
    require_writable(cfg, f"{cfg.stage} (its MLflow run)")
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name, nested=nested) as run:
        # the owner (pid, host, start time): a run left RUNNING by a dead process is marked KILLED later
        mlflow.set_tags({"stage": str(cfg.stage), **git_tags(), **run_owners.process_tags(), **(tags or {})})
        if log_params:
            with provenance.unrecorded():  # the whole config is logged; a stage does not depend on all of it
                mlflow.log_params(flatten_config(cfg))
                mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        try:
            yield run
        except BaseException:
            # mlflow's ActiveRun marks the run FAILED on the way out; a launcher's SIGTERM (another rank failed)
            # must not interrupt that and leave it RUNNING.
            distributed.defer_termination()
            raise


RECIPE_SECTIONS = ("data", "segment", "labeling", "model", "train")


def recipe_tags(cfg: DictConfig) -> dict[str, str]:
    """Tags that say what a model was trained on and how: the data set, the label set, and a digest of the
    config sections that make the recipe (train runs and evaluate runs of one recipe share it)."""
    import json

    from pipeline import LABELS

    sections = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in RECIPE_SECTIONS if key in cfg}
    sections["train"] = {k: v for k, v in (sections.get("train") or {}).items() if k not in ("resume", "num_threads")}
    digest = hashlib.sha256(json.dumps(sections, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {"data_name": str(OmegaConf.select(cfg, "data.name", default="")), "label_set": ",".join(LABELS),
            "recipe_digest": digest}
