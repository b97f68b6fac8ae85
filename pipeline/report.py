"""One self-contained HTML report of a prediction run, for people who read Arabic news, not parquet files.

    write_html_report("out/report.html", sentences, articles, timeline_frame, outlets_frame,
                      title="…", model_description="runs:/…/model (tiny, T=1.8)")

The file needs nothing but itself: inline CSS, no scripts, no web fonts (a system Arabic font stack), and the
timeline is an inline SVG drawn here. It can be mailed, archived or opened offline years later.

Layout and reading direction: the page is `<html lang="ar" dir="rtl">` so Arabic sentences flow right to left;
everything that must read left to right (numbers, probabilities, dates, article ids, model names) sits in an
element with `dir="ltr"` (class `num`) or in `<bdi>`, so the bidi algorithm cannot reorder "−0.25" into "0.25−".
Stance is shown by colour AND by a text badge with a sign (− ○ +), so it survives colour-blindness and printing;
the colours are from the Okabe–Ito palette (vermillion / grey / blue), distinguishable under the common forms of
colour-blindness, with text contrast ≥ 4.5:1 on their light backgrounds.

Sections (stable ids, used by tests and links): `summary`, `timeline`, `outlets`, `extremes`, `articles`
(one `<section class="article">` per article).
"""

from __future__ import annotations

import html
import logging
import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from pipeline import LABELS
from pipeline.errors import PipelineError
from pipeline.io import write_text_atomic

log = logging.getLogger(__name__)

LABEL_NAMES_AR = {"negative": "سلبي", "neutral": "محايد", "positive": "إيجابي"}
LABEL_SIGNS = {"negative": "−", "neutral": "○", "positive": "+"}
# Okabe–Ito: (dark text/border, light background)
LABEL_COLOURS = {"negative": ("#a63c00", "#fbe3d4"), "neutral": ("#4d4d4d", "#ececec"),
                 "positive": ("#005a8c", "#dcebf7")}
FONT_STACK = '"Noto Naskh Arabic", "Amiri", "Noto Sans Arabic", "Geeza Pro", "Tahoma", "Arial", sans-serif'
# Article-level metadata shown when the articles table carries it (from predict.carry_columns).
META_COLUMNS = (("title", "العنوان", False), ("outlet", "المصدر", False), ("date", "التاريخ", True),
                ("url", "الرابط", True), ("source", "الملف", True))


