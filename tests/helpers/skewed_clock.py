"""Run a toy peer whose wall clock is off: `python -m tests.helpers.skewed_clock SECONDS TOY_ARGS...`.

An honest emulation of a host whose clock is wrong: `time.time` runs SECONDS ahead (negative: behind)
for the whole process, and it is replaced before hivemind or swarm is imported (hivemind binds its
`get_dht_time` to `time.time` at import). Monotonic clocks, like a real host's, are untouched.
"""
from __future__ import annotations

import runpy
import sys
import time


def main() -> None:
    offset = float(sys.argv[1])
    real = time.time
    time.time = lambda: real() + offset
    sys.argv = [sys.argv[0], *sys.argv[2:]]
    runpy.run_module("tests.helpers.toy_peer", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
