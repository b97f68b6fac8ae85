"""Errors that the CLI turns into one clear message and a non-zero exit (no traceback)."""


class PipelineError(Exception):
    """A user-facing failure: bad input, missing model, stale labels. The message says what and how to fix."""

    exit_code = 1


class UsageError(PipelineError):
    """Bad command line: unknown stage, bad override."""

    exit_code = 2

