"""Fixtures that start real peers on loopback and always clean them up."""
from __future__ import annotations

import pytest

from tests.helpers.procs import PeerProcess
from tests.tiers import mark_tiers


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mark_tiers(items)


@pytest.fixture
def peers(tmp_path):
    """A factory for toy peers: `peers(out_name, *args)`; every process is stopped after the test."""
    started: list[PeerProcess] = []

    def start(name: str, *args: str) -> PeerProcess:
        p = PeerProcess.toy(tmp_path / f"{name}.jsonl", *args, log=tmp_path / f"{name}.log")
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()
