"""Stance models: the kind registry, one module per kind, loading, calibration, storage, serving."""
