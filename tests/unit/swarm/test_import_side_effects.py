"""Importing swarm changes nothing outside itself: no environment variable, no signal handler, no thread."""
from __future__ import annotations

import importlib
import os
import signal
import sys
import threading

import pytest

pytestmark = pytest.mark.timeout(60)


def test_import_swarm_sets_no_environment_variable_signal_handler_or_thread(monkeypatch):
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    for name in [m for m in sys.modules if m == "swarm" or m.startswith("swarm.")]:
        monkeypatch.delitem(sys.modules, name)
    environ, handlers = dict(os.environ), {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    threads = threading.active_count()
    importlib.import_module("swarm")
    assert dict(os.environ) == environ
    assert {s: signal.getsignal(s) for s in handlers} == handlers
    assert threading.active_count() == threads


def test_the_cli_asks_for_huge_pages_unless_the_user_opted_out(monkeypatch):
    from swarm.cli import prefer_huge_pages

    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    prefer_huge_pages()
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "1"
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "0")
    prefer_huge_pages()
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "0"
