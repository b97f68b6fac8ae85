"""The command line: stage list, help, usage errors (exit 2), and stages running what they need first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli.main import expand_sweep, main, parse_args
from pipeline.cli.registry import STAGES, ensure_inputs

from conftest import REPO


def cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def test_help_lists_every_stage():
    result = cli("--help")
    assert result.returncode == 0
    for name in ("segment", "label", "train", "evaluate", "predict", "spark_predict", "all"):
        assert f"  {name} " in result.stdout


def test_no_stage_is_a_usage_error(capsys):
    assert main([]) == 2
    assert "usage:" in capsys.readouterr().out


def test_stage_help_shows_composed_config_with_overrides(capsys):
    assert main(["segment", "--help", "segment.repeated_line_max_words=3"]) == 0
    out = capsys.readouterr().out
    assert "segment.repeated_line_max_words=3 " in out and "data.articles_glob=seeds/*.txt" in out
    assert "stage: segment" in out  # the rest of the composed config follows


def test_stage_help_leads_with_its_own_keys_and_what_they_mean(capsys):
    assert main(["predict", "--help", "predict.batch_size=8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("python -m pipeline predict: batch-predict new articles")
    end = lines.index("", 3)
    meaning: dict[str, str] = {}   # a key=value too wide for its column has its meaning on the next, indented line
    for line in lines[3:end]:
        if line.startswith("   "):
            meaning[key] = (meaning[key] + " " + line.strip()).strip()
        else:
            key, _, text = line.strip().partition(" ")
            meaning[key] = text.strip()
    keys = [k.split("=")[0] for k in meaning]
    assert keys[:3] == ["input", "output", "model_uri"]                   # the stage's own keys first
    assert {"predict.batch_size", "predict.report", "predict.min_confidence", "predict.onnx_cache"} <= set(keys)
    assert meaning["input=null"].startswith("article file, directory, glob")  # conf/config.yaml's comment
    assert meaning["predict.batch_size=8"].startswith("sentences per forward pass")  # with the override applied
    assert all(meaning[k] for k in meaning), [k for k in meaning if not meaning[k]]  # every key says what it is
    rest = "\n".join(lines[end:])
    assert "Every other key" in rest and "\npredict:" not in rest and "\ntrain:" in rest  # then the rest, once


def test_comments_in_conf_files_become_one_line_meanings(tmp_path):
    from pipeline.cli.help import file_comments

    path = tmp_path / "x.yaml"
    path.write_text("# header of the file\n\n"
                    "# what a is, from the block above\na: 1\n"
                    "b: '#not a comment'   # b's own comment\n"
                    "                      # continued here\n"
                    "c:\n  d: 2            # nested\n"
                    "e: [1, 2]\n", encoding="utf-8")
    assert file_comments(path, "g.") == {"g.a": "what a is, from the block above",
                                          "g.b": "b's own comment continued here", "g.c.d": "nested"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["bogus"], f"unknown stage 'bogus'; choose one of: {', '.join(STAGES)}"),
        (["segment", "model=nope"], "unknown model config; choices: "),
        (["segment", "segment.nope=1"], "no config key 'segment.nope'"),
        (["segment", "x=[1"], "bad override"),
        (["segment", "justaword"], "expected key=value"),
        (["segment", "--frobnicate"], "unknown option '--frobnicate'"),
        (["predict", "--input", "news.csv"], "settings are key=value without dashes: input=<value>"),
        (["predict", "--input=news.csv"], "settings are key=value without dashes: input=news.csv"),
        (["predict", "--model-uri=runs:/x/model"], "model_uri=runs:/x/model"),
        (["train", "train.epochs=abc"], "bad override 'train.epochs=abc': train.epochs must be an integer"),
        (["predict", "predict.batch_size=abc"], "predict.batch_size must be an integer"),
        (["train", "train.sources=gold"], "train.sources must be a list"),
        (["train", "train.group_by_length=maybe"], "train.group_by_length must be true or false"),
        (["train", "hydra.run.dir=/tmp/elsewhere"], "hydra.* settings are not used by this CLI; the run dir is paths.run_dir"),
        # issue 17 item 10: shares outside their interval (0 divided by zero, 1.5 silently split 50 %)
        (["train", "train.test_size=0"], "train.test_size=0 is outside (0, 1): it is the share of gold articles held "
                                         "out for the test; give a value in (0, 1), e.g. train.test_size=0.2"),
        (["train", "train.test_size=1.5"], "train.test_size=1.5 is outside (0, 1)"),
        (["train", "train.test_size=-0.2"], "train.test_size=-0.2 is outside (0, 1)"),
        (["train", "train.val_size=1"], "train.val_size=1 is outside [0, 1): it is the share of the other articles "
                                        "held out for validation, 0 = none"),
        (["evaluate", "train.warmup_ratio=1.1"], "train.warmup_ratio=1.1 is outside [0, 1]"),
        (["predict", "predict.min_confidence=60"], "predict.min_confidence=60 is outside [0, 1]"),
        (["evaluate", "evaluate.ci=95"], "evaluate.ci=95 is outside (0, 1)"),
        (["train", "train=scratch", "train.val_size=2"], "train.val_size=2 is outside [0, 1)"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_valid_overrides_keep_working(make_cfg):
    cfg = make_cfg("train", "train.lr=1e-4", "model=tiny", "train.epochs=3", "train.resume=/some/run/dir",
                   "predict.threads=2", "train.weight_decay=0", "train.sources=[gold]",
                   "predict.carry_columns=[date,outlet]", "train.val_size=0", "train.warmup_ratio=1")
    assert cfg.train.lr == 1e-4 and cfg.model.name == "tiny" and cfg.train.epochs == 3
    assert cfg.train.resume == "/some/run/dir" and cfg.train.weight_decay == 0 and list(cfg.train.sources) == ["gold"]
    assert cfg.train.val_size == 0 and cfg.train.warmup_ratio == 1  # the closed ends of their intervals
    assert list(cfg.predict.carry_columns) == ["date", "outlet"]  # `all` by default, or a list of columns


def test_a_dict_override_replaces_the_dict(make_cfg):
    # table.yaml's `label_map: {}` is a struct node: Hydra alone refuses every new key of a plain override.
    cfg = make_cfg("train", "data=table", "data.path=x.csv", "data.label_map={Favor: positive, None: neutral}")
    assert dict(cfg.data.label_map) == {"Favor": "positive", "None": "neutral"}
    cfg = make_cfg("train", "data=arsarcasm", "data.label_map={P: positive}")
    assert dict(cfg.data.label_map) == {"P": "positive"}             # the given map, not merged with the default


def test_unknown_stage_from_the_shell():
    result = cli("trian")
    assert result.returncode == 2 and "choose one of" in result.stderr and "Traceback" not in result.stderr


def test_segment_from_the_shell_writes_sentences_in_its_own_run_dir(tmp_path):
    result = cli("segment", f"paths.work_dir={tmp_path}/work", f"paths.output_root={tmp_path}/out")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "work" / "sentences.parquet").exists()
    (run_dir,) = (tmp_path / "out" / "segment").iterdir()
    assert {"config.yaml", "pipeline.log", "segment_report.json"} <= {p.name for p in run_dir.iterdir()}
    assert "sentences kept: 74" in result.stderr
    # one summary line on stdout: what it wrote, where, and the next command
    assert result.stdout.strip() == (f"segment: 74 sentences of 5 articles (12 removed, 0 files skipped) → "
                                     f"{tmp_path}/work/sentences.parquet; next: python -m pipeline label")


def test_run_dirs_never_collide(tmp_path, make_cfg):
    from pipeline.core.config import new_run_dir

    cfg = make_cfg("segment", f"paths.output_root={tmp_path}/o")
    dirs = {new_run_dir(cfg, "segment") for _ in range(20)}  # same second, all distinct
    assert len(dirs) == 20


def test_stale_outputs_are_rebuilt_before_a_stage(tmp_path, make_cfg):
    articles = tmp_path / "articles"
    articles.mkdir()
    (articles / "a.txt").write_text("الجملة الأولى.", encoding="utf-8")
    cfg = make_cfg("label", f"data.articles_glob={articles}/*.txt")
    segment = STAGES["segment"]
    assert segment.stale_reason(cfg) == "missing"
    segment.run(cfg)
    assert not segment.is_stale(cfg)
    (articles / "a.txt").write_text("الجملة الأولى المعدلة.", encoding="utf-8")   # an input changed
    assert "a.txt changed" in segment.stale_reason(cfg)
    segment.run(cfg)
    (articles / "b.txt").write_text("مقال جديد.", encoding="utf-8")               # the glob lists a new file
    assert "lists other files (new: " in segment.stale_reason(cfg)
    segment.run(cfg)
    assert not segment.is_stale(cfg)


def test_articles_to_label_make_the_tables_stale_and_join_them(tmp_path, make_cfg):
    """data.unlabelled was once left out of segment's fingerprint: a train with new articles used the old table."""
    import pandas as pd

    quiet = "labeling.log_mlflow=false"
    ensure_inputs(STAGES["train"], make_cfg("train", quiet))
    sentences = Path(make_cfg("train").paths.sentences)
    assert "origin" not in pd.read_parquet(sentences).columns
    new = tmp_path / "new"
    new.mkdir()
    (new / "n1.txt").write_text("رفضت موسكو المقترح الأمريكي رفضا قاطعا.\n", encoding="utf-8")
    with_new = make_cfg("train", quiet, f"data.unlabelled={new}/*.txt")
    assert STAGES["segment"].stale_reason(with_new).startswith("data.unlabelled changed (null → ")
    ensure_inputs(STAGES["train"], with_new)
    labelled = pd.read_parquet(with_new.paths.labelled)
    assert (labelled["article_id"] == "n1").sum() == 1
    # A file appearing in the unlabelled folder, or an article edited there, is seen too.
    (new / "n2.txt").write_text("عقد الاجتماع في جنيف.\n", encoding="utf-8")
    assert "lists other files" in STAGES["segment"].stale_reason(with_new)
    ensure_inputs(STAGES["train"], with_new)
    assert set(pd.read_parquet(with_new.paths.labelled)["article_id"]) >= {"n1", "n2"}
    # Issue 19: the inputs are read through data.unlabelled_table's keys (recorded: they were read), never predict's,
    # so a predict setting does not make the sentences stale.
    fingerprint = json.loads(Path(f"{sentences}.fingerprint.json").read_text(encoding="utf-8"))
    assert fingerprint["config"]["data.unlabelled"] == f"{new}/*.txt"
    assert "data.unlabelled_table.text_column" in fingerprint["config"]
    assert not any(key.startswith("predict.") for key in fingerprint["config"])
    assert not STAGES["segment"].is_stale(with_new) and not STAGES["label"].is_stale(with_new)
    assert not STAGES["segment"].is_stale(make_cfg("train", quiet, f"data.unlabelled={new}/*.txt",
                                                   "predict.text_column=body"))


