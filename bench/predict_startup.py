"""Start-up of a one-sentence predict against a bare `transformers.pipeline` cold start on the same model dir.

    .venv/bin/python bench/predict_startup.py [--rounds 5] [--model-dir <stance model dir of kind transformer>
                                              | --from-encoder <HF encoder dir, e.g. ~/models/multilingual-e5-small>]
                                              [--bert-base] [--backend onnx]

Each round runs, in fresh processes and in alternating order (so that a load change hits both sides alike):
  * pipeline: `python -m pipeline predict input=<one sentence> output=... model_uri=<dir>` (the whole CLI: config,
    run dir, model, segmentation, outputs);
  * bare:     `python -c "transformers.pipeline('text-classification', model=<dir>)(sentence)"`;
  * import:   `python -c "import pipeline.stages.predict"` (what the stage costs before its model).
Wall-clock seconds per round, the median and spread (min–max) of each, and the ratio pipeline / bare (of the
medians, and its range over rounds) are printed. Without --model-dir the tiny random-weight model is built as
bench/predict_memory.py builds it; --from-encoder builds a real-sized one (the encoder's weights, a fresh
three-label classification head: its labels mean nothing, its start-up is that of a trained model of that size);
--bert-base builds the random-weight model at BERT-base's shape (its vocabulary that of the seed sentences).

--backend onnx times the onnx export cache (predict.onnx_cache) instead: each round, with a new empty cache, the
same one-sentence predict with predict.backend=onnx twice (first: exports and caches; second: reads the cache),
and once with the default backend (eager) for reference, before or after the pair in alternating rounds. Printed:
wall-clock seconds of each, the export time the first run logs, and first / second.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

SENTENCE = "تم التوصل إلى اتفاق بين الجانبين بعد أسابيع من المفاوضات."
TIMEOUT_S = 600  # one cold start on a loaded machine stays far below this


def tiny_model(target: Path, shape: dict | None = None) -> Path:
    from pipeline import LABELS
    from pipeline.models.base import write_model_metadata
    from pipeline.models.tiny import build_tiny_bert
    from pipeline.text.preprocess import TextPreprocessor
    from pipeline.text.segmentation import seed_sentences

    model_dir = build_tiny_bert(seed_sentences(), target, LABELS, **(shape or {}))
    write_model_metadata(model_dir, kind="transformer", labels=LABELS, max_length=128, base_model="tiny",
                         preprocessor=TextPreprocessor("bert-base-arabertv02"))
    return model_dir


def model_from_encoder(encoder: Path, target: Path) -> Path:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from pipeline import LABELS
    from pipeline.models.base import write_model_metadata
    from pipeline.text.preprocess import TextPreprocessor

    model = AutoModelForSequenceClassification.from_pretrained(
        encoder, num_labels=len(LABELS), id2label=dict(enumerate(LABELS)),
        label2id={label: i for i, label in enumerate(LABELS)})
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(encoder).save_pretrained(target)
    write_model_metadata(target, kind="transformer", labels=LABELS, max_length=128, base_model=encoder.name,
                         preprocessor=TextPreprocessor(None))
    return target


def timed(cmd: list[str], env: dict, log: list | None = None) -> float:
    """Wall-clock seconds of `cmd`; its stderr appended to `log` when given."""
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          timeout=TIMEOUT_S)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd[:4])} ...\n{done.stderr[-3000:]}")
    if log is not None:
        log.append(done.stderr)
    return seconds


def onnx_cache_rounds(rounds: int, model_dir: Path, sentence_file: Path, tmp: Path, env: dict) -> None:
    """--backend onnx: first (exports) vs second (cached) one-sentence predict, eager beside them."""
    times = {"first": [], "second": [], "eager": [], "export": []}
    print(f"model dir {model_dir}; {rounds} rounds, OMP_NUM_THREADS={env['OMP_NUM_THREADS']}; predict.backend=onnx")
    for r in range(rounds):
        def predict(name: str, *extra: str) -> list[str]:
            return [sys.executable, "-m", "pipeline", "predict", f"input={sentence_file}",
                    f"output={tmp}/{name}_{r}.csv", f"model_uri={model_dir}", f"paths.output_root={tmp}/outputs",
                    f"tracking.uri=sqlite:///{tmp}/mlruns/mlflow.db", f"tracking.artifact_root={tmp}/mlruns/a",
                    "log_level=INFO", *extra]

        onnx = ("predict.backend=onnx", f"predict.onnx_cache={tmp}/onnx-cache-{r}")
        logs: list[str] = []
        eager = lambda: times["eager"].append(timed(predict("eager", "predict.backend=eager"), env))  # noqa: E731
        if r % 2:
            eager()
        times["first"].append(timed(predict("first", *onnx), env, logs))
        times["second"].append(timed(predict("second", *onnx), env, logs))
        if not r % 2:
            eager()
        exported = re.search(r"exported in ([0-9.]+) s", logs[0])
        if not exported or "cache hit" not in logs[1] or "exported in" in logs[1]:
            raise SystemExit(f"round {r + 1}: the first run did not export or the second did not hit the cache:\n"
                             + "\n".join(line for log in logs for line in log.splitlines() if "onnx" in line))
        times["export"].append(float(exported.group(1)))
        print(f"round {r + 1}: first (export {times['export'][-1]:.1f} s) {times['first'][-1]:.2f} s, second "
              f"(cached) {times['second'][-1]:.2f} s, eager {times['eager'][-1]:.2f} s")
    ratios = [f / s for f, s in zip(times["first"], times["second"])]
    print(f"\nonnx, first predict (exports) : {spread(times['first'])}")
    print(f"  of which the export logged  : {spread(times['export'])}")
    print(f"onnx, second predict (cached): {spread(times['second'])}")
    print(f"eager predict (reference)    : {spread(times['eager'])}")
    print(f"first / second: {statistics.median(times['first']) / statistics.median(times['second']):.2f} of the "
          f"medians (per round {min(ratios):.2f}–{max(ratios):.2f})")


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):6.2f} s (min {min(values):.2f}, max {max(values):.2f})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="a stance model dir of kind transformer (HF files inside); default: the tiny model")
    parser.add_argument("--from-encoder", type=Path, default=None,
                        help="build a stance model dir from this HF encoder dir (random head) and time that")
    parser.add_argument("--bert-base", action="store_true",
                        help="the random-weight model at BERT-base's shape (hidden 768, 12 layers) instead of the tiny one")
    parser.add_argument("--backend", choices=["onnx"], default=None,
                        help="time the onnx backend's first (exporting) vs second (cached) predict instead")
    args = parser.parse_args(argv)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.model_dir:
            model_dir = args.model_dir.resolve()
        elif args.from_encoder:
            model_dir = model_from_encoder(args.from_encoder.expanduser().resolve(), tmp / "model")
        else:
            shape = None
            if args.bert_base:  # AraBERT's shape, as bench/predict_speed.py builds it
                sys.path.insert(0, str(REPO / "bench"))
                from predict_speed import BERT_BASE as shape
            model_dir = tiny_model(tmp / "model", shape)
        sentence_file = tmp / "one.txt"
        sentence_file.write_text(SENTENCE + "\n", encoding="utf-8")
        if args.backend == "onnx":
            onnx_cache_rounds(args.rounds, model_dir, sentence_file, tmp, env)
            return 0
        bare = [sys.executable, "-c",
                "import sys, transformers; "
                "print(transformers.pipeline('text-classification', model=sys.argv[1])(sys.argv[2]))",
                str(model_dir), SENTENCE]
        stage_import = [sys.executable, "-c", "import pipeline.stages.predict"]
        times = {"pipeline": [], "bare": [], "import": []}
        print(f"model dir {model_dir}; {args.rounds} rounds, OMP_NUM_THREADS={env['OMP_NUM_THREADS']}")
        for r in range(args.rounds):
            ours = [sys.executable, "-m", "pipeline", "predict", f"input={sentence_file}",
                    f"output={tmp}/out_{r}.csv", f"model_uri={model_dir}", f"paths.output_root={tmp}/outputs",
                    f"tracking.uri=sqlite:///{tmp}/mlruns/mlflow.db", f"tracking.artifact_root={tmp}/mlruns/a",
                    "log_level=WARNING"]
            order = [("pipeline", ours), ("bare", bare)]
            if r % 2:
                order.reverse()
            for name, cmd in [*order, ("import", stage_import)]:
                times[name].append(timed(cmd, env))
            print(f"round {r + 1}: pipeline {times['pipeline'][-1]:.2f} s, bare {times['bare'][-1]:.2f} s, "
                  f"ratio {times['pipeline'][-1] / times['bare'][-1]:.2f}; import pipeline.stages.predict "
                  f"{times['import'][-1]:.2f} s")
        ratios = [p / b for p, b in zip(times["pipeline"], times["bare"])]
        print(f"\npipeline predict, one sentence : {spread(times['pipeline'])}")
        print(f"bare transformers.pipeline    : {spread(times['bare'])}")
        print(f"import pipeline.stages.predict: {spread(times['import'])}")
        print(f"ratio pipeline / bare: {statistics.median(times['pipeline']) / statistics.median(times['bare']):.2f} "
              f"of the medians (per round {min(ratios):.2f}–{max(ratios):.2f}); store created: "
              f"{(tmp / 'mlruns').exists()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
