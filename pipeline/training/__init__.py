"""Training and evaluation work: fitting through the kind registry, scoring, calibration, selection."""
