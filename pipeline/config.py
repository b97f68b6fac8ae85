"""Config composition with Hydra's compose API, usable from the CLI, tests and notebooks alike."""

from __future__ import annotations

import os
import re
import secrets
import time
from pathlib import Path
from typing import Sequence

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf

from pipeline.errors import UsageError

CONF_DIR = Path(os.environ.get("PIPELINE_CONF_DIR", Path(__file__).resolve().parent.parent / "conf"))


def group_choices(group: str) -> list[str]:
    folder = CONF_DIR / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def compose_config(stage: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose conf/config.yaml with `overrides`; bad overrides become a one-line UsageError."""
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="pipeline"):
            cfg = compose("config", overrides=[*overrides, f"stage={stage}"])
    except MissingConfigException as exc:
        group = _group_of(str(exc))
        choices = ", ".join(exc.options or group_choices(group))
        bad = next((o for o in overrides if o.lstrip("+~").split("=")[0] == group), group)
        raise UsageError(f"bad override {bad!r}: unknown {group} config; choices: {choices}") from None
    except HydraException as exc:
        first = str(exc).strip().splitlines()[0]
        if first.startswith("Could not override"):
            key = re.search(r"'([^']+)'", first)
            first = f"no config key {key.group(1) if key else ''!r} (see `python -m pipeline {stage} --help`; use +key=value to add one)"
        raise UsageError(f"bad override: {first}") from None
    return cfg


def _group_of(message: str) -> str:
    m = re.search(r"Could not find '([^'/]+)/", message)
    return m.group(1) if m else "config"


def new_run_dir(cfg: DictConfig, stage: str) -> Path:
    """A fresh directory per run: time to the second plus a random suffix, so same-second runs differ."""
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    path = Path(cfg.paths.output_root) / stage / f"{stamp}-{secrets.token_hex(3)}"
    path.mkdir(parents=True, exist_ok=False)
    return path


def with_run_dir(cfg: DictConfig, run_dir: Path | str) -> DictConfig:
    cfg = cfg.copy()
    cfg.paths.run_dir = str(run_dir)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    return cfg


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=False)
