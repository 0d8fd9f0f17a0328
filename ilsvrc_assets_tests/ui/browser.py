"""Headless Chromium driven over the DevTools protocol, with nothing but the standard library.

Chromium's ``--remote-debugging-pipe`` speaks the protocol over two inherited file descriptors
(it reads commands from fd 3 and writes replies and events to fd 4, each message JSON ending in a
NUL byte), so no WebSocket client and no chromedriver are needed.
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
from pathlib import Path
from typing import Any, Self

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class BrowserError(RuntimeError):
    """Chromium failed, went away, or answered a command with an error."""


def find_chromium() -> str | None:
    """The first Chromium-like browser on PATH ($CHROMIUM overrides), or None."""
    if override := os.environ.get("CHROMIUM"):
        return shutil.which(override) or None
    return next((found for name in CANDIDATES if (found := shutil.which(name))), None)


class Chromium:
    """One headless browser with one page; a context manager that always ends the browser.

    ``width`` and ``height`` are the page's viewport in CSS pixels; ``scale`` is the device pixel
    ratio (2 makes screenshots sharp when a README scales them down).
    """

    def __init__(self, binary: str, width: int = 1600, height: int = 1000, scale: float = 1) -> None:
        self.binary = binary
        self.viewport = {"width": width, "height": height, "deviceScaleFactor": scale, "mobile": False}
        self._next_id = 0
        self._buffer = b""
        self._session: str | None = None

    def __enter__(self) -> Self:
        self._workdir = tempfile.TemporaryDirectory(prefix="chromium-")
        self._stderr = Path(self._workdir.name) / "stderr.log"
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def give_pipes_to_child() -> None:  # the protocol's fixed descriptors: 3 in, 4 out
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)
            os.set_inheritable(3, True)  # dup2 onto itself would keep close-on-exec
            os.set_inheritable(4, True)

        with self._stderr.open("wb") as stderr:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    "--headless",
                    "--remote-debugging-pipe",
                    f"--user-data-dir={Path(self._workdir.name) / 'profile'}",
                    "--no-sandbox",  # root in CI containers; the page is our own server on loopback
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--hide-scrollbars",
                    "--mute-audio",
                    "about:blank",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                preexec_fn=give_pipes_to_child,  # noqa: PLW1509 (only dup2 between fork and exec)
                close_fds=False,  # keep 3 and 4; every other descriptor of ours is close-on-exec
                start_new_session=True,  # its helper processes share a group we can end as one
            )
        os.close(to_browser_r)
        os.close(from_browser_w)
        try:
            target = self.command("Target.createTarget", url="about:blank")["targetId"]
            self._session = self.command("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            self.command("Emulation.setDeviceMetricsOverride", **self.viewport)
            self.command("Page.enable")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self.process.poll() is None:
                self._session = None
                self.command("Browser.close", timeout=10)
                self.process.wait(timeout=10)
        except (BrowserError, OSError, subprocess.TimeoutExpired):
            pass
        finally:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)  # renderers, GPU and zygote helpers
            except ProcessLookupError:
                pass
            self.process.wait()
            for fd in (self._to_browser, self._from_browser):
                os.close(fd)
            self._workdir.cleanup()

    def command(self, method: str, timeout: float = 60, **params: Any) -> dict[str, Any]:
        """Send one protocol command (to the page once attached) and return its result."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if self._session is not None:
            message["sessionId"] = self._session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline, method)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message', reply['error'])}")
                return reply.get("result", {})

    def _read_message(self, deadline: float, waiting_for: str) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"{self.binary} did not answer {waiting_for} in time")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:  # the browser closed its end: it has exited or is exiting
                    try:
                        self.process.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        pass
                    log = self._stderr.read_text(errors="replace").strip().splitlines()[-20:]
                    raise BrowserError(
                        f"{self.binary} exited (status {self.process.returncode}) during {waiting_for}"
                        + "".join(f"\n  {line}" for line in log)
                    )
                self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def open(self, url: str, timeout: float = 30) -> None:
        """Navigate the page to ``url`` and wait until it has loaded."""
        result = self.command("Page.navigate", url=url)
        if result.get("errorText"):
            raise BrowserError(f"{url}: {result['errorText']}")
        deadline = time.monotonic() + timeout
        while self.evaluate("document.readyState") != "complete":
            if time.monotonic() > deadline:
                raise BrowserError(f"{url} did not finish loading in {timeout:.0f} s")
            time.sleep(0.1)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = self.command(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def text(self) -> str:
        """What the page shows: its body's rendered text (empty before the body exists)."""
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def wait_for_text(self, wanted: list[str], timeout: float) -> str:
        """Poll the rendered text until it contains every string of ``wanted``; return it.

        Raises AssertionError naming what never appeared (with the page's text) after ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            missing = [item for item in wanted if item not in text]
            if not missing:
                return text
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"not on the page after {timeout:.0f} s: {missing}\n--- page text ---\n{text}"
                )
            time.sleep(0.5)

    def screenshot(self, path: Path, clip: dict[str, float] | None = None) -> None:
        """Write what the viewport shows (or its ``clip``: x, y, width, height) to ``path`` as PNG."""
        params: dict[str, Any] = {"format": "png"}
        if clip is not None:
            params["clip"] = {**clip, "scale": 1}
        data = self.command("Page.captureScreenshot", **params)["data"]
        path.write_bytes(base64.b64decode(data))
