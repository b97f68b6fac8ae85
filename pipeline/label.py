"""label stage (placeholder until gold loader lands)."""
from pipeline.errors import NotBuiltError


def label(cfg):
    raise NotBuiltError("stage 'label' is not built yet")
