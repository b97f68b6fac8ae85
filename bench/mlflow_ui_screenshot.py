"""Screenshot the project's experiment in the MLflow UI with a real browser (headless Chromium) and check what it shows.

    # a throw-away store with a few cheap runs (seconds each on 2 cores) and a tracking server on it
    O="tracking.uri=sqlite:////tmp/uishot/mlflow.db tracking.artifact_root=/tmp/uishot/artifacts \
       paths.output_root=/tmp/uishot/outputs paths.work_dir=/tmp/uishot/work"
    export HF_HUB_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true
    .venv/bin/python -m pipeline train model=tfidf $O
    .venv/bin/python -m pipeline train model=tiny $O
    .venv/bin/python -m pipeline train -m model=tiny train.lr=1e-4,5e-4 $O      # sweep: train-tiny lr=1e-4, ...
    .venv/bin/python -m pipeline evaluate model=tfidf $O
    .venv/bin/python -m pipeline label $O                                            # the rules run: reused, not repeated
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid .venv/bin/mlflow server --workers 1 \
        --backend-store-uri sqlite:////tmp/uishot/mlflow.db --default-artifact-root /tmp/uishot/artifacts \
        --host 127.0.0.1 --port 5077 &
    .venv/bin/python bench/mlflow_ui_screenshot.py --url http://127.0.0.1:5077 --runs-width 1800 \
        --runs-png docs/img/mlflow-runs.png --charts-png docs/img/mlflow-charts.png \
        --compare-png docs/img/mlflow-compare.png
    kill -- -<the server's process group>

Four pages, each in a fresh browser profile (what a first-time visitor sees):
  1. landing: `#/experiments/<id>`, as `make ui` users open it. Reported, not checked: the view the UI opened on
     (`runs`, or `overview` for the GenAI overview) and, if not the runs, the view a second visit opens on after
     one click on the UI's "Model training" switch. MLflow 3.17's UI does not pick the view by the experiment's
     `mlflow.experimentKind` tag: it opens every experiment in the view of its global "GenAI | Model training"
     switch, which starts on GenAI and is remembered per browser (localStorage `mlflow.workflowType_v1`), or is set
     by the URL's `?workflowType=machine_learning`. Saved to --landing-png.
  2. runs: the experiment's runs table through the link the stages print (the headline view pipeline/core/tracking.py
     stores in the experiment, `?viewStateShareKey=pipeline-headline&workflowType=machine_learning`), sweep
     parents (`*-sweep`) expanded so that their child runs show with their names (`train-tiny lr=1e-4`).
  3. compare: the run comparison (`#/compare-runs?runs=[...]&experiments=[...]`) of the newest finished train runs
     (a `test_macro_f1` metric; --runs N, or --run-ids), with "Show diff only" on for parameters and metrics so
     the rows that tell the runs apart (model, learning rate, scores) are the ones in view; the parameter table is
     opened to its full height and the metric table scrolled to the test scores.
  4. charts (--charts-png): the chart view of the headline view (`&compareRunsMode=CHART`).

Checks (exit status 1 if any fails): the runs table names the train runs (the expanded sweep's children
included) and shows the `test_macro_f1` column with the logged values; the chart view's first section is an open
"Headline" one and every other section is collapsed; the compare page names every compared run, has both diff switches on, its metric names and values are
scrolled level, and its `test_macro_f1` row shows, run by run, the value each run logged; no screenshot is blank.

Chromium is driven through its DevTools protocol over a pipe (`--remote-debugging-pipe`: no port, no websocket
library): the script waits until a page shows what it should instead of guessing a `--virtual-time-budget`,
clicks the switches, and crops the screenshot to the page's content. The MLflow Assistant side panel, which opens
itself on a local server's first visit and takes a third of the window, is kept closed by marking that first
visit as done in localStorage before the page loads.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chromium_driver import Browser, find_chromium, screenshot_problems, shrink_png  # noqa: E402
from pipeline.core.tracking import HEADLINE_SECTION, VIEW_KEY  # noqa: E402

log = logging.getLogger("mlflow_ui_screenshot")

DEFAULT_EXPERIMENT = "stance-toward-agreement"
TRAINING_VIEW = "workflowType=machine_learning"
METRIC_ANCHOR = "test_accuracy"  # the compare page's metric grid is scrolled to this row (the test scores)
# localStorage entries (`<key>_v<version>`, JSON values) set before every page load.
PRESET_STORAGE = {
    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": True,  # else the Assistant panel opens itself
    "mlflow.detectIssues.guidanceShown_v1": True,           # a popover over the GenAI overview
}


# --- what to show -----------------------------------------------------------------------------------------------

def train_runs(url: str, experiment: str, n: int, *, need: int = 2) -> tuple[str, list[tuple[str, str]]]:
    """The experiment id and the newest `n` finished train runs with a test score, oldest first: (id, name)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=url)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"no experiment {experiment!r} on {url}")
    runs = client.search_runs([exp.experiment_id], "tags.stage = 'train' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=200)
    runs = [r for r in runs if "test_macro_f1" in r.data.metrics][:n]
    if len(runs) < need:
        raise SystemExit(f"{experiment!r} on {url} has {len(runs)} finished train run(s); a comparison needs 2")
    return exp.experiment_id, [(r.info.run_id, r.info.run_name) for r in reversed(runs)]


def run_names(url: str, run_ids: list[str]) -> list[tuple[str, str]]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=url)
    return [(rid, client.get_run(rid).info.run_name) for rid in run_ids]


