"""What a run may write, decided before it runs: no output over an input or over another output, no file output
over a directory (`refuse_clashes`), and one run at a time per output (`output_lock`).

The lock is the operating system's (flock, through `filelock`) on `.<output name>.lock` beside the output: it is
released when its process ends, however it ends (a kill -9 too), so a run that finds the lock free knows that the
leftovers beside the output (predict's hidden parts directory) belong to a dead run, and one that finds it held
knows that a live run is writing there and stops before touching anything.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from pipeline.core.errors import PipelineError

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"


def lock_path(target: Path | str) -> Path:
    """The lock file of an output: hidden, beside it."""
    target = Path(target)
    return target.with_name(f".{target.name}{LOCK_SUFFIX}")


@contextlib.contextmanager
def output_lock(target: Path | str, key: str = "output") -> Iterator[Path]:
    """Hold the lock of `target` for the block; if another live process holds it, refuse with one line naming it
    (`key`=target and that process's id). The lock file holds the holder's process id and is removed on exit."""
    from filelock import FileLock, Timeout

    target = Path(target)
    path = lock_path(target)
    lock = FileLock(str(path), timeout=0)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except Timeout:  # before OSError: filelock's Timeout is one
        holder = _holder(path)
        raise PipelineError(f"{key}={target} is being written by another run{holder} (it holds {path}); wait for "
                            f"it to finish, or write to another {key}") from None
    except OSError as exc:
        raise PipelineError(f"{key}={target}: cannot create its lock file {path} ({exc.strerror or exc}); write to "
                            "a directory you may write to") from None
    try:
        with contextlib.suppress(OSError):
            path.write_text(str(os.getpid()), encoding="utf-8")
        yield path
    finally:
        # Unlinked while still held: a process that opened the old file sees it unlinked once it gets the lock
        # (filelock checks) and starts again on a new one, so no two runs ever both hold the output.
        with contextlib.suppress(OSError):
            path.unlink()
        lock.release()


def _holder(path: Path) -> str:
    try:
        pid = path.read_text(encoding="utf-8").strip()
    except OSError:
        return ""
    return f" (process {pid})" if pid.isdigit() else ""


def _named(key: str, path: Path) -> str:
    """`output=<path>` for a config key, `the timeline table <path>` for words."""
    return f"{key} {path}" if " " in key else f"{key}={path}"


def _same(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)  # hard links, case-insensitive file systems
    except OSError:
        return False


def _inside(path: Path, folder: Path) -> bool:
    return folder.resolve() in path.resolve().parents


def refuse_clashes(files: Mapping[str, Path], inputs: Iterable[Path], *, dirs: Mapping[str, Path] | None = None,
                   fix: str = "write it elsewhere") -> None:
    """Before a run writes anything: refuse (one PipelineError) a written path that is an input, or the same path
    as another written one, or a file output that is an existing directory.

    `files`: the files the run writes, by the key (or words) that name them (`predict.report_path`, `output`);
    `dirs`: directories the run writes whole (Spark's outputs): an input inside one, or one inside an input
    directory, is refused too. `inputs`: every input file (and directory) the run reads."""
    dirs = dict(dirs or {})
    inputs = [Path(p) for p in inputs]
    written = {**{k: Path(p) for k, p in files.items()}, **{k: Path(p) for k, p in dirs.items()}}
    for key, path in files.items():
        if Path(path).is_dir():
            raise PipelineError(f"{_named(key, path)} is an existing directory; give the path of a file, e.g. "
                                f"{Path(path) / ('predictions' + (Path(path).suffix or '.csv'))}")
    names = list(written)
    for i, key in enumerate(names):
        for other in names[i + 1:]:
            if _same(written[key], written[other]):
                raise PipelineError(f"{_named(key, written[key])} is also {_named(other, written[other])}; give "
                                    "each output its own path")
    for key, path in written.items():
        for source in inputs:
            if _same(path, source):
                raise PipelineError(f"{_named(key, path)} is also an input; the run would overwrite it: {fix}")
            if key in dirs and (_inside(source, path) or _inside(path, source)):
                raise PipelineError(f"{_named(key, path)} and the input {source} are inside one another; writing one "
                                    f"would overwrite or be read as the other: {fix}")