def esc(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _is_missing(value) -> bool:
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
    if _is_missing(value):
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


def _reasons_text(value) -> str:
    """rules_fired / top_words may be a list, an array, a list of (word, weight) pairs, or a ready string."""
    if _is_missing(value):
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
    # a rule that fired three times reads "id ×3", not "id, id, id"
    counts = dict.fromkeys(items, 0)
    for item in items:
        counts[item] += 1
    return "، ".join(item if n == 1 else f"{item} ×{n}" for item, n in counts.items())


CSS = f"""
:root {{ color-scheme: light; }}
body {{ font-family: {FONT_STACK}; font-size: 17px; line-height: 1.75; color: #1a1a1a; background: #fff;
        margin: 0 auto; max-width: 1000px; padding: 1.5rem; }}
h1 {{ font-size: 1.6rem; margin: 0 0 .3rem; }}
h2 {{ font-size: 1.3rem; border-bottom: 2px solid #ddd; padding-bottom: .2rem; margin-top: 2.2rem; }}
h3 {{ font-size: 1.1rem; margin: 1.4rem 0 .4rem; }}
.num {{ font-family: "DejaVu Sans", "Arial", sans-serif; font-variant-numeric: tabular-nums; unicode-bidi: isolate;
        white-space: nowrap; }}
.muted {{ color: #555; font-size: .9rem; }}
.counts {{ display: flex; flex-wrap: wrap; gap: .6rem; padding: 0; list-style: none; }}
.counts li {{ border: 1px solid #ccc; border-radius: 6px; padding: .2rem .7rem; }}
table {{ border-collapse: collapse; width: 100%; font-size: .95rem; }}
th, td {{ border-bottom: 1px solid #ddd; padding: .3rem .5rem; text-align: start; vertical-align: top; }}
th {{ background: #f4f4f4; }}
.badge {{ display: inline-block; min-width: 4.6rem; border-radius: 4px; padding: 0 .4rem; font-size: .85rem;
          font-weight: bold; text-align: center; }}
.s {{ border-inline-start: 6px solid; border-radius: 4px; padding: .35rem .7rem; margin: .35rem 0; }}
.s .text {{ display: block; }}
.s .meta {{ display: block; font-size: .85rem; color: #333; }}
.s .meta > span {{ margin-inline-end: 1rem; }}
ol.sentences, ol.extremes {{ padding-inline-start: 0; list-style: none; margin: 0; }}
.legend span {{ margin-inline-end: 1rem; }}
figure {{ margin: 0; overflow-x: auto; }}
svg text {{ font-family: "DejaVu Sans", "Arial", sans-serif; font-size: 12px; fill: #333; }}
""" + "".join(
    f".b-{x} {{ background: {dark}; color: #fff; }}\n.s-{x} {{ border-color: {dark}; background: {light}; }}\n"
    for x, (dark, light) in LABEL_COLOURS.items())


# ---------------------------------------------------------------- timeline chart (inline SVG)

def _nice_limit(values: Iterable[float]) -> float:
    finite = [abs(v) for v in values if v is not None and math.isfinite(v)]
    top = max(finite, default=0.0)
    return min(1.0, max(0.25, math.ceil(top * 4 + 1e-9) / 4))


def timeline_svg(frame: pd.DataFrame, *, key: str = "period", width: int = 920, height: int = 340) -> str:
    """Net stance per period (points joined by a line, interval as a band) over sentence-count bars, as SVG."""
    data = frame.sort_values(key).reset_index(drop=True)
    n = len(data)
    left, right, top, gap, bars_h, bottom = 60, 20, 16, 26, 70, 46
    plot_h = height - top - gap - bars_h - bottom
    plot_w = width - left - right
    x_dates = pd.to_datetime(data[key])
    if n == 1 or x_dates.iloc[-1] == x_dates.iloc[0]:
        xs = np.full(n, left + plot_w / 2)
    else:
        span = (x_dates - x_dates.iloc[0]).dt.total_seconds().to_numpy()
        xs = left + 20 + span / span[-1] * (plot_w - 40)
    net = data["net_stance"].astype(float).to_numpy()
    low = data["net_stance_ci_low"].astype(float).to_numpy()
    high = data["net_stance_ci_high"].astype(float).to_numpy()
    limit = _nice_limit([*net, *low, *high])

    def y(v: float) -> float:
        return top + (limit - v) / (2 * limit) * plot_h

    parts = [f'<svg viewBox="0 0 {width} {height}" width="100%" '
             f'role="img" aria-labelledby="timeline-title" direction="ltr">',
             '<title id="timeline-title">net stance per period with interval; sentences per period</title>']
    # y grid and labels for net stance
    for v in np.linspace(-limit, limit, 5):
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
                     f'stroke="{"#888" if v == 0 else "#e2e2e2"}" stroke-dasharray="{"4 3" if v == 0 else ""}"/>')
        parts.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:+.2f}</text>')
    # interval band, broken where a period has no interval (single article)
    finite = np.isfinite(low) & np.isfinite(high)
    run: list[int] = []
    for i in [*range(n), -1]:
        if i >= 0 and finite[i]:
            run.append(i)
            continue
        if run:
            if len(run) == 1:
                j = run[0]
                parts.append(f'<line x1="{xs[j]:.1f}" x2="{xs[j]:.1f}" y1="{y(low[j]):.1f}" y2="{y(high[j]):.1f}" '
                             f'stroke="#9ecae1" stroke-width="8"/>')
            else:
                pts = [f"{xs[j]:.1f},{y(high[j]):.1f}" for j in run] + \
                      [f"{xs[j]:.1f},{y(low[j]):.1f}" for j in reversed(run)]
                parts.append(f'<polygon points="{" ".join(pts)}" fill="#9ecae1" fill-opacity="0.55"/>')
            run = []
    if n > 1:
        parts.append('<polyline fill="none" stroke="#1d3557" stroke-width="2" points="'
                     + " ".join(f"{xs[i]:.1f},{y(net[i]):.1f}" for i in range(n)) + '"/>')
    for i in range(n):
        colour = LABEL_COLOURS["positive" if net[i] > 0 else "negative" if net[i] < 0 else "neutral"][0]
        when = x_dates.iloc[i].strftime("%Y-%m-%d")
        interval = f" [{low[i]:+.2f}, {high[i]:+.2f}]" if finite[i] else ""
        parts.append(f'<circle cx="{xs[i]:.1f}" cy="{y(net[i]):.1f}" r="4.5" fill="{colour}">'
                     f'<title>{when}: {net[i]:+.2f}{interval}, {int(data["n_sentences"].iloc[i])} sentences'
                     f'</title></circle>')
    # sentence-count bars
    bars_top = top + plot_h + gap
    max_count = max(int(data["n_sentences"].max()), 1)
    spacing = float(np.min(np.diff(xs))) if n > 1 else plot_w
    bar_w = max(2.0, min(28.0, spacing * 0.6))
    parts.append(f'<text x="{left - 6}" y="{bars_top + 10}" text-anchor="end">{max_count}</text>')
    parts.append(f'<text x="{left - 6}" y="{bars_top + bars_h}" text-anchor="end">0</text>')
    for i in range(n):
        h = int(data["n_sentences"].iloc[i]) / max_count * bars_h
        parts.append(f'<rect x="{xs[i] - bar_w / 2:.1f}" y="{bars_top + bars_h - h:.1f}" width="{bar_w:.1f}" '
                     f'height="{h:.1f}" fill="#a8a8a8"/>')
    # x labels: at most ~10, always the first and last
    step = max(1, math.ceil(n / 10))
    for i in sorted({*range(0, n, step), n - 1}):
        parts.append(f'<text x="{xs[i]:.1f}" y="{bars_top + bars_h + 18}" text-anchor="middle">'
                     f'{x_dates.iloc[i].strftime("%Y-%m-%d")}</text>')
    parts.append(f'<text x="{left}" y="{height - 6}">net stance (top, band = interval) · sentences (bars)</text>')
    parts.append("</svg>")
    return "\n".join(parts)


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
                    if not _is_missing(r["net_stance_ci_low"]) else '<span class="muted">—</span>')
        rows.append(f"<tr><td>{key_cell}</td><td>{num(r['n_articles'])}</td><td>{num(r['n_sentences'])}</td>"
                    + "".join(f"<td>{num(100 * r[f'share_{x}'], '{:.0f}%')}</td>" for x in labels)
                    + f"<td>{signed(r['net_stance'])}</td><td>{interval}</td></tr>")
    return f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def _sentence_item(row: pd.Series, labels: Sequence[str], *, show_article: bool = False) -> str:
    label = str(row["label"])
    probs = " ".join(f'<span>{esc(LABEL_NAMES_AR.get(x, x))} {num(row.get(f"p_{x}"))}</span>' for x in labels
                     if f"p_{x}" in row.index)
    meta = [probs]
    if show_article:
        meta.insert(0, f'<span>المقال <bdi class="num" dir="ltr">{esc(row["article_id"])}</bdi></span>')
    if "rules_fired" in row.index and (rules := _reasons_text(row["rules_fired"])):
        meta.append(f'<span class="rules">القواعد: <bdi>{esc(rules)}</bdi></span>')
    if "top_words" in row.index and (words := _reasons_text(row["top_words"])):
        meta.append(f'<span class="words">كلمات مؤثرة: <bdi>{esc(words)}</bdi></span>')
    if bool(row.get("truncated", False)) is True:
        meta.append('<span class="muted">(قُطعت الجملة عند الحد الأقصى للطول)</span>')
    sid = f' data-sentence-id="{esc(row["sentence_id"])}"' if "sentence_id" in row.index else ""
    return (f'<li class="s s-{esc(label)}"{sid}>{badge(label)} <span class="text">{esc(row["text"])}</span>'
            f'<span class="meta">{" ".join(meta)}</span></li>')