def test_every_file_a_stage_opens_is_in_its_fingerprint(tmp_path, make_cfg):
    """The property behind staleness: whatever segment and label open for reading (Python's `open` audit event)
    among the project's data files is recorded, so a change to it rebuilds the table."""
    import pandas as pd

    new = tmp_path / "new"
    new.mkdir()
    (new / "n1.txt").write_text("رفضت موسكو المقترح.\n", encoding="utf-8")
    pd.DataFrame({"text": ["نرحب بالتقدم في المحادثات."]}).to_csv(new / "t.csv", index=False)
    cfg = make_cfg("label", "labeling.log_mlflow=false", f"data.unlabelled=[{new}/n1.txt,{new}/t.csv]")
    opened: set[str] = set()
    watching = [True]

    def hook(event, args):
        if watching[0] and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            path, mode, flags = args
            reading = ("r" in mode and "+" not in mode) if isinstance(mode, str) else \
                not (flags or 0) & (os.O_WRONLY | os.O_RDWR)  # os.open: (path, None, flags)
            if reading:
                opened.add(os.path.abspath(os.fsdecode(path)))

    sys.addaudithook(hook)  # audit hooks cannot be removed: this one stops recording at the end
    try:
        for name in ("segment", "label"):
            STAGES[name].run(cfg)
    finally:
        watching[0] = False
    data_roots = (str(tmp_path), str(REPO / "seeds"), str(REPO / "labels"))
    read = {p for p in opened if p.startswith(data_roots) and not p.endswith(".fingerprint.json")}
    recorded = set()
    for table in (cfg.paths.sentences, cfg.paths.labelled):
        recorded |= {os.path.abspath(p) for p in json.loads(Path(f"{table}.fingerprint.json").read_text())["files"]}
    assert read and read <= recorded, sorted(read - recorded)


