"""Stance models: the kind registry, one module per kind, loading, calibration, storage, serving."""

import logging

# Where torchao is installed (the `inductor` extra), transformers imports it at every model load; on a CPU build of
# torch that import logs a warning for each CUDA-only kernel library it cannot load and one for Triton's absence, and
# torch's pytree one for torchao's Enum registrations: none concerns this package's only use of torchao
# (int8.export_int8), so they are held back from every process that loads a model here.
IMPORT_NOISE = ("torchao", "torch.utils._pytree")
for _name in IMPORT_NOISE:
    logging.getLogger(_name).setLevel(logging.ERROR)
