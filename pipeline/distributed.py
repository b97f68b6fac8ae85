"""Several training processes (`torchrun`, `accelerate launch`): who is rank 0, and how the ranks agree.

The launchers set RANK / WORLD_SIZE / LOCAL_RANK; with WORLD_SIZE > 1 `init()` opens the process group (gloo on
CPU, nccl on GPU, each process on its LOCAL_RANK's GPU) that the Hugging Face Trainer then uses for distributed
data parallel, plus a small gloo group of our own for control messages (the run directory, the exit status), so
that they never interleave with the Trainer's collectives. Only rank 0 touches MLflow and writes outputs.

Failures: an exception on any rank ends that process at once with a non-zero status; the launcher then stops
the others (SIGTERM), which `init()` turns into an exception, so rank 0's MLflow run closes as FAILED. On success
every rank exits with rank 0's status (`final_status`).
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Callable, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
_CONTROL = None  # the gloo group for control messages


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def is_distributed() -> bool:
    return world_size() > 1


def is_main() -> bool:
    return rank() == 0


class Terminated(Exception):
    """The launcher stopped this process (another rank failed)."""


def _on_sigterm(signum, frame):
    raise Terminated(f"rank {rank()} stopped by signal {signum} (another rank failed)")


def init() -> None:
    """Open the process group when launched as one of several processes; a no-op otherwise or when open."""
    global _CONTROL
    if not is_distributed():
        return
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank())
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    if _CONTROL is None:
        _CONTROL = dist.new_group(backend="gloo")
        signal.signal(signal.SIGTERM, _on_sigterm)
        log.info("distributed: rank %d of %d (local rank %d), backend %s", rank(), world_size(), local_rank(),
                 dist.get_backend())


def from_main(make: Callable[[], T]) -> T:
    """`make()` on rank 0, its result on every rank (a run directory, a decision)."""
    if not is_distributed():
        return make()
    import torch.distributed as dist

    init()
    box = [make() if is_main() else None]
    dist.broadcast_object_list(box, src=0, group=_CONTROL)
    return box[0]


def barrier() -> None:
    """Every rank waits here until all have arrived (e.g. for rank 0 to write a file the others read)."""
    if not is_distributed():
        return
    import torch.distributed as dist

    init()
    dist.barrier(group=_CONTROL)


def final_status(code: int) -> int:
    """The exit status of this process: rank 0's. A rank that failed returns its own status at once (no
    collective: the others may be inside one of the Trainer's), and the launcher stops the rest; rank 0, when it
    succeeded, tells the ranks waiting here."""
    if not is_distributed() or _CONTROL is None or code != 0:
        return code
    import torch.distributed as dist

    box = [code if is_main() else None]
    try:
        dist.broadcast_object_list(box, src=0, group=_CONTROL)
    except Exception as exc:  # rank 0 is gone: it failed
        log.warning("distributed: no status from rank 0 (%s)", str(exc).splitlines()[0] if str(exc) else exc)
        return 1
    try:
        dist.destroy_process_group()
    except Exception:  # already torn down
        pass
    return int(box[0])