def _article_sections(sentences: pd.DataFrame, articles: pd.DataFrame, labels: Sequence[str]) -> str:
    by_article = {k: g for k, g in sentences.groupby(sentences["article_id"].astype(str), sort=False)}
    info = {str(r["article_id"]): r for _, r in articles.iterrows()} if "article_id" in articles.columns else {}
    order = [a for a in info if a in by_article] + [a for a in by_article if a not in info]
    out = []
    for n, article_id in enumerate(order, 1):
        group = by_article[article_id]
        if "idx" in group.columns:
            group = group.sort_values("idx", kind="stable")
        row = info.get(article_id)
        net = row["net_stance"] if row is not None and "net_stance" in row.index else \
            float((group["p_positive"] - group["p_negative"]).mean())
        head = [f'<h3>المقال <bdi class="num" dir="ltr">{esc(article_id)}</bdi></h3>',
                f'<p class="muted">الجمل: {num(len(group))} · صافي الموقف: {signed(net)}']
        if row is not None and "dominant_label" in row.index and not _is_missing(row["dominant_label"]):
            head[-1] += f" · الغالب: {badge(str(row['dominant_label']))}"
        head[-1] += "</p>"
        meta = []
        for column, name, ltr in META_COLUMNS:
            value = row[column] if row is not None and column in row.index else \
                (group[column].iloc[0] if column in group.columns else None)
            if not _is_missing(value):
                cell = num(value, None) if ltr else f"<bdi>{esc(value)}</bdi>"
                meta.append(f"<li>{esc(name)}: {cell}</li>")
        if meta:
            head.append(f'<ul class="counts">{"".join(meta)}</ul>')
        items = "".join(_sentence_item(r, labels) for _, r in group.iterrows())
        out.append(f'<section class="article" id="article-{n}">{"".join(head)}'
                   f'<ol class="sentences">{items}</ol></section>')
    return "\n".join(out)


