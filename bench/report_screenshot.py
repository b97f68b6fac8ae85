"""Render the HTML report in a real browser (headless Chromium), screenshot it and check its layout, at a desktop
width and at a phone's.

    # the real thing: the seed articles as a table with illustrative dates and outlets, predicted by the predict
    # stage with its report (a trained model in the store: `python -m pipeline train model=tfidf`, and
    # `python -m pipeline evaluate model=tfidf` for its cross-validated quality)
    .venv/bin/python bench/report_screenshot.py --demo-table /tmp/seeds/news.csv
    .venv/bin/python -m pipeline predict input=/tmp/seeds/news.csv output=/tmp/seeds/pred.parquet \
        predict.report=true predict.explain=true
    .venv/bin/python bench/report_screenshot.py --report /tmp/seeds/pred.report.html --width 390 --height 2200 \
        --png docs/img/report-390.png
    .venv/bin/python bench/report_screenshot.py --report /tmp/seeds/pred.report.html --width 1400 --height 2400 \
        --png docs/img/report-1400.png
    # no model at hand: the seed sentences with demo probabilities from the weak-labelling rules
    .venv/bin/python bench/report_screenshot.py --png /tmp/report.png --width 390

The seed articles carry no date or outlet; the script gives them illustrative ones (said in the report's title)
so that the timeline and outlet sections have something to show.

Checks, in the browser (exit status 1 if any fails), at the page width asked for (`--width`, set through the
DevTools protocol, so 390 px is really 390 px; below 700 px as a phone):
  * the page loads with <html lang="ar" dir="rtl"> and every section;
  * nothing is wider than the viewport: the page does not scroll sideways, and every element lies within the
    viewport unless it sits in a box that scrolls sideways (a table's `.scroll`) which itself lies within it;
  * the chart on show keeps legible text (≥ MIN_CHART_TEXT_PX CSS px);
  * Arabic sentences are laid out right to left: in every sentence, the first character is drawn to the right of
    the last character of the same line, and the text starts at the right edge of its box;
  * numbers in `.num` elements keep their left-to-right order (the minus sign is left of the digits);
  * the screenshot exists and is not blank (enough non-white pixels, several colours).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline import LABELS  # noqa: E402
from pipeline.prediction.analytics import by_outlet, timeline  # noqa: E402
from pipeline.prediction.report import render_html  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from chromium_driver import Browser, find_chromium, screenshot_problems, shrink_png  # noqa: E402

log = logging.getLogger("report_screenshot")

DEMO_OUTLETS = ("وكالة سبوتنيك", "روسيا اليوم", "الجزيرة نت", "سكاي نيوز عربية", "الشرق الأوسط")
DEMO_DATES = ("2022-01-26", "2022-01-27", "2022-01-27", "2022-01-28", "2022-01-31")
DEMO_MIN_CONFIDENCE = 0.6  # predict.min_confidence's default
MIN_CHART_TEXT_PX = 9.0   # the smallest chart text a reader can still make out on a phone
PHONE_WIDTH = 700         # below this width the page is emulated as a phone (pipeline.prediction.report's breakpoint)
SECTIONS = ("summary", "timeline", "outlets", "extremes", "articles")

# Measures the loaded page at a screen `vw` px wide; returns a JSON-able object (Runtime.evaluate, returnByValue).
# The screen's width, not window.innerWidth: a phone browser zooms out to show a page wider than the screen, and
# then innerWidth is the page's width.
PROBE = """((vw) => {
  const out = {width: vw, innerWidth: window.innerWidth, scrollWidth: document.documentElement.scrollWidth,
               pageHeight: document.documentElement.scrollHeight,
               lang: document.documentElement.lang, htmlDir: document.documentElement.dir,
               dir: getComputedStyle(document.body).direction,
               sections: [...document.querySelectorAll('[id]')].map(e => e.id),
               sentences: [], numbers: [], outside: [], chartText: []};
  const scrollBox = el => { for (let a = el.parentElement; a && a !== document.body; a = a.parentElement) {
      const o = getComputedStyle(a).overflowX; if (o === 'auto' || o === 'scroll') return a; } return null; };
  document.querySelectorAll('body *').forEach(el => {
    const r = el.getBoundingClientRect(); if (r.width === 0 && r.height === 0) return;
    if (scrollBox(el)) return;  // inside a box that scrolls sideways: the box itself is checked
    if (r.left < -1 || r.right > vw + 1) out.outside.push({tag: el.tagName.toLowerCase(), cls: el.className &&
        el.className.baseVal !== undefined ? el.className.baseVal : el.className, left: Math.round(r.left),
        right: Math.round(r.right), text: (el.textContent || '').trim().slice(0, 40)});
  });
  document.querySelectorAll('svg.chart').forEach(svg => {
    const r = svg.getBoundingClientRect(); if (r.width === 0) return;
    const scale = r.width / svg.viewBox.baseVal.width;
    svg.querySelectorAll('text').forEach(t => out.chartText.push(
        {px: parseFloat(getComputedStyle(t).fontSize) * scale, text: t.textContent.slice(0, 20)}));
  });
  document.querySelectorAll('section.article .s .text').forEach(function (el) {
    var node = el.firstChild; if (!node || !node.data || node.data.trim().length < 4) return;
    var text = node.data, box = el.getBoundingClientRect(), r = document.createRange();
    r.setStart(node, 0); r.setEnd(node, 1); var first = r.getClientRects()[0];
    var lastOnLine = first, i;  // the last character on the FIRST line: forward while the top stays the same
    for (i = 1; i < text.length; i++) {
      r.setStart(node, i); r.setEnd(node, i + 1); var rc = r.getClientRects()[0];
      if (!rc || rc.width === 0) continue;
      if (Math.abs(rc.top - first.top) > 2) break; lastOnLine = rc;
    }
    out.sentences.push({firstRight: first.right, firstLeft: first.left, lastLeft: lastOnLine.left,
                        boxRight: box.right, boxLeft: box.left});
  });
  document.querySelectorAll('.num').forEach(function (el) {
    var t = el.textContent; if (!/^[-+]\\d/.test(t)) return;
    var node = el.firstChild, r = document.createRange();
    r.setStart(node, 0); r.setEnd(node, 1); var sign = r.getBoundingClientRect();
    r.setStart(node, 1); r.setEnd(node, 2); var digit = r.getBoundingClientRect();
    out.numbers.push({text: t, signLeftOfDigit: sign.left < digit.left});
  });
  return out;
})(%d)"""


def demo_frames(seeds_glob: str = "seeds/*.txt") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seed sentences with DEMO probabilities: the weak-labelling rules' label and confidence, softened."""
    from pipeline.labeling.rules import load_lexicon
    from pipeline.stages.segment import SegmentRules, find_articles, segment_files

    sentences, _ = segment_files(find_articles(str(ROOT / seeds_glob)), SegmentRules())
    lexicon = load_lexicon(ROOT / "labels" / "lexicon.yaml")
    probs = []
    for text in sentences["text"]:
        result = lexicon.apply(text)
        p = np.full(len(LABELS), 0.15)
        p[LABELS.index(result.label or "neutral")] += 0.4 + 0.3 * result.confidence
        probs.append(p / p.sum())
    probs = np.asarray(probs)
    for i, x in enumerate(LABELS):
        sentences[f"p_{x}"] = probs[:, i]
    sentences["label"] = np.asarray(LABELS, dtype=object)[probs.argmax(axis=1)]
    sentences["truncated"] = False
    return sentences, article_summary(sentences)


