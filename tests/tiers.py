"""Test tiers, assigned by where a test lives and what it is marked with.

- ``unit``: tests/unit, minus tests marked ``integration`` or ``slow``. No subprocess, no network: the guard in
  tests/unit/conftest.py fails a unit test that starts a process or opens an internet socket, so the tier stays fast
  (`make unit`, under a minute on 2 cores).
- ``integration``: tests/integration, and any unit-folder test marked ``integration``: real peers, p2pd, processes
  on loopback (`make integration`).
- ``long``: tests/chaos, tests/browser, tests/deploy and anything marked ``slow``: minutes each (`make long`).

`make test` runs all three.
"""
from __future__ import annotations

from pathlib import Path

import pytest

TIERS = ("unit", "integration", "long")
LONG_FOLDERS = ("chaos", "browser", "deploy")
TESTS = Path(__file__).resolve().parent


def tier_of(item: pytest.Item) -> str:
    """The tier of one collected test: an explicit mark wins over its folder."""
    if item.get_closest_marker("slow") is not None:
        return "long"
    folder = Path(item.path).resolve().relative_to(TESTS).parts[0]
    if folder in LONG_FOLDERS:
        return "long"
    if item.get_closest_marker("integration") is not None or folder == "integration":
        return "integration"
    return "unit"


def mark_tiers(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(getattr(pytest.mark, tier_of(item)))
