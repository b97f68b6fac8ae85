"""`make bench`: run every benchmark that can run here, at small sizes, and print their tables.

    .venv/bin/python bench/run_all.py                                   # no external data: seed corpus, tiny model
    .venv/bin/python bench/run_all.py --arsarcasm ../shared/data/arsarcasm_v2/training_data.csv
    .venv/bin/python bench/run_all.py --model /models/bert-base-arabertv02   # a downloaded AraBERT (its tokenizer)
    make bench ARGS="--arsarcasm ../shared/data/arsarcasm_v2/training_data.csv"

Each benchmark runs in its own process (its numbers are not disturbed by the others) and prints its own ratio
table; what cannot run here is skipped with the reason and the command that runs it. The sizes are small so
that the whole set takes minutes; the full-size commands are in README.md (Performance) and docs/.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent


def run(title: str, args: list[str]) -> bool:
    print(f"\n=== {title}\n$ python {' '.join(args)}", flush=True)
    started = time.monotonic()
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
           "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, *args], cwd=REPO, env=env)
    print(f"({title}: exit {result.returncode}, {time.monotonic() - started:.0f} s)", flush=True)
    return result.returncode == 0


def skip(title: str, why: str) -> None:
    print(f"\n=== {title}\nskipped: {why}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arsarcasm", type=Path, help="ArSarcasm-v2 CSV (tweet, sentiment columns), e.g. "
                        "../shared/data/arsarcasm_v2/training_data.csv")
    parser.add_argument("--model", type=Path, help="a local AraBERT directory (its tokenizer sizes the BERT-base runs)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds of the training throughput runs")
    args = parser.parse_args()

    failed: list[str] = []

    def bench(title: str, argv: list[str]) -> None:
        if not run(title, argv):
            failed.append(title)

    bench("training throughput: seed corpus, tiny model",
          ["bench/train_throughput.py", "--models", "tiny", "--steps", "6", "--repeats", str(args.repeats)])
    if args.arsarcasm:
        if not args.arsarcasm.exists():
            print(f"error: --arsarcasm {args.arsarcasm}: file not found", file=sys.stderr)
            return 2
        bench("training throughput: ArSarcasm-v2 tweets, tiny model",
              ["bench/train_throughput.py", "--data", str(args.arsarcasm), "--models", "tiny", "--steps", "6",
               "--repeats", str(args.repeats)])
    else:
        skip("training throughput: ArSarcasm-v2 tweets", "give --arsarcasm PATH (the CSV is not shipped)")
    if args.model:
        bench("training throughput: BERT-base size with the given tokenizer",
              ["bench/train_throughput.py", "--models", "bert-base", "--tokenizer", str(args.model), "--steps", "4",
               "--repeats", str(args.repeats), *(["--data", str(args.arsarcasm)] if args.arsarcasm else [])])
    else:
        skip("training throughput: BERT-base size with AraBERT's tokenizer",
             "give --model DIR (a downloaded aubmindlab/bert-base-arabertv02); the full table is in docs/train.md")

    speed = ["bench/predict_speed.py", "--models", "tiny", "--n", "200", "--rounds", "2"]
    if args.arsarcasm:
        bench("prediction speed (tiny model, ArSarcasm-v2 sentences)",
              [*speed, "--data", str(args.arsarcasm), "--train-n", "300", "--train-epochs", "1"])
    else:
        bench("prediction speed (tiny model, seed sentences)", [*speed, "--train-n", "0"])
    bench("fp32 headroom: where the predictor's time goes (BERT-base shape, no compiled rows)",
          ["bench/fp32_headroom.py", "--n", "100", "--rounds", "1", "--no-compile",
           *(["--data", str(args.arsarcasm)] if args.arsarcasm else [])])
    bench("int8 headroom: oneDNN's AMX int8 kernels vs bf16 and the shipped int8 (BERT-base shape)",
          ["bench/int8_amx.py", "--n", "100", "--rounds", "1",
           *(["--data", str(args.arsarcasm)] if args.arsarcasm else [])])
    bench("prediction memory (tiny model)", ["bench/predict_memory.py", "--sizes", "2000,20000"])
    bench("predict start-up vs a bare transformers.pipeline (tiny model)", ["bench/predict_startup.py", "--rounds", "3"])
    try:
        import pyspark  # noqa: F401
        import shutil

        spark_ok = shutil.which("java") is not None or bool(os.environ.get("JAVA_HOME"))
    except ImportError:
        spark_ok = False
    if spark_ok:
        bench("whole-article prediction on Spark local[2] vs the predict stage (tiny model)",
              ["bench/spark_predict.py", "--sizes", "2000,20000", "--rounds", "1"])
    else:
        skip("whole-article prediction on Spark", "needs the spark extra (`pip install -e '.[spark]'`) and Java")
    bench("how many to label: learning curve on the seeds (TF-IDF, no encoder)",
          ["bench/learning_curve.py", "--model", "tfidf", "--repeats", "3", "--out", "outputs/bench/learning_curve"])
    skip("how many to label: the frozen encoder on the seeds and ArSarcasm-v2 (docs/train.md)",
         "needs the pretrained stand-in and ../shared: `python bench/learning_curve.py --encoder "
         "~/models/multilingual-e5-small --arsarcasm ../shared/data/arsarcasm_v2/training_data.csv`")
    skip("Label Studio round trip", "needs a running Label Studio (--url, --token): "
         "`python bench/labelstudio_roundtrip.py --help`, see docs/label.md")

    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print("\nall benchmarks that can run here ran")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
