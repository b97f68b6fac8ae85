"""`python -m pipeline <stage> [--help] [-m] [hydra overrides]`."""

from __future__ import annotations

import itertools
import logging
import os
import re
import sys
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig

from pipeline.core import distributed, progress
from pipeline.core.config import compose_config, new_run_dir, to_yaml, with_run_dir
from pipeline.core.errors import PipelineError, UsageError
from pipeline.core.io import write_text_atomic
from pipeline.cli.registry import STAGES, ensure_inputs

log = logging.getLogger("pipeline")

DISTRIBUTED_STAGES = ("train",)  # the stages that may run as several processes (torchrun, accelerate launch)


def usage() -> str:
    width = max(len(n) for n in STAGES)
    lines = [
        "usage: python -m pipeline <stage> [--help] [-m] [key=value ...]",
        "",
        "Arabic stance toward agreement: positive / negative / neutral, sentence by sentence.",
        "",
        "stages:",
        *(f"  {name:<{width}}  {stage.help}" for name, stage in STAGES.items()),
        "",
        "`python -m pipeline <stage> --help` lists that stage's keys with their meaning, then the rest of the",
        "config; any value can be overridden, e.g. `python -m pipeline train model=tiny train.epochs=3`.",
        "-m / --multirun sweeps comma-separated values (`-m train.lr=1e-5,3e-5`), one child run each.",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> tuple[str, list[str], bool, bool]:
    """Returns (stage, overrides, show_help, multirun); raises UsageError on anything unknown."""
    if not argv:
        return "", [], False, False
    if argv[0] in ("-h", "--help"):
        return "", [], True, False
    stage_name = argv[0]
    if stage_name not in STAGES:
        raise UsageError(f"unknown stage {stage_name!r}; choose one of: {', '.join(STAGES)}")
    stage = STAGES[stage_name]
    overrides: list[str] = []
    show_help = multirun = False
    for arg in argv[1:]:
        if arg in ("-h", "--help"):
            show_help = True
        elif arg in ("-m", "--multirun"):
            multirun = True
        elif arg in stage.flags:
            overrides.append(stage.flags[arg])
        elif arg.startswith("-") and not arg.startswith("~"):
            known = ", ".join(["--help", "-m", *stage.flags])
            name, _, value = arg.lstrip("-").partition("=")
            hint = ""
            if name and arg.startswith("--") and re.fullmatch(r"[A-Za-z_][\w.-]*", name):
                hint = (f"; settings are key=value without dashes: {name.replace('-', '_')}={value or '<value>'} "
                        f"(`python -m pipeline {stage_name} --help` lists them)")
            raise UsageError(f"unknown option {arg!r} for stage {stage_name!r}{hint}; options: {known}")
        elif "=" not in arg and not arg.startswith("~"):
            if stage.positional and not any(o.startswith(f"{stage.positional}=") for o in overrides):
                overrides.append(f"{stage.positional}={quote_value(arg)}")
            else:
                raise UsageError(f"bad override {arg!r}: expected key=value (e.g. model=tiny)")
        else:
            overrides.append(expand_home(arg))
    return stage_name, overrides, show_help, multirun


def expand_home(override: str) -> str:
    """`key=~/dir` → `key=/home/me/dir`, as a shell does for an assignment: an argument is not one, so `~` reaches
    us as it is, and Hydra's grammar cannot read it in a value (`~` marks a deletion at the start of an override)."""
    key, sep, value = override.partition("=")
    if sep and not key.startswith("~") and (value == "~" or value.startswith("~/")):
        return f"{key}={os.path.expanduser(value)}"
    return override


def quote_value(text: str) -> str:
    """A bare argument as one Hydra string value (`runs:/<id>/model` holds characters Hydra would parse)."""
    if text.isdigit():
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def expand_sweep(overrides: Sequence[str]) -> list[list[str]]:
    """Cartesian product of comma-separated / range() sweep values, as Hydra's basic sweeper does."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as exc:
        raise UsageError(f"bad override: {str(exc).splitlines()[0]}") from None
    axes = []
    for o in parsed:
        prefix = o.get_key_element()
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
        axes.append([f"{prefix}={v}" for v in values])
    return [list(combo) for combo in itertools.product(*axes)]


def setup_logging(cfg: DictConfig, run_dir: Path) -> None:
    """stderr + `pipeline.log` in the run dir; in a multi-process run, ranks other than 0 write
    `pipeline.rank<N>.log` and print warnings only."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_pipeline", False):
            root.removeHandler(handler)
    replica = not distributed.is_main()
    fmt = logging.Formatter(f"%(asctime)s %(levelname)s {f'[rank {distributed.rank()}] ' if replica else ''}"
                            "%(name)s: %(message)s", "%H:%M:%S")
    stream = logging.StreamHandler(sys.stderr)
    if replica:
        stream.setLevel(logging.WARNING)
    log_file = run_dir / (f"pipeline.rank{distributed.rank()}.log" if replica else "pipeline.log")
    for handler in (stream, logging.FileHandler(log_file, encoding="utf-8")):
        handler.setFormatter(fmt)
        handler._pipeline = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(str(cfg.log_level).upper())
    progress.quiet_libraries()  # no library progress bars in a log written to a file
    for noisy in ("urllib3", "filelock", "alembic", "httpx", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_stage(stage_name: str, cfg: DictConfig):
    """Run one stage (and the stages it needs) with a composed config; usable without the CLI."""
    stage = STAGES[stage_name]
    if distributed.is_distributed():
        if stage_name not in DISTRIBUTED_STAGES:
            raise PipelineError(f"{stage_name} runs in one process; only {', '.join(DISTRIBUTED_STAGES)} runs under "
                                f"torchrun / accelerate launch: run `python -m pipeline {stage_name} ...`")
        distributed.init()
    if not cfg.paths.run_dir:  # in a multi-process run, rank 0's directory is every rank's
        cfg = with_run_dir(cfg, distributed.from_main(lambda: str(new_run_dir(cfg, stage_name))))
    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(cfg, run_dir)
    if distributed.is_main():
        write_text_atomic(run_dir / "config.yaml", to_yaml(cfg))
        log.info("%s: run dir %s", stage_name, run_dir)
        if stage.uses_tracking(cfg):  # it (or a stage it needs) logs to or reads from MLflow
            from pipeline.core import tracking

            tracking.check_reachable(cfg)  # a stopped server fails here in seconds, before any work
        stage.check_first(cfg)
        ensure_inputs(stage, cfg)
    distributed.barrier()  # the tables rank 0 (re)built are there for every rank
    return stage.run(cfg)


def run_multirun(stage_name: str, overrides: Sequence[str]):
    from pipeline.core import tracking

    if distributed.is_distributed():
        raise PipelineError("-m sweeps run in one process; under torchrun / accelerate launch run one job at a time")

    jobs = expand_sweep(overrides)
    base = compose_config(stage_name, [o for o in jobs[0]])
    sweep_dir = new_run_dir(base, f"{stage_name}-sweep")
    # A train job registers its model but does not take the served alias; the sweep gives it to its best job.
    deferred = ["tracking.promote=false"] if stage_name == "train" else []
    configs = [with_run_dir(compose_config(stage_name, [*job, *deferred]), sweep_dir / str(i))
               for i, job in enumerate(jobs)]
    log.info("multirun: %d jobs in %s", len(jobs), sweep_dir)
    parent_cfg = with_run_dir(base, sweep_dir)
    note = (f"A sweep of {len(jobs)} {stage_name} jobs over `{' '.join(overrides)}`: its child runs are named by the "
            "values they swept. Their best test score is a selection maximum, optimistic for new articles.")
    with tracking.start_run(parent_cfg, f"{stage_name}-sweep", log_params=False,
                            tags={"sweep": "true", tracking.NOTE_TAG: note}) as _:
        import mlflow

        mlflow.log_param("sweep", " ".join(overrides)[: tracking.MAX_PARAM_CHARS])
        results = []
        for job, cfg in zip(jobs, configs):
            with tracking.run_name_suffix(swept_values(jobs, job, overrides)):
                results.append(run_stage(stage_name, cfg))
    if deferred:
        from pipeline.models import serving

        best = serving.promote_best_of_sweep(base, results)
        if best is not None:
            print(f"sweep: version {best['registered_version']} (run {best['run_id']}) is now served as "
                  f"{best['served_as']}: the best {base.tracking.sweep_metric} of the sweep (a selection maximum); "
                  "predict: python -m pipeline predict input=<articles> output=predictions.csv")
    return results


def swept_values(jobs: Sequence[Sequence[str]], job: Sequence[str], overrides: Sequence[str] = ()) -> str:
    """The overrides of `job` that vary across the sweep, by their last key part: `lr=1e-4 batch_size=8`.

    Values are shown as written in `overrides` (1e-4) where a plain comma list gives them, else as Hydra
    normalised them (0.0001)."""
    varying = [i for i in range(len(job)) if len({j[i] for j in jobs}) > 1]
    parts = []
    for i in varying:
        key, _, value = job[i].partition("=")
        if i < len(overrides):
            typed = [v.strip() for v in overrides[i].partition("=")[2].split(",")]
            normalised = sorted({j[i] for j in jobs}, key=[j[i] for j in jobs].index)
            if len(typed) == len(normalised) and not set("()[]{}'\"") & set(overrides[i]):
                value = typed[normalised.index(job[i])]
        parts.append(f"{key.lstrip('+~').split('.')[-1]}={value}")
    return " ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        stage_name, overrides, show_help, multirun = parse_args(argv)
        if not stage_name:
            print(usage())
            return 0 if show_help else 2
        if show_help:
            from pipeline.cli.help import stage_help

            stage = STAGES[stage_name]
            print(stage_help(stage_name, stage.help, stage.own, compose_config(stage_name, overrides), overrides))
            return 0
        if multirun:
            run_multirun(stage_name, overrides)
        else:
            run_stage(stage_name, compose_config(stage_name, overrides))
        return distributed.final_status(0)
    except PipelineError as exc:
        log.debug("failure", exc_info=True)
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except distributed.Terminated as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 143


if __name__ == "__main__":
    raise SystemExit(main())
