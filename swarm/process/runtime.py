"""The engine's event loop: one uvloop running in a daemon thread of the trainer process.

The training loop (main thread) calls into it with `run(coro, timeout)`; every
network object (P2P, DHT node, handlers) lives on this loop. Nothing starts on import:
`EngineLoop.start()` is explicit, and `stop()` cancels what is left and joins the thread.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from typing import Any, Awaitable, Coroutine, TypeVar

import uvloop

from swarm.errors import NetworkError

logger = logging.getLogger(__name__)
T = TypeVar("T")


class EngineLoop:
    def __init__(self, name: str = "swarm-engine"):
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._inflight: set[concurrent.futures.Future] = set()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "EngineLoop.start() first"
        return self._loop

    def start(self) -> "EngineLoop":
        if self._thread is not None:
            return self

        def _main() -> None:
            loop = uvloop.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            self._ready.set()
            try:
                loop.run_forever()
            finally:
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.close()

        self._thread = threading.Thread(target=_main, name=self._name, daemon=True)
        self._thread.start()
        self._ready.wait()
        return self

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        self._inflight.add(future)
        future.add_done_callback(self._inflight.discard)
        return future

    def cancel_all(self) -> None:
        """Cancel every call in flight (Ctrl-C during a round): their callers get CancelledError."""
        for future in list(self._inflight):
            future.cancel()

    def run(self, coro: Awaitable[T], timeout: float | None = None) -> T:
        """Run a coroutine on the engine loop and wait for it (from another thread)."""
        future = self.submit(coro)  # type: ignore[arg-type]
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise NetworkError(f"engine call did not finish in {timeout:.1f}s") from None

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread is None or self._loop is None:
            return
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("engine loop did not stop within %.1fs", timeout)
        self._thread = None
