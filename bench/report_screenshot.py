"""Render the HTML report in a real browser (headless Chromium), screenshot it and check its layout.

    # real predictions of the seed articles by a trained model, with reasons (rules + occlusion words):
    .venv/bin/python -m pipeline train model=tfidf
    .venv/bin/python -m pipeline predict input=seeds/ output=/tmp/seeds/pred.parquet model_uri=<run dir>/model
    .venv/bin/python bench/report_screenshot.py --predictions /tmp/seeds/pred.parquet \
        --model-dir <run dir>/model --png docs/img/report.png
    # no model at hand: the seed sentences with demo probabilities from the weak-labelling rules
    .venv/bin/python bench/report_screenshot.py --png /tmp/report.png

The seed articles carry no date or outlet; the script gives them illustrative ones (said in the report's title)
so that the timeline and outlet sections have something to show.

Checks, in the browser (exit status 1 if any fails):
  * the page loads and the DOM Chromium built has <html lang="ar" dir="rtl"> and every section;
  * no horizontal overflow at a 1100 px wide window (scrollWidth ≤ innerWidth);
  * Arabic sentences are laid out right to left: in every sentence, the first character is drawn to the right of
    the last character of the same line, and the text starts at the right edge of its box;
  * numbers in `.num` elements keep their left-to-right order (the minus sign is left of the digits);
  * the screenshot exists and is not blank (enough non-white pixels, several colours).
Layout is measured by a small probe script added to a temporary COPY of the report (the report itself has no
script), which writes its measurements into the DOM that `chromium --dump-dom` prints.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline import LABELS  # noqa: E402
from pipeline.analytics import by_outlet, timeline  # noqa: E402
from pipeline.report import render_html  # noqa: E402

log = logging.getLogger("report_screenshot")

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
DEMO_OUTLETS = ("وكالة سبوتنيك", "روسيا اليوم", "الجزيرة نت", "سكاي نيوز عربية", "الشرق الأوسط")
DEMO_DATES = ("2022-01-26", "2022-01-27", "2022-01-27", "2022-01-28", "2022-01-31")

PROBE = """
<script>
(function () {
  var out = {width: window.innerWidth, scrollWidth: document.documentElement.scrollWidth,
             dir: getComputedStyle(document.body).direction, sentences: [], numbers: []};
  document.querySelectorAll('section.article .s .text').forEach(function (el) {
    var node = el.firstChild; if (!node || !node.data || node.data.trim().length < 4) return;
    var text = node.data, box = el.getBoundingClientRect(), r = document.createRange();
    r.setStart(node, 0); r.setEnd(node, 1); var first = r.getClientRects()[0];
    // last character on the FIRST line: walk forward while the top stays the same
    var lastOnLine = first, i;
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
  var pre = document.createElement('pre'); pre.id = 'layout-probe';
  pre.textContent = JSON.stringify(out); document.body.appendChild(pre);
})();
</script>
"""


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        if path := shutil.which(name):
            return path
    return None


# --no-sandbox: containers run as root, where Chromium's sandbox refuses to start.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
                  "--no-first-run", "--disable-extensions", "--mute-audio")


def _chromium(binary: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    cmd = [binary, *CHROMIUM_FLAGS, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def demo_frames(seeds_glob: str = "seeds/*.txt") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seed sentences with DEMO probabilities: the weak-labelling rules' label and confidence, softened."""
    from pipeline.rules import load_lexicon
    from pipeline.segment import SegmentRules, find_articles, segment_files

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
    from pipeline.rules import load_lexicon

    lexicon = load_lexicon(ROOT / "labels" / "lexicon.yaml")
    sentences = sentences.copy()
    sentences["rules_fired"] = [lexicon.apply(t).fired for t in sentences["text"]]
    if model_dir is not None:
        from pipeline.explain import top_words
        from pipeline.inference import load_predictor

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


def build_report(predictions: Path | None, model_dir: Path | None, html_path: Path, *, n_boot: int = 1000) -> Path:
    if predictions is not None:
        sentences = pd.read_parquet(predictions)
        summary_path = predictions.with_name(f"{predictions.stem}.articles{predictions.suffix}")
        articles = pd.read_parquet(summary_path) if summary_path.exists() else article_summary(sentences)
        title = "تقرير الموقف — المقالات الخمس (تواريخ ومصادر توضيحية)"
        what = f"predictions {predictions.name}" + (f", model {model_dir.parent.name}/{model_dir.name}"
                                                    if model_dir else "") + " (in-sample: trained on these articles)"
    else:
        sentences, articles = demo_frames()
        title = "تقرير الموقف — بيانات توضيحية (demo data)"
        what = "demo data: probabilities from the weak-labelling rules, not a model"
    sentences = add_reasons(sentences, model_dir)
    sentences, articles = add_demo_metadata(sentences, articles)
    text = render_html(sentences, articles, timeline(sentences, n_boot=n_boot), by_outlet(sentences, n_boot=n_boot),
                       title=title, model_description=what + " · illustrative dates and outlets", top_n=5)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(text, encoding="utf-8")
    return html_path


def check_in_browser(html_path: Path, png_path: Path, *, binary: str | None = None, width: int = 1100,
                     height: int = 2400) -> list[str]:
    """Screenshot `html_path` to `png_path` and return the failed checks (empty = all good)."""
    binary = binary or find_chromium()
    if binary is None:
        return ["no Chromium on PATH (apt-get install -y chromium)"]
    problems: list[str] = []
    png_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_png = Path(tmp) / "shot.png"
        done = _chromium(binary, f"--window-size={width},{height}", f"--screenshot={tmp_png}",
                         html_path.resolve().as_uri())
        if not tmp_png.exists():
            return [f"chromium wrote no screenshot (rc {done.returncode}): {done.stderr[-500:]}"]
        shutil.copyfile(tmp_png, png_path)

        probe_html = Path(tmp) / "probe.html"
        probe_html.write_text(html_path.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"),
                              encoding="utf-8")
        dom = _chromium(binary, f"--window-size={width},{height}", "--dump-dom", probe_html.as_uri()).stdout
    if not re.search(r'<html[^>]*lang="ar"[^>]*dir="rtl"', dom):
        problems.append("the loaded DOM lacks <html lang=\"ar\" dir=\"rtl\">")
    for section in ("summary", "timeline", "outlets", "extremes", "articles"):
        if f'id="{section}"' not in dom:
            problems.append(f"section #{section} missing from the loaded page")
    m = re.search(r'<pre id="layout-probe">(.*?)</pre>', dom, re.S)
    if not m:
        return problems + ["the layout probe did not run (page did not load?)"]
    import html as html_lib

    probe = json.loads(html_lib.unescape(m.group(1)))
    log.info("browser: window %d px, scrollWidth %d px, body direction %s, %d sentences and %d signed numbers "
             "measured", probe["width"], probe["scrollWidth"], probe["dir"], len(probe["sentences"]),
             len(probe["numbers"]))
    if probe["scrollWidth"] > probe["width"]:
        problems.append(f"horizontal overflow: page is {probe['scrollWidth']} px wide in a {probe['width']} px window")
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
    problems += screenshot_problems(png_path)
    return problems


def screenshot_problems(png_path: Path) -> list[str]:
    from PIL import Image

    img = np.asarray(Image.open(png_path).convert("RGB"))
    non_white = float((img.min(axis=2) < 235).mean())
    colours = len(np.unique(img.reshape(-1, 3)[::97], axis=0))
    log.info("screenshot %s: %dx%d px, %.1f%% non-white, %d colours (sampled)", png_path, img.shape[1],
             img.shape[0], 100 * non_white, colours)
    problems = []
    if non_white < 0.02:
        problems.append(f"screenshot looks blank ({100 * non_white:.2f}% non-white pixels)")
    if colours < 8:
        problems.append(f"screenshot has only {colours} colours")
    return problems


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--predictions", type=Path, help="predict's sentence rows (.parquet); default: demo data")
    ap.add_argument("--model-dir", type=Path, help="the model that made them, for occlusion reasons (top_words)")
    ap.add_argument("--html", type=Path, default=Path(tempfile.gettempdir()) / "pipeline_report.html")
    ap.add_argument("--png", type=Path, default=Path(tempfile.gettempdir()) / "pipeline_report.png")
    ap.add_argument("--width", type=int, default=1100)
    ap.add_argument("--height", type=int, default=2400)
    args = ap.parse_args(argv)
    html_path = build_report(args.predictions, args.model_dir, args.html)
    log.info("report: %s", html_path)
    problems = check_in_browser(html_path, args.png, width=args.width, height=args.height)
    for p in problems:
        log.error("check failed: %s", p)
    log.info("screenshot: %s — %s", args.png, "all checks passed" if not problems else f"{len(problems)} failed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
