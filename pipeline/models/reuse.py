"""Models kept in memory for one train run (`train.reuse_models`), so that a run reads the pretrained encoder once.

A train run fits the model, then (train.calibrate) one more model per inner fold, scores the first fit, refits on
every row and logs the served model: each of those loaded the pretrained encoder from disk, and each fitted model
was read back from the directory it had just been written to (a frozen-encoder run: 17 reads of the same weights,
5 of them of the pretrained directory). Inside `reusing()`:

  * `pretrained(...)`: the pretrained model (by source, head and torch's random state before the load) is read once;
    a fine-tuning fit gets a deep copy of it, with torch's random state set to what the load left (the new head is
    drawn from it), so the fit is the one a fresh load gives. The frozen kind shares the one copy (it never changes).
  * `remember(dir, tokenizer, model)` / `recall(dir)`: a fit leaves its model with the directory it wrote;
    loading that directory (`TransformerPredictor`) takes the model from memory while the directory's weights file
    is the one written then (same size and mtime), else reads the disk. `moved` follows the rename of a finished
    model dir, `forget` drops what a removed directory held.

Embeddings are not kept per sentence: an encoder's output for a sentence depends on the batch it is computed in
(padding width, measured up to 6e-7 on e5-small), so reusing them would change the fitted heads in their last
digits. Each fit computes its features as before; the loads are what is saved.

Outside the scope (predict, evaluate, serve) nothing is kept: every load reads the disk. The model store's own
check of the served dir takes it from memory too; MLflow's validation of the input example loads the logged copy
from disk (the one read of the served model: it proves the logged files load).
"""

from __future__ import annotations

import copy
import hashlib
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass
class Kept:
    tokenizer: Any
    model: Any
    stamp: tuple  # (name, size, mtime_ns) of the weights file when the model was remembered


@dataclass
class Scope:
    pretrained: dict = field(default_factory=dict)  # key -> (tokenizer, model, torch rng state after the load)
    written: dict[str, Kept] = field(default_factory=dict)  # resolved model dir -> its model


_SCOPE: Scope | None = None


@contextmanager
def reusing(enabled: bool = True) -> Iterator[Scope | None]:
    """Keep models in memory until the block ends (`enabled=False`: a no-op, every load reads the disk)."""
    global _SCOPE
    if not enabled or _SCOPE is not None:  # nested: the outer scope keeps them
        yield _SCOPE
        return
    _SCOPE = Scope()
    try:
        yield _SCOPE
    finally:
        _SCOPE = None


def active() -> Scope | None:
    return _SCOPE


def _rng_digest() -> str:
    import torch

    return hashlib.sha1(torch.get_rng_state().numpy().tobytes()).hexdigest()


def pretrained(key: tuple, load: Callable[[], tuple], *, shared: bool = False) -> tuple:
    """(tokenizer, model) of `load()`, read once per scope for a `key`.

    The tokenizer is always the kept one (its state is set by each call that uses it; a copy costs as much as a
    load). The model: with `shared` (a frozen encoder: nobody changes it) the kept one itself, else (a fit that
    trains it) a deep copy, kept per torch random state before the load too, with torch's random state then set to
    what the load left: a new head drawn at the load (from the seed the fit set) is the one a fresh load draws,
    and so is what follows."""
    scope = active()
    if scope is None:
        return load()
    import torch

    full_key = key if shared else (*key, _rng_digest())
    kept = scope.pretrained.get(full_key)
    if kept is None:
        tokenizer, model = load()
        scope.pretrained[full_key] = (tokenizer, model, torch.get_rng_state())
        return (tokenizer, model) if shared else (tokenizer, copy.deepcopy(model))
    tokenizer, model, after = kept
    log.info("reusing the pretrained %s loaded earlier in this run", key[0])
    if shared:
        return tokenizer, model
    torch.set_rng_state(after)
    return tokenizer, copy.deepcopy(model)


def _stamp(model_dir: Path) -> tuple | None:
    for name in WEIGHT_FILES:
        path = model_dir / name
        if path.exists():
            st = path.stat()
            return name, st.st_size, st.st_mtime_ns
    return None


def _key(model_dir) -> str:
    return str(Path(model_dir).resolve())


def remember(model_dir, tokenizer, model) -> None:
    """`model_dir` now holds `model` (and `tokenizer`) as written by a fit: loading it may take them from memory."""
    scope = active()
    stamp = _stamp(Path(model_dir))
    if scope is not None and stamp is not None:
        scope.written[_key(model_dir)] = Kept(tokenizer, model, stamp)


def recall(model_dir) -> Kept | None:
    """The model remembered for `model_dir`, if its weights file is still the one written then."""
    scope = active()
    if scope is None:
        return None
    kept = scope.written.get(_key(model_dir))
    if kept is None or _stamp(Path(model_dir)) != kept.stamp:
        return None
    return kept


def moved(old, new) -> None:
    """A model dir (and the dirs inside it) renamed from `old` to `new`."""
    if _SCOPE is None:
        return
    old_key, new_key = _key(old), _key(new)
    for key in [k for k in _SCOPE.written if k == old_key or k.startswith(old_key + "/")]:
        _SCOPE.written[new_key + key[len(old_key):]] = _SCOPE.written.pop(key)


def forget(root) -> None:
    """Drop what was kept for `root` and the dirs under it (removed from disk)."""
    if _SCOPE is None:
        return
    prefix = _key(root)
    for key in [k for k in _SCOPE.written if k == prefix or k.startswith(prefix + "/")]:
        del _SCOPE.written[key]
    for key in [k for k in _SCOPE.pretrained if str(k[0]).startswith(prefix)]:
        del _SCOPE.pretrained[key]
