"""evaluate stage (not built yet: see the issue tracker)."""

from pipeline.errors import NotBuiltError


def evaluate(cfg):
    raise NotBuiltError("stage 'evaluate' is not built yet")
