"""Two DHT nodes that dropped each other stay partitioned until the coordinator pings the other back."""
from __future__ import annotations

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
             if line.split(" ", 1)[0] in ("before", "partitioned", "pinged", "after")}
    assert lines == {"before": "[1]", "partitioned": "[]", "pinged": "1", "after": "[3]"}, proc.text()[-3000:]
