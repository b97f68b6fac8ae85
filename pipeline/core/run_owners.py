"""Which process owns an MLflow run, and the runs whose process died.

Every run `tracking.start_run` opens carries the tags `pid`, `host` and `process_started` (the start time of the
process, so that a pid the system has since handed to another process is not taken for the run's owner). A run
left RUNNING by a process that is gone (kill -9, a launcher's SIGKILL, a power cut) is marked KILLED by the next
process on the same host that opens the store for writing (`tracking.setup`: any later train, evaluate, label,
predict or promote). Runs of other hosts are left alone: their processes cannot be seen from here.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Mapping

import psutil

log = logging.getLogger(__name__)

PID_TAG, HOST_TAG, STARTED_TAG = "pid", "host", "process_started"
# psutil derives a start time from the boot time and the process's start in clock ticks: the same value for the
# life of the process. The tolerance only absorbs the rounding of the float written into the tag.
START_TOLERANCE_S = 0.5


def process_tags() -> dict[str, str]:
    """The tags that name this process as a run's owner."""
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname(),
            STARTED_TAG: f"{psutil.Process().create_time():.3f}"}


def owner_is_dead(tags: Mapping[str, str]) -> bool:
    """True only when the run's recorded owner is a process of this host that no longer runs: its pid is gone, a
    zombie, or now another process (a different start time). A run without owner tags, or of another host, or
    whose process cannot be inspected, is not called dead."""
    pid = str(tags.get(PID_TAG, ""))
    if tags.get(HOST_TAG) != socket.gethostname() or not pid.isdigit():
        return False
    try:
        process = psutil.Process(int(pid))
        if process.status() == psutil.STATUS_ZOMBIE:
            return True
        started = tags.get(STARTED_TAG)
        if started is None:  # a run logged before the start time was recorded: the pid alone
            return False
        return abs(process.create_time() - float(started)) > START_TOLERANCE_S
    except psutil.NoSuchProcess:
        return True
    except (psutil.AccessDenied, ValueError):
        return False


def mark_dead_runs(client, experiment_id: str) -> list[str]:
    """Mark KILLED every RUNNING run of the experiment whose owner process is dead; returns their ids."""
    runs = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'")
    killed = []
    for run in runs:
        if not owner_is_dead(run.data.tags):
            continue
        client.set_terminated(run.info.run_id, status="KILLED")
        log.warning("run %s (%s) was left RUNNING by process %s, which is gone: marked KILLED",
                    run.info.run_id, run.info.run_name, run.data.tags.get(PID_TAG))
        killed.append(run.info.run_id)
    return killed
