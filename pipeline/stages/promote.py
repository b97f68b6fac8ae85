"""promote stage: which model predict serves, and moving it by hand.

    python -m pipeline promote                 # the registered versions, their scores, and which one is served
    python -m pipeline promote 3               # version 3 takes tracking.alias (champion)
    python -m pipeline promote <run id>        # the version of that train run (registered first if need be)

The rule that moves the alias without this command is in pipeline.models.serving (and conf/tracking/default.yaml).
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf

from pipeline.models import serving
from pipeline.core import tracking
from pipeline.core.errors import PipelineError

log = logging.getLogger(__name__)


def promote(cfg: DictConfig) -> dict:
    name, alias = serving.model_name(cfg), serving.alias_name(cfg)
    if not (name and alias):
        raise PipelineError("promote needs tracking.register and tracking.alias (see conf/tracking/default.yaml)")
    target = OmegaConf.select(cfg, "target", default=None)
    result: dict = {"model": name, "alias": alias}
    if target not in (None, ""):
        version, run_id = serving.resolve_target(cfg, str(target))
        uri = serving.set_alias(cfg, version)
        log.info("promote: %s is now version %s (run %s)", uri, version, run_id)
        print(f"{uri} → version {version} (run {run_id}); `python -m pipeline predict` now serves it")
        result.update(version=version, run_id=run_id, served_as=uri)
    table = serving.candidates(cfg)
    print(f"versions of {name} (served: {name}@{alias}):")
    print(serving.format_candidates(table))
    experiment = tracking.setup(cfg).get_experiment_by_name(str(cfg.tracking.experiment))
    if experiment is not None:
        print(f"their runs side by side (`make ui` first): {tracking.headline_url(cfg, experiment.experiment_id)}")
    result["candidates"] = table
    return result