def compare_url(url: str, experiment_id: str, run_ids: list[str]) -> str:
    # the UI's own form: JSON arrays, as MLflow's Routes.getCompareRunPageRoute writes them
    quote = lambda v: urllib.parse.quote(json.dumps(v, separators=(",", ":")), safe="")  # noqa: E731
    return (f"{url.rstrip('/')}/#/compare-runs?runs={quote(run_ids)}&experiments={quote([experiment_id])}"
            f"&{TRAINING_VIEW}")


def _text_has(names: list[str]) -> str:
    """A page expression: the page's text contains every one of `names`."""
    return (f"(() => {{ const t = document.body ? document.body.innerText : ''; "
            f"return {json.dumps(names)}.every(n => t.includes(n)); }})()")


# The content's extent: up to the bottom of the main card (or, on the compare page, down to the Artifacts section,
# whose empty previews would fill the rest) and without the empty space below the last row.
CONTENT_BOTTOM_JS = """(() => {
  const heads = [...document.querySelectorAll('div,span,h2,h3')].filter(e => e.childElementCount <= 1 &&
      e.textContent.trim() === 'Artifacts');
  if (heads.length) return Math.ceil(heads[0].getBoundingClientRect().top) - 8;
  let bottom = 0;
  document.querySelectorAll('[role=row], table tr, h1, h2').forEach(e => {
    const r = e.getBoundingClientRect(); if (r.height > 0) bottom = Math.max(bottom, r.bottom); });
  return Math.ceil(bottom) + 24;
})()"""


# The compare page shows its parameter table in a box 500 px high and its metric table in a virtualised grid
# 300 px high, both scrolling inside. With "Show diff only" on, the parameter table holds the model's and the
# sweep's settings (a score of rows): it is opened to its full height. The metric grid is scrolled to the test
# scores (`test_accuracy`, `test_macro_f1` and its interval, ...), which come after the baselines, calibration and
# epochs in its alphabetical order. A section is found through its diff switch.
SECTION_JS = ("document.querySelector('button[role=switch][aria-label=\"%s - Show diff only\"]')"
              ".closest('.du-bois-light-collapse-content-box')")
OPEN_TABLE_JS = """(() => { const t = %s.querySelector('table.mlflow-compare-table');
  if (!t) return false; t.style.maxHeight = 'none'; t.style.height = 'auto'; return true; })()"""