def test_outputs_built_with_another_config_are_rebuilt(tmp_path, make_cfg):
    import pandas as pd

    lines = (REPO / "labels" / "gold.csv").read_text(encoding="utf-8").splitlines()
    small_gold = tmp_path / "gold29.csv"
    small_gold.write_text("\n".join(lines[:30]) + "\n", encoding="utf-8")    # header + 29 rows
    quiet = "labeling.log_mlflow=false"
    labelled = Path(make_cfg("label").paths.labelled)
    small = make_cfg("label", f"paths.gold={small_gold}", quiet)
    ensure_inputs(STAGES["label"], small)
    STAGES["label"].run(small)                                 # `label paths.gold=<29-row copy>`
    assert pd.read_parquet(labelled)["source"].eq("gold").sum() == 29
    plain = make_cfg("train", quiet)
    assert STAGES["label"].stale_reason(plain).startswith(f"paths.gold changed (\"{small_gold}\" → ")
    ensure_inputs(STAGES["train"], plain)                      # a plain train rebuilds labelled.parquet
    assert pd.read_parquet(labelled)["source"].eq("gold").sum() == len(lines) - 1
    assert not STAGES["label"].is_stale(plain) and not STAGES["segment"].is_stale(plain)
    # Knobs that do not change the tables do not rebuild them.
    assert not STAGES["label"].is_stale(make_cfg("train", quiet, "labeling.stats_only=true", "train.epochs=1",
                                                 "labeling.export_size=7", "log_level=DEBUG"))

    sentences = Path(plain.paths.sentences)
    built_at = sentences.stat().st_mtime_ns
    other = make_cfg("train", quiet, "segment.repeated_line_max_words=3")
    assert STAGES["segment"].is_stale(other)
    ensure_inputs(STAGES["train"], other)                      # a segment.* override on a dependent stage
    assert sentences.stat().st_mtime_ns != built_at
    assert not STAGES["segment"].is_stale(other) and not STAGES["label"].is_stale(other)
    fingerprint = json.loads(Path(f"{sentences}.fingerprint.json").read_text(encoding="utf-8"))
    assert fingerprint["config"]["segment.repeated_line_max_words"] == 3
    assert "paths.run_dir" not in fingerprint["config"]


