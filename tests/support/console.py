"""The console as production runs it: `shopclip ui` in a child process (which starts Streamlit) on a free port of
127.0.0.1, stopped by its process group at exit; and a real browser, Debian's chromium driven by Playwright (no
browser download)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from support.services import service_missing

START_TIMEOUT_S = 60.0
CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_console(**options: Any) -> Iterator[str]:
    """`shopclip ui` with `options` as its flags (`prediction_log="sqlite:///..."` -> `--prediction-log ...`);
    yields its URL once Streamlit answers its health check. No SHOPCLIP_* variable of the caller reaches it, only
    these flags; its output goes to a log that a failing test prints, and the process group is stopped at exit."""
    port = free_port()
    argv = [sys.executable, "-m", "shopclip.cli", "ui", "--ui-host", "127.0.0.1", "--ui-port", str(port)]
    for name, value in options.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    log = tempfile.NamedTemporaryFile(prefix="shopclip-console-", suffix=".log", delete=False)
    env = {key: value for key, value in os.environ.items() if not key.startswith("SHOPCLIP_")}
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process, Path(log.name))
        yield url
    except BaseException:
        # pytest shows a failed test's captured stderr: the console's own log explains most browser failures.
        log.flush()
        print(f"--- shopclip ui log (pid {process.pid}) ---\n{Path(log.name).read_text()[-6000:]}", file=sys.stderr)
        raise
    finally:
        _stop(process)
        log.close()
        os.unlink(log.name)


def _wait_healthy(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"shopclip ui exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
                if answer.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"shopclip ui not healthy after {START_TIMEOUT_S:.0f} s:\n{log.read_text()[-3000:]}")


def _stop(process: subprocess.Popen) -> None:
    """The whole group: `shopclip ui` and the Streamlit process it started."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def chromium() -> str:
    found = next((path for path in CHROMIUM_PATHS if Path(path).exists()), None) or shutil.which("chromium")
    if found is None:
        service_missing("chromium not installed (Debian package `chromium`)")
    return found


@contextmanager
def browser_page(width: int = 1400, height: int = 1000) -> Iterator[Any]:
    """A Playwright page in a headless Debian chromium (as root, so without its sandbox)."""
    executable = chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(30_000)
            yield page
        finally:
            browser.close()


browser = browser_page


# Streamlit scrolls inside its main block, not the document: Playwright's full_page alone captures one viewport.
_CONTENT_HEIGHT = """() => Math.max(document.documentElement.scrollHeight,
    ...[...document.querySelectorAll('[data-testid="stMain"], [data-testid="stAppViewContainer"], '
        + '[data-testid="stMainBlockContainer"], [data-testid="stSidebarContent"]')].map(e => e.scrollHeight))"""


# What changes while Streamlit still draws a run: elements arriving, stale ones of the last run, skeletons/spinners.
_DRAWING_STATE = """() => {
    const main = document.querySelector('[data-testid="stMain"]');
    const busy = document.querySelectorAll('[data-stale="true"], [data-testid="stSkeleton"], '
        + '[data-testid="stSpinner"], [data-testid="stStatusWidget"]').length;
    const grids = [...document.querySelectorAll('[data-testid="stDataFrame"]')];
    // a grid inside a closed expander is never drawn: only visible ones must have their canvas
    const blank = grids.filter(grid => grid.checkVisibility() && grid.getBoundingClientRect().height > 0
        && !grid.querySelector('canvas')).length;
    return [main ? main.innerHTML.length : -1, main ? main.getBoundingClientRect().height : -1, busy, blank].join(':');
}"""


def settle(page: Any, quiet_ms: int = 800, timeout_ms: int = 20_000) -> None:
    """Returns once the app has stopped drawing: nothing stale, loading or half-drawn, and the main block the same
    for `quiet_ms` (a Streamlit run sends its elements over the websocket one by one, after the page has loaded)."""
    step_ms, waited, quiet, last = 100, 0, 0, None
    while waited < timeout_ms:
        state = page.evaluate(_DRAWING_STATE)
        _, _, busy, blank = state.split(":")
        if state == last and busy == "0" and blank == "0":
            quiet += step_ms
            if quiet >= quiet_ms:
                return
        else:
            quiet, last = 0, state
        page.wait_for_timeout(step_ms)
        waited += step_ms
    raise AssertionError(f"the console was still drawing after {timeout_ms} ms ({last})")


def full_page_screenshot(page: Any, path: Path, max_height: int = 12_000) -> None:
    """The whole page as a PNG: the viewport grown to the height of Streamlit's content, then restored."""
    settle(page)
    viewport = page.viewport_size
    height = min(max_height, max(viewport["height"], int(page.evaluate(_CONTENT_HEIGHT))))
    page.set_viewport_size({"width": viewport["width"], "height": height})
    try:
        settle(page, quiet_ms=400)  # Streamlit lays the taller page out again (data grids redraw)
        path.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(path), full_page=True)
    finally:
        page.set_viewport_size(viewport)
