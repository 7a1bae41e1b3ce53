"""Issue 13 item 9: the HTTP server closes half-sent requests and logs a malformed one in one line."""
from __future__ import annotations

import asyncio
import logging
import time

import pytest
from aiohttp import web

from coordinator import server

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]  # a real HTTP server on loopback


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def serve(monkeypatch, idle: float):
    monkeypatch.setattr(server, "IDLE_CONNECTION_TIMEOUT", idle)
    app = web.Application()
    app.router.add_get("/healthz", healthz)
    return await server.start_server(app, "127.0.0.1", 0)


def test_a_connection_stuck_in_its_headers_is_closed(monkeypatch):
    async def main():
        runner, port = await serve(monkeypatch, idle=0.5)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")   # never the blank line that ends the headers
            await writer.drain()
            started = time.monotonic()
            data = await asyncio.wait_for(reader.read(), 10)   # before: open for aiohttp's default hour
            writer.close()
            return data, time.monotonic() - started
        finally:
            await runner.cleanup()
    data, took = asyncio.run(main())
    assert data == b"" and took < 5


def test_a_malformed_request_is_one_log_line(monkeypatch, caplog):
    async def main():
        runner, port = await serve(monkeypatch, idle=5)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\x00: y\r\n\r\n")
            await writer.drain()
            reply = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            return reply
        finally:
            await runner.cleanup()
    with caplog.at_level(logging.DEBUG, logger="coordinator.http"):
        reply = asyncio.run(main())
    assert b" 400 " in reply.split(b"\r\n", 1)[0]
    lines = [r for r in caplog.records if r.name == "coordinator.http"]
    assert lines and all(r.exc_info is None and r.levelno == logging.WARNING for r in lines)
    assert "Traceback" not in caplog.text