def article_summary(sentences: pd.DataFrame) -> pd.DataFrame:
    """The per-article columns the report reads (predict writes the full summary; this is for bench inputs)."""
    g = sentences.groupby("article_id", sort=False)
    out = pd.DataFrame({"article_id": list(g.groups), "sentences": g.size().to_numpy()})
    out["net_stance"] = (sentences["p_positive"] - sentences["p_negative"]).groupby(sentences["article_id"],
                                                                                   sort=False).mean().to_numpy()
    out["dominant_label"] = g["label"].agg(lambda s: s.value_counts().index[0]).to_numpy()
    return out


def add_reasons(sentences: pd.DataFrame, model_dir: Path | None, k: int = 3) -> pd.DataFrame:
    from pipeline.labeling.rules import load_lexicon

    lexicon = load_lexicon(ROOT / "labels" / "lexicon.yaml")
    sentences = sentences.copy()
    sentences["rules_fired"] = [lexicon.apply(t).fired for t in sentences["text"]]
    if model_dir is not None:
        from pipeline.models.explain import top_words
        from pipeline.models.base import load_predictor

        predictor = load_predictor(model_dir)
        sentences["top_words"] = top_words(lambda texts: predictor.predict_proba(texts), list(sentences["text"]),
                                           list(sentences["label"]), k=k)
    return sentences


