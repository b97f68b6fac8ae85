"""How to combine the rules with the learned model: a confidence threshold or a learned combination (stacking).

    .venv/bin/python bench/hybrid_combination.py --model ~/models/multilingual-e5-small

Leave-one-article-out on the seed gold, as `experiment=offline-best` trains: frozen encoder (mean-pooled,
"query: " prefix, L2-normalised) + class-balanced logistic regression on the other articles' gold plus the held-out
article's rule labels (weight 1; abstentions as neutral). Then, on the held-out article:
  model        the model alone
  thr T        the rules decide where they fire with confidence >= T (train.hybrid.min_rule_confidence), else the model
  stacking     a logistic regression over [log p_model, rule evidence], fitted on the training articles with
               out-of-fold (inner leave-one-article-out) model probabilities: the learned combination
  rules        the rules alone (abstain -> neutral)
The lexicon was written from these five articles, so the rules are IN-SAMPLE here and any combination that
learns from gold how far to trust them learns to trust them fully; read the table with that in mind.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def embeddings(model_dir: str, texts: list[str]):
    import numpy as np
    import torch
    from transformers import AutoModel, AutoTokenizer

    from pipeline.models.encoder import pool

    tokenizer, model = AutoTokenizer.from_pretrained(model_dir), AutoModel.from_pretrained(model_dir).eval()
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(texts), 16):
            batch = tokenizer(["query: " + t for t in texts[start:start + 16]], padding=True, truncation=True,
                              max_length=256, return_tensors="pt")
            pooled = pool(model(**batch).last_hidden_state, batch["attention_mask"], "mean")
            chunks.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.vstack(chunks)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="local directory of the pretrained stand-in encoder")
    parser.add_argument("--thresholds", default="0.0,0.5,0.8")
    args = parser.parse_args()

    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    from pipeline import LABELS
    from pipeline.labeling.gold import load_gold
    from pipeline.labeling.rules import load_lexicon

    gold = load_gold(REPO / "labels" / "gold.csv")
    rules = load_lexicon(REPO / "labels" / "lexicon.yaml").label_texts(gold["text"].tolist())
    y = gold["label"].map(LABELS.index).to_numpy()
    groups = gold["article_id"].to_numpy()
    fired = rules["rule_label"].notna().to_numpy()
    rule_y = np.array([LABELS.index(r) if isinstance(r, str) else LABELS.index("neutral") for r in rules["rule_label"]])
    confidence = rules["rule_confidence"].fillna(0.0).to_numpy()
    evidence = np.zeros((len(y), len(LABELS) + 1))
    evidence[fired, rule_y[fired]] = confidence[fired]
    evidence[~fired, -1] = 1.0
    x = embeddings(args.model, gold["text"].tolist())

    def fit(train_idx, target_idx):
        features = np.vstack([x[train_idx], x[target_idx]])
        targets = np.concatenate([y[train_idx], rule_y[target_idx]])
        return LogisticRegression(C=1.0, max_iter=5000, class_weight="balanced").fit(features, targets)

    thresholds = [float(t) for t in args.thresholds.split(",")]
    preds = {name: np.zeros(len(y), dtype=int) for name in ["model", *(f"thr {t:g}" for t in thresholds),
                                                              "stacking", "rules"]}
    for article in np.unique(groups):
        test, train = np.where(groups == article)[0], np.where(groups != article)[0]
        proba = np.zeros((len(y), len(LABELS)))
        proba[test] = fit(train, test).predict_proba(x[test])
        preds["model"][test] = proba[test].argmax(1)
        for t in thresholds:
            decide = fired[test] & (confidence[test] >= t)
            preds[f"thr {t:g}"][test] = np.where(decide, rule_y[test], proba[test].argmax(1))
        for inner in np.unique(groups[train]):
            held = np.where(groups == inner)[0]
            proba[held] = fit(np.where((groups != article) & (groups != inner))[0], held).predict_proba(x[held])
        stack_features = np.hstack([np.log(proba + 1e-6), evidence])
        stacker = LogisticRegression(max_iter=5000, class_weight="balanced").fit(stack_features[train], y[train])
        preds["stacking"][test] = stacker.predict(stack_features[test])
        preds["rules"][test] = rule_y[test]
    table = pd.DataFrame([{"combination": name, "pooled_macro_f1": f1_score(y, p, average="macro"),
                           "agrees_with_rules": float(np.mean(p == rule_y))} for name, p in preds.items()])
    print("Leave-one-article-out on the seed gold (rules IN-SAMPLE):")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
