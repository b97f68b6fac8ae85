"""The contrastive few-shot kind (`model.kind=contrastive`), in the spirit of SetFit: tune, then fit a head.

Stage 1 tunes the pretrained encoder (`model.name_or_path`, pooled as `model.pooling`) on pairs of labelled
training sentences: each sentence is paired `train.contrastive.pairs_per_sentence` times, half with a sentence of
the same stance (target similarity 1), half with one of another stance (target 0), drawn with `seed`. A pair
weighs the product of its two sentences' weights (`train.source_weights`, after `train.weak.*` chose the weak
rows), so a rule-labelled pair counts less than a gold one. Stage 2 is the frozen kind's: the logistic-regression
head (pipeline.models.head) fitted on the tuned encoder's pooled embeddings, computed by the predictor that serves
the model. The directory written is an ordinary kind "encoder" model (encoder weights + head.json).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
from omegaconf import DictConfig, OmegaConf

from pipeline.core.errors import PipelineError
from pipeline.models.encoder import pool
from pipeline.models.frozen import fit_head, frozen_encoder
from pipeline.models.head import sample_weights
from pipeline.models.loading import check_source
from pipeline.models.trainer import log_metrics
from pipeline.models.transformer import frozen_parameters
from pipeline.text.context import contexts_of
from pipeline.text.preprocess import TextPreprocessor

log = logging.getLogger(__name__)

METHOD = "contrastive"  # the `model_kind` tag of its runs (pipeline.models.kinds)
LOSSES = ("cosine", "contrastive")


def settings(cfg: DictConfig) -> dict:
    """`train.contrastive`, checked: one `error:` line naming the key otherwise."""
    c = OmegaConf.select(cfg, "train.contrastive", default=None)
    if c is None:
        raise PipelineError("train.contrastive is missing; model=contrastive reads its knobs there "
                            "(conf/train/default.yaml)")
    out = {"pairs_per_sentence": int(c.pairs_per_sentence), "epochs": int(c.epochs), "lr": float(c.lr),
           "batch_size": int(c.batch_size), "loss": str(c.loss), "margin": float(c.margin)}
    for key in ("pairs_per_sentence", "epochs", "batch_size"):
        if out[key] < 1:
            raise PipelineError(f"train.contrastive.{key}={out[key]} must be at least 1")
    if out["loss"] not in LOSSES:
        raise PipelineError(f"train.contrastive.loss={out['loss']!r}: choose one of {', '.join(LOSSES)}")
    return out


def sample_pairs(labels: Sequence[str], weights: Sequence[float], per_sentence: int,
                 seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pairs (n, 2) of row indices, targets 1 = same stance / 0 = another, pair weights): for each row,
    `per_sentence` partners, alternately of its own label and of another (a kind it lacks is skipped)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray([str(x) for x in labels])
    weights = np.asarray(weights, dtype=float)
    rows = np.arange(len(labels))
    pairs, targets = [], []
    for i in rows:
        same = rows[(labels == labels[i]) & (rows != i)]
        other = rows[labels != labels[i]]
        for k in range(per_sentence):
            pool_k, target = (same, 1.0) if k % 2 == 0 else (other, 0.0)
            if len(pool_k):
                pairs.append((i, int(rng.choice(pool_k))))
                targets.append(target)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    return pairs, np.asarray(targets), weights[pairs[:, 0]] * weights[pairs[:, 1]] if len(pairs) else np.zeros(0)


def pair_loss(similarity, target, weight, *, loss: str, margin: float):
    """Weighted mean loss of a batch of pairs from the cosine similarity of their embeddings: `cosine` = SetFit's
    (similarity - target)², `contrastive` = same-stance distance², other-stance max(0, margin - distance)²."""
    import torch

    if loss == "cosine":
        per_pair = (similarity - target) ** 2
    else:
        distance = 1.0 - similarity
        per_pair = target * distance ** 2 + (1.0 - target) * torch.clamp(margin - distance, min=0.0) ** 2
    return (per_pair * weight).sum() / weight.sum().clamp(min=1e-12)


def padded(ids: Sequence[Sequence[int]], pad_id: int, device: str):
    """(input_ids, attention_mask) torch tensors of token-id lists padded to the longest."""
    import torch

    width = max(len(x) for x in ids)
    batch = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, x in enumerate(ids):
        batch[row, :len(x)] = torch.as_tensor(x, dtype=torch.long)
        mask[row, :len(x)] = 1
    return batch.to(device), mask.to(device)


def tune_encoder(cfg: DictConfig, predictor, texts: Sequence[str], labels: Sequence[str],
                 weights: Sequence[float], contexts: Sequence[str] | None = None) -> list[float]:
    """Stage 1: tune `predictor.model` (the encoder) in place on sentence pairs; returns the mean loss per epoch.
    `contexts`: each sentence's context when the model reads one (model.context), read as the head and serving
    read it."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    s = settings(cfg)
    torch.manual_seed(int(cfg.seed))  # dropout
    pairs, targets, pair_weights = sample_pairs(labels, weights, s["pairs_per_sentence"], int(cfg.seed))
    if not len(pairs) or not (targets == 0).any():
        raise PipelineError("model=contrastive needs training sentences of at least two stances to make pairs")
    ids, _ = predictor.encode(predictor.preprocessor.inputs([str(t) for t in texts], contexts,
                                                            predictor.context_separator))
    model, device, pooling = predictor.model, predictor.device, predictor.head.pooling
    fixed = {id(p) for p in frozen_parameters(cfg, model, pooled=False)}  # train.freeze_embeddings
    trainable = [p for p in model.parameters() if id(p) not in fixed]
    for p in model.parameters():
        p.requires_grad_(id(p) not in fixed)
    optimiser = torch.optim.AdamW(trainable, lr=s["lr"], weight_decay=float(cfg.train.weight_decay))
    steps_per_epoch = -(-len(pairs) // s["batch_size"])
    total = steps_per_epoch * s["epochs"]
    schedule = get_linear_schedule_with_warmup(optimiser, int(float(cfg.train.warmup_ratio) * total), total)
    rng = np.random.default_rng(int(cfg.seed))
    log.info("contrastive: %d pairs of %d sentences (%d same stance), %d epochs of %d steps, loss %s",
             len(pairs), len(texts), int(targets.sum()), s["epochs"], steps_per_epoch, s["loss"])
    losses = []
    model.train()
    try:
        for epoch in range(s["epochs"]):
            order, total_loss = rng.permutation(len(pairs)), 0.0
            for start in range(0, len(order), s["batch_size"]):
                batch = order[start:start + s["batch_size"]]
                rows, where = np.unique(pairs[batch].ravel(), return_inverse=True)
                input_ids, mask = padded([ids[r] for r in rows], predictor.pad_id, device)
                hidden = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
                embedded = torch.nn.functional.normalize(pool(hidden, mask, pooling), dim=-1)
                where = torch.as_tensor(where.reshape(-1, 2), device=device)
                similarity = (embedded[where[:, 0]] * embedded[where[:, 1]]).sum(dim=-1)
                loss = pair_loss(similarity, torch.as_tensor(targets[batch], dtype=similarity.dtype, device=device),
                                 torch.as_tensor(pair_weights[batch], dtype=similarity.dtype, device=device),
                                 loss=s["loss"], margin=s["margin"])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                schedule.step()
                total_loss += float(loss.detach()) * len(batch)
            losses.append(total_loss / len(pairs))
            log.info("contrastive: epoch %d/%d, mean pair loss %.4f", epoch + 1, s["epochs"], losses[-1])
            log_metrics({"contrastive_loss": losses[-1]}, step=epoch + 1)
    finally:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(True)
    return losses


# ---------------------------------------------------------------- the kind (pipeline.models.kinds)

def written_kind(cfg: DictConfig) -> str:
    return "encoder"  # served by pipeline.models.encoder


def preflight(cfg: DictConfig) -> None:
    if not OmegaConf.select(cfg, "model.name_or_path", default=None):
        raise PipelineError("model=contrastive tunes a pretrained encoder: set model.name_or_path to its local "
                            "directory (e.g. model.name_or_path=~/models/multilingual-e5-small)")
    settings(cfg)
    check_source(cfg)


def fit(cfg: DictConfig, split, work_dir: Path, out: Path, preprocess: TextPreprocessor, *,
        resume_from: str | None = None) -> None:
    """Write an encoder stance model dir to `out`: the encoder tuned on sentence pairs + a fitted LR head."""
    import torch

    preflight(cfg)
    if cfg.train.num_threads:
        torch.set_num_threads(int(cfg.train.num_threads))
    predictor, pooling, normalize, base_name = frozen_encoder(cfg, split.train["text"], work_dir, out, preprocess,
                                                              how="contrastive-tuned", shared=False)
    tune_encoder(cfg, predictor, split.train["text"].tolist(), split.train["label"].tolist(),
                 sample_weights(split.train), contexts_of(split.train, predictor.context))
    predictor.model.save_pretrained(out)
    fit_head(cfg, split, predictor, out, pooling=pooling, normalize=normalize,
             what=f"contrastive-tuned encoder {base_name}")
