"""The one text preprocessing function used at train, evaluate and predict time.

It wraps arabert's `ArabertPreprocessor` for a named AraBERT variant and is saved beside the model
(`preprocess.json`), so prediction uses what the model was trained with, not today's config.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterable, Sequence

from pipeline.core.errors import PipelineError
from pipeline.core.io import read_json_file, write_text_atomic
from pipeline.text.context import check_mode, join_inputs

log = logging.getLogger(__name__)

PREPROCESS_FILE = "preprocess.json"


def short_name(name: str) -> str:
    """The model name without its hub organisation or directory: aubmindlab/bert-base-arabertv02 → bert-base-arabertv02."""
    return str(name).rstrip("/").split("/")[-1]


def refuse_segmented(name: str, key: str) -> None:
    """PipelineError when `name` is an AraBERT variant that needs Farasa-segmented text (`key` is the config key).

    Offline, Farasa silently returns '' for every sentence: refuse rather than train or predict on nothing."""
    from arabert.preprocess import SEGMENTED_MODELS

    if short_name(name) in SEGMENTED_MODELS:
        raise PipelineError(
            f"{key}={name!r} needs Farasa-segmented text, which cannot be produced here (Farasa returns empty "
            "text offline); use a v02 model such as aubmindlab/bert-base-arabertv02"
        )


class TextPreprocessor:
    """`TextPreprocessor("bert-base-arabertv02")(["..."])` → preprocessed texts; `None` means identity.

    `prefix` is prepended after preprocessing: some encoders were trained with one on every input (e5: "query: ").
    `context` is the sentence context the model reads (pipeline.text.context: none | previous | first |
    previous+first); `inputs` builds the model input of a sentence and its context, each preprocessed the same way."""

    def __init__(self, arabert_model: str | None, prefix: str = "", context: str = "none"):
        self.arabert_model = arabert_model
        self.prefix = str(prefix or "")
        self.context = check_mode(context)
        self._impl = None
        if arabert_model:
            from arabert.preprocess import ACCEPTED_MODELS

            short = short_name(arabert_model)
            refuse_segmented(arabert_model, "model.preprocess_as")
            if short not in ACCEPTED_MODELS:
                raise PipelineError(
                    f"model.preprocess_as={arabert_model!r} is not an AraBERT model arabert knows "
                    f"({', '.join(sorted(ACCEPTED_MODELS))}); set it to one of them, or to null for no preprocessing"
                )
            from arabert.preprocess import ArabertPreprocessor

            self._impl = ArabertPreprocessor(model_name=short)

    def __call__(self, texts: Iterable[str]) -> list[str]:
        if self._impl is None:
            return [self.prefix + str(t) for t in texts]
        return [self.prefix + self._impl.preprocess(str(t)) for t in texts]

    def inputs(self, texts: Sequence[str], contexts: Sequence[str] | None, separator: str | None) -> list[str]:
        """What the model reads: the preprocessed sentences, each followed by `separator` (the tokenizer's own
        separator token) and its preprocessed context when this model reads context and the sentence has one
        (pipeline.text.context.join_inputs). Without context (`none`, or no contexts given) exactly `self(texts)`."""
        if self.context == "none" or contexts is None:
            return self(texts)
        if not separator:
            raise PipelineError(f"model.context={self.context}: this model's tokenizer has no separator token to put "
                                "between a sentence and its context; use model.context=none")
        contexts = ["" if c is None else str(c) for c in contexts]
        unique = list(dict.fromkeys(c for c in contexts if c))
        done = dict(zip(unique, self(unique)))
        return join_inputs(self(texts), [done.get(c, "") for c in contexts], separator)

    @classmethod
    def from_cfg(cls, cfg) -> "TextPreprocessor":
        """The preprocessing a model config asks for (`model.preprocess_as`, `model.text_prefix`)."""
        from omegaconf import OmegaConf

        return cls(OmegaConf.select(cfg, "model.preprocess_as", default=None),
                   OmegaConf.select(cfg, "model.text_prefix", default="") or "",
                   OmegaConf.select(cfg, "model.context", default="none"))

    def to_dict(self) -> dict:
        # The prefix and the context are written only when there is one: directories of models without them stay
        # as they were.
        return {"arabert_model": self.arabert_model, **({"prefix": self.prefix} if self.prefix else {}),
                **({"context": self.context} if self.context != "none" else {})}

    @classmethod
    def from_dict(cls, data: dict) -> "TextPreprocessor":
        return cls(data.get("arabert_model"), data.get("prefix", ""), data.get("context", "none"))

    def save(self, model_dir: Path | str) -> Path:
        return write_text_atomic(Path(model_dir) / PREPROCESS_FILE, json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, model_dir: Path | str) -> "TextPreprocessor":
        return cls.from_dict(read_json_file(Path(model_dir) / PREPROCESS_FILE,
                                            "this model directory was not written by `pipeline train`"))
