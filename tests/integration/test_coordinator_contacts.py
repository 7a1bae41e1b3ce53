"""Two DHT nodes that dropped each other stay partitioned until the coordinator pings the other back; a node whose
routing table is empty bootstraps again once a ping answers, and says why when none does."""
from __future__ import annotations

import re
import sys

import pytest

from tests.helpers.running_swarm import Proc

pytestmark = pytest.mark.integration


@pytest.mark.timeout(120)
def test_keep_in_touch_heals_a_partition(tmp_path):
    proc = Proc([sys.executable, "-m", "tests.helpers.coordinator_partition"], tmp_path / "partition.log")
    try:
        assert proc.proc.wait(90) == 0, proc.text()[-3000:]
    finally:
        proc.stop()
    lines = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in proc.text().splitlines()
             if line.split(" ", 1)[0] in ("before", "partitioned", "pinged", "after", "rejoined", "alone", "warned", "channel")}
    warned = lines.pop("warned", "")
    # two nodes of one process share its Reaper: B's close did not reap A's p2pd (it did while each owned one)
    assert lines.pop("channel", "").startswith("unary channel: reader and writer running"), proc.text()[-3000:]
    assert lines == {"before": "[1]", "partitioned": "[]", "pinged": "1", "after": "[3]", "rejoined": "1", "alone": "0"}, \
        proc.text()[-3000:]
    # the ping's own failure is named, not swallowed as hivemind's call_ping does
    assert re.search(r"none of 1 known peers answered a ping \(1x \w", warned), proc.text()[-3000:]
