"""The report's timeline chart: net stance per period with its interval band over sentence-count bars, as inline SVG.

An SVG with a viewBox scales its text with its width, so one drawing cannot be legible both on a 360 px phone
and on a desktop: the report draws it twice, `WIDE` and `NARROW` (fewer date labels, larger type relative to the
plot), and CSS shows the one that fits (pipeline.prediction.report). Axis titles and tooltips are Arabic; numbers and dates
are left-to-right. Ticks fall on round steps (0.05, 0.1, 0.2, 0.25, 0.5) so labels never read +0.12 for 0.125.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.prediction.report_format import LABEL_COLOURS

# The y axis holds at most this many ticks on each side of zero; the step is the smallest round one that fits.
MAX_TICKS_PER_SIDE = 4
TICK_STEPS = (0.05, 0.1, 0.2, 0.25, 0.5)
BAND_COLOUR, LINE_COLOUR, BAR_COLOUR = "#9ecae1", "#1d3557", "#a8a8a8"
Y_TITLE = "صافي الموقف"
BARS_TITLE = "الجمل"


@dataclass(frozen=True)
class ChartLayout:
    width: int
    height: int
    font_px: int          # in viewBox units: rendered size = font_px × displayed width / width
    left: int             # room for the y tick labels and the rotated axis title
    max_x_labels: int


# Shown from ~700 px up (≥ 9.5 px type at 700 px); below, NARROW (≥ 12 px type at 330 px of chart).
WIDE = ChartLayout(width=920, height=340, font_px=13, left=74, max_x_labels=10)
NARROW = ChartLayout(width=360, height=300, font_px=13, left=58, max_x_labels=3)


def nice_ticks(values) -> tuple[float, list[float], int]:
    """(axis limit, tick values from -limit to +limit, decimals for their labels) for net stance values."""
    finite = [abs(float(v)) for v in values if v is not None and math.isfinite(float(v))]
    top = min(1.0, max(finite, default=0.0))
    for step in TICK_STEPS:
        n = max(1, math.ceil(top / step - 1e-9))
        if n <= MAX_TICKS_PER_SIDE:
            break
    limit = min(1.0, n * step)
    ticks = [round(k * step, 4) for k in range(-n, n + 1)]
    decimals = 2 if round(step * 10, 6) != round(step * 10) else 1
    return limit, ticks, decimals


def tick_label(value: float, decimals: int) -> str:
    return "0" if value == 0 else f"{value:+.{decimals}f}"


def _esc(text) -> str:
    return html.escape(str(text), quote=True)


def timeline_svg(frame: pd.DataFrame, layout: ChartLayout = WIDE, *, key: str = "period", css_class: str = "") -> str:
    """Net stance per period (points joined by a line, interval as a band) over sentence-count bars, as SVG."""
    data = frame.sort_values(key).reset_index(drop=True)
    n = len(data)
    width, height, left = layout.width, layout.height, layout.left
    right, top, gap, bars_h, bottom = 14, 14, 22, 60, 30
    plot_h = height - top - gap - bars_h - bottom
    plot_w = width - left - right
    x_dates = pd.to_datetime(data[key])
    if n == 1 or x_dates.iloc[-1] == x_dates.iloc[0]:
        xs = np.full(n, left + plot_w / 2)
    else:
        span = (x_dates - x_dates.iloc[0]).dt.total_seconds().to_numpy()
        pad = min(40, plot_w / 8)
        xs = left + pad + span / span[-1] * (plot_w - 2 * pad)
    net = data["net_stance"].astype(float).to_numpy()
    low = data["net_stance_ci_low"].astype(float).to_numpy()
    high = data["net_stance_ci_high"].astype(float).to_numpy()
    limit, ticks, decimals = nice_ticks([*net, *low, *high])

    def y(v: float) -> float:
        return top + (limit - v) / (2 * limit) * plot_h

    title_id = f"timeline-title-{css_class or 'chart'}"
    parts = [f'<svg viewBox="0 0 {width} {height}" width="100%" class="chart {_esc(css_class)}" role="img" '
             f'aria-labelledby="{title_id}" direction="ltr" font-size="{layout.font_px}">',
             f'<title id="{title_id}">صافي الموقف لكل فترة مع مجال الثقة، وعدد الجمل لكل فترة</title>']
    for v in ticks:
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
                     f'stroke="{"#888" if v == 0 else "#e2e2e2"}" stroke-dasharray="{"4 3" if v == 0 else ""}"/>')
        parts.append(f'<text x="{left - 6}" y="{y(v) + layout.font_px / 3:.1f}" text-anchor="end">'
                     f'{tick_label(v, decimals)}</text>')
    mid = top + plot_h / 2
    parts.append(f'<text class="axis-title" x="{layout.font_px}" y="{mid:.1f}" text-anchor="middle" direction="rtl" '
                 f'transform="rotate(-90 {layout.font_px} {mid:.1f})">{Y_TITLE}</text>')
    # interval band, broken where a period has no interval (a single article)
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
                             f'stroke="{BAND_COLOUR}" stroke-width="8"/>')
            else:
                pts = [f"{xs[j]:.1f},{y(high[j]):.1f}" for j in run] + \
                      [f"{xs[j]:.1f},{y(low[j]):.1f}" for j in reversed(run)]
                parts.append(f'<polygon points="{" ".join(pts)}" fill="{BAND_COLOUR}" fill-opacity="0.55"/>')
            run = []
    if n > 1:
        parts.append(f'<polyline fill="none" stroke="{LINE_COLOUR}" stroke-width="2" points="'
                     + " ".join(f"{xs[i]:.1f},{y(net[i]):.1f}" for i in range(n)) + '"/>')
    for i in range(n):
        colour = LABEL_COLOURS["positive" if net[i] > 0 else "negative" if net[i] < 0 else "neutral"][0]
        when = x_dates.iloc[i].strftime("%Y-%m-%d")
        interval = f" [{low[i]:+.2f}, {high[i]:+.2f}]" if finite[i] else ""
        parts.append(f'<circle cx="{xs[i]:.1f}" cy="{y(net[i]):.1f}" r="4.5" fill="{colour}">'
                     f'<title>{when}: {net[i]:+.2f}{interval}، {int(data["n_sentences"].iloc[i])} جملة'
                     f'</title></circle>')
    # sentence-count bars
    bars_top = top + plot_h + gap
    max_count = max(int(data["n_sentences"].max()), 1) if n else 1
    spacing = float(np.min(np.diff(xs))) if n > 1 else plot_w
    bar_w = max(2.0, min(28.0, spacing * 0.6))
    parts.append(f'<text x="{left - 6}" y="{bars_top + layout.font_px * 0.8:.1f}" text-anchor="end">{max_count}</text>')
    parts.append(f'<text x="{left - 6}" y="{bars_top + bars_h}" text-anchor="end">0</text>')
    parts.append(f'<text class="axis-title" x="{layout.font_px}" y="{bars_top + bars_h / 2:.1f}" '
                 f'text-anchor="middle" direction="rtl" transform="rotate(-90 {layout.font_px} '
                 f'{bars_top + bars_h / 2:.1f})">{BARS_TITLE}</text>')
    for i in range(n):
        h = int(data["n_sentences"].iloc[i]) / max_count * bars_h
        parts.append(f'<rect x="{xs[i] - bar_w / 2:.1f}" y="{bars_top + bars_h - h:.1f}" width="{bar_w:.1f}" '
                     f'height="{h:.1f}" fill="{BAR_COLOUR}"/>')
    # date labels: at most layout.max_x_labels, always the first and the last, never overlapping
    label_w = layout.font_px * 6.2  # "2022-01-27" in the sans-serif stack
    shown: list[int] = []
    step = max(1, math.ceil(n / layout.max_x_labels))
    for i in sorted({*range(0, n, step), n - 1}) if n else []:
        if shown and xs[i] - xs[shown[-1]] < label_w:
            if i != n - 1:
                continue
            shown.pop()  # the last date wins over the one before it
        shown.append(i)
    for i in shown:
        anchor = "start" if xs[i] - label_w / 2 < 0 else "end" if xs[i] + label_w / 2 > width else "middle"
        parts.append(f'<text x="{xs[i]:.1f}" y="{bars_top + bars_h + layout.font_px + 6}" text-anchor="{anchor}">'
                     f'{x_dates.iloc[i].strftime("%Y-%m-%d")}</text>')
    parts.append("</svg>")
    return "\n".join(parts)
