"""The HTML report in a real browser: headless Chromium renders it at a phone's width and a desktop's, the layout is
measured, the screenshot checked.

Skipped where no Chromium binary is on PATH (`apt-get install -y chromium` provides one)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("report_screenshot", ROOT / "bench" / "report_screenshot.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

pytestmark = pytest.mark.skipif(bench.find_chromium() is None, reason="no chromium binary on PATH")


@pytest.fixture(scope="module")
def seed_report(tmp_path_factory):
    return bench.build_report(None, None, tmp_path_factory.mktemp("r") / "report.html", n_boot=200)  # demo data


@pytest.mark.parametrize("width", [390, 1400])
def test_seed_report_fits_the_screen_reads_rtl_and_is_not_blank(seed_report, tmp_path, width):
    """At a 390 px phone and a 1400 px desktop: nothing is wider than the viewport (tables scroll inside their
    box), the chart on show keeps legible text, Arabic reads right to left, signed numbers keep their sign."""
    png = tmp_path / "report.png"
    problems = bench.check_in_browser(seed_report, png, width=width, height=1400)
    assert problems == []
    from PIL import Image

    img = np.asarray(Image.open(png).convert("RGB"))
    assert img.shape[:2] == (1400, width)  # (not blank: checked with the rest, in check_in_browser)


def test_the_overflow_check_catches_what_does_not_fit(tmp_path):
    """The check itself: a table wider than the phone outside any scroll box is caught, the same table in one
    is not; a chart whose text shrinks below legibility is caught."""
    page = ('<!DOCTYPE html><html lang="ar" dir="rtl"><head><meta name="viewport" content="width=device-width">'
            '</head><body>{}' + "".join(f'<section id="{s}"></section>' for s in bench.SECTIONS) + "</body></html>")
    table = '<table style="width:900px"><tr><td>٣</td></tr></table>'
    chart = ('<svg class="chart" viewBox="0 0 920 340" width="100%" font-size="12"><text x="10" y="20">+0.25</text>'
             '</svg>')
    cases = {"wide": (table, "wider than the 390 px viewport"), "boxed": (f'<div class="scroll" '
             f'style="overflow-x:auto">{table}</div>', None), "chart": (chart, "chart text")}
    for name, (body, expected) in cases.items():
        html = tmp_path / f"{name}.html"
        html.write_text(page.format(body), encoding="utf-8")
        problems = [p for p in bench.check_in_browser(html, tmp_path / f"{name}.png", width=390, height=600)
                    if "sentence" not in p and "blank" not in p and "colours" not in p]
        assert (expected is None and problems == []) or any(expected in p for p in problems), (name, problems)


def test_screenshot_check_flags_a_blank_page(tmp_path):
    blank = tmp_path / "blank.html"
    blank.write_text('<!DOCTYPE html><html lang="ar" dir="rtl"><body></body></html>', encoding="utf-8")
    problems = bench.check_in_browser(blank, tmp_path / "blank.png", width=600, height=400)
    assert any("blank" in p for p in problems)
    assert any("section #timeline missing" in p for p in problems)
