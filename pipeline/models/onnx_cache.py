"""The on-disk cache of `predict.backend=onnx`'s exported, fused ONNX files (`predict.onnx_cache`).

Exporting a BERT-base encoder with torch.onnx and fusing it takes about a minute; every process that loads the
model with the onnx backend (predict, each Spark executor, the pyfunc model, serve) reuses the file instead.

    <cache>/<key>/model.onnx   (or model.fused.onnx)  the file ONNX Runtime loads
    <cache>/<key>/entry.json   what it was built from (the key's recipe); its mtime is the entry's last use
    <cache>/<key>.lock         held while the entry is checked, built or loaded (filelock): one export per key
    <cache>/.partial-<key>-*   an export in progress, renamed to <key> when complete (atomic); one left by a
                               killed process is never read and is removed once its key's lock is free

The key is a digest of the recipe: the sha256 of the model directory's weight files and config.json (content,
never mtimes: an MLflow download gives new ones), the output attribute, ONNX_OPSET, whether it is fused and the
torch / transformers / onnx / onnxruntime versions. At most `keep` entries stay (least recently used removed). A
cache directory that cannot be written falls back to a temporary directory with one warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Callable, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

CACHE_FORMAT = 1  # bumped when the export itself changes (pipeline.models.backends.export / optimise)
# What the model's weights and architecture are read from (content-hashed into the key).
FINGERPRINT_FILES = ("config.json", "*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin",
                     "pytorch_model*.bin.index.json")
VERSIONED = ("torch", "transformers", "onnx", "onnxruntime")  # packages whose version is in the key
ENTRY_FILE = "entry.json"
PARTIAL = ".partial-"
LOCK_TIMEOUT_S = 3600  # a process waiting for another one's export gives up (and exports into a temp dir) after this
HASH_CHUNK = 1 << 20


def fingerprint(model_dir: Path) -> str | None:
    """sha256 over the names and bytes of the model directory's weight files and config.json; None when it has no
    weight file (the model exists only in memory): such a model is not cached."""
    model_dir = Path(model_dir)
    files = sorted({p for pattern in FINGERPRINT_FILES for p in model_dir.glob(pattern) if p.is_file()})
    if not any(p.name != "config.json" for p in files):
        return None
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as handle:
            while chunk := handle.read(HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def versions() -> dict:
    out = {}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def recipe(model_dir: Path, **parts) -> dict | None:
    """What an entry is built from: the weights' fingerprint, `parts` (output, opset, fused, ...), the versions."""
    weights = fingerprint(model_dir)
    if weights is None:
        return None
    return {"format": CACHE_FORMAT, "weights": weights, **parts, **versions()}


def key_of(built_from: dict) -> str:
    return hashlib.sha256(json.dumps(built_from, sort_keys=True, default=str).encode()).hexdigest()[:32]


def load(cache: str | os.PathLike | None, keep: int, built_from: dict | None, build: Callable[[Path], Path],
         open_file: Callable[[Path], T]) -> tuple[T, Path | None]:
    """`open_file(path)` of the cached file for `built_from`, built first with `build(directory) -> path` when it
    is not there; (result, the cached path or None when it was built into a temporary directory)."""
    if cache is None or built_from is None:
        if cache is not None:
            log.info("predict.onnx_cache: the model has no weight files on disk to fingerprint; not cached")
        return _temporary(build, open_file), None
    from filelock import FileLock, Timeout

    root = Path(os.path.expanduser(str(cache)))
    key = key_of(built_from)
    entry = root / key
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(root / f"{key}.lock"), timeout=LOCK_TIMEOUT_S)
        lock.acquire()
    except (OSError, Timeout) as exc:
        path = _complete(entry)
        if path is not None:  # a read-only cache someone filled: read, never written
            log.info("predict.backend=onnx: cache hit %s (read-only cache)", path)
            return open_file(path), path
        log.warning("predict.onnx_cache=%s cannot be used (%s); exporting into a temporary directory instead",
                    cache, exc)
        return _temporary(build, open_file), None
    try:
        path, result = _complete(entry), None
        if path is not None:
            with contextlib.suppress(OSError):
                os.utime(entry / ENTRY_FILE)  # its last use, for the LRU bound
            log.info("predict.backend=onnx: cache hit %s", path)
            try:
                result = open_file(path)
            except Exception as exc:  # a damaged file (the entry was complete when renamed): built again
                log.warning("predict.onnx_cache: %s could not be loaded (%s); exporting it again", path, exc)
                shutil.rmtree(entry, ignore_errors=True)
                path = None
        if path is None:
            path, result = _build(root, entry, key, built_from, build, open_file)
    finally:
        lock.release()
    prune(root, keep)
    return result, path


