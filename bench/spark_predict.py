"""Whole-article prediction as a Spark job on local[2] beside the local predict stage, on the same articles.

    .venv/bin/python bench/spark_predict.py [--sizes 10000,100000] [--rounds 2]

Synthetic article files (20 sentences each, from the seed corpus, as bench/predict_memory.py writes them) are
predicted with the tiny random-weight model by `python -m pipeline predict` and by `python -m pipeline spark_predict
spark.master=local[2]`, each run in a fresh process, the two interleaved round by round. Both get the machine's two
cores: the local stage runs torch on 2 threads, the Spark job 2 Python workers of 1 thread each.

Reported per size: wall time (start-up included), peak memory of the whole process tree (driver, JVM, Python
workers: sampled every 0.2 s with psutil) and, between the two sizes, the marginal rate (extra sentences / extra
seconds: the start-up of the JVM and of the workers cancels out) and the memory per sentence. Ratios are Spark /
local, median over the rounds with the range.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(REPO), str(BENCH)]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from predict_memory import write_articles  # noqa: E402

from pipeline.text.segmentation import seed_sentences  # noqa: E402


def tree_rss(pid: int) -> int:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total


def run(cmd: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS MiB of the process tree) of one command; exits on failure."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update(PYTHONPATH=str(REPO), PYSPARK_PYTHON=sys.executable, TOKENIZERS_PARALLELISM="false")
    start = time.perf_counter()
    child = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss(child.pid))
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = child.communicate()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    if child.returncode != 0:
        print(err.decode(errors="replace")[-3000:], file=sys.stderr)
        raise SystemExit(f"failed (exit {child.returncode}): {' '.join(cmd)}")
    return seconds, peak[0] / 2 ** 20


def commands(folder: Path, out: Path, model_dir: Path, work: Path) -> dict[str, list[str]]:
    common = [f"model_uri={model_dir}", f"paths.output_root={work}/outputs", "log_level=WARNING",
              f"tracking.uri=sqlite:///{work}/mlruns/mlflow.db", f"tracking.artifact_root={work}/mlruns/artifacts"]
    return {
        "local": [sys.executable, "-m", "pipeline", "predict", f"input={folder}", f"output={out}.parquet", *common],
        "spark": [sys.executable, "-m", "pipeline", "spark_predict", f"input={folder}", f"output={out}.spark",
                  "spark.master='local[2]'", "spark.mode=overwrite", "spark.conf={spark.ui.showConsoleProgress: false,"
                  " spark.driver.host: 127.0.0.1, spark.driver.bindAddress: 127.0.0.1}", *common],
    }


def ratio_line(name: str, values: list[float]) -> str:
    return f"{name}: {statistics.median(values):.2f}x (range {min(values):.2f}-{max(values):.2f}x)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="comma list of sentence counts (smallest first)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (each runs every size, both ways)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    from pipeline import LABELS
    from pipeline.models.base import write_model_metadata
    from pipeline.text.preprocess import TextPreprocessor
    from pipeline.models.tiny import build_tiny_bert

    pool = seed_sentences()
    results: dict[tuple[str, int], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = build_tiny_bert(pool, tmp / "model", LABELS)
        write_model_metadata(model_dir, kind="transformer", labels=LABELS, max_length=128, base_model="tiny",
                             preprocessor=TextPreprocessor("bert-base-arabertv02"))
        folders = {}
        for size in sizes:
            folders[size] = tmp / f"articles_{size}"
            n_articles = write_articles(folders[size], size, pool)
            print(f"{size:,} sentences in {n_articles:,} articles", flush=True)
        for r in range(args.rounds):
            for size in sizes:
                order = ["local", "spark"] if r % 2 == 0 else ["spark", "local"]
                cmds = commands(folders[size], tmp / f"pred_{size}_{r}", model_dir, tmp)
                for way in order:
                    seconds, peak = run(cmds[way])
                    results.setdefault((way, size), []).append((seconds, peak))
                    print(f"round {r + 1} {way:5} {size:>8,} sentences: {seconds:6.1f} s "
                          f"({size / seconds:,.0f} sentences/s incl. start-up), peak RSS {peak:7.0f} MiB", flush=True)

    print("\nmedian over rounds:")
    for way in ("local", "spark"):
        for size in sizes:
            secs = statistics.median(s for s, _ in results[(way, size)])
            peak = statistics.median(p for _, p in results[(way, size)])
            print(f"  {way:5} {size:>8,} sentences: {secs:6.1f} s, peak RSS {peak:6.0f} MiB "
                  f"({peak * 2 ** 20 / size / 1024:.1f} KiB/sentence)")
    small, large = sizes[0], sizes[-1]
    if large > small:
        print(f"\nbetween {small:,} and {large:,} sentences (per round):")
        marginal = {}
        for way in ("local", "spark"):
            rates = [(large - small) / (b[0] - a[0]) for a, b in zip(results[(way, small)], results[(way, large)])]
            growth = [b[1] / a[1] for a, b in zip(results[(way, small)], results[(way, large)])]
            time_growth = [b[0] / a[0] for a, b in zip(results[(way, small)], results[(way, large)])]
            marginal[way] = rates
            print(f"  {way:5}: marginal {statistics.median(rates):,.0f} sentences/s "
                  f"(range {min(rates):,.0f}-{max(rates):,.0f}); time x{statistics.median(time_growth):.2f}, "
                  f"peak RSS x{statistics.median(growth):.2f} for {large / small:.0f}x the sentences")
        print("\nSpark local[2] / local predict stage:")
        print("  " + ratio_line("marginal sentences/s", [s / l for s, l in zip(marginal["spark"], marginal["local"])]))
        for size in sizes:
            print("  " + ratio_line(f"wall time at {size:,} (start-up included)",
                                    [s[0] / l[0] for s, l in zip(results[("spark", size)], results[("local", size)])]))
            print("  " + ratio_line(f"peak RSS at {size:,}",
                                    [s[1] / l[1] for s, l in zip(results[("spark", size)], results[("local", size)])]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