# One step: scroll the grid to the anchor row if it is rendered, else on by 200 px (rows render lazily). The names
# are a grid of their own that the UI moves along when the values grid reports a scroll, but to the position the
# values had BEFORE that scroll (a step behind: unseen with a wheel's many small steps, a whole jump here): once
# the values grid has settled, the names grid is scrolled to the same position.
SCROLL_GRID_JS = """(async () => { const grids = [...%s.querySelectorAll('.ReactVirtualized__Grid')];
  const a = grids.flatMap(x => [...x.querySelectorAll('a')]).find(e => e.textContent.trim() === %s);
  const g = grids.find(x => ['auto', 'scroll'].includes(getComputedStyle(x).overflowY));
  if (!g) return a ? 'aligned' : 'end';  // every row fits: nothing scrolls
  const pause = () => new Promise(done => setTimeout(done, 250));
  const before = g.scrollTop;
  if (a) {
    let cell = a;  // the row's cell: a child of the grid's inner container, at top = row index x row height
    const inner = 'ReactVirtualized__Grid__innerScrollContainer';
    while (cell.parentElement && !cell.parentElement.classList.contains(inner)) cell = cell.parentElement;
    g.scrollTop = cell.offsetTop;
  } else {
    g.scrollTop = before + 200;
  }
  await pause();
  grids.filter(x => x !== g).forEach(x => { x.scrollTop = g.scrollTop; });
  await pause();
  if (a) return 'aligned';
  return g.scrollTop !== before ? 'scrolling' : 'end'; })()"""
GRIDS_LEVEL_JS = """[...%s.querySelectorAll('.ReactVirtualized__Grid')].map(g => g.scrollTop)"""
# the texts in the row of metric %s, in the order of the runs (the values cells on the same line as its name)
METRIC_ROW_JS = """(() => { const grids = [...%s.querySelectorAll('.ReactVirtualized__Grid')];
  const a = grids.flatMap(x => [...x.querySelectorAll('a')]).find(e => e.textContent.trim() === %s);
  if (!a) return null; const y = a.getBoundingClientRect(), mid = (y.top + y.bottom) / 2;
  const cells = grids.flatMap(x => [...x.querySelectorAll('.ReactVirtualized__Grid__innerScrollContainer > *')])
    .filter(c => !c.contains(a)).filter(c => { const r = c.getBoundingClientRect();
      return r.top <= mid && mid <= r.bottom && r.width > 0; });
  return cells.sort((p, q) => p.getBoundingClientRect().left - q.getBoundingClientRect().left)
    .map(c => c.textContent.trim()); })()"""


def _experiment_view(browser: Browser, url: str, experiment_id: str) -> str:
    """Open `#/experiments/<id>` afresh and return the view the UI redirects it to ('runs', 'overview', ...)."""
    browser.open("about:blank")
    browser.open(f"{url.rstrip('/')}/#/experiments/{experiment_id}")
    hash_ = browser.wait_for(
        f"(() => {{ const m = location.hash.match(/^#\\/experiments\\/{experiment_id}\\/([a-z-]+)/); "
        "return m && document.querySelector('h1,h2') ? location.hash : null; })()",
        "the experiment page to pick its view")
    browser.settle()
    log.info("landing: #/experiments/%s opened on %s", experiment_id, hash_)
    return hash_.split("/")[3].split("?")[0]


SWITCH_TO_TRAINING_JS = """(() => { const b = [...document.querySelectorAll('[role=button]')].find(e =>
    e.textContent.trim() === 'Model training'); if (!b) return false; b.click(); return true; })()"""


def landing(browser: Browser, url: str, experiment_id: str, png: Path) -> tuple[str, str | None]:
    """The view a first visit to the experiment opens on (screenshot to `png`), and, when that is not the runs,
    the view a second visit opens on after one click on the UI's "Model training" switch (None if no switch)."""
    first = _experiment_view(browser, url, experiment_id)
    browser.screenshot(png)
    if first == "runs" or not browser.evaluate(SWITCH_TO_TRAINING_JS):
        return first, None
    browser.wait_for("/workflowType=machine_learning/.test(location.hash)", "the switch to Model training")
    return first, _experiment_view(browser, url, experiment_id)