def _complete(entry: Path) -> Path | None:
    """The file of a complete entry (renamed into place after it was written), else None."""
    try:
        name = json.loads((entry / ENTRY_FILE).read_text(encoding="utf-8"))["file"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    path = entry / name
    return path if path.is_file() else None


def _build(root: Path, entry: Path, key: str, built_from: dict, build, open_file):
    start = time.perf_counter()
    try:
        partial = Path(tempfile.mkdtemp(prefix=f"{PARTIAL}{key}-", dir=root))
    except OSError as exc:
        log.warning("predict.onnx_cache=%s cannot be written (%s); exporting into a temporary directory instead",
                    root, exc)
        return None, _temporary(build, open_file)
    try:
        made = build(partial)
        for extra in partial.iterdir():  # the unfused export beside the fused file
            if extra.is_file() and extra != made and extra.suffix == ".onnx":
                extra.unlink()
        record = {"file": made.name, "built_from": built_from,
                  "seconds": round(time.perf_counter() - start, 1)}
        (partial / ENTRY_FILE).write_text(json.dumps(record, indent=1), encoding="utf-8")
        if entry.exists():  # incomplete (checked under the lock): not renamed into place by this module
            shutil.rmtree(entry, ignore_errors=True)
        try:
            os.rename(partial, entry)  # atomic: the entry is complete or absent
        except OSError:
            if _complete(entry) is None:
                raise
            log.info("predict.onnx_cache: %s was written by another process meanwhile; using it", entry)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    path = entry / made.name
    log.info("predict.backend=onnx: exported in %.1f s, cached as %s", time.perf_counter() - start, path)
    return path, open_file(path)


def _temporary(build, open_file):
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pipeline-onnx-") as tmp:
        path = build(Path(tmp))
        log.info("predict.backend=onnx: exported in %.1f s (temporary, not cached)", time.perf_counter() - start)
        return open_file(path)


def entries(root: Path) -> list[Path]:
    """The complete entries of a cache directory, least recently used first."""
    found = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and _complete(p) is not None]
    return sorted(found, key=lambda p: (p / ENTRY_FILE).stat().st_mtime_ns)


def prune(root: Path, keep: int) -> None:
    """Keep the `keep` most recently used entries; remove dead partial exports. An entry or partial whose key's
    lock another process holds (being built or loaded) is left for a later prune."""
    from filelock import FileLock, Timeout

    try:
        stale = entries(root)[:-keep] if keep > 0 else entries(root)
        stale += [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PARTIAL)]
    except OSError:
        return
    for path in stale:
        key = path.name[len(PARTIAL):].split("-")[0] if path.name.startswith(PARTIAL) else path.name
        lock = FileLock(str(root / f"{key}.lock"), timeout=0)
        try:
            with lock:
                shutil.rmtree(path, ignore_errors=True)
                if not path.name.startswith(PARTIAL):
                    # A process that opened this lock file before the unlink may export the key beside one that
                    # opens a new one: at worst one export too many, never a torn file (the rename is atomic).
                    (root / f"{key}.lock").unlink(missing_ok=True)
                    log.info("predict.onnx_cache: removed the least recently used entry %s", path)
        except (OSError, Timeout):
            continue
