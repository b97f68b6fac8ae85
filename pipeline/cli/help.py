"""`python -m pipeline <stage> --help`: the stage's own keys first, each with its value and one line of meaning taken
from the comments in conf/, then every other key of the composed config.

The meaning of a key is the comment on its line in conf/ (with the aligned comment lines that continue it), or
else the comment block right above it; a group's key (`predict.batch_size`) is read from the group file the
config uses (`predict=default`, or the one chosen on the command line), then from the group's other files.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Iterable, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf

from pipeline.core.config import CONF_DIR

KEY_LINE = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z_][\w-]*)\s*:(?P<rest>.*)$")
DEFAULT_WIDTH = 120      # columns when the terminal's width is unknown (a pipe)
KEY_COLUMN_MAX = 38      # the key=value column is at most this wide; a longer one puts the meaning after it
CONTINUATION_SLACK = 2   # a comment-only line whose # is this close to the line above's inline # continues it


def _inline_comment(rest: str) -> tuple[int, str] | None:
    """(column of '#', comment text) of a YAML value's trailing comment; a '#' inside quotes is not one."""
    quote = None
    for i, ch in enumerate(rest):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or rest[i - 1].isspace()):
            return i, rest[i + 1:].strip()
    return None


def file_comments(path: Path, prefix: str = "") -> dict[str, str]:
    """dotted key (with `prefix`) -> its comment in one YAML file of conf/."""
    comments: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    block: list[str] = []
    last: tuple[str, int] | None = None  # (key, column of its inline '#') for continuation lines
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped:
            block, last = [], None
            continue
        if stripped.startswith("#"):
            column, text = len(line) - len(line.lstrip()), stripped.lstrip("#").strip()
            if last is not None and abs(column - last[1]) <= CONTINUATION_SLACK:
                comments[last[0]] += " " + text
            else:
                block.append(text)
                last = None
            continue
        match = KEY_LINE.match(line)
        if stripped.startswith("-") or not match:  # list items, flow continuations
            block, last = [], None
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match["key"]))
        dotted = prefix + ".".join(k for _, k in stack)
        inline = _inline_comment(match["rest"])
        if inline and inline[1]:
            comments[dotted] = inline[1]
            last = (dotted, len(line) - len(match["rest"]) + inline[0])
        else:
            if block:
                comments[dotted] = " ".join(block)
            last = None
        block = []
    return comments


def _default_choices() -> dict[str, str]:
    """group -> the option conf/config.yaml's defaults list picks."""
    data = yaml.safe_load((CONF_DIR / "config.yaml").read_text(encoding="utf-8")) or {}
    choices = {}
    for item in data.get("defaults") or []:
        if isinstance(item, dict):
            for group, option in item.items():
                choices[str(group).replace("optional ", "").strip()] = str(option)
    return choices


def key_comments(overrides: Sequence[str] = ()) -> dict[str, str]:
    """dotted key -> one comment, for every key documented in conf/."""
    chosen = _default_choices()
    for text in overrides:
        key, _, value = text.lstrip("+~").partition("=")
        if "." not in key and value:
            chosen[key] = value
    comments = file_comments(CONF_DIR / "config.yaml")
    for folder in sorted(p for p in CONF_DIR.iterdir() if p.is_dir()):
        group = folder.name
        files = sorted(folder.glob("*.yaml"), key=lambda p: (p.stem != chosen.get(group), p.stem != "default", p.stem))
        for path in files:
            for key, text in file_comments(path, f"{group}.").items():
                comments.setdefault(key, text)
    return comments


def _flat(node, prefix: str) -> Iterable[tuple[str, object]]:
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from _flat(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, node


def _shown(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return value if value and not re.search(r"[\s,\[\]{}#'\"]", value) else repr(value)
    return yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).strip().removesuffix("...").strip()


def _one_line(text: str, width: int) -> str:
    text = " ".join(text.split())
    if len(text) <= width:
        return text
    cut = text[: max(10, width - 1)].rsplit(" ", 1)[0]
    return cut + "…"


def own_rows(cfg: DictConfig, own: Sequence[str], comments: dict[str, str]) -> list[tuple[str, str]]:
    """(key=value, meaning) for every key under the stage's own prefixes, in config order."""
    container = OmegaConf.to_container(cfg, resolve=False)
    rows = []
    for prefix in own:
        node = OmegaConf.select(cfg, prefix, default=None)
        value = OmegaConf.to_container(node, resolve=False) if isinstance(node, DictConfig) else \
            _select_raw(container, prefix)
        for key, leaf in _flat(value, prefix):
            rows.append((f"{key}={_shown(leaf)}", _meaning(key, comments)))
    return rows


def _meaning(key: str, comments: dict[str, str]) -> str:
    """The key's comment, else its parent's (`train.source_weights.gold` of a flow mapping `{gold: 1.0, ...}`)."""
    parts = key.split(".")
    while parts:
        if (text := comments.get(".".join(parts))):
            return text
        parts.pop()
        if len(parts) < 2:  # never a whole section's header comment
            break
    return ""


def _select_raw(container: dict, dotted: str):
    node = container
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _without(container: dict, dotted_keys: Sequence[str]) -> dict:
    for dotted in dotted_keys:
        *parents, last = dotted.split(".")
        node = container
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return container


def stage_help(stage_name: str, stage_help_text: str, own: Sequence[str], cfg: DictConfig,
               overrides: Sequence[str] = (), width: int | None = None) -> str:
    """The whole `--help` text of one stage."""
    width = width or shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns
    comments = key_comments(overrides)
    rows = own_rows(cfg, own, comments)
    column = min(KEY_COLUMN_MAX, max((len(k) for k, _ in rows), default=0))
    lines = [f"python -m pipeline {stage_name}: {stage_help_text}", "",
             f"Its keys (set any with key=value, no dashes: e.g. {rows[0][0].split('=')[0]}=...):" if rows else
             "Its keys: none of its own."]
    for key, meaning in rows:
        if len(key) > column:
            lines.append(f"  {key}")
            if meaning:
                lines.append(f"  {'':<{column}}  {_one_line(meaning, max(20, width - column - 4))}")
        else:
            lines.append(f"  {key:<{column}}  {_one_line(meaning, max(20, width - column - 4))}".rstrip())
    rest = _without(OmegaConf.to_container(cfg, resolve=False), list(own))
    lines += ["", "Every other key (the composed config with your overrides; any of them can be set the same way):",
              yaml.safe_dump(rest, allow_unicode=True, sort_keys=False, width=width).rstrip()]
    return "\n".join(lines)
