"""The coordinator's HTTP server (aiohttp): JSON API, Prometheus exposition and the live dashboard.

    GET /                       the dashboard (static HTML + JS that polls /api/status and /api/history)
    GET /api/status             run, epoch, samples/s, loss, peers, rounds, checkpoints, leaderboard
    GET /api/history?metric=loss[&since=UNIX_TIME][&points=N]     [[time, value], ...]
                                metric: loss, samples_per_second, epoch, peers
    GET /api/config             the run's config as YAML (what `swarm join --config` takes)
    GET /metrics                Prometheus text format (the coordinator's own CollectorRegistry)
    GET /healthz                200 "ok" while the coordinator runs (503 while it is starting)

Where it runs, and why: on the coordinator's main asyncio loop, in the main thread, next to the
tracker and checkpointer coroutines; the DHT node lives on the Observer's engine loop, in its own
thread (hivemind's P2P objects are bound to the loop that created them). Handlers never await the
DHT: they read the tracker's latest figures (in memory) and the SQLite history (a local file,
sub-millisecond queries), so a slow DHT read or a state download being hashed on the engine loop
never stalls the dashboard, and the engine loop never waits for a browser.
"""
from __future__ import annotations

import errno
import logging
import math
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from swarm.errors import ConfigError

from .history import History
from .metrics import CoordinatorMetrics

logger = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
NO_CACHE = {"Cache-Control": "no-store"}


def _finite(value: Any) -> Any:
    """JSON has no NaN/Infinity: replace them with null, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


class Served(Protocol):
    """What the HTTP API reads of the coordinator (coordinator.service.Coordinator), so that it imports nothing above it."""

    ready: bool
    history: History
    metrics: CoordinatorMetrics

    def status(self) -> dict[str, Any]: ...

    def config_yaml(self) -> str: ...


def make_app(coordinator: Served) -> web.Application:
    app = web.Application()

    async def status(request: web.Request) -> web.Response:
        return web.json_response(_finite(coordinator.status()), headers=NO_CACHE)

    async def history(request: web.Request) -> web.Response:
        metric = request.query.get("metric", "loss")
        try:
            since = float(request.query.get("since", 0))
            points = min(max(int(request.query.get("points", 500)), 1), 5000)
        except ValueError:
            raise web.HTTPBadRequest(text="since must be a number and points an integer") from None
        try:
            series = coordinator.history.series(metric, since=since, points=points)
        except ValueError as e:
            raise web.HTTPBadRequest(text=str(e)) from None
        return web.json_response(_finite({"metric": metric, "points": [[t, v] for t, v in series]}), headers=NO_CACHE)

    async def config(request: web.Request) -> web.Response:
        return web.Response(text=coordinator.config_yaml(), content_type="application/yaml", headers=NO_CACHE)

    async def metrics(request: web.Request) -> web.Response:
        body = coordinator.metrics.render()
        return web.Response(body=body, headers={"Content-Type": coordinator.metrics.content_type, **NO_CACHE})

    async def healthz(request: web.Request) -> web.Response:
        if not coordinator.ready:
            return web.Response(status=503, text="starting\n")
        return web.Response(text="ok\n")

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html", headers=NO_CACHE)

    app.router.add_get("/", index)
    app.router.add_get("/api/status", status)
    app.router.add_get("/api/history", history)
    app.router.add_get("/api/config", config)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_static("/static/", STATIC, show_index=False)
    return app


IDLE_CONNECTION_TIMEOUT = 15.0   # seconds a connection may sit idle or in the middle of its headers


class _OneLineBadRequests(logging.Filter):
    """A malformed request from the network is one warning line, not a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = f"{record.getMessage()}: {type(exc).__name__}: {exc.message or exc}"
            record.args, record.exc_info, record.exc_text = (), None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


http_logger = logging.getLogger("coordinator.http")
http_logger.addFilter(_OneLineBadRequests())


async def start_server(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Bind and start; returns the runner and the bound port. A port in use is one clear ConfigError.

    A connection that sends nothing, or stops in the middle of its headers, is closed after
    IDLE_CONNECTION_TIMEOUT (aiohttp's own default is an hour)."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=IDLE_CONNECTION_TIMEOUT,
                           logger=http_logger)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as e:
        await runner.cleanup()
        if e.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} on {host} is already in use: pass another --port (or --port 0 for a free one)") from None
        if e.errno in (errno.EADDRNOTAVAIL, errno.EACCES):
            raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}") from None
        raise ConfigError(f"cannot start the HTTP server on {host}:{port}: {e.strerror or e}") from None
    addresses = runner.addresses
    return runner, int(addresses[0][1]) if addresses else port