def runs_page(browser: Browser, url: str, experiment_id: str, runs: list[tuple[str, str]], png: Path) -> list[str]:
    problems: list[str] = []
    names = [name for _, name in runs]
    browser.open(headline_url(url, experiment_id))
    top_level = [n for n in names if " " not in n]  # sweep children (`train-tiny lr=1e-4`) sit under their parent
    browser.wait_for(_text_has(top_level or names[:1]) + " && /\\/runs/.test(location.hash)",
                     f"the runs table to list {top_level}")
    # expand the sweep parents: the button in front of the name of a run called `*-sweep`
    expanded = browser.evaluate("""(() => { let n = 0;
      document.querySelectorAll('[role=row]').forEach(row => {
        const a = [...row.querySelectorAll('a')].find(a => /-sweep$/.test(a.textContent.trim()));
        const b = a && a.closest('[role=gridcell]') && a.closest('[role=gridcell]').querySelector('button');
        if (b) { b.click(); n++; } });
      return n; })()""")
    children = [n for n in names if " " in n]
    if expanded and children:
        try:
            browser.wait_for(_text_has(children), f"the sweep children {children}", timeout=20)
        except TimeoutError as exc:
            problems.append(f"runs page: {exc}")
    browser.settle()
    browser.screenshot(png, clip=browser.content_clip(CONTENT_BOTTOM_JS))
    if not browser.evaluate(_text_has(names)):
        missing = [n for n in names if not browser.evaluate(_text_has([n]))]
        problems.append(f"runs page does not name the runs {missing}")
    # the headline view: the score columns are there from the start, with the values the runs logged
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=url)
    shown = [f"{v:.4f}"[:5] for rid, _ in runs if (v := client.get_run(rid).data.metrics.get("test_macro_f1"))]
    if not browser.evaluate(_text_has(["test_macro_f1", *shown])):
        problems.append(f"runs page: no test_macro_f1 column with the values {shown} (the headline view)")
    log.info("runs page: %d sweep parent(s) expanded, %s", expanded, png)
    return problems


def headline_url(url: str, experiment_id: str, *, charts: bool = False) -> str:
    """The runs page in the view pipeline/core/tracking.py stores in the experiment (the link train and evaluate print)."""
    return (f"{url.rstrip('/')}/#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}&{TRAINING_VIEW}"
            + ("&compareRunsMode=CHART" if charts else ""))


# The chart view's sections, top to bottom, and whether each is open (its chevron's aria-expanded).
SECTIONS_JS = """[...document.querySelectorAll('[data-testid=experiment-view-compare-runs-section-header]')].map(h => {
    const header = h.closest('[aria-expanded]');
    return {text: h.innerText.trim().split('\\n')[0], open: !!header && header.getAttribute('aria-expanded') === 'true'};
  })"""
CHARTS_BOTTOM_JS = """(() => { const add = [...document.querySelectorAll('button,span,div')].find(e =>
    e.childElementCount === 0 && e.textContent.trim() === 'Add section');
  return add ? Math.ceil(add.getBoundingClientRect().bottom) + 16 : document.documentElement.clientHeight; })()"""


def charts_page(browser: Browser, url: str, experiment_id: str, runs: list[tuple[str, str]], png: Path) -> list[str]:
    """The chart view of the headline view: the Headline section first and open, every other metric under the
    collapsed sections after it."""
    problems: list[str] = []
    browser.open(headline_url(url, experiment_id, charts=True))
    browser.wait_for(_text_has([HEADLINE_SECTION, "Model metrics"]), "the chart sections")
    browser.settle()
    sections = browser.evaluate(SECTIONS_JS)
    log.info("charts page: sections %s", sections)
    names = [s["text"].split(" (")[0] for s in sections]
    if not names or names[0] != HEADLINE_SECTION or not sections[0]["open"]:
        problems.append(f"charts page: the first section is not an open {HEADLINE_SECTION!r} one: {sections}")
    if any(s["open"] for s in sections[1:]):
        problems.append(f"charts page: sections after {HEADLINE_SECTION!r} are open: {sections[1:]}")
    browser.screenshot(png, clip=browser.content_clip(CHARTS_BOTTOM_JS))
    return problems


