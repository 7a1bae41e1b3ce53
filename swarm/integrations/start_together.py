"""`wait_for_peers(collab, n)`: hold a training loop until n training peers are in the swarm's view.

A run's first peer would otherwise take every global step alone (and reach any epoch limit) before
the others have started; examples and benchmarks that start several peers at once begin together.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from swarm.errors import NetworkError

if TYPE_CHECKING:
    from swarm.collaboration import Collaboration

__all__ = ["wait_for_peers"]


def wait_for_peers(collab: "Collaboration", count: int, timeout: float = 300.0, poll: float = 0.5) -> int:
    """Block until `count` peers (this one included) publish training progress; NetworkError after `timeout` s."""
    end = time.monotonic() + timeout
    while True:
        seen = sum(1 for p in collab.tracker.view.peers if p.training and not p.leaving)
        if seen >= count:
            return seen
        if time.monotonic() > end:
            raise NetworkError(f"only {seen} of {count} peers joined run {collab.run_id} in {timeout:.0f} s")
        collab.tracker.poke()
        time.sleep(poll)
