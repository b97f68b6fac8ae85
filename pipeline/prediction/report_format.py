"""The report's building blocks: stance names and colours, left-to-right numbers, the cue lines and the model-quality
lines (pipeline.prediction.report assembles the page; pipeline.prediction.report_chart draws the timeline)."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

LABEL_NAMES_AR = {"negative": "سلبي", "neutral": "محايد", "positive": "إيجابي"}
LABEL_SIGNS = {"negative": "−", "neutral": "○", "positive": "+"}
# Okabe–Ito: (dark text/border, light background)
LABEL_COLOURS = {"negative": ("#a63c00", "#fbe3d4"), "neutral": ("#4d4d4d", "#ececec"),
                 "positive": ("#005a8c", "#dcebf7")}


def esc(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def is_missing(value) -> bool:
    if value is None:
        return True
    if isinstance(value, (list, tuple, np.ndarray)):
        return len(value) == 0
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def num(value, fmt: str = "{:.2f}", cls: str = "num") -> str:
    """A number (or date / id) in its own left-to-right element; missing → an em dash."""
    if is_missing(value):
        text = "—"
    elif isinstance(value, pd.Timestamp):
        text = value.strftime("%Y-%m-%d") if value == value.normalize() else value.strftime("%Y-%m-%d %H:%M")
    elif isinstance(value, (int, np.integer)) or fmt is None:
        text = str(value)
    else:
        text = fmt.format(float(value))
    return f'<span class="{cls}" dir="ltr">{esc(text)}</span>'


def signed(value) -> str:
    return num(value, "{:+.2f}")


def badge(label: str) -> str:
    name = LABEL_NAMES_AR.get(label, label)
    return (f'<span class="badge b-{esc(label)}"><span aria-hidden="true">{LABEL_SIGNS.get(label, "")}</span> '
            f'{esc(name)}</span>')


def reasons_text(value) -> str:
    """top_words (or rule ids) may be a list, an array, a list of (word, weight) pairs, or a ready string."""
    if is_missing(value):
        return ""
    if isinstance(value, str):
        return value
    items = []
    for item in value:
        if isinstance(item, (tuple, list, np.ndarray)) and len(item) == 2 and not isinstance(item[0], (list, tuple)):
            word, weight = item
            items.append(f"{word} (+{float(weight):.2f})")
        elif isinstance(item, dict) and {"word", "weight"} <= set(item):
            items.append(f"{item['word']} (+{float(item['weight']):.2f})")
        else:
            items.append(str(item))
    return "، ".join(dict.fromkeys(items))  # each once


# ---------------------------------------------------------------- cues (the weak-labelling rules that fired)

RULE_CLASS_PREFIXES = {"pos": "positive", "neg": "negative", "neu": "neutral"}  # labels/lexicon.yaml's id scheme
CONTRAST_ID = "contrast"


def fired_ids(value) -> list[str]:
    if is_missing(value):
        return []
    items = value.split(";") if isinstance(value, str) else [str(v) for v in value]
    return [x.strip() for x in items if x and x.strip()]


UNKNOWN = "?"  # a rule id whose direction cannot be read from it


def _direction_of_id(rule_id: str) -> str | None:
    """The class a rule id votes for, read from the id alone (`neg.refusal`, `pos.hope:negated`); None when a
    negation cancels it; UNKNOWN for an id outside the lexicon's pos. / neg. / neu. scheme."""
    base, _, modifier = rule_id.partition(":")
    label = RULE_CLASS_PREFIXES.get(base.split(".")[0], UNKNOWN)
    if modifier == "cancelled":
        return None
    if modifier == "negated" and label in ("positive", "negative"):
        return "negative" if label == "positive" else "positive"
    return label


def _cue_chip(words: str, label: str | None, negated: bool) -> str:
    """One cue: its words, and the direction it pushes as a sign and an Arabic class name."""
    if label == UNKNOWN:
        return f'<span class="cue">«<bdi>{esc(words)}</bdi>»</span>'
    if label is None:
        direction = '<span class="dir">⊘ ملغاة بالنفي</span>'
    else:
        direction = (f'<span class="dir d-{esc(label)}"><span aria-hidden="true">{LABEL_SIGNS.get(label, "")}</span>'
                     f' {esc(LABEL_NAMES_AR.get(label, label))}{" (منفية)" if negated else ""}</span>')
    return f'<span class="cue">«<bdi>{esc(words)}</bdi>» {direction}</span>'