def compare_page(browser: Browser, url: str, experiment_id: str, runs: list[tuple[str, str]],
                 png: Path) -> list[str]:
    problems: list[str] = []
    names = [name for _, name in runs]
    browser.open(compare_url(url, experiment_id, [rid for rid, _ in runs]))
    browser.wait_for(_text_has(names + ["Parameters", "Metrics"]), f"the comparison of {names}")
    for table in ("Parameters", "Metrics"):
        selector = json.dumps(f'button[role=switch][aria-label="{table} - Show diff only"]')
        clicked = browser.evaluate(f"(() => {{ const b = document.querySelector({selector}); if (!b) return null; "
                                   "if (b.getAttribute('aria-checked') !== 'true') b.click(); return true; })()")
        if clicked is None:
            problems.append(f"compare page: no '{table} - Show diff only' switch")
            continue
        try:
            browser.wait_for(f"document.querySelector({selector}).getAttribute('aria-checked') === 'true'",
                             f"'{table} - Show diff only' to switch on", timeout=10)
        except TimeoutError as exc:
            problems.append(f"compare page: {exc}")
    browser.settle()
    if not browser.evaluate(OPEN_TABLE_JS % (SECTION_JS % "Parameters")):
        problems.append("compare page: no parameter table")
    state = "scrolling"
    for _ in range(30):  # until the anchor row, once rendered, stays at the top
        state = browser.evaluate(SCROLL_GRID_JS % (SECTION_JS % "Metrics", json.dumps(METRIC_ANCHOR)))
        if state != "scrolling":
            break
        time.sleep(0.3)
    if state != "aligned":
        problems.append(f"compare page: metric grid not scrolled to {METRIC_ANCHOR} ({state})")
    browser.settle()
    if len(set(tops := browser.evaluate(GRIDS_LEVEL_JS % (SECTION_JS % "Metrics")))) != 1:
        problems.append(f"compare page: metric names and values scrolled apart ({tops} px)")
    problems += _check_metric_row(browser, url, runs, "test_macro_f1")
    browser.screenshot(png, clip=browser.content_clip(CONTENT_BOTTOM_JS))
    log.info("compare page: %d runs %s, %s", len(runs), names, png)
    return problems


def _check_metric_row(browser: Browser, url: str, runs: list[tuple[str, str]], metric: str) -> list[str]:
    """The row of `metric` shows each run's logged value (names and values in line, in the runs' order)."""
    from mlflow import MlflowClient

    shown = browser.evaluate(METRIC_ROW_JS % (SECTION_JS % "Metrics", json.dumps(metric)))
    if shown is None:
        return [f"compare page: no {metric} row in view"]
    client = MlflowClient(tracking_uri=url)
    logged = [client.get_run(rid).data.metrics.get(metric) for rid, _ in runs]
    ok = len(shown) == len(logged) and all(
        (v is None and s in ("", "NaN", "-")) or (v is not None and _close(s, v)) for s, v in zip(shown, logged))
    log.info("compare page: %s shown %s, logged %s", metric, shown,
             [None if v is None else round(v, 4) for v in logged])
    return [] if ok else [f"compare page: the {metric} row shows {shown}, the runs logged {logged}"]


def _close(text: str, value: float) -> bool:
    try:
        return abs(float(text) - value) <= 0.0006 + 1e-3 * abs(value)  # the UI rounds to 3 decimals
    except ValueError:
        return False


