"""Fixtures that start real peers on loopback and always clean them up."""
from __future__ import annotations

import pytest

from tests.helpers.procs import PeerProcess
from tests.tiers import mark_tiers


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mark_tiers(items)


_RERUNS: list[pytest.TestReport] = []   # first failures of tests that were run again (pytest-rerunfailures, make test)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.outcome == "rerun":
        _RERUNS.append(report)


def pytest_terminal_summary(terminalreporter) -> None:
    """Print how each rerun test failed the first time: a rerun that then passed is a flake to fix, not a pass to
    forget, and CI's log is where the next engineer reads it."""
    for report in _RERUNS:
        terminalreporter.write_sep("-", f"first failure of {report.nodeid} (run again)")
        terminalreporter.write_line(str(report.longrepr)[-4000:])
        for name, content in report.sections:
            if "stderr" in name or "log" in name:
                terminalreporter.write_line(f"[{name}] " + content[-1500:])


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
