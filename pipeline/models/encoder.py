"""Stance models made of a transformer encoder, a pooling and a linear head (stance model kind "encoder").

Two ways to get one, one format and one predictor for both:
  * frozen encoder (`model.kind=frozen`): sentence embeddings of a pretrained encoder, untouched, and a
    logistic-regression head fitted on them (scikit-learn), exported as plain weights;
  * the same layout for any future fine-tuned encoder with a pooled head.

This module is the kind "encoder" of the registry (pipeline.models.kinds): it loads such a directory; the
frozen kind (pipeline.models.frozen) and pooled fine-tuning (pipeline.models.transformer) write one.

A model directory of kind "encoder" holds the encoder (`save_pretrained`: config, weights, tokenizer) and
`head.json`: the pooling (mean over tokens, or the first token), whether embeddings are L2-normalised, and
the head's weight matrix and bias in label order. JSON weights load without unpickling anything, so such a
directory is as safe to load as its safetensors weights.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.core.errors import PipelineError
from pipeline.core.io import read_json_file, write_text_atomic
from pipeline.models.batching import TransformerPredictor
from pipeline.models.calibration import softmax  # noqa: F401 (the head's probabilities: softmax(head.logits(x)))
from pipeline.models.head import logistic_weights

log = logging.getLogger(__name__)

HEAD_FILE = "head.json"
POOLINGS = ("mean", "cls")
# A fine-tuning start copies a fitted head into a torch layer with an unseen class's bias raised to this floor:
# the served -30 (head.UNSEEN_CLASS_BIAS) would never move under fine-tuning; -10 still gives it ~0 probability.
TRAINABLE_BIAS_FLOOR = -10.0


def pool(hidden, mask, pooling: str):
    """(batch, tokens, dim) hidden states → (batch, dim): the mean over real tokens, or the first token."""
    if pooling == "cls":
        return hidden[:, 0]
    if mask is None:
        return hidden.mean(dim=1)
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def check_pooling(pooling: str, key: str = "model.pooling") -> str:
    if pooling not in POOLINGS:
        raise PipelineError(f"{key}={pooling!r}: choose one of {', '.join(POOLINGS)}")
    return pooling


class LinearHead:
    """logits = embeddings · weightᵀ + bias, in label order; saved as JSON."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray, *, pooling: str, normalize: bool):
        self.weight = np.asarray(weight, dtype=np.float64)
        self.bias = np.asarray(bias, dtype=np.float64)
        self.pooling = check_pooling(pooling)
        self.normalize = bool(normalize)
        if self.weight.ndim != 2 or self.bias.shape != (self.weight.shape[0],):
            raise PipelineError(f"head weights of shape {self.weight.shape} and bias {self.bias.shape} do not fit")

    @classmethod
    def from_logistic_regression(cls, clf, labels: Sequence[str], *, pooling: str, normalize: bool) -> "LinearHead":
        """The head of a fitted sklearn LogisticRegression, rows in `labels` order (absent classes never win)."""
        weight, bias = logistic_weights(clf, labels)
        return cls(weight, bias, pooling=pooling, normalize=normalize)

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        x = np.asarray(embeddings, dtype=np.float64)
        if self.normalize:
            x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return x @ self.weight.T + self.bias

    def save(self, model_dir: Path | str) -> Path:
        data = {"pooling": self.pooling, "normalize": self.normalize,
                "weight": self.weight.tolist(), "bias": self.bias.tolist()}
        return write_text_atomic(Path(model_dir) / HEAD_FILE, json.dumps(data))

    @classmethod
    def load(cls, model_dir: Path | str) -> "LinearHead":
        path = Path(model_dir) / HEAD_FILE
        data = read_json_file(path, "an encoder stance model needs its head weights")
        try:
            return cls(np.array(data["weight"]), np.array(data["bias"]), pooling=str(data["pooling"]),
                       normalize=bool(data["normalize"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise PipelineError(f"{path}: unreadable head ({exc}); re-train the model") from None


def pooled_classifier(encoder, num_labels: int, *, pooling: str, dropout: float, normalize: bool = False):
    """A torch module for fine-tuning: encoder → pooling (→ L2 norm) → dropout → linear head, returning `.logits`.

    transformers' sequence-classification heads read the first token through a pooler layer; an encoder
    trained for mean-pooled sentence embeddings (e5) has no trained pooler, so with tens of gold sentences
    that randomly initialised layer is what the model has to learn first. Mean pooling starts from the
    embeddings the encoder was trained to produce."""
    import torch
    from transformers.modeling_outputs import SequenceClassifierOutput

    check_pooling(pooling, "model.pooling")

    class PooledClassifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = encoder
            self.dropout = torch.nn.Dropout(dropout)
            self.head = torch.nn.Linear(encoder.config.hidden_size, num_labels)
            self.config = encoder.config  # Trainer reads model.config
            self.pooling = pooling

        def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **_):
            return SequenceClassifierOutput(logits=self.head(self.dropout(self.embed(input_ids, attention_mask,
                                                                                    token_type_ids))))

        def embed(self, input_ids, attention_mask, token_type_ids=None):
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                  token_type_ids=token_type_ids).last_hidden_state
            pooled = pool(hidden, attention_mask, pooling)
            return torch.nn.functional.normalize(pooled, dim=-1) if normalize else pooled

        def load_head(self, head: LinearHead) -> None:
            load_linear(self.head, head.weight, head.bias)

        def export_head(self) -> LinearHead:
            return LinearHead(self.head.weight.detach().double().cpu().numpy(),
                              self.head.bias.detach().double().cpu().numpy(), pooling=pooling, normalize=normalize)

    return PooledClassifier()


def frozen_features(model, tokenizer, texts: Sequence[str], features, *, max_length: int, batch_size: int) -> np.ndarray:
    """(n, d) features `features(batch)` of `texts`, computed with the model in eval mode (dropout off), no gradients."""
    import torch

    was_training = model.training
    model.eval()
    chunks = []
    try:
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                                  max_length=max_length, return_tensors="pt")
                chunks.append(features(batch).float().cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(chunks)


def output_layer(model, num_labels: int):
    """The last Linear layer with one output per label: the checkpoint's own classification layer (BERT's
    `classifier`, RoBERTa's `classifier.out_proj`, ...)."""
    import torch

    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == num_labels]
    if not layers:
        raise PipelineError(f"{type(model).__name__} has no classification layer with {num_labels} outputs to start "
                            "from a linear probe; set model.pooling=mean (or cls), or train.head_init=random")
    return layers[-1]


