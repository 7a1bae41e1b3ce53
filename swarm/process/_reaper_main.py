"""The reaper's watchdog: a tiny stdlib-only process that kills an owner's descendants once the owner is gone.

This file is run *by path* (``python -I -S swarm/process/_reaper_main.py OWNER_PID``), never as ``-m swarm...``, so that
starting it imports neither the ``swarm`` package nor anything heavy (torch, hivemind): it must start in a few
milliseconds and cost a few MiB. It imports only the standard library and must keep doing so; ``swarm.process.lifecycle``
imports the helpers below (``scan``, ``descendants_in``, ``same_process``, ``signal_if_same``, ``terminate``) too.

Protocol, on the watchdog's stdin (a pipe whose only writer is the owner):

* ``+PID`` line: remember PID (with its current start time) as one of the owner's, even if it is not (or no longer)
  a descendant of the owner.
* ``scan`` line: rescan /proc now instead of waiting for the next tick.
* ``reap`` line, or EOF: reap now and exit. EOF comes when the owner closes the pipe or dies (SIGKILL included: the
  kernel closes a dead process's descriptors).

Besides, every ``interval`` seconds the watchdog scans /proc once: it remembers each descendant of the owner (and of
each process it remembers) as ``(pid, starttime)``, and checks that the owner is still alive (same start time, not a
zombie). When the owner is gone or the pipe says so, it sends SIGTERM to every remembered process still alive with
the same start time, and to their current descendants, waits up to ``grace`` seconds, SIGKILLs what is left, then
exits. Signals go through a pidfd when the kernel has them, after the start time was checked on that pidfd's
process, so a recycled pid is never signalled.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # importing typing at run time would cost the watchdog ~10 ms of start-up for nothing
    from collections.abc import Iterable

PROC = "/proc"
# Seconds between two scans of /proc. A scan reads every process's stat file, so its cost grows with the processes
# on the machine: 0.73% of a core at 69 processes and ~2% at 180 with 0.2 s (56 peers on one machine: a core for their
# watchdogs alone), 0.13% at 69 with 1 s. The periodic scan is a safety net: the owner nudges a scan after each fork
# and after starting a child it spawns (swarm.collaboration, after p2pd), and EOF on the pipe wakes the watchdog at
# once when the owner dies, whatever the interval.
INTERVAL = 1.0
GRACE = 1.0  # seconds between SIGTERM and SIGKILL
DEAD_STATES = frozenset("ZXx")  # zombie / dead: its descriptors are closed, it can't be killed twice


class ProcInfo:
    """The fields of /proc/PID/stat the watchdog needs."""

    __slots__ = ("ppid", "starttime", "state")

    def __init__(self, ppid: int, starttime: int, state: str) -> None:
        self.ppid = ppid  # field 4
        self.starttime = starttime  # field 22, clock ticks since boot: with the pid, it names one process for good
        self.state = state  # field 3: R, S, D, Z (zombie), X (dead), ...

    def __repr__(self) -> str:
        return f"ProcInfo(ppid={self.ppid}, starttime={self.starttime}, state={self.state!r})"


def read_stat(pid: int) -> ProcInfo | None:
    """Parse /proc/PID/stat; None if there is no such process (or it vanished while being read)."""
    try:
        fd = os.open(f"{PROC}/{pid}/stat", os.O_RDONLY)
    except OSError:
        return None
    try:
        data = os.read(fd, 1024)
    except OSError:
        return None
    finally:
        os.close(fd)
    # comm (field 2) is in parentheses and may itself hold spaces and parentheses: split after the last ')'.
    end = data.rfind(b")")
    if end < 0:
        return None
    fields = data[end + 2 :].split()
    try:
        return ProcInfo(ppid=int(fields[1]), starttime=int(fields[19]), state=fields[0].decode("ascii", "replace"))
    except (IndexError, ValueError):
        return None


def scan() -> dict[int, ProcInfo]:
    """One pass over /proc: every process (thread-group leader) on the machine, by pid."""
    table: dict[int, ProcInfo] = {}
    try:
        names = os.listdir(PROC)
    except OSError:
        return table
    for name in names:
        if name.isdigit():
            pid = int(name)
            info = read_stat(pid)
            if info is not None:
                table[pid] = info
    return table


def descendants_in(table: dict[int, ProcInfo], roots: Iterable[int]) -> set[int]:
    """Every live (non-zombie) process of ``table`` below one of ``roots``, roots excluded."""
    children: dict[int, list[int]] = {}
    for pid, info in table.items():
        children.setdefault(info.ppid, []).append(pid)
    roots = set(roots)
    found: set[int] = set()
    stack = list(roots)
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in found and child not in roots:
                found.add(child)
                stack.append(child)
    return {pid for pid in found if table[pid].state not in DEAD_STATES}


def same_process(pid: int, starttime: int) -> bool:
    """Whether ``pid`` still names the live process that had ``starttime`` (a recycled pid does not)."""
    info = read_stat(pid)
    return info is not None and info.starttime == starttime and info.state not in DEAD_STATES


def signal_if_same(pid: int, starttime: int, sig: int) -> bool:
    """Send ``sig`` to ``pid`` only if it is still the process that started at ``starttime``; True if sent.

    With pidfds (Linux 5.3+) there is no race at all: the pidfd pins one process, its start time is checked after
    the pidfd was opened, and the signal goes through the pidfd. Elsewhere a pid recycled between the check and
    kill() (a window of microseconds) could be hit.
    """
    pidfd = -1
    if hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal"):
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return False
        except OSError:
            pidfd = -1  # old kernel, or not allowed: fall back to kill()
    try:
        if not same_process(pid, starttime):
            return False
        try:
            if pidfd >= 0:
                signal.pidfd_send_signal(pidfd, sig)
            else:
                os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    finally:
        if pidfd >= 0:
            os.close(pidfd)


def terminate(
    targets: dict[int, int], grace: float = GRACE, exclude: Iterable[int] = (), poll: float = 0.02
) -> dict[int, int]:
    """SIGTERM every ``{pid: starttime}`` of ``targets`` still alive, and their descendants; SIGKILL after ``grace``.

    Descendants that appear meanwhile (a process forking while it shuts down) are added on each poll. Returns every
    process that was signalled, as ``{pid: starttime}``. Zombies count as gone: they hold no descriptor and their
    parent (or init) reaps them.
    """
    exclude = set(exclude) | {os.getpid()}
    victims: dict[int, int] = {}

    def collect() -> None:
        table = scan()
        alive = {pid for pid, start in targets.items() if (info := table.get(pid)) and info.starttime == start}
        alive |= {pid for pid, start in victims.items() if (info := table.get(pid)) and info.starttime == start}
        for pid in alive | descendants_in(table, alive):
            info = table.get(pid)
            if pid not in exclude and info is not None and info.state not in DEAD_STATES:
                victims.setdefault(pid, info.starttime)

    def survivors() -> list[int]:
        return [pid for pid, start in victims.items() if same_process(pid, start)]

    collect()
    signalled: set[int] = set()
    deadline = time.monotonic() + grace
    while True:
        for pid, start in list(victims.items()):
            if pid not in signalled and signal_if_same(pid, start, signal.SIGTERM):
                signalled.add(pid)
        if not survivors() or time.monotonic() >= deadline:
            break
        time.sleep(poll)
        collect()
    for _ in range(50):  # SIGKILL can't be ignored; the loop only catches processes born in the meantime
        collect()
        left = survivors()
        if not left:
            break
        for pid in left:
            signal_if_same(pid, victims[pid], signal.SIGKILL)
        time.sleep(poll)
    return victims


class Watchdog:
    """The watchdog's state: the owner, and every process it has seen below the owner."""

    def __init__(self, owner: int, interval: float = INTERVAL, grace: float = GRACE) -> None:
        self.owner = owner
        self.interval = interval
        self.grace = grace
        self.me = os.getpid()
        info = read_stat(owner)
        self.owner_start: int | None = None if info is None or info.state in DEAD_STATES else info.starttime
        self.remembered: dict[int, int] = {}  # pid -> starttime

    def owner_alive(self, table: dict[int, ProcInfo] | None = None) -> bool:
        if self.owner_start is None:
            return False
        info = table.get(self.owner) if table is not None else read_stat(self.owner)
        return info is not None and info.starttime == self.owner_start and info.state not in DEAD_STATES

    def track(self, pid: int) -> None:
        info = read_stat(pid)
        if info is not None and info.state not in DEAD_STATES and pid != self.me:
            self.remembered[pid] = info.starttime

    def scan(self) -> bool:
        """Remember the owner's current descendants, forget the dead; False once the owner is gone."""
        table = scan()
        # Forget processes that died (their pid may be recycled by anyone); keep orphans that were reparented.
        self.remembered = {
            pid: start
            for pid, start in self.remembered.items()
            if (info := table.get(pid)) is not None and info.starttime == start and info.state not in DEAD_STATES
        }
        alive = self.owner_alive(table)
        roots = set(self.remembered) | ({self.owner} if alive else set())
        for pid in descendants_in(table, roots):
            if pid != self.me:
                self.remembered.setdefault(pid, table[pid].starttime)
        return alive

    def reap(self) -> dict[int, int]:
        """Kill every remembered process (and the owner's current descendants, if the owner still lives)."""
        self.scan()
        return terminate(self.remembered, grace=self.grace, exclude={self.owner, self.me})

    def run(self, fd: int = 0) -> str:
        """Watch until the owner is gone or says so on ``fd``; reap; return why."""
        buffer = b""
        reason = ""
        next_scan = 0.0
        while not reason:
            now = time.monotonic()
            if now >= next_scan:
                if not self.scan():
                    reason = "owner gone"
                    break
                next_scan = time.monotonic() + self.interval
            try:
                ready, _, _ = select.select([fd], [], [], max(0.0, next_scan - time.monotonic()))
            except InterruptedError:
                continue
            if not ready:
                continue
            try:
                data = os.read(fd, 4096)
            except OSError:
                data = b""
            if not data:
                reason = "eof"
                break
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                line = line.strip()
                if line == b"reap":
                    reason = "asked"
                elif line == b"scan":
                    next_scan = 0.0
                elif line.startswith(b"+") and line[1:].isdigit():
                    self.track(int(line[1:]))
        self.reap()
        return reason


def _log(message: str) -> None:
    path = os.environ.get("SWARM_REAPER_LOG")
    if path:
        try:
            with open(path, "a") as f:
                f.write(f"{time.time():.3f} reaper[{os.getpid()}] {message}\n")
        except OSError:
            pass


def _env_float(name: str, default: float) -> float:
    try:
        return max(0.01, float(os.environ.get(name, default)))
    except ValueError:
        return default


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: _reaper_main.py OWNER_PID  (reads commands on stdin; see the module docstring)", file=sys.stderr)
        return 2
    owner = int(argv[0])
    # Never hold anybody's output open: a leaked writer keeps a CI log (or a test runner's pipe) from closing.
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    # A terminal's Ctrl-C or hang-up must not take the watchdog down before the processes it watches.
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    started = time.monotonic()
    interval = _env_float("SWARM_REAPER_INTERVAL", INTERVAL)
    dog = Watchdog(owner, interval=interval, grace=_env_float("SWARM_REAPER_GRACE", GRACE))
    _log(f"watching {owner}")
    reason = dog.run(0)
    _log(f"reaped ({reason}) {sorted(dog.remembered)} after {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
