"""Wall time of one train run, this code against another checkout, and how often each read the pretrained encoder.

    .venv/bin/python bench/train_loads.py --before /tmp/before [--rounds 2] \
        [--args model=frozen model.name_or_path=/root/models/multilingual-e5-small]

`--before` is a checkout of this repository at the commit to compare with (e.g. `git archive <commit> | tar -x -C
/tmp/before`). Each round runs `python -m pipeline train <args>` once in each tree (A B A B ...: interleaved, so a
change in the machine's load hits both), in a fresh process with its own MLflow store and run directory; the
labelled table is built once per tree before the timing. Printed: the median wall time per tree, the ratio
before / this code per round (median and min–max), and how many times each run logged `loaded <model>` (a read of
a pretrained model from disk, pipeline.models.loading).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ARGS = ["model=frozen", f"model.name_or_path={Path.home() / 'models' / 'multilingual-e5-small'}"]


def stage(tree: Path, scratch: Path, name: str, stage_args: list[str], log: Path) -> float:
    """Seconds of one `python -m pipeline <stage_args>` in `tree`, its output in `log`."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "HF_HUB_OFFLINE": "1",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    paths = [f"paths.work_dir={scratch / name / 'work'}", f"paths.output_root={scratch / name / 'outputs'}",
             f"tracking.uri=sqlite:///{scratch / name / 'mlflow.db'}",
             f"tracking.artifact_root={scratch / name / 'artifacts'}"]
    start = time.perf_counter()
    with open(log, "w") as out:
        done = subprocess.run([sys.executable, "-m", "pipeline", *stage_args, *paths], cwd=tree, env=env,
                              stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"{tree}: {' '.join(stage_args)} failed; see {log}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="a checkout of the code to compare with")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--args", nargs="+", default=DEFAULT_ARGS, help="train overrides")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (logs, runs)")
    args = parser.parse_args()
    trees = {"before": Path(args.before).resolve(), "this code": REPO}
    scratch = Path(tempfile.mkdtemp(prefix="train_loads-"))
    seconds: dict[str, list[float]] = {name: [] for name in trees}
    loads: dict[str, list[int]] = {name: [] for name in trees}
    for name, tree in trees.items():
        stage(tree, scratch, name, ["label"], scratch / f"{name}-label.log")
    for round_ in range(args.rounds):
        for name, tree in trees.items():
            log = scratch / f"{name}-{round_}.log"
            seconds[name].append(stage(tree, scratch, name, ["train", *args.args], log))
            loads[name].append(sum("pipeline.models.loading: loaded " in line for line in log.open()))
            print(f"round {round_ + 1} {name}: {seconds[name][-1]:.1f} s, {loads[name][-1]} pretrained loads",
                  file=sys.stderr)
    ratios = [b / a for b, a in zip(seconds["before"], seconds["this code"])]
    print(f"python -m pipeline train {' '.join(args.args)}: {args.rounds} rounds, interleaved, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}")
    print("| code | wall s (median) | min–max | pretrained loads per run |")
    print("|---|---:|---:|---:|")
    for name in trees:
        print(f"| {name} | {statistics.median(seconds[name]):.1f} | {min(seconds[name]):.1f}–{max(seconds[name]):.1f}"
              f" | {statistics.median(loads[name]):g} |")
    print(f"before / this code: {statistics.median(ratios):.2f}× (min–max over rounds {min(ratios):.2f}–"
          f"{max(ratios):.2f}×)")
    if args.keep:
        print(f"logs and runs: {scratch}")
    else:
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
