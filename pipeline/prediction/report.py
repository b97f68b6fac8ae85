"""One self-contained HTML report of a prediction run, for people who read Arabic news, not parquet files.

    write_html_report("out/report.html", sentences_or_sample, articles, timeline_frame, outlets_frame,
                      title="…", model_description="runs:/…/model (tiny, T=1.8)", quality=ModelQuality(...),
                      min_confidence=0.6, cues=lexicon.cue_matches)

The file needs nothing but itself: inline CSS, no scripts, no web fonts (a system Arabic font stack), and the
timeline is an inline SVG (pipeline.prediction.report_chart). It can be mailed, archived or opened offline years later.

Layout and reading direction: the page is `<html lang="ar" dir="rtl">` so Arabic sentences flow right to left;
everything that must read left to right (numbers, probabilities, dates, article ids, model names) sits in an
element with `dir="ltr"` (class `num`) or in `<bdi>`, so the bidi algorithm cannot reorder "−0.25" into "0.25−".
Stance is shown by colour AND by a text badge with a sign (− ○ +), so it survives colour-blindness and printing;
the colours are from the Okabe–Ito palette (vermillion / grey / blue), distinguishable under the common forms of
colour-blindness, with text contrast ≥ 4.5:1 on their light backgrounds.

Readable from a 360 px phone to a desktop: tables scroll sideways inside their own box (`.scroll`), the chart is
drawn twice (wide and narrow) and CSS shows the one whose text stays legible, long ids wrap.

What the reader is told beside the labels: the model's quality (held-out and cross-validated macro-F1 with their
intervals, from its MLflow runs: `ModelQuality`) and a warning for a smoke model; low-confidence sentences
(`confident` false) are marked; the cues that fired are shown once each, in the sentence's own Arabic words with
the direction they push (the rule ids stay in the data and in a `data-rules` attribute).

Sections (stable ids, used by tests and links): `summary` (with `quality` and `sampling`), `timeline`, `outlets`,
`extremes`, `articles` (one `<section class="article">` per article, with `data-sentences` (all of its sentences)
and `data-shown` (those sampled: pipeline.prediction.report_sample), said in words too).

The page is drawn from a `ReportSample` (`render_sample`; predict gathers it chunk by chunk from its output) or from
sentence rows held whole (`render_html`, which samples them first): its size grows with the number of articles,
never with their length.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from pipeline import LABELS
from pipeline.core.io import write_text_atomic
from pipeline.prediction.report_chart import NARROW, WIDE, timeline_svg
from pipeline.prediction.report_sample import PER_ARTICLE, TOP_N, ReportSample, low_confidence, sample_of
from pipeline.prediction.report_format import (LABEL_COLOURS, LABEL_NAMES_AR, ModelQuality, is_missing, reasons_text,
                                    fired_ids, badge, cues_html, esc, num, quality_html, signed)

__all__ = ["ModelQuality", "ReportSample", "render_html", "render_sample", "write_html_report"]

log = logging.getLogger(__name__)

FONT_STACK = '"Noto Naskh Arabic", "Amiri", "Noto Sans Arabic", "Geeza Pro", "Tahoma", "Arial", sans-serif'
# Article-level metadata shown when the articles table carries it (from predict.carry_columns).
META_COLUMNS = (("title", "العنوان", False), ("outlet", "المصدر", False), ("date", "التاريخ", True),
                ("url", "الرابط", True), ("source", "الملف", True))


CSS = f"""
:root {{ color-scheme: light; }}
* {{ box-sizing: border-box; }}
body {{ font-family: {FONT_STACK}; font-size: 17px; line-height: 1.75; color: #1a1a1a; background: #fff;
        margin: 0 auto; max-width: 1000px; padding: 1.5rem; overflow-wrap: break-word; }}
