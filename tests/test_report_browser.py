"""Open report.html in headless Chromium and check what a reader would see.

The page is driven through the DevTools protocol (stdlib + websockets), which reports
console messages, uncaught exceptions and every network request, and can take a
full-page screenshot. Without Chromium the test is skipped, except under CI, where a
missing browser is a failure.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image as mpimg
from test_report import make_fake_assets, make_fake_report, png_size
from websockets.sync.client import connect

from pipeline.report import write_report
from pipeline.report.figures import PNG_SIGNATURE

CHROMIUM = "/usr/bin/chromium"
VIEWPORT = (1280, 2400)
STARTUP_TIMEOUT_S = 60.0
COMMAND_TIMEOUT_S = 60.0
MAX_SCREENSHOT_HEIGHT = 16_000
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--hide-scrollbars", "--mute-audio", "--enable-logging=stderr", "--v=0",
    f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}", "--remote-debugging-port=0",
)  # fmt: skip

PAGE_PROBE = """
(() => {
  const banner = document.getElementById("synthetic-banner");
  const rect = banner ? banner.getBoundingClientRect() : null;
  return {
    title: document.title,
    cards: [...document.querySelectorAll("article.factor-card")].map(card => ({
      id: card.id,
      blocks: [...card.querySelectorAll(".block-name")].map(el => el.textContent),
      images: card.querySelectorAll("img").length,
    })),
    images: [...document.images].map(img => ({
      complete: img.complete, width: img.naturalWidth, height: img.naturalHeight,
      shownWidth: img.getBoundingClientRect().width, data: img.src.startsWith("data:image/png;base64,"),
    })),
    banner: rect && {top: rect.top, left: rect.left, width: rect.width, height: rect.height,
                     text: banner.innerText, background: getComputedStyle(banner).backgroundColor},
    scripts: document.scripts.length,
    scrollWidth: document.documentElement.scrollWidth,
  };
})()
"""


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="module")
def chromium() -> str:
    path = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    if path is None:
        message = f"Chromium is not installed ({CHROMIUM} and `chromium` on PATH are missing)"
        if _ci():
            pytest.fail(f"{message}; CI is set, so the browser check must run")
        pytest.skip(f"{message}; install Debian's chromium package to run the browser check")
    return path


class DevTools:
    """A minimal DevTools-protocol client: numbered commands and a log of every event."""

    def __init__(self, websocket_url: str):
        self._socket = connect(websocket_url, max_size=None, open_timeout=COMMAND_TIMEOUT_S)
        self._next_id = 0
        self.events: list[dict] = []

    def close(self) -> None:
        self._socket.close()

    def _receive(self, deadline: float) -> dict:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no answer from Chromium in time")
        return json.loads(self._socket.recv(timeout=remaining))

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        self._socket.send(json.dumps(message))
        deadline = time.monotonic() + COMMAND_TIMEOUT_S
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method} failed: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def events_of(self, session: str) -> list[dict]:
        return [event for event in self.events if event.get("sessionId") == session]

    def wait_for(self, method: str, session: str) -> dict:
        deadline = time.monotonic() + COMMAND_TIMEOUT_S
        for event in self.events_of(session):
            if event.get("method") == method:
                return event
        while True:
            event = self._receive(deadline)
            self.events.append(event)
            if event.get("method") == method and event.get("sessionId") == session:
                return event


def _devtools_url(profile: Path, browser: subprocess.Popen) -> str:
    # With --remote-debugging-port=0 Chromium picks a free port and writes it, with the
    # browser's websocket path, to DevToolsActivePort in the profile directory.
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if browser.poll() is not None:
            raise RuntimeError(f"Chromium exited with status {browser.returncode} during start-up")
        lines = port_file.read_text().split() if port_file.exists() else []
        if len(lines) == 2:
            return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
        time.sleep(0.1)
    raise TimeoutError(f"Chromium did not open its DevTools port within {STARTUP_TIMEOUT_S} s")


@pytest.fixture(scope="module")
def browser(chromium, tmp_path_factory):
    profile = tmp_path_factory.mktemp("chromium-profile")
    with open(profile.parent / "chromium.log", "wb") as log:
        process = subprocess.Popen(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
    devtools = None
    try:
        devtools = DevTools(_devtools_url(profile, process))
        yield devtools
        devtools.send("Browser.close")
        process.wait(timeout=30)
    finally:
        if devtools is not None:
            devtools.close()
        if process.poll() is None:
            # The browser's helpers share its new session, so the group goes with it.
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _open_page(devtools: DevTools, url: str) -> str:
    target = devtools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = devtools.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Page", "Runtime", "Log", "Network"):
        devtools.send(f"{domain}.enable", session=session)
    devtools.send(
        "Emulation.setDeviceMetricsOverride",
        {"width": VIEWPORT[0], "height": VIEWPORT[1], "deviceScaleFactor": 1, "mobile": False},
        session=session,
    )
    devtools.send("Page.navigate", {"url": url}, session=session)
    devtools.wait_for("Page.loadEventFired", session)
    return session


def _full_page_screenshot(devtools: DevTools, session: str, height: float) -> bytes:
    clip = {"x": 0, "y": 0, "width": VIEWPORT[0], "height": min(height, MAX_SCREENSHOT_HEIGHT), "scale": 1}
    options = {"format": "png", "captureBeyondViewport": True, "clip": clip}
    shot = devtools.send("Page.captureScreenshot", options, session=session)
    return base64.b64decode(shot["data"])


def _keep_screenshot(screenshot: bytes, tmp_path: Path, name: str) -> None:
    """Write the screenshot beside the test, and to ``$EEGMI_SCREENSHOT_DIR`` when set, to look at."""
    folders = [tmp_path]
    if os.environ.get("EEGMI_SCREENSHOT_DIR"):
        folders.append(Path(os.environ["EEGMI_SCREENSHOT_DIR"]))
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(screenshot)


def _problems(events: list[dict]) -> list[str]:
    """Console errors and warnings, uncaught exceptions and failed loads of one page."""
    problems = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert", "warning"):
            problems.append(f"console.{params['type']}: {params.get('args')}")
        elif method == "Runtime.exceptionThrown":
            problems.append(f"exception: {params.get('exceptionDetails')}")
        elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
            problems.append(f"log {params['entry']['level']}: {params['entry'].get('text')}")
        elif method == "Network.loadingFailed":
            problems.append(f"failed load: {params.get('errorText')}")
    return problems


def _requested_urls(events: list[dict]) -> list[str]:
    return [
        event["params"]["request"]["url"]
        for event in events
        if event.get("method") == "Network.requestWillBeSent"
    ]


def test_harness_catches_errors_and_external_requests(browser, tmp_path):
    # A page with the faults the report test must catch, so a silent harness cannot pass.
    faulty = tmp_path / "faulty.html"
    faulty.write_text(
        '<!DOCTYPE html><title>t</title><img src="http://127.0.0.1:9/x.png">'
        '<script>console.error("boom"); missingFunction();</script>',
        encoding="utf-8",
    )

    session = _open_page(browser, faulty.as_uri())
    events = browser.events_of(session)

    problems = _problems(events)
    assert any("console.error" in p and "boom" in p for p in problems)
    assert any(p.startswith("exception") and "missingFunction" in p for p in problems)
    assert "http://127.0.0.1:9/x.png" in _requested_urls(events)


def test_report_renders_in_chromium(browser, tmp_path):
    report = make_fake_report()
    assets = make_fake_assets(report)
    html_path = write_report(tmp_path / "report", report, assets)["report.html"]

    session = _open_page(browser, html_path.resolve().as_uri())
    events = browser.events_of(session)
    page = browser.send(
        "Runtime.evaluate", {"expression": PAGE_PROBE, "returnByValue": True}, session=session
    )["result"]["value"]
    height = browser.send("Page.getLayoutMetrics", session=session)["cssContentSize"]["height"]
    screenshot = _full_page_screenshot(browser, session, height)
    _keep_screenshot(screenshot, tmp_path, "report.png")

    assert _problems(events) == []
    requested = _requested_urls(events)
    assert requested and all(url.startswith(("file://", "data:")) for url in requested), requested
    assert "DEAP" in page["title"] and "synthetic" in page["title"]
    assert page["scripts"] == 0
    assert page["scrollWidth"] <= VIEWPORT[0]  # nothing overflows sideways

    # One card per reported factor, with its blocks and both figures.
    assert [card["id"] for card in page["cards"]] == [f"factor-{int(f['index'])}" for f in report["factors"]]
    assert page["cards"][0]["blocks"] == ["C4-T8-P4-P8 (gamma)", "F3-FC5 (beta)"]
    assert [card["images"] for card in page["cards"]] == [2, 2, 2]

    # Every image decoded, at the pixel size of the figure it embeds.
    expected = [assets.mi_variance, assets.topk, assets.confusion]
    expected += [figs[kind] for figs in assets.factors.values() for kind in ("topomap", "traversal")]
    assert all(image["complete"] and image["data"] for image in page["images"])
    assert sorted((i["width"], i["height"]) for i in page["images"]) == sorted(png_size(p) for p in expected)
    assert all(image["shownWidth"] > 200 for image in page["images"])

    # The synthetic-data banner is near the top of the first screen and stands out.
    banner = page["banner"]
    assert banner["text"].startswith("Synthetic data — not a recording")
    assert banner["top"] < VIEWPORT[1] / 6 and banner["height"] > 40
    assert banner["background"] not in ("rgba(0, 0, 0, 0)", "rgb(255, 255, 255)")

    # The screenshot holds the rendered page: full width, the whole report, the banner's tint.
    assert screenshot.startswith(PNG_SIGNATURE) and len(screenshot) > 100_000
    width, shot_height = png_size(screenshot)
    assert width == VIEWPORT[0] and shot_height >= min(height, MAX_SCREENSHOT_HEIGHT) > VIEWPORT[1]
    pixels = mpimg.imread(io.BytesIO(screenshot), format="png")[..., :3]
    inside_banner = pixels[int(banner["top"]) + 6, int(banner["left"]) + 6]
    np.testing.assert_allclose(inside_banner, np.array([0xFD, 0xEC, 0xEA]) / 255, atol=0.02)
    assert pixels.std() > 0.05


def test_report_of_a_small_run_renders_in_chromium(browser, small_deap_run, tmp_path):
    """report.html exactly as the ``deap`` flow wrote it: loads cleanly, every card and figure shown."""
    out_dir, _, report = small_deap_run
    session = _open_page(browser, (out_dir / "report.html").resolve().as_uri())
    events = browser.events_of(session)
    page = browser.send(
        "Runtime.evaluate", {"expression": PAGE_PROBE, "returnByValue": True}, session=session
    )["result"]["value"]
    height = browser.send("Page.getLayoutMetrics", session=session)["cssContentSize"]["height"]
    screenshot = _full_page_screenshot(browser, session, height)
    _keep_screenshot(screenshot, tmp_path, "small-run-report.png")

    assert _problems(events) == []
    requested = _requested_urls(events)
    assert requested and all(url.startswith(("file://", "data:")) for url in requested), requested
    assert "synthetic" in page["title"] and page["scripts"] == 0
    assert page["scrollWidth"] <= VIEWPORT[0]
    assert page["banner"]["text"].startswith("Synthetic data — not a recording")

    # A card per reported factor, in report order, each with its topomaps and traversal strip,
    # and the blocks report.json names for it.
    assert [card["id"] for card in page["cards"]] == [f"factor-{f['index']}" for f in report["factors"]]
    for card, factor in zip(page["cards"], report["factors"], strict=True):
        assert card["images"] == 2
        assert card["blocks"] == [f"{block['name']} ({block['band']})" for block in factor["blocks"]]
    # The run's figures (Î vs variance, top-k, confusion) plus two per card, all decoded and legible.
    assert len(page["images"]) == 3 + 2 * len(report["factors"])
    assert all(image["complete"] and image["data"] and image["width"] > 100 for image in page["images"])
    assert all(image["shownWidth"] > 200 for image in page["images"])
    assert screenshot.startswith(PNG_SIGNATURE) and png_size(screenshot)[0] == VIEWPORT[0]
