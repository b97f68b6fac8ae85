"""predict stage (not built yet: see the issue tracker)."""

from pipeline.errors import NotBuiltError


def predict(cfg):
    raise NotBuiltError("stage 'predict' is not built yet")
