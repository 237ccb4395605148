"""``run_pipeline.py app`` in a real browser: Debian's headless Chromium driven by Playwright.

The server runs the tiny fixture models on the CPU. The browser uploads a generated clip, asks
for two sentences, waits for the overlay video, downloads ``masks.zip`` and checks it; then an
empty sentence must show its message and the server must still run jobs. The page with results
is saved as a picture; ``make screenshot`` (``UPDATE_SCREENSHOT=1``) writes it to ``docs/app.png``,
the README's picture (a plain test run leaves the repository as it is).

Needs Gradio (``pip install .[app]``), the ``playwright`` package and ``/usr/bin/chromium``
(``apt-get install chromium``; never ``playwright install``): without them the test is skipped,
and under ``CI=true`` it fails.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from referdino_plus.app import write_example_clip

pytestmark = [pytest.mark.slow, pytest.mark.browser]  # a server with the fixture models

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
# Root in a container, no GPU, no network but loopback.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
SCREENSHOT = PROJECT_ROOT / "docs" / "app.png"  # written only with UPDATE_SCREENSHOT=1
SCREENSHOT_WIDTH = 1000  # px of docs/app.png
SERVER_START_S, JOB_S = 300, 300
NUM_FRAMES, HEIGHT, WIDTH = 24, 240, 320
SENTENCES = ["the red square moving right", "the blue disc"]


def require_browser() -> None:
    """Skip without Gradio, Playwright or Chromium; under ``CI=true``, fail instead."""
    missing = [
        what
        for what, present in (
            ("gradio (pip install '.[app]')", importlib.util.find_spec("gradio")),
            ("playwright (requirements-dev.txt)", importlib.util.find_spec("playwright")),
            (f"{CHROMIUM} (apt-get install chromium)", CHROMIUM.is_file()),
        )
        if not present
    ]
    if missing:
        message = f"the browser test needs {', '.join(missing)}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_server(url: str, proc: subprocess.Popen, log: Path) -> None:
    """Until ``url`` answers 200; fails with the server's log if it exits or takes too long."""
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the app exited with {proc.returncode}:\n{log.read_text()[-5000:]}")
        with (
            contextlib.suppress(urllib.error.URLError, ConnectionError),
            urllib.request.urlopen(url, timeout=5) as response,
        ):
            if response.status == 200:
                return
        time.sleep(1)
    pytest.fail(f"the app did not answer within {SERVER_START_S} s:\n{log.read_text()[-5000:]}")


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_overrides) -> Iterator[tuple[str, subprocess.Popen]]:
    """``run_pipeline.py app --cpu`` on a free port with the tiny models: ``(url, process)``."""
    require_browser()
    tmp = tmp_path_factory.mktemp("app")
    port, log = free_port(), tmp / "server.log"
    command = [sys.executable, str(PROJECT_ROOT / "run_pipeline.py"), "app", "--cpu"]
    command += ["--port", str(port), *tiny_model_overrides, "stage1.top_k=2"]
    command += [f"app.results_dir={tmp / 'results'}"]
    with log.open("w") as output:
        proc = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for_server(url, proc, log)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server) -> Iterator[tuple[Any, list[str]]]:
    """A fresh tab on the app; requests leaving the server are refused and listed."""
    url, _ = server
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    tab = context.new_page()
    tab.set_default_timeout(30_000)
    elsewhere: list[str] = []

    def local_only(route) -> None:
        request_url = route.request.url
        if request_url.startswith((url, "data:", "blob:")):
            route.continue_()
        else:
            elsewhere.append(request_url)
            route.abort()

    tab.route("**/*", local_only)
    tab.goto(url)
    yield tab, elsewhere
    context.close()


def upload_and_type(tab, clip: Path, sentences: str) -> None:
    tab.locator("#video-input input[type=file]").set_input_files(str(clip))
    tab.locator("#video-input video").wait_for()
    tab.locator("#sentences textarea").fill(sentences)


def wait_for_overlay(tab) -> None:
    """Until the overlay video has loaded a frame (then shows the one at 1 s)."""
    tab.wait_for_function(
        "() => { const v = document.querySelector('#overlay video');"
        " return v !== null && v.readyState >= 2; }",
        timeout=JOB_S * 1000,
    )
    tab.evaluate(
        "() => new Promise(done => { const v = document.querySelector('#overlay video');"
        " v.addEventListener('seeked', done, {once: true}); v.currentTime = 1; })"
    )


