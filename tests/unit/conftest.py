"""The unit tier's guard: a unit test may not start a process or open an internet socket.

A test that needs either is marked ``integration`` (tests/tiers.py), which moves it to `make integration`.
"""
from __future__ import annotations

import os
import socket
import subprocess

import pytest

_INTERNET = (socket.AF_INET, socket.AF_INET6)


class TierViolation(AssertionError):
    pass


def pytest_sessionstart(session: pytest.Session) -> None:
    # matplotlib builds its font cache on first import by running fc-list: a one-time set-up of the machine, not the
    # test's own work, so it happens here, before the guard (on a fresh machine the unit tier alone failed on it).
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.font_manager  # noqa: F401
    except ImportError:
        pass
    # The default corpus is cached on first use by running `bible` (peers.data.text.load_kjv): the same kind of one-time
    # set-up. Unit tests that build the ALBERT task (coordinator export) failed on a fresh machine when no earlier
    # test had made the cache (`make unit` alone, or a unit test run before any integration test).
    try:
        from peers.data.text import load_kjv
        from peers.tasks.base import TaskSettings
        load_kjv(TaskSettings().cache_dir)
    except Exception:   # no `bible` here: the tests that need it say so themselves
        pass


def _refuse(what: str):
    def refuse(*args, **kwargs):
        raise TierViolation(f"a unit test may not {what}: mark it @pytest.mark.integration (see tests/tiers.py)")

    return refuse


@pytest.fixture(autouse=True)
def _no_processes_or_network(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    if request.node.get_closest_marker("unit") is None:
        yield
        return
    real_connect, real_bind = socket.socket.connect, socket.socket.bind

    def connect(self, address):
        if self.family in _INTERNET:
            _refuse(f"connect to {address!r}")()
        return real_connect(self, address)

    def bind(self, address):
        if self.family in _INTERNET:
            _refuse(f"bind {address!r}")()
        return real_bind(self, address)

    monkeypatch.setattr(subprocess.Popen, "_execute_child", _refuse("start a process"))
    monkeypatch.setattr(os, "fork", _refuse("fork"))
    monkeypatch.setattr(os, "posix_spawn", _refuse("spawn a process"))
    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "bind", bind)
    yield