def capture(url: str, experiment: str = DEFAULT_EXPERIMENT, *, landing_png: Path, runs_png: Path,
            compare_png: Path, charts_png: Path | None = None, n_runs: int = 4, run_ids: list[str] | None = None,
            width: int = 1400, runs_width: int | None = None, height: int = 1000, timeout: float = 60.0,
            max_kb: int = 400,
            binary: str | None = None) -> dict:
    """Screenshot and check the pages (the chart view too with `charts_png`); returns what was seen, with
    `problems` (empty = all checks passed)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    binary = binary or find_chromium()
    if binary is None:
        return {"problems": ["no Chromium on PATH (apt-get install -y chromium)"]}
    experiment_id, runs = train_runs(url, experiment, n_runs, need=0 if run_ids else 2)
    if run_ids:
        runs = run_names(url, run_ids)
    log.info("experiment %s (id %s); comparing %s", experiment, experiment_id, [n for _, n in runs])

    problems: list[str] = []
    shot: list[Path] = []  # the screenshots taken this time (a failed page may leave an older file in place)
    view = view_after_switch = None
    try:
        with Browser(binary, width, height, timeout=timeout, preset_storage=PRESET_STORAGE) as browser:
            view, view_after_switch = landing(browser, url, experiment_id, landing_png)
        shot.append(landing_png)
    except (TimeoutError, RuntimeError) as exc:
        problems.append(f"landing: {exc}")
    if view not in (None, "runs"):
        log.warning("a first visit to #/experiments/%s opens the %r view, not the training runs: this MLflow UI "
                    "follows its global GenAI | Model training switch (default GenAI), not the experiment's "
                    "mlflow.experimentKind tag; after one click on Model training it opens on %r", experiment_id,
                    view, view_after_switch)
    pages = [("runs page", runs_page, runs_png), ("compare page", compare_page, compare_png)]
    if charts_png is not None:
        pages.append(("charts page", charts_page, charts_png))
    for page, shoot, png in pages:
        try:
            page_width = (runs_width or width) if shoot is runs_page else width
            with Browser(binary, page_width, height, timeout=timeout, preset_storage=PRESET_STORAGE) as browser:
                problems += shoot(browser, url, experiment_id, runs, png)
            shot.append(png)
        except (TimeoutError, RuntimeError) as exc:  # a page that never showed its content, a dead browser
            problems.append(f"{page}: {exc}")
    for png in shot:
        problems += [f"{png.name}: {p}" for p in screenshot_problems(png)]
        shrink_png(png, max_kb * 1024)
    return {"landing_view": view, "landing_view_after_switch": view_after_switch, "experiment_id": experiment_id,
            "compared": [n for _, n in runs], "screenshots": [str(p) for p in shot],
            "problems": problems}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    tmp = Path(tempfile.gettempdir())
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True, help="the tracking server, e.g. http://127.0.0.1:5077")
    ap.add_argument("--experiment", default=DEFAULT_EXPERIMENT)
    ap.add_argument("--runs", type=int, default=4, help="compare the newest N finished train runs")
    ap.add_argument("--run-ids", nargs="+", help="compare these runs instead")
    ap.add_argument("--landing-png", type=Path, default=tmp / "mlflow-landing.png")
    ap.add_argument("--runs-png", type=Path, default=tmp / "mlflow-runs.png")
    ap.add_argument("--compare-png", type=Path, default=tmp / "mlflow-compare.png")
    ap.add_argument("--charts-png", type=Path, default=tmp / "mlflow-charts.png")
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--runs-width", type=int, help="the runs page's width (default --width): wide enough for every "
                                                   "headline column")
    ap.add_argument("--height", type=int, default=1000,
                    help="window height; it grows to fit a page's content, and screenshots are cropped to it")
    ap.add_argument("--max-kb", type=int, default=400, help="re-save larger PNGs with a palette")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds a page may take to show its content")
    args = ap.parse_args(argv)
    result = capture(args.url, args.experiment, landing_png=args.landing_png, runs_png=args.runs_png,
                     compare_png=args.compare_png, charts_png=args.charts_png, n_runs=args.runs, run_ids=args.run_ids, width=args.width, runs_width=args.runs_width,
                     height=args.height, timeout=args.timeout, max_kb=args.max_kb)
    for p in result["problems"]:
        log.error("check failed: %s", p)
    print(json.dumps(result, indent=1))
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