def add_demo_metadata(sentences: pd.DataFrame, articles: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    ids = list(articles["article_id"])
    date = {a: DEMO_DATES[i % len(DEMO_DATES)] for i, a in enumerate(ids)}
    outlet = {a: DEMO_OUTLETS[i % 3] for i, a in enumerate(ids)}  # 3 outlets: some have several articles
    for frame in (sentences, articles):
        frame["date"] = frame["article_id"].map(date)
        frame["outlet"] = frame["article_id"].map(outlet)
    return sentences, articles


def demo_table(path: Path, seeds_glob: str = "seeds/*.txt") -> Path:
    """The seed articles as an article table (article_id, text) with illustrative dates and outlets: the input of
    the predict stage for the documentation's report screenshots."""
    from pipeline.text.segmentation import find_articles

    files = find_articles(str(ROOT / seeds_glob))
    table = pd.DataFrame({"article_id": [f.stem for f in files],
                          "text": [f.read_text(encoding="utf-8") for f in files]})
    table["date"] = [DEMO_DATES[i % len(DEMO_DATES)] for i in range(len(table))]
    table["outlet"] = [DEMO_OUTLETS[i % 3] for i in range(len(table))]
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False, encoding="utf-8")
    return path


def build_report(predictions: Path | None, model_dir: Path | None, html_path: Path, *, n_boot: int = 1000) -> Path:
    """The seed sentences with demo probabilities (the rules', softened) as a report: no model needed."""
    from pipeline.labeling.rules import load_lexicon

    sentences, articles = demo_frames()
    title = "تقرير الموقف — بيانات توضيحية (demo data)"
    what = "demo data: probabilities from the weak-labelling rules, not a model"
    sentences = add_reasons(sentences, model_dir)
    sentences["confident"] = sentences[[f"p_{x}" for x in LABELS]].max(axis=1) >= DEMO_MIN_CONFIDENCE
    sentences, articles = add_demo_metadata(sentences, articles)
    text = render_html(sentences, articles, timeline(sentences, n_boot=n_boot), by_outlet(sentences, n_boot=n_boot),
                       title=title, model_description=what + " · illustrative dates and outlets", top_n=5,
                       min_confidence=DEMO_MIN_CONFIDENCE,
                       cues=load_lexicon(ROOT / "labels" / "lexicon.yaml").cue_matches)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(text, encoding="utf-8")
    return html_path


def check_in_browser(html_path: Path, png_path: Path, *, binary: str | None = None, width: int = 1100,
                     height: int = 2400, start: str | None = None) -> list[str]:
    """Load `html_path` at `width` px (a phone below PHONE_WIDTH), screenshot `height` px of it to `png_path` (from
    its top, or from the element `start`, a CSS selector such as `#articles`) and return the failed checks
    (empty = all good)."""
    binary = binary or find_chromium()
    if binary is None:
        return ["no Chromium on PATH (apt-get install -y chromium)"]
    with Browser(binary, width, height, mobile=width < PHONE_WIDTH) as browser:
        browser.open(Path(html_path).resolve().as_uri())
        browser.wait_for("document.readyState === 'complete' && document.body !== null", "the report to load")
        probe = browser.evaluate(PROBE % width)
        top = 0
        if start:
            top = browser.evaluate(f"(() => {{ const e = document.querySelector({json.dumps(start)}); "
                                   "return e ? Math.floor(e.getBoundingClientRect().top + window.scrollY) : -1; })()")
            if top < 0:
                return [f"no element {start!r} in the page"]
        browser.screenshot(png_path, clip={"x": 0, "y": top, "width": width,
                                           "height": max(200, min(height, probe["pageHeight"] - top))})
    return layout_problems(probe) + screenshot_problems(png_path)