def layer_inputs(model, layer):
    """features(batch): what `layer` reads when `model` runs on the batch (for BERT, the pooled [CLS] state)."""

    def features(batch):
        seen = []
        handle = layer.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
        try:
            model(**batch)
        finally:
            handle.remove()
        if not seen or seen[-1].dim() != 2:
            raise PipelineError(f"{type(model).__name__}: its classification layer does not read one vector per "
                                "sentence; set model.pooling=mean (or cls), or train.head_init=random")
        return seen[-1]

    return features


def load_linear(layer, weight: np.ndarray, bias: np.ndarray) -> None:
    """Copy head weights into a torch Linear layer, an unseen class's bias raised so that it stays trainable."""
    import torch

    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(weight, dtype=layer.weight.dtype))
        layer.bias.copy_(torch.as_tensor(np.maximum(bias, TRAINABLE_BIAS_FLOOR), dtype=layer.bias.dtype))


class EncoderHeadPredictor(TransformerPredictor):
    """Stance from an encoder's pooled sentence embedding through a linear head (kind "encoder").

    Tokenisation, length-sorted batching, truncation flags and int8 are the transformer predictor's; only the
    forward pass differs. `embed` gives the pooled embeddings themselves: the features a frozen-encoder head is
    fitted on are computed by exactly the code that serves it."""

    kind = "encoder"
    output = "last_hidden_state"

    def load_model(self, model_dir: Path, model=None):
        from transformers import AutoModel

        self.head = LinearHead.load(model_dir)
        if model is None:
            model = AutoModel.from_pretrained(str(model_dir), **self.load_kwargs)
        if self.head.weight.shape != (len(self.labels), model.config.hidden_size):
            raise PipelineError(f"{model_dir / HEAD_FILE}: head of shape {self.head.weight.shape} does not fit "
                                f"{len(self.labels)} labels and hidden size {model.config.hidden_size}")
        return model

    def pooled(self, input_ids, attention_mask, forward=None):
        hidden = (forward or self.forward)(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool(hidden.float(), attention_mask, self.head.pooling)  # a bf16 model's states pooled in fp32

    def logits(self, input_ids, attention_mask, forward=None):
        import torch

        return torch.from_numpy(self.head.logits(self.pooled(input_ids, attention_mask, forward).double().cpu().numpy()))

    def embed(self, texts: Sequence[str], batch_size: int = 64, context: Sequence[str] | None = None) -> np.ndarray:
        """(n, hidden) pooled embeddings of raw sentences (preprocessed as the model was trained, with their
        context when the model reads one)."""
        texts = [("" if t is None else str(t)) for t in texts]
        ids, _ = self.encode(self.preprocessor.inputs(texts, context, self.context_separator))
        return self.outputs_from_ids(ids, int(batch_size), int(self.model.config.hidden_size), self.pooled)


def load(model_dir: Path, meta: dict, **options) -> EncoderHeadPredictor:
    return EncoderHeadPredictor(model_dir, meta, **options)