def _extremes(sentences: pd.DataFrame, top_n: int, labels: Sequence[str]) -> str:
    net = sentences["p_positive"].astype(float) - sentences["p_negative"].astype(float)
    ranked = sentences.assign(_net=net.to_numpy())
    most_pos = ranked[ranked["_net"] > 0].sort_values("_net", ascending=False, kind="stable").head(top_n)
    most_neg = ranked[ranked["_net"] < 0].sort_values("_net", ascending=True, kind="stable").head(top_n)

    def block(frame: pd.DataFrame, heading: str, cls: str) -> str:
        if frame.empty:
            return f'<h3>{heading}</h3><p class="muted">لا توجد جمل.</p>'
        items = "".join(_sentence_item(r, labels, show_article=True) for _, r in frame.iterrows())
        return f'<h3>{heading}</h3><ol class="extremes {cls}">{items}</ol>'

    return (block(most_pos, "الجمل الأكثر إيجابية", "most-positive")
            + block(most_neg, "الجمل الأكثر سلبية", "most-negative"))


def render_html(sentences: pd.DataFrame, articles: pd.DataFrame, timeline: pd.DataFrame | None = None,
                outlets: pd.DataFrame | None = None, *, title: str = "تقرير الموقف من الاتفاق",
                model_description: str = "", top_n: int = 10, labels: Sequence[str] = LABELS) -> str:
    """The report as one HTML string (see `write_html_report`)."""
    need = {"article_id", "text", "label", "p_negative", "p_positive"}
    if missing := sorted(need - set(sentences.columns)):
        raise PipelineError(f"report: sentence rows lack column(s) {missing}; expected the predict stage's output")
    labels = list(labels)
    counts = sentences["label"].value_counts()
    n_articles = sentences["article_id"].astype(str).nunique()
    overall = float((sentences["p_positive"] - sentences["p_negative"]).mean()) if len(sentences) else float("nan")
    summary = [f"<li>المقالات: {num(n_articles)}</li>", f"<li>الجمل: {num(len(sentences))}</li>"]
    summary += [f"<li>{badge(x)} {num(int(counts.get(x, 0)))}</li>" for x in labels]
    summary.append(f"<li>صافي الموقف العام: {signed(overall)}</li>")
    legend = " ".join(f"<span>{badge(x)}</span>" for x in labels)
    body = [f'<header id="summary"><h1>{esc(title)}</h1>',
            f'<p class="muted">النموذج: <bdi dir="ltr">{esc(model_description or "—")}</bdi></p>',
            f'<ul class="counts">{"".join(summary)}</ul>',
            '<p class="muted">صافي الموقف = متوسط (احتمال الإيجابي − احتمال السلبي) على الجمل، '
            f'من {num(-1.0, "{:+.0f}")} إلى {num(1.0, "{:+.0f}")}. '
            'المجال: فاصل ثقة بإعادة المعاينة على مستوى المقالات.</p>',
            f'<p class="legend">{legend}</p></header>']
    if timeline is not None and not timeline.empty:
        body.append('<section id="timeline"><h2>الموقف عبر الزمن</h2>'
                    f'<figure dir="ltr">{timeline_svg(timeline)}</figure>'
                    f'{_summary_table(timeline, "period", "الفترة", labels)}</section>')
    if outlets is not None and not outlets.empty:
        body.append('<section id="outlets"><h2>حسب المصدر</h2>'
                    f'{_summary_table(outlets, "outlet", "المصدر", labels)}</section>')
    body.append(f'<section id="extremes"><h2>الجمل الأبرز</h2>{_extremes(sentences, top_n, labels)}</section>')
    body.append(f'<section id="articles"><h2>المقالات</h2>{_article_sections(sentences, articles, labels)}</section>')
    return ('<!DOCTYPE html>\n<html lang="ar" dir="rtl">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


def write_html_report(path: Path | str, sentences: pd.DataFrame, articles: pd.DataFrame,
                      timeline: pd.DataFrame | None = None, outlets: pd.DataFrame | None = None, *,
                      title: str = "تقرير الموقف من الاتفاق", model_description: str = "", top_n: int = 10,
                      labels: Sequence[str] = LABELS) -> Path:
    """Write the self-contained report (atomically) and return its path.

    `sentences`: predict's sentence rows (article_id, text, label, p_<label>…; optional sentence_id, idx,
    truncated, rules_fired, top_words). `articles`: predict's per-article summary (optional metadata columns
    title/outlet/date/url/source are shown). `timeline` / `outlets`: from `pipeline.analytics`; None or empty
    leaves the section out. `top_n`: how many most positive / most negative sentences to list.
    """
    text = render_html(sentences, articles, timeline, outlets, title=title, model_description=model_description,
                       top_n=top_n, labels=labels)
    path = write_text_atomic(path, text)
    log.info("report: %s (%d articles, %d sentences, %.0f KiB)", path, sentences["article_id"].nunique(),
             len(sentences), len(text.encode("utf-8")) / 1024)
    return path