# The decision table's cells as laid out: every word on one line, no text wider than its cell,
# and one line per cell outside the columns that wrap (sentence, output).
MEASURE_TABLE = """() => {
  const headers = [...document.querySelectorAll('#decisions thead th')].map(h => h.textContent);
  const cells = [...document.querySelectorAll('#decisions th, #decisions td, #decisions [role=gridcell]')]
    .filter(cell => cell.getBoundingClientRect().height > 0);
  const problems = [];
  const lines = range => new Set([...range.getClientRects()].map(r => Math.round(r.top))).size;
  for (const cell of cells) {
    const text = cell.textContent.trim();
    const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
    const whole = document.createRange();
    let first = null, last = null;
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      first = first || node; last = node;
      for (const word of node.data.matchAll(/\\S+/g)) {
        const range = document.createRange();
        range.setStart(node, word.index);
        range.setEnd(node, word.index + word[0].length);
        if (lines(range) > 1) problems.push(`"${word[0]}" breaks over ${lines(range)} lines`);
      }
    }
    if (cell.scrollWidth > cell.clientWidth + 1) problems.push(`"${text}" is wider than its cell`);
    const column = headers[cell.cellIndex];
    if (first && column !== undefined && !['sentence', 'output'].includes(column)) {
      whole.setStart(first, 0);
      whole.setEnd(last, last.data.length);
      if (lines(whole) > 1) problems.push(`"${text}" (${column}) wraps`);
    }
  }
  return {cells: cells.length, problems};
}"""


def save_screenshot(tab, tmp_path: Path) -> Path:
    """The whole page, scaled to :data:`SCREENSHOT_WIDTH` and 256 colours, in ``tmp_path`` (and
    as :data:`SCREENSHOT` with ``UPDATE_SCREENSHOT=1``)."""
    raw = tmp_path / "page.png"
    tab.screenshot(path=str(raw), full_page=True)
    with Image.open(raw) as image:
        height = round(image.height * SCREENSHOT_WIDTH / image.width)
        small = image.convert("RGB").resize((SCREENSHOT_WIDTH, height), Image.Resampling.LANCZOS)
    shot = SCREENSHOT if os.environ.get("UPDATE_SCREENSHOT") == "1" else tmp_path / "app.png"
    small.quantize(colors=256).save(shot, optimize=True)
    return shot


def test_page_segments_an_uploaded_clip(page, tmp_path):
    tab, elsewhere = page
    clip = write_example_clip(tmp_path / "shapes.mp4", num_frames=NUM_FRAMES, size=(HEIGHT, WIDTH))
    upload_and_type(tab, clip, "\n".join(SENTENCES))
    tab.locator("#run").click()
    wait_for_overlay(tab)

    table = tab.locator("#decisions").inner_text()
    assert all(sentence in table for sentence in SENTENCES), table
    layout = tab.evaluate(MEASURE_TABLE)
    assert layout["cells"] >= 7 * (len(SENTENCES) + 1), layout
    assert layout["problems"] == [], layout["problems"]
    with tab.expect_download() as download:
        tab.locator("#masks-zip a[download]").click()
    archive_path = tmp_path / "masks.zip"
    download.value.save_as(archive_path)
    names = [f"{t:05d}" for t in range(NUM_FRAMES)]
    expected = {f"{index}/{name}.png" for index in range(len(SENTENCES)) for name in names}
    with zipfile.ZipFile(archive_path) as archive:
        assert set(archive.namelist()) == expected | {"summary.json"}
        for member in sorted(expected):
            with Image.open(archive.open(member)) as image:
                assert (image.mode, image.size) == ("L", (WIDTH, HEIGHT)), member
                assert set(np.unique(np.asarray(image))) <= {0, 255}, member
    assert tab.locator("#mask-frames img").count() >= len(SENTENCES)

    shot = save_screenshot(tab, tmp_path)
    with Image.open(shot) as image:
        assert image.width == SCREENSHOT_WIDTH and image.height > 600
    assert shot.stat().st_size < 400_000
    assert elsewhere == []


def test_empty_sentence_shows_its_message_and_the_app_still_runs(page, server, tmp_path):
    tab, elsewhere = page
    _, proc = server
    clip = write_example_clip(tmp_path / "short.mp4", num_frames=4, size=(64, 96))
    upload_and_type(tab, clip, "  \n")
    tab.locator("#run").click()
    message = tab.locator(".toast-body").filter(has_text="no sentence")
    message.wait_for()
    assert "type one referring sentence per line" in message.inner_text()
    assert "Traceback" not in tab.content()
    assert proc.poll() is None

    tab.locator("#sentences textarea").fill("the red square")
    tab.locator("#run").click()
    wait_for_overlay(tab)
    assert "the red square" in tab.locator("#decisions").inner_text()
    assert elsewhere == []
