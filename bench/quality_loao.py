"""Quality of the model kinds on the seeds, measured as the product is used: leave-one-article-out CV.

    python bench/quality_loao.py --model ~/models/multilingual-e5-small [--finetune] [--out bench_quality.csv]

Every row is `python -m pipeline evaluate` (LOAO, gold-only scoring) with one configuration, in this process,
against its own throw-away MLflow store. Pooled out-of-fold macro-F1 with its article-level bootstrap interval,
and the mean over folds. The rules are IN-SAMPLE: the lexicon was written from these five articles, so every row
that uses rule labels (rules, transductive weak labels, hybrid) is optimistic here.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def configurations(model_dir: str, finetune: bool) -> list[tuple[str, list[str]]]:
    frozen = ["model=frozen", f"model.name_or_path={model_dir}"]
    rows = [
        ("tfidf (gold)", ["model=tfidf"]),
        ("frozen e5 + LR (gold)", frozen),
        ("frozen e5 + LR (gold + held-out rule labels)", [*frozen, "train.transductive=true",
                                                          "train.source_weights.rules=1.0"]),
        ("hybrid: offline-best", ["experiment=offline-best", f"model.name_or_path={model_dir}"]),
    ]
    if finetune:
        rows.append(("fine-tuned e5-small (default recipe)", ["model=e5-small", f"model.name_or_path={model_dir}"]))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="local directory of the pretrained stand-in encoder")
    parser.add_argument("--finetune", action="store_true", help="also fine-tune e5-small per fold (slow on a CPU)")
    parser.add_argument("--out", default=None, help="also write the table as CSV")
    args = parser.parse_args()

    import pandas as pd

    from pipeline.cli.main import run_stage
    from pipeline.core.config import compose_config

    os.chdir(REPO)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = [f"paths.output_root={tmp}/outputs", f"tracking.uri=sqlite:///{tmp}/mlruns/mlflow.db",
                f"tracking.artifact_root={tmp}/mlruns/artifacts", "evaluate.bootstrap=2000",
                "labeling.log_mlflow=false", f"paths.work_dir={tmp}/work"]
        for n, (name, overrides) in enumerate(configurations(args.model, args.finetune)):
            cfg = compose_config("evaluate", [*base, f"paths.run_dir={tmp}/runs/{n}", *overrides])
            started = time.perf_counter()
            summary = run_stage("evaluate", cfg)["summary"]
            seconds = time.perf_counter() - started
            if not rows:  # the baselines are the same for every configuration: report them once
                for baseline, label in (("rules", "rules (IN-SAMPLE lexicon)"), ("majority", "majority")):
                    if f"baseline_{baseline}_oof_macro_f1" in summary:
                        rows.append({"model": label, "pooled_macro_f1": summary[f"baseline_{baseline}_oof_macro_f1"],
                                     "ci_low": None, "ci_high": None,
                                     "fold_mean": summary.get(f"baseline_{baseline}_cv_macro_f1_mean"), "seconds": None})
            rows.append({"model": name, "pooled_macro_f1": summary["oof_macro_f1"],
                         "ci_low": summary.get("oof_macro_f1_ci_low"), "ci_high": summary.get("oof_macro_f1_ci_high"),
                         "fold_mean": summary.get("cv_macro_f1_mean"), "seconds": round(seconds, 1)})
    table = pd.DataFrame(rows)
    print("\nLeave-one-article-out on the 74 seed gold sentences (pooled out-of-fold macro-F1, article bootstrap CI):")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.out:
        table.to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
