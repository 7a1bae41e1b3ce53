"""What `swarm join` says while it starts: one line per stage, and a progress bar for the state download.

    say = StageLog()                     # prints "[  0.0s] ..." lines to stdout, with the time since `swarm join` began
    say("reading the run's config from the DHT")
    bar = DownloadBar(say)               # on a terminal: one line redrawn in place; else a line every 2 s
    bar(received_bytes, total_bytes)     # "downloading the state: 12.3 / 45.6 MB, 5.1 MB/s, ETA 7s"

Stages go to stdout (the logs, with their timestamps and module names, go to stderr), so a volunteer
reads what the peer is doing without the engine's detail.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

REDRAW_EVERY = 0.25     # seconds between two redraws of the bar on a terminal
LINE_EVERY = 2.0        # seconds between two progress lines when stdout is a file or a pipe


def process_started() -> float:
    """When this process started, on the time.monotonic() clock (from /proc; now, where there is none)."""
    import os

    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])   # field 22: start time, in clock ticks after boot
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        age = uptime - ticks / os.sysconf("SC_CLK_TCK")
        return time.monotonic() - max(age, 0.0)
    except (OSError, ValueError, IndexError):
        return time.monotonic()


class StageLog:
    def __init__(self, out: TextIO | None = None, started: float | None = None):
        self.out = out or sys.stdout
        self.started = time.monotonic() if started is None else started

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def __call__(self, message: str, *, end: str = "\n") -> None:
        self.out.write(f"[{self.elapsed():5.1f}s] {message}{end}")
        self.out.flush()


def format_mb(n: float) -> str:
    return f"{n / 1e6:.1f}"


def download_line(received: int, total: int, seconds: float) -> str:
    rate = received / seconds if seconds > 0 else 0.0
    left = (total - received) / rate if rate > 0 and total >= received else None
    eta = "-" if left is None else f"{left:.0f}s"
    width = 24
    filled = int(width * received / total) if total > 0 else 0
    return (f"downloading the state [{'#' * filled}{'.' * (width - filled)}] {format_mb(received)} / {format_mb(total)} MB, "
            f"{rate / 1e6:.1f} MB/s, ETA {eta}")


class DownloadBar:
    """A callable `(received, total)` for swarm.averaging.state_sync's download progress; called on the engine's loop thread."""

    def __init__(self, say: StageLog, tty: bool | None = None, clock: Callable[[], float] = time.monotonic):
        self.say = say
        self.tty = say.out.isatty() if tty is None else tty
        self.clock = clock
        self.started: float | None = None
        self.shown: float | None = None

    def __call__(self, received: int, total: int) -> None:
        now = self.clock()
        if self.started is None or received == 0:   # a new download (or another donor after a failed one)
            self.started, self.shown = now, None
        done = received >= total
        if not done and self.shown is not None and now - self.shown < (REDRAW_EVERY if self.tty else LINE_EVERY):
            return
        self.shown = now
        line = download_line(received, total, now - self.started)
        if self.tty:
            self.say.out.write("\r" + line + ("\n" if done else ""))
            self.say.out.flush()
        else:
            self.say(line)