def cues_html(text: str, rules_fired, cues: Callable[[str], list] | None) -> str:
    """The cues of one sentence, each once, in Arabic with their direction; '' when none fired.

    `cues(text)` (rules.Lexicon.cue_matches of the lexicon that made `rules_fired`) gives the matched words; without
    it the rule ids are shown, once each, with the direction their id says."""
    ids = [x for x in fired_ids(rules_fired) if x != CONTRAST_ID]
    if not ids:
        return ""
    chips: dict[tuple, str] = {}
    matches = cues(str(text)) if cues is not None else []
    if matches and {m.rule_id for m in matches} >= set(ids):
        for m in matches:
            chips.setdefault((m.words, m.label), _cue_chip(m.words, m.label, m.negated))
    else:  # no lexicon (or another one): the ids, readable at least as to their direction
        for rule_id in ids:
            chips.setdefault((rule_id,), _cue_chip(rule_id, _direction_of_id(rule_id), rule_id.endswith(":negated")))
    return "، ".join(chips.values())


# ---------------------------------------------------------------- model quality

@dataclass(frozen=True)
class ModelQuality:
    """How good the model behind the predictions is, as its MLflow runs measured it (pipeline.models.serving)."""

    smoke: bool | None = None                       # True: built from scratch (model=tiny), not a quality model
    test_macro_f1: float | None = None              # on held-out gold articles of its train run
    test_ci: tuple[float, float] | None = None
    test_n: int | None = None                       # gold sentences it was tested on
    cv_macro_f1: float | None = None                # pooled cross-validated (evaluate run of the same recipe)
    cv_ci: tuple[float, float] | None = None
    cv_n: int | None = None
    run_id: str | None = None                       # the train run; None: unknown (a model directory)
    rules_in_sample: bool = False                   # a hybrid: its rules were written on the gold that scores it

    @property
    def known(self) -> bool:
        return self.test_macro_f1 is not None or self.cv_macro_f1 is not None


def _interval(ci) -> str:
    if not ci or any(is_missing(v) for v in ci):
        return ""
    return " " + num(f"[{ci[0]:.2f}, {ci[1]:.2f}]", None)


def quality_html(quality: ModelQuality | None) -> str:
    """The summary's model-quality lines: held-out and cross-validated macro-F1, or why they are unknown; a smoke
    model gets a warning that no label of it should be trusted."""
    parts = []
    if quality is not None and quality.smoke:
        parts.append('<p class="warn" role="alert"><strong>تنبيه: نموذج تجريبي (smoke).</strong> بُني من الصفر بأوزان '
                     'عشوائية لاختبار خط المعالجة فقط، وليس نموذج جودة: لا تعتمد على تصنيفاته ولا على الأرقام أدناه. '
                     'درِّب نموذجاً حقيقياً (مثل <bdi dir="ltr">model=e5-small</bdi>).</p>')
    if quality is None or not quality.known:
        parts.append('<p class="quality-line">جودة النموذج غير معروفة: لا يُعرف تشغيل التدريب في MLflow الذي أنتجه، '
                     'فلا يُعرف مقدار دقته على جمل لم يرها.</p>')
        return f'<div id="quality">{"".join(parts)}</div>'
    lines = []
    if quality.test_macro_f1 is not None:
        n = f" على {num(quality.test_n)} جملة" if quality.test_n else ""
        lines.append(f"<li>على جمل اختبار لم يرها أثناء التدريب{n}: {num(quality.test_macro_f1)}"
                     f"{_interval(quality.test_ci)}</li>")
    if quality.cv_macro_f1 is not None:
        n = f"، {num(quality.cv_n)} جملة" if quality.cv_n else ""
        lines.append(f"<li>بالتحقق المتقاطع (كل مقال يُختبر بنموذج لم يره{n}): {num(quality.cv_macro_f1)}"
                     f"{_interval(quality.cv_ci)}</li>")
    parts.append('<p class="quality-line">جودة النموذج (macro-F1 على التصنيف اليدوي، من 0 إلى 1؛ بين القوسين مجال '
                 f'ثقة 95٪):</p><ul class="quality">{"".join(lines)}</ul>')
    if quality.rules_in_sample:
        parts.append('<p class="quality-line in-sample">يجمع هذا النموذج بين قواعد المعجم ونموذج متعلَّم، وقد كُتبت '
                     'القواعد بالنظر إلى هذه الجمل اليدوية نفسها: الرقمان أعلاه متفائلان (داخل العينة) ولا يقيسان '
                     'الجودة على أخبار جديدة.</p>')
    return f'<div id="quality">{"".join(parts)}</div>'
