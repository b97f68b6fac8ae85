"""Peak memory of the predict stage against input size: 10,000 vs 100,000 sentences, each in its own process.

    .venv/bin/python bench/predict_memory.py [--sizes 10000,100000] [--format parquet] [--per-article 20]

`--per-article 75000 --sizes 75000` puts every sentence in one article: a long article must stream in chunks too
(its predictions are never held whole), so its peak should stay near that of many short articles.

`--report --articles 500` writes the same number of articles at every size (one parquet table with a date and an
outlet per article, so more sentences per article as the size grows) and runs predict with `predict.report=true
predict.timeline=day`: the report's size and the peak should not grow with sentences per article (issue 21).

Synthetic article files (20 sentences each) are built from the seed corpus's sentences, predicted with the tiny
random-weight model by `python -m pipeline predict` in a fresh process, and the child's peak RSS is read from
os.wait4's resource usage. Streaming in chunks (predict.chunk_sentences) should keep the peak flat.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from pipeline.text.segmentation import seed_sentences  # noqa: E402

SENTENCES_PER_ARTICLE = 20


def write_articles(folder: Path, n_sentences: int, pool: list[str], per_article: int = SENTENCES_PER_ARTICLE) -> int:
    """n_sentences sentences in articles of `per_article` lines, one sentence per line."""
    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    article = 0
    while written < n_sentences:
        k = min(per_article, n_sentences - written)
        lines = []
        for j in range(k):
            s = pool[(article * 7 + j * 13) % len(pool)]
            words = s.split()
            # vary each line a little so that sentences are not all identical copies
            lines.append(" ".join(words[: max(3, len(words) - (article + j) % 5)]) + f" {j}.")
        (folder / f"article_{article:06d}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        written += k
        article += 1
    return article


def write_article_table(path: Path, n_sentences: int, pool: list[str], n_articles: int) -> int:
    """n_sentences sentences in exactly n_articles rows (article_id, text, date, outlet) of a parquet table."""
    import pandas as pd

    per, extra = divmod(n_sentences, n_articles)
    rows = []
    for article in range(n_articles):
        k = per + (article < extra)
        lines = []
        for j in range(k):
            s = pool[(article * 7 + j * 13) % len(pool)]
            words = s.split()
            lines.append(" ".join(words[: max(3, len(words) - (article + j) % 5)]) + f" {j}.")
        rows.append({"article_id": f"article_{article:06d}", "text": "\n".join(lines),
                     "date": f"2022-01-{1 + article % 28:02d}", "outlet": f"outlet {article % 5}"})
    pd.DataFrame(rows).to_parquet(path, index=False)
    return n_articles


def run_predict(input_dir: Path, output: Path, model_dir: Path, work: Path, extra: list[str]) -> tuple[float, float, int]:
    """(peak RSS MiB, seconds, exit status) of one predict run in a child process."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [sys.executable, "-m", "pipeline", "predict", f"input={input_dir}", f"output={output}",
           f"model_uri={model_dir}", f"paths.output_root={work}/outputs", "log_level=WARNING", *extra]
    start = time.perf_counter()
    child = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        print(child.stderr.read().decode(errors="replace")[-3000:], file=sys.stderr)
    child.stderr.close()
    return usage.ru_maxrss / 1024, seconds, child.returncode  # ru_maxrss is in KiB on Linux


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="comma list of sentence counts")
    parser.add_argument("--format", default="parquet", choices=["parquet", "csv", "jsonl"])
    parser.add_argument("--chunk-sentences", type=int, default=2048)
    parser.add_argument("--per-article", type=int, default=SENTENCES_PER_ARTICLE,
                        help="sentences per article (one huge article: as many as --sizes)")
    parser.add_argument("--report", action="store_true",
                        help="a dated article table, predict.report=true predict.timeline=day; report size printed")
    parser.add_argument("--articles", type=int, default=500, help="with --report: articles at every size")
    args = parser.parse_args(argv)

    from pipeline import LABELS
    from pipeline.models.base import write_model_metadata
    from pipeline.text.preprocess import TextPreprocessor
    from pipeline.models.tiny import build_tiny_bert

    pool = seed_sentences()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = build_tiny_bert(pool, tmp / "model", LABELS)
        write_model_metadata(model_dir, kind="transformer", labels=LABELS, max_length=128, base_model="tiny",
                             preprocessor=TextPreprocessor("bert-base-arabertv02"))
        for size in (int(s) for s in args.sizes.split(",")):
            extra = [f"predict.chunk_sentences={args.chunk_sentences}"]
            if args.report:
                folder = tmp / f"articles_{size}.parquet"
                n_articles = write_article_table(folder, size, pool, args.articles)
                extra += ["predict.report=true", "predict.timeline=day"]
            else:
                folder = tmp / f"articles_{size}"
                n_articles = write_articles(folder, size, pool, args.per_article)
            output = tmp / f"pred_{size}.{args.format}"
            peak, seconds, code = run_predict(folder, output, model_dir, tmp, extra)
            if code != 0:
                print(f"predict failed on {size} sentences (exit {code})")
                return 1
            out_mib = output.stat().st_size / 2 ** 20
            report = output.with_name(output.stem + ".report.html")
            report_mib = report.stat().st_size / 2 ** 20 if args.report else float("nan")
            rows.append((size, n_articles, peak, seconds, out_mib, report_mib))
            print(f"{size:>8,} sentences in {n_articles:>6,} articles: peak RSS {peak:7.1f} MiB, "
                  f"{seconds:6.1f} s ({size / seconds:,.0f} sentences/s incl. start-up), output {out_mib:.1f} MiB"
                  + (f", report {report_mib:.2f} MiB" if args.report else ""))
    if len(rows) >= 2:
        (small, *_), (large, *_) = rows[0], rows[-1]
        print(f"\npeak RSS {large:,} vs {small:,} sentences: {rows[-1][2] / rows[0][2]:.2f}x "
              f"for {large / small:.0f}x the input")
        if args.report:
            print(f"report size {large:,} vs {small:,} sentences: {rows[-1][5] / rows[0][5]:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
