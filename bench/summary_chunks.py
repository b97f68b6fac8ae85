"""Per-chunk cost of predict's per-article summary against the number of articles seen so far (issue 21).

    .venv/bin/python bench/summary_chunks.py [--chunks 800] [--chunk-sentences 512] [--per-article 4]
                                             [--rounds 3] [--trees . /path/to/another/checkout]

`prediction.outputs.Summary.add` is fed `--chunks` synthetic predicted chunks (`--per-article` sentences per
article, so chunk/per-article new articles per chunk: 102,400 articles at the end with the defaults) and the CPU
time of each `add` is taken (process time: the other jobs of a shared machine do not count). Printed per tree: the
median CPU ms per chunk over the first and the last tenth of the chunks, and their ratio (last / first): flat (≈1×) when the work per chunk does not grow with the articles so far. Each
`--trees` entry (a checkout of this repository, e.g. `git archive <commit> | tar -x -C /tmp/before`) is timed in
its own process, the trees interleaved round by round (A B A B ...); the spread is the min–max over rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

WORKER = r"""
import json, sys, time
import numpy as np, pandas as pd
sys.path.insert(0, sys.argv[1])
from pipeline.prediction.outputs import Summary
chunks, size, per = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
labels = ["negative", "neutral", "positive"]
rng = np.random.default_rng(0)
summary, times = Summary(labels), []
for c in range(chunks):
    first = c * size
    ids = [f"article_{(first + i) // per:07d}" for i in range(size)]
    p = rng.dirichlet(np.ones(3), size=size)
    frame = pd.DataFrame({"article_id": ids, "label": np.asarray(labels, dtype=object)[p.argmax(axis=1)],
                          "truncated": False, **{f"p_{x}": p[:, j] for j, x in enumerate(labels)}})
    start = time.process_time()
    summary.add(frame)
    times.append(time.process_time() - start)
print(json.dumps({"times": times, "articles": len(summary.frame())}))
"""


def run(tree: Path, chunks: int, size: int, per: int) -> dict:
    out = subprocess.run([sys.executable, "-c", WORKER, str(tree), str(chunks), str(size), str(per)],
                         capture_output=True, text=True, check=True, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=800)
    parser.add_argument("--chunk-sentences", type=int, default=512)
    parser.add_argument("--per-article", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--trees", nargs="+", default=[str(REPO)])
    args = parser.parse_args()
    tenth = max(1, args.chunks // 10)
    results: dict[str, list[tuple[float, float]]] = {t: [] for t in args.trees}
    articles = {}
    for round_ in range(args.rounds):
        for tree in args.trees:
            out = run(Path(tree).resolve(), args.chunks, args.chunk_sentences, args.per_article)
            first = statistics.median(out["times"][:tenth]) * 1000
            last = statistics.median(out["times"][-tenth:]) * 1000
            results[tree].append((first, last))
            articles[tree] = out["articles"]
            print(f"round {round_ + 1} {tree}: first tenth {first:.2f} CPU ms/chunk, "
                  f"last tenth {last:.2f} CPU ms/chunk", file=sys.stderr)
    print(f"{args.chunks} chunks of {args.chunk_sentences} sentences, {args.per_article} per article, "
          f"{args.rounds} rounds (median, min–max over rounds)")
    print("| tree | articles at the end | CPU ms/chunk, first tenth | CPU ms/chunk, last tenth | last / first |")
    print("|---|---:|---:|---:|---:|")
    for tree, rows in results.items():
        ratios = [last / first for first, last in rows]
        print(f"| {tree} | {articles[tree]:,} | {statistics.median(r[0] for r in rows):.2f} | "
              f"{statistics.median(r[1] for r in rows):.2f} | {statistics.median(ratios):.2f}× "
              f"({min(ratios):.2f}–{max(ratios):.2f}) |")


if __name__ == "__main__":
    main()
