"""Arabic stance-toward-agreement pipeline: segment → label → train → evaluate → predict."""

LABELS = ("negative", "neutral", "positive")

__version__ = "0.1.0"
