"""Headless Chromium for browser tests, driven over the DevTools protocol with aiohttp's websocket client.

    browser = Chromium.find()                   # None when no chromium is installed (skip the test then)
    with Chromium(url) as page:
        page.wait_for("document.querySelectorAll('tr.peer-row').length >= 3", timeout=60)
        page.screenshot(Path("tests/artifacts/dashboard.png"))

The browser runs in a session of its own with a throw-away profile, no network services
(`--disable-background-networking --disable-component-update --disable-sync`), and is killed with
its whole process group on close.
"""
from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class Chromium:
    def __init__(self, url: str, *, width: int = 1280, height: int = 900, log: Path | None = None, timeout: float = 60):
        binary = self.find()
        if binary is None:
            raise RuntimeError("no chromium binary on PATH")
        self.width, self.height = width, height
        self.profile = tempfile.mkdtemp(prefix="swarm-chromium-")
        self._log = open(log, "w") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check", "--hide-scrollbars",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", f"--user-data-dir={self.profile}",
             f"--window-size={width},{height}", url],
            stdout=self._log, stderr=self._log, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        self._ids = itertools.count(1)
        self.loop = asyncio.new_event_loop()
        try:
            port = self._devtools_port(timeout)
            ws_url = self._page_ws(port, timeout)
            self.session = self.loop.run_until_complete(self._open_session())
            self.ws = self.loop.run_until_complete(self.session.ws_connect(ws_url, max_msg_size=0, timeout=timeout))
        except BaseException:
            self.close()
            raise

    @staticmethod
    def find() -> str | None:
        for name in CANDIDATES:
            path = shutil.which(name)
            if path:
                return path
        return None

    async def _open_session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession()

    def _devtools_port(self, timeout: float) -> int:
        marker = Path(self.profile) / "DevToolsActivePort"
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if marker.exists():
                first = marker.read_text().splitlines()[:1]
                if first and first[0].isdigit():
                    return int(first[0])
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode}")
            time.sleep(0.1)
        raise TimeoutError("chromium did not open its DevTools port")

    def _page_ws(self, port: int, timeout: float) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                pages = [t for t in json.loads(r.read()) if t.get("type") == "page"]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
            time.sleep(0.2)
        raise TimeoutError("chromium opened no page")

    # -- the protocol ------------------------------------------------------------------------------------

    async def _call(self, method: str, params: dict | None, timeout: float) -> dict:
        msg_id = next(self._ids)
        await self.ws.send_str(json.dumps({"id": msg_id, "method": method, "params": params or {}}))
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.ws.receive()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    raise ConnectionError(f"devtools connection closed ({msg.type})")
                data = json.loads(msg.data)
                if data.get("id") == msg_id:
                    if "error" in data:
                        raise RuntimeError(f"{method}: {data['error']}")
                    return data.get("result", {})

    def call(self, method: str, params: dict | None = None, timeout: float = 30) -> dict:
        return self.loop.run_until_complete(self._call(method, params, timeout))

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails'].get('text')}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float, interval: float = 0.5) -> Any:
        """Poll a JS expression until it is truthy; returns its value (TimeoutError otherwise)."""
        end = time.monotonic() + timeout
        value: Any = None
        while time.monotonic() < end:
            try:
                value = self.evaluate(expression)
            except RuntimeError as e:   # the page is still loading (an element is not there yet)
                value = e
            if value and not isinstance(value, Exception):
                return value
            time.sleep(interval)
        raise TimeoutError(f"{expression} stayed {value!r} for {timeout:.0f}s")

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        height = self.height
        if full_page:
            height = max(self.height, int(self.evaluate("document.documentElement.scrollHeight") or self.height))
            self.call("Emulation.setDeviceMetricsOverride", {"width": self.width, "height": height, "deviceScaleFactor": 1, "mobile": False})
            time.sleep(0.5)   # let the charts redraw at the new size
        data = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": full_page}, timeout=60)["data"]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    # -- lifecycle ---------------------------------------------------------------------------------------

    def close(self) -> None:
        try:
            if getattr(self, "ws", None) is not None:
                self.loop.run_until_complete(self.ws.close())
            if getattr(self, "session", None) is not None:
                self.loop.run_until_complete(self.session.close())
        except Exception:
            pass
        finally:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
            self.loop.close()
            if self._log is not subprocess.DEVNULL:
                self._log.close()
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
