"""A real browser for the review desk test: Debian's `chromium`, headless, driven over the Chrome
DevTools Protocol with a small synchronous websocket client. Nothing is downloaded: the system
chromium is used, or the test is skipped on a developer machine without it (under CI it fails)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from worker_testing import stop_process

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str | None:
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


def require_chromium() -> str:
    """The browser's path; skip without one, except under CI (.ci/run installs Debian's chromium)."""
    found = chromium_path()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing; .ci/run installs it (apt-get install chromium)")
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    return found


class Page:
    """One browser tab: navigate, evaluate JavaScript, wait, screenshot; records every request made."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self.next_id = 0
        self.requests: list[str] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("method") == "Network.requestWillBeSent":
                self.requests.append(message["params"]["request"]["url"])
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait(self, expression: str, timeout_s: float = 30) -> Any:
        """Until `expression` is truthy in a fully loaded page; returns its value."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(RuntimeError):
                if self.evaluate("document.readyState") == "complete" and (value := self.evaluate(expression)):
                    return value
            time.sleep(0.1)
        shown = self.evaluate("location.href + ': ' + (document.body ? document.body.innerText.slice(0, 400) : '')")
        raise AssertionError(f"timed out waiting for {expression!r} at {shown}")

    def goto(self, url: str) -> None:
        """Navigate (redirects followed); the caller waits for what it expects to see."""
        self._navigates(lambda: self.call("Page.navigate", url=url), url)

    def click(self, selector: str) -> None:
        """Click and let the navigation it starts begin (the caller waits for its result)."""
        self._navigates(lambda: self.evaluate(f"document.querySelector({json.dumps(selector)}).click()"), selector)

    def _navigates(self, action: Callable[[], object], what: str) -> None:
        self.evaluate("window.__before = true")
        action()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the old document is gone once its marker is
            with contextlib.suppress(RuntimeError):
                if self.evaluate("window.__before === true") is not True:
                    return
            time.sleep(0.05)
        raise AssertionError(f"{what}: no navigation")

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))


@contextlib.contextmanager
def browser(profile: Path) -> Iterator[Page]:
    """Headless chromium with a fresh profile; yields its first tab, Network and Page domains enabled."""
    argv = [
        require_chromium(), "--headless", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions",
        "--remote-debugging-port=0", f"--user-data-dir={profile}",
        # CI containers run as root or without the user namespaces chromium's sandbox needs; the pages
        # are this test's own server on 127.0.0.1.
        "--no-sandbox", "about:blank",
    ]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=(profile.parent / "chromium.log").open("wb"))
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            if time.monotonic() > deadline or process.poll() is not None:
                raise AssertionError(f"chromium did not start (see {profile.parent / 'chromium.log'})")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        tabs = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        url = next(tab["webSocketDebuggerUrl"] for tab in tabs if tab["type"] == "page")
        with connect(url, max_size=None, open_timeout=30) as socket:
            page = Page(socket)
            page.call("Page.enable")
            page.call("Network.enable")
            page.call("Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1, mobile=False)
            yield page
    finally:
        stop_process(process)
