"""Process lifecycle: no child of a peer outlives it, not even when the peer is SIGKILLed.

The problem. A peer creates a ``hivemind.DHT``, which is a ``ForkProcess`` child; that child starts hivemind's
``p2pd`` Go daemon (a grandchild of the peer, spawned by the DHT process through asyncio). When the peer dies
cleanly, ``multiprocessing``'s atexit hook and ``DHT.shutdown()`` take both down. When it is SIGKILLed (OOM killer,
chaos tests, a CI timeout), nothing runs in the peer: the DHT child is reparented to init and sits forever in its
loop, and so does p2pd under it. Both keep the peer's stdout/stderr open, so a CI job that reads them never sees EOF.

The mechanism. :class:`Reaper` starts a *watchdog*, a separate tiny Python process (``swarm/process/_reaper_main.py``, run
by path with ``python -I -S`` so it imports only the standard library, never ``swarm``, torch or hivemind):

* It reads a pipe from the owner on its stdin. Only the owner holds the write end (it is close-on-exec, and an
  ``os.register_at_fork`` hook closes it in forked children such as the DHT process), so the pipe reaches EOF the
  moment the owner dies, however it dies: the kernel closes a dead process's descriptors, SIGKILL included.
* Every ``0.2`` s it scans /proc once, and remembers every descendant of the owner (parent chain from field 4 of
  ``/proc/PID/stat``) as ``(pid, starttime)`` (field 22), itself excluded. Remembered processes stay remembered
  after they are reparented to init, which is exactly what happens to them when the owner dies. It also polls the
  owner itself (same start time, not a zombie), in case some other process still holds the pipe.
* On EOF, on ``reap`` from :meth:`Reaper.close`, or when the owner is gone, it SIGTERMs every remembered process
  that is still alive with the same start time (a recycled pid is never signalled; signals go through a pidfd after
  checking), and all their current descendants; after ``1`` s it SIGKILLs the survivors; then it exits.
* It runs in a session of its own (a Ctrl-C to the terminal's foreground group, or a hang-up, does not end it
  before the processes it guards) and it holds no output: stdout and stderr are /dev/null, so a watchdog that
  outlived everything would still not keep a test runner's or CI's pipe open.

Guarantees. Within about ``1 + 0.2`` s of the owner's death (the pipe's EOF wakes the watchdog at once; well under 5 s
even on a loaded 2-core CI box),
every process that was a descendant of the owner at the last scan before its death, and every process below those
at the time of the reaping, has received SIGTERM and, if it ignored it, SIGKILL. The watchdog then exits too.
Cost: one pass over /proc every second (a few hundred small reads: 0.1-0.4% of a core), a ~10 MiB process.

Limits. A process started *and* orphaned within the last scan interval before the owner's death (the owner spawns
it, then is killed less than a second later) was never seen and survives; register such a child with
:meth:`Reaper.track` right after spawning it, or nudge the watchdog with :meth:`Reaper.scan` (done automatically
after every ``os.fork()`` of the owner, so multiprocessing children are seen at once). If the watchdog itself is
SIGKILLed, nothing is reaped: pair it with :func:`set_parent_death_signal` in children you start yourself. An owner
that ``exec``s closes the pipe (it is close-on-exec), which reads as its death. Linux only (it needs /proc);
elsewhere :meth:`Reaper.start` logs and does nothing.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from swarm.process import _reaper_main as _watchdog

logger = logging.getLogger(__name__)

WATCHDOG_SCRIPT = Path(_watchdog.__file__).resolve()
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>

__all__ = ["Reaper", "descendants", "pids_alive", "set_parent_death_signal", "WATCHDOG_SCRIPT"]


def set_parent_death_signal(sig: int = signal.SIGKILL, *, expected_parent: int | None = None) -> None:
    """Ask the kernel to send ``sig`` to the calling process when its parent dies (Linux ``PR_SET_PDEATHSIG``).

    Call it in a child, first thing (or from ``preexec_fn``). Caveats, all from the kernel:

    * It fires when the *thread* that forked this process exits, not when the parent process does: a child
      spawned from a short-lived worker thread gets the signal as soon as that thread ends, while its parent runs
      on. Spawn such children from a long-lived thread (the main thread, or the thread that owns them).
    * If the parent died before the call, nothing will ever fire; pass ``expected_parent`` (the parent's pid, known
      before the fork) and the call sends ``sig`` to the caller at once when its parent is no longer that pid.
    * It is cleared in the child of a fork, and kept across ``execve`` (except for set-user-ID programs).

    Elsewhere than Linux this does nothing (and logs at debug level).
    """
    if not sys.platform.startswith("linux"):
        logger.debug("set_parent_death_signal: not on Linux (%s), doing nothing", sys.platform)
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(int(sig)), 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_PDEATHSIG, {int(sig)}): {os.strerror(errno)}")
    if expected_parent is not None and os.getppid() != expected_parent:
        os.kill(os.getpid(), sig)


def descendants(pid: int) -> list[int]:
    """The live (non-zombie) processes below ``pid`` right now, at any depth, sorted; ``pid`` excluded.

    One pass over /proc; [] where there is no /proc. Processes that were reparented (to init or a subreaper)
    before the call are no longer below ``pid``: take this snapshot *before* killing ``pid``.
    """
    return sorted(_watchdog.descendants_in(_watchdog.scan(), [pid]))


def pids_alive(pids: Iterable[int]) -> list[int]:
    """The pids of ``pids`` that name a running process; zombies count as dead (they hold nothing, can't run)."""
    alive = []
    for pid in pids:
        info = _watchdog.read_stat(int(pid))
        if info is not None and info.state not in _watchdog.DEAD_STATES:
            alive.append(int(pid))
    return alive


_live_reapers: weakref.WeakSet[Reaper] = weakref.WeakSet()
_fork_hook_lock = threading.Lock()
_fork_hook_installed = False


def _after_fork_in_child() -> None:
    # A forked child must not hold the watchdog's pipe open, or the owner's death would not read as EOF.
    for reaper in list(_live_reapers):
        reaper._forget_after_fork()


def _after_fork_in_parent() -> None:
    for reaper in list(_live_reapers):
        reaper.scan()


def _install_fork_hooks() -> None:
    global _fork_hook_installed
    with _fork_hook_lock:
        if not _fork_hook_installed and hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_after_fork_in_child, after_in_parent=_after_fork_in_parent)
            _fork_hook_installed = True


