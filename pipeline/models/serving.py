"""Which model predict serves: one alias in MLflow's model registry, moved by one rule.

- Every train run of a real model registers a version of `tracking.register` (`stance-<data.name>`: a model is
  only ever served for the data set it was trained on). A smoke model, built from scratch with random weights
  (`model=tiny`), is never registered and never served by default; its `runs:/<id>/model` URI still works.
- Unless `tracking.promote=false`, that version takes the alias `tracking.alias` (`champion`): the model you
  trained last is the one served. A sweep (`train -m ...`) registers every job and, once done, promotes its best
  job by `tracking.sweep_metric` (a selection maximum, said so in the log).
- `python -m pipeline promote <version | run id>` moves the alias by hand; `python -m pipeline promote` lists the
  candidates with their scores.
- `predict` (and `spark_predict`) without `model_uri` serve `models:/<register>@<alias>` and nothing else; with no
  such alias they stop with one line naming `model_uri=` and `promote`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from pipeline.core import tracking
from pipeline.core.errors import PipelineError

log = logging.getLogger(__name__)

SMOKE_TAG = "smoke_model"  # "true" on train runs of a model built from scratch (never registered)


@dataclass
class Served:
    uri: str                 # models:/<name>@<alias>
    version: str
    run_id: str | None


def model_name(cfg: DictConfig) -> str | None:
    name = OmegaConf.select(cfg, "tracking.register", default=None)
    return str(name) if name else None


def alias_name(cfg: DictConfig) -> str | None:
    alias = OmegaConf.select(cfg, "tracking.alias", default=None)
    return str(alias) if alias else None


def _client(cfg: DictConfig):
    from mlflow import MlflowClient

    tracking.setup(cfg)
    return MlflowClient()


def served_model(cfg: DictConfig) -> Served:
    """The default model of predict: the alias, or one error line saying what to do."""
    name, alias = model_name(cfg), alias_name(cfg)
    if not (name and alias):
        raise PipelineError("no default model: tracking.register and tracking.alias are not both set; give "
                            "model_uri=<runs:/<run id>/model | models:/<name>@<alias> | a model directory>")
    client = _client(cfg)
    try:
        version = client.get_model_version_by_alias(name, alias)
    except Exception:
        raise PipelineError(_no_alias_message(cfg, client, name, alias)) from None
    log.info("predict: default model = %s@%s: version %s (run %s)", name, alias, version.version, version.run_id)
    return Served(f"models:/{name}@{alias}", str(version.version), version.run_id)


def _no_alias_message(cfg: DictConfig, client, name: str, alias: str) -> str:
    experiment = str(cfg.tracking.experiment)
    runs = tracking.setup(cfg).search_runs(
        experiment_names=[experiment], output_format="list", max_results=50,
        filter_string=f"tags.has_model = 'true' and tags.data_name = '{cfg.data.name}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"])
    smoke = [r for r in runs if r.data.tags.get(SMOKE_TAG) == "true"]
    real = [r for r in runs if r.data.tags.get(SMOKE_TAG) != "true"]
    where = f"no model is {name}@{alias} in {tracking.tracking_uri(cfg)}"
    if real:
        return (f"{where}; promote a trained one (`python -m pipeline promote` lists them, e.g. "
                f"`python -m pipeline promote {real[0].info.run_id}`) or give model_uri=runs:/{real[0].info.run_id}/model")
    if smoke:
        return (f"{where}: only smoke models (built from scratch, e.g. model=tiny) were trained on data "
                f"{cfg.data.name!r}, and they are never served by default; train a real model, or give "
                f"model_uri=runs:/{smoke[0].info.run_id}/model to use the latest smoke model anyway")
    return (f"{where}: no model was trained on data {cfg.data.name!r}; run `python -m pipeline train` first, or "
            "give model_uri=<runs:/<run id>/model | models:/<name>@<alias> | a model directory>")


def version_of_run(cfg: DictConfig, run_id: str) -> str | None:
    name = model_name(cfg)
    if not name:
        return None
    found = _client(cfg).search_model_versions(f"name='{name}' and run_id='{run_id}'")
    return str(max(int(v.version) for v in found)) if found else None


def set_alias(cfg: DictConfig, version: str) -> str:
    name, alias = model_name(cfg), alias_name(cfg)
    client = _client(cfg)
    tracking.require_writable(cfg, f"moving the alias {name}@{alias}")
    client.set_registered_model_alias(name, alias, str(version))
    return f"models:/{name}@{alias}"


def after_train(cfg: DictConfig, run_id: str, *, smoke: bool) -> dict:
    """The registry side of a finished train run: its version, and whether it took the alias."""
    outcome = {"registered_version": None, "served_as": None}
    if smoke or not model_name(cfg):
        return outcome
    version = version_of_run(cfg, run_id)
    outcome["registered_version"] = version
    if version and alias_name(cfg) and bool(OmegaConf.select(cfg, "tracking.promote", default=True)):
        outcome["served_as"] = set_alias(cfg, version)
        log.info("train: %s version %s is now %s (tracking.promote)", model_name(cfg), version, outcome["served_as"])
    return outcome


def promote_best_of_sweep(cfg: DictConfig, results: list) -> dict | None:
    """After a train sweep: the job with the best `tracking.sweep_metric` takes the alias."""
    metric = str(OmegaConf.select(cfg, "tracking.sweep_metric", default="test_macro_f1"))
    scored = [(r["metrics"].get(metric), r) for r in results
              if isinstance(r, dict) and r.get("registered_version") and r.get("metrics", {}).get(metric) is not None]
    if not scored or not alias_name(cfg) or not bool(OmegaConf.select(cfg, "tracking.promote", default=True)):
        return None
    score, best = max(scored, key=lambda pair: pair[0])
    uri = set_alias(cfg, best["registered_version"])
    log.warning("sweep: version %s (run %s) is now %s: the best %s of %d jobs (%.4f). A maximum over a sweep is a "
                "selection result, optimistic as an estimate of its quality on new articles",
                best["registered_version"], best["run_id"], uri, metric, len(scored), score)
    return {**best, "served_as": uri}


def resolve_target(cfg: DictConfig, target: str) -> tuple[str, str]:
    """(version, run id) for `promote <target>`: a version number, a run id, or runs:/<run id>/model."""
    client = _client(cfg)
    name = model_name(cfg)
    text = str(target).strip()
    match = re.fullmatch(r"runs:/([^/]+)(/.*)?", text)
    if text.isdigit():
        try:
            version = client.get_model_version(name, text)
        except Exception:
            raise PipelineError(f"promote {text}: {name} has no version {text}; `python -m pipeline promote` "
                                "lists them") from None
        return str(version.version), version.run_id
    run_id = match.group(1) if match else text
    try:
        run = client.get_run(run_id)
    except Exception:
        raise PipelineError(f"promote {text}: no such run or version of {name}; `python -m pipeline promote` "
                            "lists the candidates") from None
    if run.data.tags.get("has_model") != "true":
        raise PipelineError(f"promote {text}: run {run_id} logged no model (only finished train runs do)")
    if run.data.tags.get(SMOKE_TAG) == "true":
        raise PipelineError(f"promote {text}: run {run_id} is a smoke model (built from scratch), never served by "
                            f"default; use it explicitly with model_uri=runs:/{run_id}/model")
    version = version_of_run(cfg, run_id)
    if version is None:  # a run trained with tracking.register=null, or before the registry was used
        import mlflow

        tracking.require_writable(cfg, f"registering run {run_id} as a version of {name}")
        model_uri = run.data.tags.get("model_uri") or f"runs:/{run_id}/model"
        version = str(mlflow.register_model(model_uri, name).version)
        log.info("promote: registered run %s as %s version %s", run_id, name, version)
    return version, run_id


def candidates(cfg: DictConfig) -> pd.DataFrame:
    """Every version of the registered model with the scores that compare them.

    `test_macro_f1` compares runs that held out the same test articles only (column `test_articles`); `cv_macro_f1`
    (pooled leave-one-article-out F1 of an `evaluate` run of the same recipe, when there is one) compares recipes on
    the same gold."""
    client = _client(cfg)
    name = model_name(cfg)
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except Exception:
        versions = []
    champion = None
    if alias_name(cfg):
        try:
            champion = str(client.get_model_version_by_alias(name, alias_name(cfg)).version)
        except Exception:
            champion = None
    cv = recipe_cv_scores(cfg)
    rows = []
    for v in sorted(versions, key=lambda v: int(v.version), reverse=True):
        try:
            run = client.get_run(v.run_id)
        except Exception:
            continue
        m, t = run.data.metrics, run.data.tags
        rows.append({
            "version": str(v.version),
            "served": alias_name(cfg) if str(v.version) == champion else "",
            "run_id": v.run_id,
            "model": t.get("model_name", ""),
            "kind": t.get("model_kind", ""),
            "trained": pd.Timestamp(run.info.start_time, unit="ms").strftime("%Y-%m-%d %H:%M"),
            "test_macro_f1": m.get("test_macro_f1"),
            "test_ci": _interval(m.get("test_macro_f1_ci_low"), m.get("test_macro_f1_ci_high")),
            "test_articles": t.get("test_articles", ""),
            "cv_macro_f1": cv.get(t.get("recipe_digest", "")),
        })
    return pd.DataFrame(rows, columns=["version", "served", "run_id", "model", "kind", "trained", "test_macro_f1",
                                       "test_ci", "test_articles", "cv_macro_f1"])


def _evaluate_parents(cfg: DictConfig, data_name: str) -> list:
    """The finished cross-validation parent runs (evaluate) on one data set, oldest first."""
    return tracking.setup(cfg).search_runs(
        experiment_names=[str(cfg.tracking.experiment)], output_format="list",
        filter_string=f"tags.stage = 'evaluate' and tags.cv_parent = 'true' and tags.data_name = '{data_name}' "
                      "and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time ASC"])


def recipe_cv_scores(cfg: DictConfig) -> dict[str, float]:
    """recipe digest -> pooled out-of-fold macro-F1 of the newest evaluate run of that recipe on this data set."""
    found: dict[str, float] = {}
    for run in _evaluate_parents(cfg, str(cfg.data.name)):
        score = run.data.metrics.get("oof_macro_f1")
        if score is not None and run.data.tags.get("recipe_digest"):
            found[run.data.tags["recipe_digest"]] = float(score)
    return found


HYBRID_PARAM = "train.hybrid.enabled"    # the run's model serves the lexicon's rules beside the learned model


def _pair(metrics: dict, low: str, high: str) -> tuple[float, float] | None:
    lo, hi = metrics.get(low), metrics.get(high)
    return (float(lo), float(hi)) if lo is not None and hi is not None and lo == lo and hi == hi else None


def model_quality(cfg: DictConfig, run_id: str | None) -> dict | None:
    """How good the model of a train run is, as MLflow holds it: the run's held-out test macro-F1 (interval, number
    of gold sentences), whether it is a smoke model (tag SMOKE_TAG; None when the run does not say), and the pooled
    leave-one-article-out macro-F1 of the newest evaluate run of the same recipe on the same data (cv_*), and
    whether the model serves rules (a hybrid: the lexicon was written on the seeds' gold, so those figures are
    partly in-sample; `rules_in_sample`). None
    when the run is unknown or cannot be read (the report then says the quality is unknown)."""
    if not run_id:
        return None
    try:
        run = _client(cfg).get_run(run_id)
        m, t = run.data.metrics, run.data.tags
        parents = [r for r in _evaluate_parents(cfg, t.get("data_name", str(cfg.data.name)))
                   if t.get("recipe_digest") and r.data.tags.get("recipe_digest") == t.get("recipe_digest")
                   and r.data.metrics.get("oof_macro_f1") is not None]
    except Exception as exc:  # the report and the summary line go on without it
        log.warning("predict: cannot read the quality of run %s from MLflow (%s)", run_id,
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return None
    cv = parents[-1].data.metrics if parents else {}
    return {"run_id": run_id, "smoke": (t[SMOKE_TAG] == "true") if SMOKE_TAG in t else None,
            "test_macro_f1": m.get("test_macro_f1"), "test_ci": _pair(m, "test_macro_f1_ci_low", "test_macro_f1_ci_high"),
            "test_n": int(m["test_n"]) if m.get("test_n") else None,
            "cv_macro_f1": cv.get("oof_macro_f1"), "cv_ci": _pair(cv, "oof_macro_f1_ci_low", "oof_macro_f1_ci_high"),
            "cv_n": int(cv["oof_n"]) if cv.get("oof_n") else None,
            "cv_run_id": parents[-1].info.run_id if parents else None,
            "rules_in_sample": str(run.data.params.get(HYBRID_PARAM, "")).lower() == "true"}


def _interval(low, high) -> str:
    if low is None or high is None or low != low or high != high:
        return "—"
    return f"[{low:.2f}, {high:.2f}]"


def format_candidates(table: pd.DataFrame) -> str:
    if table.empty:
        return "no registered versions yet (train a real model: smoke models are never registered)"
    shown = table.assign(
        run_id=table["run_id"].str[:12],
        test_macro_f1=table["test_macro_f1"].map(lambda x: "—" if x is None or x != x else f"{x:.3f}"),
        cv_macro_f1=table["cv_macro_f1"].map(lambda x: "—" if x is None or x != x else f"{x:.3f}"),
        test_articles=table["test_articles"].map(lambda s: s if len(s) <= 24 else s[:21] + "..."))
    return "\n".join([
        shown.to_string(index=False),
        "test_macro_f1 compares versions with the same test_articles only; cv_macro_f1 (leave-one-article-out, "
        "pooled, from an evaluate run of the same recipe) compares recipes on the same gold."])
