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
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from pipeline.core.errors import UsageError

CONF_DIR = Path(os.environ.get("PIPELINE_CONF_DIR", Path(__file__).resolve().parents[2] / "conf"))


def group_choices(group: str) -> list[str]:
    folder = CONF_DIR / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


# Keys whose default's type is one of several accepted ones (a flag or a path; `all` or a list of columns):
# not type-checked.
UNION_TYPED_KEYS = {"train.resume", "predict.carry_columns"}


# Keys that hold a share or a probability: the interval their value must lie in, what it is, an example. Refused
# at composition, before anything runs (a test share of 0 would divide by zero, 1.5 would silently give a 50 %
# split). Interval ends: "(" / ")" open, "[" / "]" closed.
SHARE_RANGES: dict[str, tuple[str, str, str]] = {
    "train.test_size": ("(0, 1)", "the share of gold articles held out for the test", "0.2"),
    "train.val_size": ("[0, 1)", "the share of the other articles held out for validation, 0 = none", "0.2"),
    "train.warmup_ratio": ("[0, 1]", "the share of optimiser steps that warm the learning rate up", "0.1"),
    "train.weak.min_confidence": ("[0, 1]", "a rule confidence", "0.5"),
    "train.hybrid.min_rule_confidence": ("[0, 1]", "a rule confidence", "0.5"),
    "train.self_training.min_confidence": ("[0, 1]", "a probability of the predicted label", "0.9"),
    "predict.min_confidence": ("[0, 1]", "a probability", "0.6"),
    "evaluate.ci": ("(0, 1)", "the confidence level of the intervals", "0.95"),
}


def share_refusal(key: str, value) -> str | None:
    """Why `value` cannot be the share `key` (one of SHARE_RANGES); None when it can, or when `key` is no share."""
    if key not in SHARE_RANGES or value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None  # not a share, null, or of the wrong type (the type check says so)
    interval, meaning, example = SHARE_RANGES[key]
    low_open, high_open = interval.startswith("("), interval.endswith(")")
    if (value > 0 or (value == 0 and not low_open)) and (value < 1 or (value == 1 and not high_open)):
        return None
    return f"{key}={value} is outside {interval}: it is {meaning}; give a value in {interval}, e.g. {key}={example}"


def check_shares(cfg: DictConfig) -> None:
    """UsageError (one line) naming the first share of the composed config that lies outside its interval."""
    for key in SHARE_RANGES:
        try:
            value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        except Exception:  # an interpolation that does not resolve: reported where it is used
            continue
        why = share_refusal(key, value)
        if why:
            raise UsageError(why)


def compose_config(stage: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose conf/config.yaml with `overrides`; bad overrides become a one-line UsageError.

    Beyond Hydra's own checks: `hydra.*` settings are refused (this CLI does not run Hydra's app, so they would be
    silently ignored), a dict value replaces a dict key (Hydra would merge it into the struct-mode node and refuse
    every new key, e.g. `data.label_map={Favor: positive}` on `data=table`), every overridden value must have
    the type of the key's default (`train.epochs=abc` is refused here, not after the model has loaded), and every
    share (SHARE_RANGES: `train.test_size`, `train.val_size`, ...) must lie in its interval.
    """
    overrides = list(overrides)
    parsed = _parse_overrides(overrides)
    for text, o in zip(overrides, parsed):
        if o.key_or_group.split(".")[0] in ("hydra", "hydra/"):
            raise UsageError(
                f"bad override {text!r}: hydra.* settings are not used by this CLI; the run dir is "
                "paths.run_dir (e.g. paths.run_dir=/tmp/myrun; default: a fresh dir under paths.output_root)"
            )
    replace_dicts = [(text, o) for text, o in zip(overrides, parsed) if _is_dict_change(o)]
    hydra_overrides = [text for text, o in zip(overrides, parsed) if not _is_dict_change(o)]
    cfg = _compose(stage, hydra_overrides)
    for text, o in replace_dicts:
        key = o.key_or_group
        if OmegaConf.select(cfg, key, default="\0missing") == "\0missing":
            raise UsageError(f"bad override {text!r}: no config key {key!r} "
                             f"(see `python -m pipeline {stage} --help`; use +key=value to add one)")
        with open_dict(cfg):
            OmegaConf.update(cfg, key, o.value(), merge=False)
    changed = [(text, o) for text, o in zip(overrides, parsed)
               if _is_change(o) if "." in o.key_or_group and not o.is_sweep_override()]
    if changed:
        group_choices_only = [text for text, o in zip(overrides, parsed) if "." not in o.key_or_group]
        defaults = _compose(stage, group_choices_only)
        for text, o in changed:
            _check_type(text, o.key_or_group, defaults, cfg)
    check_shares(cfg)
    return cfg


def _compose(stage: str, overrides: Sequence[str]) -> DictConfig:
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="pipeline"):
            return compose("config", overrides=[*overrides, f"stage={stage}"])
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


def _parse_overrides(overrides: Sequence[str]) -> list:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as exc:
        raise UsageError(f"bad override: {str(exc).strip().splitlines()[0]}") from None


def _is_change(o) -> bool:
    return not (o.is_add() or o.is_force_add() or o.is_delete())


def _is_dict_change(o) -> bool:
    return _is_change(o) and not o.is_sweep_override() and isinstance(o.value(), dict)


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list, e.g. [a, b]",
               dict: "a mapping, e.g. {a: b}"}


def _check_type(text: str, key: str, defaults: DictConfig, cfg: DictConfig) -> None:
    """Refuse `text` when the value it set at `key` does not have the type of the key's default."""
    if key in UNION_TYPED_KEYS:
        return
    try:
        default = OmegaConf.select(defaults, key, default=None, throw_on_missing=False)
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
    except Exception:  # an interpolation that does not resolve: Hydra/OmegaConf report it where it is used
        return
    if default is None or value is None:  # a null default takes anything; null is always allowed
        return
    expected = _kind(default)
    actual = _kind(value)
    ok = (expected == actual
          or (expected is float and actual is int)
          or (expected is str and actual in (int, float)))
    if not ok and expected in _TYPE_NAMES:
        shown = OmegaConf.to_container(default) if isinstance(default, (DictConfig, ListConfig)) else default
        raise UsageError(f"bad override {text!r}: {key} must be {_TYPE_NAMES[expected]} (default: {shown!r})")


def _kind(value) -> type:
    if isinstance(value, bool):
        return bool
    if isinstance(value, (list, tuple, ListConfig)):
        return list
    if isinstance(value, (dict, DictConfig)):
        return dict
    for t in (int, float, str):
        if isinstance(value, t):
            return t
    return type(value)


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