def layout_problems(probe: dict) -> list[str]:
    """The failed checks of one page measurement (PROBE's result)."""
    problems: list[str] = []
    log.info("browser: %d px wide, page %d px wide and %d px high, body direction %s, %d sentences and %d signed "
             "numbers measured", probe["width"], probe["scrollWidth"], probe["pageHeight"], probe["dir"],
             len(probe["sentences"]), len(probe["numbers"]))
    if (probe["lang"], probe["htmlDir"]) != ("ar", "rtl"):
        problems.append(f"the page is <html lang={probe['lang']!r} dir={probe['htmlDir']!r}>, not lang=ar dir=rtl")
    for section in SECTIONS:
        if section not in probe["sections"]:
            problems.append(f"section #{section} missing from the loaded page")
    if max(probe["scrollWidth"], probe["innerWidth"]) > probe["width"]:
        problems.append(f"horizontal overflow: page is {max(probe['scrollWidth'], probe['innerWidth'])} px wide on a "
                        f"{probe['width']} px screen")
    if probe["outside"]:
        shown = "; ".join(f"<{o['tag']} class={o['cls']!r}> {o['left']}..{o['right']} px {o['text']!r}"
                          for o in probe["outside"][:5])
        problems.append(f"{len(probe['outside'])} element(s) wider than the {probe['width']} px viewport: {shown}")
    if probe["chartText"]:
        smallest = min(probe["chartText"], key=lambda t: t["px"])
        log.info("browser: smallest chart text %.1f px (%r)", smallest["px"], smallest["text"])
        if smallest["px"] < MIN_CHART_TEXT_PX:
            problems.append(f"chart text {smallest['px']:.1f} px ({smallest['text']!r}), below {MIN_CHART_TEXT_PX} px")
    if probe["dir"] != "rtl":
        problems.append(f"body direction is {probe['dir']}, not rtl")
    if not probe["sentences"]:
        problems.append("no sentence text measured")
    not_rtl = [s for s in probe["sentences"] if not s["firstLeft"] > s["lastLeft"]]
    not_right = [s for s in probe["sentences"] if s["boxRight"] - s["firstRight"] > 4]
    if not_rtl:
        problems.append(f"{len(not_rtl)} sentences laid out left to right (first character left of the last)")
    if not_right:
        problems.append(f"{len(not_right)} sentences do not start at the right edge of their box")
    if bad := [n["text"] for n in probe["numbers"] if not n["signLeftOfDigit"]]:
        problems.append(f"numbers reordered by bidi (sign right of the digits): {bad[:5]}")
    return problems


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--report", type=Path, help="check this report (predict.report=true); default: a demo one")
    ap.add_argument("--demo-table", type=Path, help="only write the seed articles as a table with illustrative "
                                                    "dates and outlets (predict's input) to this .csv, then stop")
    ap.add_argument("--html", type=Path, default=Path(tempfile.gettempdir()) / "pipeline_report.html",
                    help="where the demo report is written")
    ap.add_argument("--png", type=Path, default=Path(tempfile.gettempdir()) / "pipeline_report.png")
    ap.add_argument("--width", type=int, default=1100)
    ap.add_argument("--height", type=int, default=2400)
    ap.add_argument("--max-kb", type=int, default=400, help="re-save a larger PNG with a palette")
    ap.add_argument("--start", help="screenshot from this element down (a CSS selector, e.g. '#articles')")
    args = ap.parse_args(argv)
    if args.demo_table:
        log.info("demo table: %s", demo_table(args.demo_table))
        return 0
    html_path = args.report or build_report(None, None, args.html)
    log.info("report: %s", html_path)
    problems = check_in_browser(html_path, args.png, width=args.width, height=args.height, start=args.start)
    if args.png.exists():
        shrink_png(args.png, args.max_kb * 1024)
    for p in problems:
        log.error("check failed: %s", p)
    log.info("screenshot: %s — %s", args.png, "all checks passed" if not problems else f"{len(problems)} failed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
