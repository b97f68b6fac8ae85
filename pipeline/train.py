"""train stage (not built yet: see the issue tracker)."""

from pipeline.errors import NotBuiltError


def train(cfg):
    raise NotBuiltError("stage 'train' is not built yet")