class Reaper:
    """Makes sure every process below the current one dies with it (SIGKILL included). See the module docstring.

    Start it early in a peer's life, before the DHT::

        reaper = Reaper().start()
        dht = hivemind.DHT(start=True)
        ...
        dht.shutdown()
        reaper.close()  # reaps whatever is left below this process, and ends the watchdog

    or ``with Reaper(): ...``. ``close()`` kills *every* remaining descendant of the owner, so own a Reaper only in
    a process whose children are all meant to die with it (a peer, not a test runner shared by other tests).
    """

    def __init__(self, interval: float = _watchdog.INTERVAL, grace: float = _watchdog.GRACE) -> None:
        self.interval = interval
        self.grace = grace
        self.owner: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._wfd: int | None = None
        self._lock = threading.RLock()  # guards _proc and _wfd: a write must never hit a closed (reused) fd

    @property
    def watchdog_pid(self) -> int | None:
        """The watchdog's pid while it runs (None before start, after close, or where unsupported)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Reaper:
        """Start the watchdog for the current process; returns self. A no-op if running, or without /proc."""
        with self._lock:
            if self._proc is not None:
                return self
            if not os.path.exists(f"/proc/{os.getpid()}/stat"):
                logger.debug("Reaper: no /proc on %s, orphans will not be reaped", sys.platform)
                return self
            rfd, wfd = os.pipe()  # both close-on-exec (PEP 446); Popen dups rfd onto the watchdog's fd 0
            env = dict(os.environ)
            env["SWARM_REAPER_INTERVAL"] = repr(self.interval)
            env["SWARM_REAPER_GRACE"] = repr(self.grace)
            try:
                self._proc = subprocess.Popen(
                    [sys.executable or "python3", "-I", "-S", str(WATCHDOG_SCRIPT), str(os.getpid())],
                    stdin=rfd,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    close_fds=True,
                    start_new_session=True,
                    cwd="/",
                    env=env,
                )
            except BaseException:
                os.close(wfd)
                raise
            finally:
                os.close(rfd)
            os.set_blocking(wfd, False)  # a stuck watchdog must never block the owner (nor a fork hook)
            self._wfd = wfd
            self.owner = os.getpid()
            _install_fork_hooks()
            _live_reapers.add(self)
            logger.debug("Reaper: watchdog %d guards %d", self._proc.pid, self.owner)
            return self

    def _send(self, line: str) -> bool:
        if not self._lock.acquire(timeout=1.0):  # close() may hold it while it waits; never block a fork for long
            return False
        try:
            wfd = self._wfd
            if wfd is None or self.owner != os.getpid():
                return False
            os.write(wfd, line.encode() + b"\n")  # under PIPE_BUF: atomic; non-blocking: never stalls the owner
            return True
        except OSError:  # full pipe (BlockingIOError) or dead watchdog (BrokenPipeError)
            return False
        finally:
            self._lock.release()

    def track(self, pid: int) -> None:
        """Have the watchdog remember ``pid`` now (a child just spawned, or one that will be reparented away)."""
        self._send(f"+{int(pid)}")

    def scan(self) -> None:
        """Have the watchdog rescan /proc now rather than at its next tick (called after every ``os.fork()``)."""
        self._send("scan")

    def _forget_after_fork(self) -> None:
        # Runs in a freshly forked child, single-threaded: drop our copy of the pipe, never touch the watchdog.
        if self._wfd is not None and self.owner != os.getpid():
            try:
                os.close(self._wfd)
            except OSError:
                pass
            self._wfd = None
            self._lock = threading.RLock()  # another thread of the parent may have held it at the fork

    def close(self, timeout: float = 10.0) -> None:
        """Reap every remaining descendant now (SIGTERM, then SIGKILL after ``grace``), and wait for the watchdog.

        Idempotent. Only the process that started the Reaper acts; in a forked copy this does nothing.
        """
        with self._lock:  # hand the watchdog its orders, then wait without the lock (a fork hook may want it)
            proc, wfd = self._proc, self._wfd
            if proc is None or self.owner != os.getpid():
                return
            self._send("reap")
            self._wfd = None
            self._proc = None
            if wfd is not None:
                os.close(wfd)  # EOF, in case the "reap" line could not be written
            _live_reapers.discard(self)
        started = time.monotonic()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            logger.warning("Reaper: watchdog %d did not finish in %.1fs; killing it", proc.pid, timeout)
            proc.kill()
            proc.wait()
        logger.debug("Reaper: watchdog %d done in %.2fs", proc.pid, time.monotonic() - started)

    def __enter__(self) -> Reaper:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Reaper(owner={self.owner}, watchdog={self.watchdog_pid})"


if __name__ == "__main__":  # `python -m swarm.process.lifecycle PID` works too, but imports the swarm package first
    sys.exit(_watchdog.main())


_shared_lock = threading.Lock()
_shared: Reaper | None = None   # this process's watchdog, shared by every SharedReaper started in it
_shared_users = 0


class SharedReaper:
    """A handle on this process's one shared :class:`Reaper`, with the same ``start``/``track``/``scan``/``close``.

    The watchdog starts with the first handle started and reaps when the last one started closes. Each peer
    (``swarm.Collaboration``) owns one: a process that runs several peers (the control-plane benchmark runs 8 to a
    process) keeps one watchdog instead of one each, whose periodic scans of /proc cost O(processes on the
    machine) apiece, and closing one of its peers does not reap the other peers' p2p daemons.
    """

    def __init__(self) -> None:
        self._owner: int | None = None   # the pid that started this handle (a forked copy does nothing)

    def start(self) -> "SharedReaper":
        global _shared, _shared_users
        with _shared_lock:
            if self._owner == os.getpid():
                return self
            if _shared is None or _shared.owner not in (None, os.getpid()):   # none yet, or the parent's (we forked)
                _shared, _shared_users = Reaper(), 0
            _shared.start()
            _shared_users += 1
            self._owner = os.getpid()
        return self

    def _reaper(self) -> Reaper | None:
        return _shared if self._owner == os.getpid() else None

    def track(self, pid: int) -> None:
        reaper = self._reaper()
        if reaper is not None:
            reaper.track(pid)

    def scan(self) -> None:
        reaper = self._reaper()
        if reaper is not None:
            reaper.scan()

    def close(self, timeout: float = 10.0) -> None:
        """Release this handle; the last one released reaps every remaining descendant (Reaper.close). Idempotent."""
        global _shared, _shared_users
        with _shared_lock:
            if self._owner != os.getpid() or _shared is None:
                return
            self._owner = None
            _shared_users -= 1
            if _shared_users > 0:
                return
            reaper, _shared = _shared, None
        reaper.close(timeout)
