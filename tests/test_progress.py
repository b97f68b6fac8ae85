"""Progress bars on a terminal only (issue 20): nothing in a log written to a file, no Trainer dicts on stdout."""

from __future__ import annotations

import io
import os

import pytest

from pipeline import LABELS
from pipeline.core import progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_bar_disabled_is_tqdm_disable_semantics():
    assert progress.bar_disabled(3, at_least=20) is True       # too few items for a bar
    assert progress.bar_disabled(30, at_least=20) is None      # tqdm decides: a bar on a terminal only
    assert progress.bar_disabled() is None


def test_library_bars_off_when_stderr_is_a_file_and_left_alone_on_a_terminal(monkeypatch):
    # imported first: they read their variables once, at import, and the rest of the session keeps that reading
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars
    from transformers.utils import logging as hf_logging

    for name in progress.LIBRARY_SWITCHES:  # recorded, so that undo() restores (or removes) what the test sets
        monkeypatch.setenv(name, "recorded")
        monkeypatch.delenv(name)
    monkeypatch.setattr("sys.stderr", Terminal())
    progress.quiet_libraries()
    assert not any(name in os.environ for name in progress.LIBRARY_SWITCHES)
    monkeypatch.setattr("sys.stderr", io.StringIO())
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true")  # the user's own choice wins
    progress.quiet_libraries()
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1" and os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] == "1"
    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "true"
    assert not hf_logging.is_progress_bar_enabled() and are_progress_bars_disabled()
    monkeypatch.undo()  # the environment as it was, then the switches back on for the other tests
    enable_progress_bars()
    hf_logging.enable_progress_bar()


@pytest.mark.parametrize("terminal", [False, True])
def test_trainer_prints_no_log_dicts_and_draws_a_bar_on_a_terminal_only(terminal, make_cfg, small_encoder, tmp_path,
                                                                       monkeypatch, capsys):
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from pipeline.models.loading import load_tokenizer_and_model
    from pipeline.models.trainer import build_trainer

    monkeypatch.setattr(progress, "interactive", lambda: terminal)
    cfg = make_cfg("train", f"model.name_or_path={small_encoder}", "train.batch_size=4")
    tokenizer, model = load_tokenizer_and_model(str(small_encoder), LABELS, hub_timeout_s=1)
    texts = ["روسيا ترفض العرض", "واشنطن توافق على الحوار", "عقد الاجتماع في جنيف", "المحادثات مستمرة"] * 2
    labels = ["negative", "positive", "neutral", "neutral"] * 2
    trainer = build_trainer(cfg, model, tokenizer, texts, labels, texts[:4], labels[:4], tmp_path / "t", max_steps=2)
    kinds = [type(cb) for cb in trainer.callback_handler.callbacks]
    assert PrinterCallback not in kinds and ProgressCallback not in kinds   # the stock printers are gone
    bars = [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, ProgressCallback)]
    assert trainer.args.disable_tqdm is (not terminal) and len(bars) == int(terminal)
    capsys.readouterr()
    trainer.train()
    trainer.evaluate()
    out = capsys.readouterr().out
    assert "{'" not in out and "'loss'" not in out and "eval_loss" not in out
