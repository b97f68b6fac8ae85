"""Several training processes (`torchrun`, `accelerate launch`): who is rank 0, and how the ranks agree.

The launchers set RANK / WORLD_SIZE / LOCAL_RANK; with WORLD_SIZE > 1 `init()` opens the process group (gloo on
CPU, nccl on GPU, each process on its LOCAL_RANK's GPU) that the Hugging Face Trainer then uses for distributed
data parallel, plus a small gloo group of our own for control messages (the run directory, the exit status), so
that they never interleave with the Trainer's collectives. Only rank 0 touches MLflow and writes outputs.

Failures: an exception on any rank ends that process at once with a non-zero status; the launcher then stops
the others (SIGTERM), which `init()` turns into an exception, so rank 0's MLflow run closes as FAILED. Once a
process is on its way out with an exception (`defer_termination`), a SIGTERM no longer raises: it would break off
the closing of the MLflow run and leave it RUNNING. On success every rank exits with rank 0's status
(`final_status`), after a barrier and `destroy_process_group` (`shutdown`): gloo's threads torn down while the
interpreter is alive, not at its exit, where they abort the process ("terminate called without an active
exception", exit -6) after a successful run.
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


class Terminated(BaseException):
    """The launcher stopped this process (another rank failed). Not an Exception, like KeyboardInterrupt: the
    `except Exception` of a library must not swallow it and keep the process running until the launcher's SIGKILL."""


_DEFERRED = False  # True once the process is unwinding an exception: SIGTERM is logged, not raised


def _on_sigterm(signum, frame):
    if _DEFERRED:
        log.warning("distributed: rank %d got signal %d while closing after a failure; finishing the close first",
                    rank(), signum)
        return
    defer_termination()  # one Terminated per process: the launcher's signal is not raised again while it unwinds
    raise Terminated(f"rank {rank()} stopped by signal {signum} (another rank failed)")


def defer_termination() -> None:
    """From now on a SIGTERM does not raise: the process is already leaving with an exception and closes its
    MLflow run (FAILED) on the way. A no-op outside a multi-process run (no handler is installed there)."""
    global _DEFERRED
    _DEFERRED = True


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
    succeeded, tells the ranks waiting here, and every rank then tears the process groups down (`shutdown`)."""
    if not is_distributed() or _CONTROL is None or code != 0:
        return code
    import torch.distributed as dist

    box = [code if is_main() else None]
    try:
        dist.broadcast_object_list(box, src=0, group=_CONTROL)
    except Exception as exc:  # rank 0 is gone: it failed
        log.warning("distributed: no status from rank 0 (%s)", str(exc).splitlines()[0] if str(exc) else exc)
        return 1
    return shutdown(int(box[0]))


def shutdown(code: int) -> int:
    """Tear the process groups down together: a barrier (no rank still sends or receives), the Trainer's objects
    released, then `destroy_process_group`. Returns `code`, or 1 when the barrier fails (another rank died)."""
    global _CONTROL
    import gc

    import torch.distributed as dist

    try:
        dist.barrier(group=_CONTROL)
    except Exception as exc:
        log.warning("distributed: the closing barrier failed (%s)", str(exc).splitlines()[0] if str(exc) else exc)
        code = code or 1
    gc.collect()  # pending gloo work held by dead Python objects (DDP's reducer) is released before the groups go
    try:
        dist.destroy_process_group()
    except Exception as exc:  # already torn down
        log.debug("distributed: destroy_process_group: %s", exc)
    _CONTROL = None
    return code