def test_a_home_directory_in_a_value_is_expanded_as_a_shell_would(monkeypatch):
    """`model.name_or_path=~/models/x` is not a shell assignment, so `~` reaches the CLI, and Hydra cannot parse it."""
    monkeypatch.setenv("HOME", "/home/analyst")
    _, overrides, _, _ = parse_args(["train", "model.name_or_path=~/models/x", "~train.lr", "data.unlabelled=a~b"])
    assert overrides == ["model.name_or_path=/home/analyst/models/x", "~train.lr", "data.unlabelled=a~b"]
    from pipeline.core.config import compose_config

    assert compose_config("train", overrides[:1]).model.name_or_path == "/home/analyst/models/x"


def test_sweep_expansion_is_a_cartesian_product():
    jobs = expand_sweep(["train.lr=1e-5,3e-5", "model=tiny", "seed=1,2"])
    assert len(jobs) == 4
    assert ["train.lr=1e-05", "model=tiny", "seed=1"] in jobs


def test_a_stage_error_is_one_clear_line_without_traceback(tmp_path):
    result = cli("segment", f"data.articles_glob={tmp_path}/none/*.txt", f"paths.output_root={tmp_path}/o",
                 f"paths.work_dir={tmp_path}/w")
    assert result.returncode == 1
    assert "error: no article matches" in result.stderr and "Traceback" not in result.stderr
