"""The HTML report in a real browser: headless Chromium renders it, the layout is measured, the screenshot checked.

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


def test_seed_report_renders_rtl_and_screenshot_is_not_blank(tmp_path):
    html_path = bench.build_report(None, None, tmp_path / "report.html", n_boot=200)  # demo data from the seeds
    png = tmp_path / "report.png"
    problems = bench.check_in_browser(html_path, png, width=1000, height=1400)
    assert problems == []
    from PIL import Image

    img = np.asarray(Image.open(png).convert("RGB"))
    assert img.shape[:2] == (1400, 1000)
    assert (img.min(axis=2) < 235).mean() > 0.05


def test_screenshot_check_flags_a_blank_page(tmp_path):
    blank = tmp_path / "blank.html"
    blank.write_text('<!DOCTYPE html><html lang="ar" dir="rtl"><body></body></html>', encoding="utf-8")
    problems = bench.check_in_browser(blank, tmp_path / "blank.png", width=600, height=400)
    assert any("blank" in p for p in problems)
    assert any("section #timeline missing" in p for p in problems)
