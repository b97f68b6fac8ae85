"""Headless Chromium for the bench scripts and browser tests: find the binary, drive one page over the DevTools
protocol (bench/report_screenshot.py, bench/mlflow_ui_screenshot.py), check a screenshot is not blank.

Chromium is driven over a pipe (`--remote-debugging-pipe`: no port, no websocket library). The page's size is set
with `Emulation.setDeviceMetricsOverride`, so a 390 px phone width is really 390 px (a headless window is never
narrower than 500 px).
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
import logging
from pathlib import Path

import numpy as np

LOG = logging.getLogger("chromium")
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        if path := shutil.which(name):
            return path
    return None


# --no-sandbox: containers run as root, where Chromium's sandbox refuses to start.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
                  "--no-first-run", "--disable-extensions", "--mute-audio")


class Browser:
    """One headless Chromium page, driven over the DevTools protocol on fds 3/4 (`--remote-debugging-pipe`)."""

    def __init__(self, binary: str, width: int, height: int, *, timeout: float = 60.0, mobile: bool = False,
                 preset_storage: dict | None = None):
        """`mobile`: emulate a phone (the page's viewport meta tag applies); `preset_storage`: localStorage entries
        (JSON values) set before every page load."""
        self.timeout = timeout
        self.mobile = mobile
        self._profile = tempfile.TemporaryDirectory(prefix="chromium-profile-")
        to_browser_r, self._write_fd = os.pipe()
        self._read_fd, from_browser_w = os.pipe()

        def wire_pipe_fds() -> None:  # in the child, before exec: the protocol's fds are 3 (in) and 4 (out)
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        self.proc = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, "--remote-debugging-pipe", f"--user-data-dir={self._profile.name}",
             f"--window-size={width},{height}", "about:blank"],
            pass_fds=(3, 4), preexec_fn=wire_pipe_fds, start_new_session=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.session: str | None = None  # the page's, once attached; browser-level commands go without
        try:
            page = next(t for t in self.call("Target.getTargets", session=None)["targetInfos"]
                        if t["type"] == "page")
            self.session = self.call("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True},
                                     session=None)["sessionId"]
            self.call("Page.enable")
            self.resize(width, height)
            if preset_storage:
                preset = "".join(f"localStorage.setItem({json.dumps(k)}, {json.dumps(json.dumps(v))});"
                                 for k, v in preset_storage.items())
                self.call("Page.addScriptToEvaluateOnNewDocument", {"source": f"try {{ {preset} }} catch (e) {{}}"})
        except BaseException:
            self.close()
            raise

    def call(self, method: str, params: dict | None = None, *, session: str | None | bool = True) -> dict:
        """Send one command (to the page's session unless session=None) and return its result."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session is True:
            session = self.session
        if session:
            message["sessionId"] = session
        os.write(self._write_fd, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\0" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self._read_fd], [], [], left)[0]:
                    raise TimeoutError(f"Chromium did not answer {method} within {self.timeout:.0f} s")
                chunk = os.read(self._read_fd, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"Chromium exited (rc {self.proc.poll()}) during {method}")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._next_id:  # anything else is an event: not needed here
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails'].get('text')}: {expression[:200]}")
        return result["result"].get("value")

    def open(self, url: str) -> None:
        self.call("Page.navigate", {"url": url})

    def wait_for(self, expression: str, what: str, *, timeout: float | None = None) -> object:
        """Poll `expression` until it is truthy; return its value. TimeoutError names `what`."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout or self.timeout:.0f} s for {what}")
            time.sleep(0.5)

    def settle(self, *, quiet_s: float = 1.5, timeout: float = 20.0) -> None:
        """Wait until the page's text and size stop changing (the SPA's last renders, charts included)."""
        probe = "document.body ? document.body.innerText.length + ':' + document.body.scrollHeight : ''"
        deadline = time.monotonic() + timeout
        last, since = self.evaluate(probe), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.3)
            now = self.evaluate(probe)
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                return

    def resize(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": self.mobile})

    def content_clip(self, bottom_js: str, *, max_height: int = 6000) -> dict:
        """The region from the top of the page to the bottom of its content (`bottom_js`: a page expression giving
        that bottom in px). A page laid out in a window-high frame that scrolls inside (the MLflow UI) cuts content
        below the window: the window grows to fit it first (up to `max_height`)."""
        bottom = self.evaluate(bottom_js)
        for _ in range(3):
            if bottom <= self.height - 16 or self.height >= max_height:
                break
            self.resize(self.width, min(max_height, bottom + 200))
            self.settle()
            bottom = self.evaluate(bottom_js)
            LOG.debug("window %dx%d: content bottom at %d px", self.width, self.height, bottom)
        return {"x": 0, "y": 0, "width": self.width, "height": max(200, min(bottom, self.height))}

    def screenshot(self, path: Path, clip: dict | None = None) -> Path:
        """The page (or `clip`, in page coordinates: it may lie below the window) as a PNG at `path`."""
        params: dict = {"format": "png", "captureBeyondViewport": bool(clip)}
        if clip:
            params["clip"] = {**clip, "scale": 1}
        data = self.call("Page.captureScreenshot", params)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(base64.b64decode(data))
        os.replace(tmp, path)
        return path

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    self.call("Browser.close", session=None)
                except (OSError, RuntimeError, TimeoutError):
                    pass
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)  # its own process group (renderers, zygote)
                    self.proc.wait()
        finally:
            for fd in (self._write_fd, self._read_fd):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._profile.cleanup()

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def screenshot_problems(png_path: Path) -> list[str]:
    from PIL import Image

    img = np.asarray(Image.open(png_path).convert("RGB"))
    non_white = float((img.min(axis=2) < 235).mean())
    colours = len(np.unique(img.reshape(-1, 3)[::97], axis=0))
    LOG.info("screenshot %s: %dx%d px, %.1f%% non-white, %d colours (sampled)", png_path, img.shape[1],
             img.shape[0], 100 * non_white, colours)
    problems = []
    if non_white < 0.02:
        problems.append(f"screenshot looks blank ({100 * non_white:.2f}% non-white pixels)")
    if colours < 8:
        problems.append(f"screenshot has only {colours} colours")
    return problems


def shrink_png(png: Path, max_bytes: int) -> None:
    """Re-save with a palette (UI screenshots have few colours) if the PNG is larger than `max_bytes`."""
    if png.stat().st_size <= max_bytes:
        return
    from PIL import Image

    img = Image.open(png).convert("RGB")
    img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(png, optimize=True)
    LOG.info("%s: %d KB after palette quantisation", png, png.stat().st_size // 1024)