h1 {{ font-size: 1.6rem; margin: 0 0 .3rem; }}
h2 {{ font-size: 1.3rem; border-bottom: 2px solid #ddd; padding-bottom: .2rem; margin-top: 2.2rem; }}
h3 {{ font-size: 1.1rem; margin: 1.4rem 0 .1rem; }}
.num {{ font-family: "DejaVu Sans", "Arial", sans-serif; font-variant-numeric: tabular-nums; unicode-bidi: isolate;
        white-space: nowrap; }}
.id {{ white-space: normal; overflow-wrap: anywhere; }}
.muted {{ color: #555; font-size: .9rem; }}
.counts {{ display: flex; flex-wrap: wrap; gap: .6rem; padding: 0; list-style: none; }}
.counts li {{ border: 1px solid #ccc; border-radius: 6px; padding: .2rem .7rem; }}
.scroll {{ overflow-x: auto; max-width: 100%; }}
table {{ border-collapse: collapse; width: 100%; font-size: .95rem; }}
th, td {{ border-bottom: 1px solid #ddd; padding: .3rem .5rem; text-align: start; vertical-align: top; }}
th {{ background: #f4f4f4; white-space: nowrap; }}
td.key {{ white-space: nowrap; }}
.badge {{ display: inline-block; min-width: 4.6rem; border-radius: 4px; padding: 0 .4rem; font-size: .85rem;
          font-weight: bold; text-align: center; }}
.s {{ border-inline-start: 6px solid; border-radius: 4px; padding: .35rem .7rem; margin: .35rem 0; }}
.s.low {{ border-inline-start-style: dashed; }}
.s .text {{ display: block; }}
.s .meta {{ display: block; font-size: .85rem; color: #333; }}
.s .meta > span {{ margin-inline-end: 1rem; display: inline-block; }}
.low-mark {{ font-weight: bold; color: #6b4e00; background: #fff3c4; border-radius: 4px; padding: 0 .3rem; }}
.cue {{ white-space: nowrap; }}
.cue bdi {{ white-space: normal; }}
.dir {{ font-weight: bold; }}
ol.sentences, ol.extremes {{ padding-inline-start: 0; list-style: none; margin: 0; }}
.legend span {{ margin-inline-end: 1rem; display: inline-block; }}
.warn {{ border: 2px solid #a63c00; background: #fbe3d4; border-radius: 6px; padding: .5rem .8rem; }}
ul.quality {{ margin: 0; padding-inline-start: 1.2rem; }}
figure {{ margin: 0; }}
figcaption {{ font-size: .9rem; color: #333; }}
svg.chart text {{ font-family: "DejaVu Sans", "Arial", sans-serif; fill: #333; }}
svg.chart text.axis-title {{ font-family: {FONT_STACK}; }}
svg.narrow {{ display: none; max-width: 520px; }}
@media (max-width: 700px) {{
  body {{ padding: .75rem; font-size: 16px; }}
  h1 {{ font-size: 1.3rem; }}
  svg.wide {{ display: none; }}
  svg.narrow {{ display: block; }}
  .s {{ padding: .3rem .5rem; }}
}}
""" + "".join(
    f".b-{x} {{ background: {dark}; color: #fff; }}\n.s-{x} {{ border-color: {dark}; background: {light}; }}\n"
    f".d-{x} {{ color: {dark}; }}\n"
    for x, (dark, light) in LABEL_COLOURS.items())


# ---------------------------------------------------------------- sections

def _summary_table(frame: pd.DataFrame, key: str, key_header: str, labels: Sequence[str]) -> str:
    head = (f"<tr><th>{esc(key_header)}</th><th>مقالات</th><th>جمل</th>"
            + "".join(f"<th>{esc(LABEL_NAMES_AR.get(x, x))}</th>" for x in labels)
            + "<th>صافي الموقف</th><th>المجال</th></tr>")
    rows = []
    for _, r in frame.iterrows():
        key_cell = num(r[key]) if key == "period" else f"<bdi>{esc(r[key])}</bdi>"
        # one ltr element for the pair, so it reads [low, high] left to right, not swapped by the RTL table
        interval = (num(f'[{r["net_stance_ci_low"]:+.2f}, {r["net_stance_ci_high"]:+.2f}]', None)
                    if not is_missing(r["net_stance_ci_low"]) else '<span class="muted">—</span>')
        rows.append(f'<tr><td class="key">{key_cell}</td><td>{num(r["n_articles"])}</td><td>{num(r["n_sentences"])}</td>'
                    + "".join(f"<td>{num(100 * r[f'share_{x}'], '{:.0f}%')}</td>" for x in labels)
                    + f"<td>{signed(r['net_stance'])}</td><td>{interval}</td></tr>")
    # the box scrolls sideways on a narrow screen; the page itself never does
    return (f'<div class="scroll" role="region" aria-label="{esc(key_header)}" tabindex="0">'
            f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table></div>")


@dataclass(frozen=True)
class SentenceMarks:
    """What a sentence line shows beside its label and probabilities."""

    labels: Sequence[str]
    min_confidence: float | None = None
    cues: Callable[[str], list] | None = None


def _low_confidence(row: pd.Series) -> bool:
    return low_confidence(row.get("confident", None))


def _sentence_item(row: pd.Series, marks: SentenceMarks, *, show_article: str | None = None) -> str:
    label = str(row["label"])
    probs = " ".join(f'<span>{esc(LABEL_NAMES_AR.get(x, x))} {num(row.get(f"p_{x}"))}</span>' for x in marks.labels
                     if f"p_{x}" in row.index)
    meta = [probs]
    low = _low_confidence(row)
    if low:
        meta.insert(0, '<span class="low-mark">؟ ثقة منخفضة</span>')
    if show_article is not None:
        meta.insert(0, f'<span>من: <bdi>{esc(show_article)}</bdi></span>')
    rules = row["rules_fired"] if "rules_fired" in row.index else None
    if (cue_text := cues_html(str(row["text"]), rules, marks.cues)):
        meta.append(f'<span class="rules">القرائن: {cue_text}</span>')
    if "top_words" in row.index and (words := reasons_text(row["top_words"])):
        meta.append(f'<span class="words">كلمات مؤثرة: <bdi>{esc(words)}</bdi></span>')
    if bool(row.get("truncated", False)) is True:
        meta.append('<span class="muted">(قُطعت الجملة عند الحد الأقصى للطول)</span>')
    attrs = f' data-sentence-id="{esc(row["sentence_id"])}"' if "sentence_id" in row.index else ""
    if ids := fired_ids(rules):
        attrs += f' data-rules="{esc(";".join(ids))}"'
    return (f'<li class="s s-{esc(label)}{" low" if low else ""}"{attrs}>{badge(label)} '
            f'<span class="text">{esc(row["text"])}</span><span class="meta">{" ".join(meta)}</span></li>')


HEADING_WORDS = 10  # an article without a title is headed by the first words of its first sentence


def article_heading(article_id: str, row, first_text: str | None) -> str:
    """The article's title when the input gave one, else the first words of its first sentence."""
    if row is not None and "title" in row.index and not is_missing(row["title"]) and str(row["title"]).strip():
        return str(row["title"]).strip()
    words = str(first_text or "").split()
    if not words:
        return article_id
    return " ".join(words[:HEADING_WORDS]) + (" …" if len(words) > HEADING_WORDS else "")


def _article_groups(sample: ReportSample, articles: pd.DataFrame) -> list[tuple[str, object, pd.DataFrame]]:
    """(article id, its summary row or None, its sampled sentences in order), in the summary's order."""
    shown = sample.by_article()
    info = {str(r["article_id"]): r for _, r in articles.iterrows()} if "article_id" in articles.columns else {}
    order = [a for a in info if a in sample.articles] + [a for a in sample.articles if a not in info]
    empty = pd.DataFrame(columns=sample.columns)
    return [(article_id, info.get(article_id), shown.get(article_id, empty)) for article_id in order]


def _article_sections(groups, sample: ReportSample, marks: SentenceMarks, headings: dict[str, str]) -> str:
    out = []
    for n, (article_id, row, group) in enumerate(groups, 1):
        counts = sample.articles[article_id]
        net = row["net_stance"] if row is not None and "net_stance" in row.index else \
            counts.net_sum / max(counts.sentences, 1)
        head = [f"<h3>{esc(headings[article_id])}</h3>",
                f'<p class="muted">المعرّف: <bdi class="num id" dir="ltr">{esc(article_id)}</bdi> · الجمل: '
                f'{num(counts.sentences)} · المعروضة: <span class="shown">{num(len(group))} من '
                f'{num(counts.sentences)}</span> · صافي الموقف: {signed(net)}']
        if row is not None and "dominant_label" in row.index and not is_missing(row["dominant_label"]):
            head[-1] += f" · الغالب: {badge(str(row['dominant_label']))}"
        head[-1] += "</p>"
        meta = []
        for column, name, ltr in META_COLUMNS:
            if column == "title":
                continue  # the heading
            value = row[column] if row is not None and column in row.index else \
                (group[column].iloc[0] if column in group.columns and len(group) else None)
            if not is_missing(value) and str(value).strip():
                cell = f'<bdi class="num id" dir="ltr">{esc(value)}</bdi>' if ltr else f"<bdi>{esc(value)}</bdi>"
                meta.append(f"<li>{esc(name)}: {cell}</li>")
        if meta:
            head.append(f'<ul class="counts">{"".join(meta)}</ul>')
        items = "".join(_sentence_item(r, marks) for _, r in group.iterrows())
        out.append(f'<section class="article" id="article-{n}" data-sentences="{counts.sentences}" '
                   f'data-shown="{len(group)}">{"".join(head)}<ol class="sentences">{items}</ol></section>')
    return "\n".join(out)


def _extremes(sample: ReportSample, marks: SentenceMarks, headings: dict[str, str]) -> str:
    def block(frame: pd.DataFrame, heading: str, cls: str) -> str:
        if frame.empty:
            return f'<h3>{heading}</h3><p class="muted">لا توجد جمل.</p>'
        items = "".join(_sentence_item(r, marks, show_article=headings.get(str(r["article_id"]), str(r["article_id"])))
                        for _, r in frame.iterrows())
        return f'<h3>{heading}</h3><ol class="extremes {cls}">{items}</ol>'

    return (block(sample.most(1), "الجمل الأكثر إيجابية", "most-positive")
            + block(sample.most(-1), "الجمل الأكثر سلبية", "most-negative"))


CHART_CAPTION = ("الخط: صافي الموقف لكل فترة (فوق الصفر نحو الاتفاق، تحته بعيداً عنه)، والشريط المظلل حوله مجال الثقة "
                 "(لا شريط لفترة فيها مقال واحد). الأعمدة الرمادية في الأسفل: عدد الجمل في كل فترة.")


def render_html(sentences: pd.DataFrame, articles: pd.DataFrame, timeline: pd.DataFrame | None = None,
                outlets: pd.DataFrame | None = None, *, per_article: int = PER_ARTICLE, top_n: int = TOP_N,
                labels: Sequence[str] = LABELS, **options) -> str:
    """The report as one HTML string from sentence rows held whole (see `render_sample` for the options)."""
    sample = sample_of(sentences, labels, per_article=per_article, top_n=top_n)
    return render_sample(sample, articles, timeline, outlets, **options)


def render_sample(sample: ReportSample, articles: pd.DataFrame, timeline: pd.DataFrame | None = None,
                  outlets: pd.DataFrame | None = None, *, title: str = "تقرير الموقف من الاتفاق",
                  model_description: str = "", quality: ModelQuality | None = None,
                  min_confidence: float | None = None, cues: Callable[[str], list] | None = None) -> str:
    """The report as one HTML string from a ReportSample (pipeline.prediction.report_sample) and the per-article
    summary (see `write_html_report`)."""
    labels = sample.labels
    marks = SentenceMarks(labels, min_confidence, cues)
    overall = sample.net_sum / sample.n_sentences if sample.n_sentences else float("nan")
    summary = [f"<li>المقالات: {num(len(sample.articles))}</li>", f"<li>الجمل: {num(sample.n_sentences)}</li>"]
    summary += [f"<li>{badge(x)} {num(int(sample.label_counts.get(x, 0)))}</li>" for x in labels]
    summary.append(f"<li>صافي الموقف العام: {signed(overall)}</li>")
    if sample.has_confident:
        summary.append(f'<li><span class="low-mark">؟</span> ثقة منخفضة: {num(sample.n_low)}</li>')
    legend = " ".join(f"<span>{badge(x)}</span>" for x in labels)
    if sample.has_confident:
        threshold = f" (احتمال التصنيف أقل من {num(min_confidence)})" if min_confidence is not None else ""
        legend += f' <span><span class="low-mark">؟ ثقة منخفضة</span>{threshold}: تحقّق منها بنفسك</span>'
    groups = _article_groups(sample, articles)
    headings = {a: article_heading(a, row, (sample.articles[a].first or (None, None, None))[2])
                for a, row, _ in groups}
    n = num(sample.per_article)
    body = [f'<header id="summary"><h1>{esc(title)}</h1>',
            f'<p class="muted">النموذج: <bdi class="num id" dir="ltr">{esc(model_description or "—")}</bdi></p>',
            quality_html(quality),
            f'<ul class="counts">{"".join(summary)}</ul>',
            '<p class="muted">صافي الموقف = متوسط (احتمال الإيجابي − احتمال السلبي) على الجمل، '
            f'من {num(-1.0, "{:+.0f}")} إلى {num(1.0, "{:+.0f}")}. '
            'المجال: فاصل ثقة بإعادة المعاينة على مستوى المقالات.</p>',
            f'<p class="muted" id="sampling">من كل مقال تُعرض حتى {n} جمل هي الأكثر إيجابية و{n} الأكثر سلبية '
            f'و{n} الأقل ثقة، بترتيبها في المقال؛ كل الجمل في ملف المخرجات.</p>',
            f'<p class="legend">{legend}</p></header>']
    if timeline is not None and not timeline.empty:
        body.append('<section id="timeline"><h2>الموقف عبر الزمن</h2>'
                    f'<figure>{timeline_svg(timeline, WIDE, css_class="wide")}'
                    f'{timeline_svg(timeline, NARROW, css_class="narrow")}'
                    f'<figcaption>{CHART_CAPTION}</figcaption></figure>'
                    f'{_summary_table(timeline, "period", "الفترة", labels)}</section>')
    if outlets is not None and not outlets.empty:
        body.append('<section id="outlets"><h2>حسب المصدر</h2>'
                    f'{_summary_table(outlets, "outlet", "المصدر", labels)}</section>')
    body.append(f'<section id="extremes"><h2>الجمل الأبرز</h2>{_extremes(sample, marks, headings)}</section>')
    body.append(f'<section id="articles"><h2>المقالات</h2>{_article_sections(groups, sample, marks, headings)}'
                '</section>')
    return ('<!DOCTYPE html>\n<html lang="ar" dir="rtl">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


def write_html_report(path: Path | str, sentences: pd.DataFrame | ReportSample, articles: pd.DataFrame,
                      timeline: pd.DataFrame | None = None, outlets: pd.DataFrame | None = None, *,
                      per_article: int = PER_ARTICLE, top_n: int = TOP_N, labels: Sequence[str] = LABELS, **options) -> Path:
    """Write the self-contained report (atomically) and return its path.

    `sentences`: a ReportSample gathered chunk by chunk (predict), or predict's sentence rows held whole (article_id,
    text, label, p_<label>…; optional sentence_id, idx, truncated, confident, rules_fired, top_words), sampled here
    with `per_article` and `top_n` (ignored for a ReportSample, which carries its own). `articles`: predict's
    per-article summary (optional metadata columns title/outlet/date/url/source are shown; `title` heads the
    article). `timeline` / `outlets`: from `pipeline.prediction.analytics`; None or empty leaves the section out.
    `options` (render_sample): title, model_description, `quality` (the model's measured quality; None: said to be
    unknown), `min_confidence` (the threshold behind `confident`, for the legend), `cues` (text → the cue matches of
    the lexicon that made `rules_fired`, rules.Lexicon.cue_matches, so cues show as Arabic words).
    """
    sample = sentences if isinstance(sentences, ReportSample) else \
        sample_of(sentences, labels, per_article=per_article, top_n=top_n)
    text = render_sample(sample, articles, timeline, outlets, **options)
    path = write_text_atomic(path, text)
    log.info("report: %s (%d articles, %d of %d sentences shown, %.0f KiB)", path, len(sample.articles),
             len(sample.kept), sample.n_sentences, len(text.encode("utf-8")) / 1024)
    return path
