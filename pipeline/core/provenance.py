"""What a stage read while it built an output: config keys, files and file listings.

A stage's output (`sentences.parquet`, `labelled.parquet`) must be rebuilt whenever anything that went into it
changes. Instead of a list of keys kept by hand beside each stage (which missed `data.unlabelled` once), the
stage is run inside `record()`, and everything it reads is written down as it happens:

- every config key, through a hook on OmegaConf's node access, so `cfg.a.b`, `cfg.get(...)`,
  `OmegaConf.select(...)`, interpolations and `to_container` are all seen, whoever makes them;
- every file read through `pipeline.core.io` (`note_file`), with its size and modification time, or its absence;
- every glob pattern or directory listed (`note_listing`), with the files it gave, so that a new article
  matching `seeds/*.txt` makes the output stale too.

An output's fingerprint is what had been read when it was written (reads after the write cannot have shaped it);
`pipeline.cli.registry` compares it with the current config and files.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from omegaconf import DictConfig, ListConfig, OmegaConf

_ABSENT = object()


@dataclass
class Recording:
    """The reads of one stage run; `snapshots[output]` is what had been read when `output` was written."""

    outputs: frozenset[str]
    ignored_keys: frozenset[str]
    keys: dict[str, None] = field(default_factory=dict)           # ordered set of dotted keys
    files: dict[str, list[int] | None] = field(default_factory=dict)  # path -> [size, mtime_ns] or None (absent)
    listings: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # (kind, spec) -> files
    snapshots: dict[str, dict] = field(default_factory=dict)

    def snapshot(self) -> dict:
        return {"keys": [k for k in self.keys if k not in self.ignored_keys],
                "files": dict(self.files),
                "listings": [{"kind": kind, "spec": spec, "files": list(found)}
                             for (kind, spec), found in self.listings.items()]}


_ACTIVE: contextvars.ContextVar[Recording | None] = contextvars.ContextVar("provenance_recording", default=None)
_PAUSED: contextvars.ContextVar[bool] = contextvars.ContextVar("provenance_paused", default=False)


def _key_parts(container) -> list:
    parts = []
    node = container
    while node is not None and node._get_parent() is not None:
        parts.append(node._key())
        node = node._get_parent()
    return parts[::-1]


def _note_config_read(container, key) -> None:
    recording = _ACTIVE.get()
    if recording is None or _PAUSED.get():
        return
    token = _PAUSED.set(True)  # computing the key path reads nodes too
    try:
        parts = [*_key_parts(container), key]
        # An element of a list stands for the whole list (its value is recorded whole).
        for i, part in enumerate(parts):
            if not isinstance(part, str):
                parts = parts[:i]
                break
        if parts:
            recording.keys.setdefault(".".join(parts), None)
    finally:
        _PAUSED.reset(token)


def _install_hook() -> None:
    for cls in (DictConfig, ListConfig):
        if getattr(cls._get_node, "_provenance_hook", False):
            continue
        original = cls._get_node

        def hooked(self, key, *args, __original=original, **kwargs):
            node = __original(self, key, *args, **kwargs)
            if _ACTIVE.get() is not None:
                _note_config_read(self, key)
            return node

        hooked._provenance_hook = True  # type: ignore[attr-defined]
        cls._get_node = hooked


_install_hook()


@contextlib.contextmanager
def record(outputs: Iterable[Path | str] = (), ignored_keys: Iterable[str] = ()) -> Iterator[Recording]:
    """Record what the block reads; `outputs` are the files whose writes take a snapshot."""
    recording = Recording(frozenset(_canonical(p) for p in outputs), frozenset(ignored_keys))
    token = _ACTIVE.set(recording)
    try:
        yield recording
    finally:
        _ACTIVE.reset(token)


@contextlib.contextmanager
def unrecorded() -> Iterator[None]:
    """Reads in this block are not recorded (logging the whole config as run params reads every key)."""
    token = _PAUSED.set(True)
    try:
        yield
    finally:
        _PAUSED.reset(token)


def _canonical(path: Path | str) -> str:
    return os.path.abspath(os.fspath(path))


def file_state(path: Path | str) -> list[int] | None:
    """[size, mtime_ns] of a file, None if it does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def note_file(path: Path | str) -> None:
    """A file (or its absence) was read; the latest state seen is kept."""
    recording = _ACTIVE.get()
    if recording is not None and not _PAUSED.get():
        recording.files[os.fspath(path)] = file_state(path)


def note_listing(kind: str, spec: str, files: Iterable[Path | str]) -> None:
    """A glob pattern or directory (`kind`) was listed and gave `files`."""
    recording = _ACTIVE.get()
    if recording is not None and not _PAUSED.get():
        recording.listings[(kind, str(spec))] = [os.fspath(f) for f in files]


def note_written(path: Path | str) -> None:
    """A file was written: if it is an output of the recording stage, keep what had been read so far."""
    recording = _ACTIVE.get()
    if recording is not None and _canonical(path) in recording.outputs:
        recording.snapshots[_canonical(path)] = recording.snapshot()


def config_value(cfg: DictConfig, key: str) -> Any:
    """A recorded key's value as stored in a fingerprint: a leaf's resolved value, a list's whole value, a
    mapping's sorted keys (its values are recorded where they are read), or {"absent": true}."""
    with unrecorded():
        try:
            value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)
        except Exception as exc:  # an interpolation that does not resolve is a value too
            return {"unresolvable": str(exc).splitlines()[0]}
        if value is _ABSENT:
            return {"absent": True}
        if isinstance(value, DictConfig):
            return {"keys": sorted(str(k) for k in value.keys())}
        if isinstance(value, ListConfig):
            return OmegaConf.to_container(value, resolve=True)
        return value


def same_value(a: Any, b: Any) -> bool:
    """Equality as JSON sees it (a fingerprint read back from JSON has lists where tuples were)."""
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)
