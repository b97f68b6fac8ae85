"""Progress bars for a person at a terminal, none in a log: a bar is drawn only when stderr is a TTY.

A run whose output goes to a file (`python -m pipeline train ... 2> train.log`, CI, cron) would otherwise hold
thousands of bar redraws (tqdm rewrites its line with `\\r` on every update) and the Trainer's metric dicts printed
on stdout; the numbers themselves are in the log lines, the run's report and MLflow.

- Our own bars: `tqdm(..., disable=bar_disabled(n, at_least=k))`: off for fewer than k items, else tqdm's own
  `disable=None` rule (off when its stream is not a TTY).
- Libraries' bars (transformers' weight loading and shard writing, Hugging Face hub and datasets, MLflow artifact
  transfers): `quiet_libraries()`, called by the CLI before a stage runs, switches them off when stderr is not a
  TTY, through their own environment variables (a value the user set wins) and switches.
- The Trainer: pipeline.models.trainer shows its bar only on a TTY and never prints its log dicts.
"""

from __future__ import annotations

import os
import sys

# Each library's own switch for its progress bars, set (unless already set) when stderr is not a terminal.
LIBRARY_SWITCHES = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",          # huggingface_hub, and transformers (read when it is imported)
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",     # datasets
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # MLflow artifact uploads and downloads
}


def interactive() -> bool:
    """True when stderr (where bars and logs go) is a terminal."""
    isatty = getattr(sys.stderr, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def bar_disabled(count: int | None = None, *, at_least: int = 0) -> bool | None:
    """tqdm's `disable`: True for fewer than `at_least` items (a bar for a blink is noise), else None (tqdm then
    draws only on a terminal)."""
    if count is not None and count < at_least:
        return True
    return None


def quiet_libraries() -> None:
    """Switch the libraries' progress bars off when stderr is not a terminal; nothing changes on a terminal."""
    if interactive():
        return
    for name, value in LIBRARY_SWITCHES.items():
        os.environ.setdefault(name, value)
    # Libraries already imported read their variable at import time: tell them directly.
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if "datasets" in sys.modules:
        import datasets

        datasets.disable_progress_bars()
