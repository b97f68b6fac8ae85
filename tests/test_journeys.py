"""The user's journeys, end to end: the README's (and Makefile's) own command sequences, run in order in one
checkout with one store and one work dir, as a user runs them. Each stage is tested alone elsewhere; these tests
catch what only the sequence shows (new articles left out of training by a stale table, predict serving a smoke
model over the one just trained).

The "pretrained" encoder is a small BERT built here (conftest's `small_encoder`: no ../shared, no hub): it stands
in for ~/models/multilingual-e5-small in the README's commands. Commands run in-process through `pipeline.cli.main.main`.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pandas as pd
import pytest

from pipeline.cli.main import main

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
STANDIN = "~/models/multilingual-e5-small"  # the README's path of the pretrained encoder
NEW_ARTICLES = {
    "n1": "رحبت موسكو بالتقدم الملموس في المحادثات مع واشنطن.\nوقال المتحدث إن الطرفين اتفقا على مواصلة الحوار.\n"
          "رفضت روسيا المقترح الأمريكي رفضا قاطعا.\n",
    "n2": "عقد الاجتماع في جنيف يوم الاثنين.\nهدد الناتو بعواقب وخيمة إذا استمر التصعيد.\n",
}
OTHER_ARTICLES = {
    "m1": "أعلن الجانبان عن تقدم في المفاوضات.\nلكن الخلافات لا تزال كبيرة.\nوسيعقد اجتماع جديد الأسبوع المقبل.\n"
          "ونفت موسكو أي نية للتصعيد.\n",
}


def readme_commands(heading: str) -> list[list[str]]:
    """The `python -m pipeline ...` commands of the first bash block after `heading` in the README, as argv lists
    (continuation lines joined, comments dropped)."""
    text = README.read_text(encoding="utf-8")
    start = text.index(heading)
    block = re.search(r"```bash\n(.*?)```", text[start:], re.S).group(1)
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        line = line.split("  #")[0].strip()
        if line.startswith("python -m pipeline "):
            commands.append(shlex.split(line)[3:])
    assert commands, f"no pipeline command under {heading!r} in README.md"
    return commands


def makefile_command(target: str) -> list[str]:
    """The pipeline arguments of a Makefile target (`run-offline:` → ['all', 'model=tiny'])."""
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    body = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", text, re.M).group(1)
    found = re.search(r"-m pipeline (.*?) \$\(ARGS\)", body).group(1)
    return shlex.split(found)


@pytest.fixture
def encoder(small_encoder, tmp_path, monkeypatch) -> Path:
    """The small encoder where the README's commands look for the pretrained one (~/models/...), so that they run
    exactly as written, `~` included."""
    home = tmp_path / "home"
    target = home / STANDIN.removeprefix("~/")
    target.parent.mkdir(parents=True)
    target.symlink_to(small_encoder, target_is_directory=True)
    monkeypatch.setenv("HOME", str(home))
    return target


@pytest.fixture
def checkout(tmp_path, monkeypatch) -> Path:
    """A fresh checkout's data (seeds/, labels/) in its own directory, the working directory of the commands;
    the MLflow store is the default one of that directory."""
    root = tmp_path / "checkout"
    root.mkdir()
    shutil.copytree(REPO / "seeds", root / "seeds")
    shutil.copytree(REPO / "labels", root / "labels")
    monkeypatch.chdir(root)
    # The default store (sqlite:///mlruns/mlflow.db) of this checkout, spelled absolutely: MLflow caches one
    # store per URI for the whole process, and every test of the session has its own checkout.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlruns/mlflow.db")
    return root


def write_articles(folder: Path, articles: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in articles.items():
        (folder / f"{name}.txt").write_text(text, encoding="utf-8")


def run(argv: list[str], capsys) -> str:
    """One command, as typed; returns its stdout."""
    code = main(argv)
    out = capsys.readouterr().out
    assert code == 0, f"`python -m pipeline {' '.join(argv)}` exited {code}"
    return out


def train_run_id(stdout: str) -> str:
    return re.search(r"^train: run (\w+)", stdout, re.M).group(1)


def champion():
    from mlflow import MlflowClient

    return MlflowClient().get_model_version_by_alias("stance-seeds", "champion")


def sentences_of(article_ids) -> int:
    table = pd.read_parquet("work/sentences.parquet")
    return int(table["article_id"].isin(list(article_ids)).sum())


@pytest.mark.slow
def test_run_offline_then_the_best_offline_model_then_a_sweep_serve_what_was_just_trained(checkout, encoder, capsys):
    import mlflow

    # `make run-offline`: a smoke model, trained and evaluated (an evaluate run once made it win by default).
    out = run(makefile_command("run-offline"), capsys)
    assert "smoke model" in out and "never served by default" in out
    # every stage ends with its one summary line (what it wrote, where, what next); no Trainer dicts on stdout
    for stage, next_step in (("segment", "label"), ("label", "train"), ("evaluate", "promote")):
        assert re.search(rf"^{stage}: .* → .*; next: python -m pipeline {next_step}", out, re.M), stage
    assert re.search(r"^train: run \w+: test macro-F1", out, re.M) and "viewStateShareKey=pipeline-headline" in out
    assert "{'loss'" not in out and "'eval_loss'" not in out

    # README, "Labelling new articles with the best offline model": train on gold + the new articles, predict.
    write_articles(checkout / "new", NEW_ARTICLES)
    train_cmd, predict_cmd = readme_commands("## Labelling new articles with the best offline model")
    out = run(train_cmd, capsys)
    offline_best = train_run_id(out)
    assert "now served as models:/stance-seeds@champion" in out
    assert "the served rules were written on this gold: in-sample" in out   # a hybrid's test score is optimistic
    assert "in-sample, optimistic" in run(predict_cmd, capsys)

    assert champion().run_id == offline_best                          # the model just trained, not tiny
    predictions = pd.read_csv("predictions.csv")
    assert set(predictions["article_id"]) == set(NEW_ARTICLES)
    assert "decided_by" in predictions.columns                        # the offline-best hybrid answered
    # Its training rows include the new articles: they were segmented although work/ already held the seeds'.
    new_sentences = sentences_of(NEW_ARTICLES)
    assert new_sentences == len(predictions)
    tags = mlflow.get_run(offline_best).data.tags
    assert tags["refit_sources"] == f"gold=74, rules={new_sentences}"      # the served model: every seed + new

    # A sweep, then predict: the sweep's best job is served, and `promote` lists every version.
    out = run(["train", "-m", "model=frozen", f"model.name_or_path={STANDIN}", "train.head.C=0.5,2.0"], capsys)
    assert "a selection maximum" in out
    client = mlflow.MlflowClient()
    jobs = client.search_runs([mlflow.get_experiment_by_name("stance-toward-agreement").experiment_id],
                              filter_string="tags.stage = 'train' and tags.model_kind = 'frozen' "
                                            "and attributes.run_name LIKE 'train-frozen-e5-small C=%'")
    assert len(jobs) == 2
    best = max(r.data.metrics["test_macro_f1"] for r in jobs)
    assert champion().run_id in {r.info.run_id for r in jobs if r.data.metrics["test_macro_f1"] == best}
    run(["predict", "input=new/", "output=after_sweep.csv"], capsys)
    assert "decided_by" not in pd.read_csv("after_sweep.csv").columns  # the frozen model, not the hybrid
    listing = run(["promote"], capsys)
    assert re.search(r"^\s*3\s+champion\s", listing, re.M) or re.search(r"^\s*2\s+champion\s", listing, re.M)
    assert offline_best[:12] in listing

    # Moving the alias by hand: the offline-best version is served again.
    run(["promote", offline_best], capsys)
    assert champion().run_id == offline_best


@pytest.mark.slow
def test_changing_the_articles_to_label_between_two_trains_retrains_on_the_new_ones(checkout, encoder, capsys):
    import mlflow

    write_articles(checkout / "batch1", NEW_ARTICLES)
    write_articles(checkout / "batch2", OTHER_ARTICLES)
    train_cmd, _ = readme_commands("## Labelling new articles with the best offline model")
    first = train_run_id(run(train_cmd + ["data.unlabelled=batch1/*.txt"], capsys))
    assert sentences_of(NEW_ARTICLES) == 5
    second = train_run_id(run(train_cmd + ["data.unlabelled=batch2/*.txt"], capsys))

    assert sentences_of(NEW_ARTICLES) == 0 and sentences_of(OTHER_ARTICLES) == 4
    assert mlflow.get_run(second).data.tags["refit_sources"] == "gold=74, rules=4"
    assert champion().run_id == second != first
    run(["predict", "input=batch2/*.txt", "output=p.parquet"], capsys)
    assert set(pd.read_parquet("p.parquet")["article_id"]) == set(OTHER_ARTICLES)


@pytest.mark.slow
def test_label_export_with_new_articles_exports_their_tasks(checkout, capsys):
    run(["label", "labeling.log_mlflow=false"], capsys)                       # work/ holds the seeds' tables
    write_articles(checkout / "new", NEW_ARTICLES)
    out = run(["label", "--export", "data.unlabelled=new/*.txt", "labeling.export_size=null",
               "labeling.log_mlflow=false"], capsys)
    tasks_path = Path(re.search(r"Label Studio task\(s\) → (\S+)", out).group(1))
    tasks = json.loads(tasks_path.read_text(encoding="utf-8"))
    exported = {t["data"]["article_id"] for t in tasks}
    assert set(NEW_ARTICLES) <= exported
    assert sum(t["data"]["article_id"] in NEW_ARTICLES for t in tasks) == 5


@pytest.mark.slow
def test_predict_never_serves_a_smoke_model_by_default(checkout, capsys):
    run(["train", "model=tiny", "train.epochs=2", "train.baselines=[majority]"], capsys)
    write_articles(checkout / "new", NEW_ARTICLES)
    code = main(["predict", "input=new/", "output=p.csv"])
    err = capsys.readouterr().err
    assert code == 1
    line = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(line) == 1 and "smoke" in line[0] and "model_uri=runs:/" in line[0]
    assert not Path("p.csv").exists()
