"""swarm.process.lifecycle: every process below a peer dies within 5 s of the peer, SIGKILL included.

Each test runs its "owner" (the process that would be a peer) as a separate Python process, never the test runner
itself: a Reaper kills every descendant of its owner, and the runner's descendants are other tests' business. Every
test kills what it started, by pid (checked against its start time), whatever happens.
"""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from swarm.process import _reaper_main as watchdog
from swarm.process.lifecycle import WATCHDOG_SCRIPT, descendants, pids_alive, set_parent_death_signal

REPO = Path(__file__).resolve().parents[3]
DEADLINE = 5.0  # the requirement: every descendant gone within 5 s of the owner's death

pytestmark = [
    pytest.mark.integration,  # every test here runs real processes
    pytest.mark.timeout(60),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")]


class Owner:
    """A Python process running ``script``, whose stdout lines are JSON records read with a timeout."""

    def __init__(self, script: str, tmp_path: Path, *args: str, stdin: int | None = subprocess.DEVNULL) -> None:
        self.log = tmp_path / f"owner-{time.monotonic_ns()}.log"
        self.reaper_log = tmp_path / f"reaper-{time.monotonic_ns()}.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env["SWARM_REAPER_LOG"] = str(self.reaper_log)
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", textwrap.dedent(script), *args],
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
                cwd=str(REPO),
            )
        self.pid = self.proc.pid
        self._lines: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)

    def read(self, timeout: float = 30.0) -> Any:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"owner printed nothing in {timeout}s; its log:\n{self.tail()}") from None
        return json.loads(line)

    def tail(self) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        if self.reaper_log.exists():
            text += "\n--- reaper log ---\n" + self.reaper_log.read_text(errors="replace")
        return text[-4000:]

    def reaper_said(self) -> str:
        return self.reaper_log.read_text() if self.reaper_log.exists() else ""


class Cleanup:
    """Remembers owners and pids (with start times); kills whatever is left of them at teardown."""

    def __init__(self) -> None:
        self.owners: list[Owner] = []
        self.pids: dict[int, int] = {}

    def owner(self, script: str, tmp_path: Path, *args: str, **kwargs: Any) -> Owner:
        owner = Owner(script, tmp_path, *args, **kwargs)
        self.owners.append(owner)
        return owner

    def remember(self, pids: list[int]) -> list[int]:
        for pid in pids:
            info = watchdog.read_stat(pid)
            if info is not None:
                self.pids.setdefault(pid, info.starttime)
        return pids

    def finish(self) -> None:
        for owner in self.owners:
            if owner.proc.poll() is None:
                self.remember(descendants(owner.pid))
        for owner in self.owners:
            if owner.proc.poll() is None:
                owner.proc.kill()
            try:
                owner.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for pid, start in self.pids.items():
            watchdog.signal_if_same(pid, start, signal.SIGKILL)
        for owner in self.owners:
            if owner.proc.stdout is not None:
                owner.proc.stdout.close()


@pytest.fixture
def cleanup() -> Iterator[Cleanup]:
    c = Cleanup()
    try:
        yield c
    finally:
        c.finish()


def wait_for(predicate: Callable[[], Any], timeout: float, poll: float = 0.02) -> float:
    """Poll until ``predicate()`` is truthy; seconds it took; AssertionError after ``timeout``."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"still not true after {timeout}s")
        time.sleep(poll)
    return time.monotonic() - start


def sigkill_and_time_reaping(owner: Owner, pids: list[int]) -> float:
    """SIGKILL the owner; seconds until every one of ``pids`` is gone (AssertionError past DEADLINE)."""
    assert pids_alive(pids) == sorted(pids), "some processes died before the owner was killed"
    killed = time.monotonic()
    owner.proc.kill()
    owner.proc.wait(timeout=10)
    while pids_alive(pids):
        if time.monotonic() - killed > DEADLINE:
            alive = {pid: _cmdline(pid) for pid in pids_alive(pids)}
            raise AssertionError(f"alive {DEADLINE}s after the owner's SIGKILL: {alive}\n{owner.tail()}")
        time.sleep(0.01)
    return time.monotonic() - killed


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


SLEEPERS = """
    import json, multiprocessing, os, subprocess, sys, time
    from swarm.process.lifecycle import Reaper

    reaper = Reaper().start()
    child = subprocess.Popen(["sleep", "300"])
    shell = subprocess.Popen(["sh", "-c", "sleep 300 & wait"])  # its `sleep` is the owner's grandchild
    forked = multiprocessing.get_context("fork").Process(target=time.sleep, args=(300,))  # a fork without exec
    forked.start()
    print(json.dumps({"watchdog": reaper.watchdog_pid, "child": child.pid, "shell": shell.pid,
                      "forked": forked.pid}), flush=True)
    time.sleep(300)
"""


def _start_sleepers(cleanup: Cleanup, tmp_path: Path, script: str = SLEEPERS) -> tuple[Owner, dict[str, int], int]:
    owner = cleanup.owner(script, tmp_path)
    pids = owner.read()
    cleanup.remember(list(pids.values()))
    wait_for(lambda: descendants(pids["shell"]), timeout=10)  # the shell has forked its sleep
    (grandchild,) = descendants(pids["shell"])
    cleanup.remember([grandchild])
    time.sleep(3 * watchdog.INTERVAL)  # the watchdog has scanned since (see the documented window)
    return owner, pids, grandchild


def test_sigkill_owner_reaps_children_and_grandchildren(cleanup: Cleanup, tmp_path: Path) -> None:
    owner, pids, grandchild = _start_sleepers(cleanup, tmp_path)
    tree = cleanup.remember(descendants(owner.pid))
    assert set(pids.values()) | {grandchild} <= set(tree), tree

    took = sigkill_and_time_reaping(owner, tree)

    print(f"\nall {len(tree)} descendants gone {took:.3f}s after SIGKILL of the owner")
    assert "reaped (eof)" in owner.reaper_said(), owner.tail()  # the pipe's EOF, not the 0.2 s poll, noticed it


def test_watchdog_holds_no_output_and_no_owner_pipe(cleanup: Cleanup, tmp_path: Path) -> None:
    owner, pids, _ = _start_sleepers(cleanup, tmp_path)
    wd = pids["watchdog"]
    owner_stdout = os.readlink(f"/proc/{owner.pid}/fd/1")  # pipe:[inode] to this test
    assert owner_stdout.startswith("pipe:")
    assert os.readlink(f"/proc/{wd}/fd/1") == "/dev/null"
    assert os.readlink(f"/proc/{wd}/fd/2") == "/dev/null"
    held = {os.readlink(f"/proc/{wd}/fd/{fd}") for fd in os.listdir(f"/proc/{wd}/fd") if fd != "0"}
    assert owner_stdout not in held
    watchdog_stdin = os.readlink(f"/proc/{wd}/fd/0")
    owner_fds = {os.readlink(f"/proc/{owner.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{owner.pid}/fd")}
    assert watchdog_stdin.startswith("pipe:") and watchdog_stdin in owner_fds  # the owner holds the other end
    assert os.getsid(wd) == wd, "the watchdog leads a session of its own"
    assert os.getsid(wd) != os.getsid(owner.pid)
    cmdline = _cmdline(wd)
    assert " -I -S " in f" {cmdline} " and str(WATCHDOG_SCRIPT) in cmdline, cmdline
    # The forked (not exec'd) child must not have inherited the pipe to the watchdog, or EOF would never come.
    forked_fds = {os.readlink(f"/proc/{pids['forked']}/fd/{fd}") for fd in os.listdir(f"/proc/{pids['forked']}/fd")}
    assert watchdog_stdin not in forked_fds


def test_close_reaps_while_owner_lives(cleanup: Cleanup, tmp_path: Path) -> None:
    script = """
        import json, subprocess, sys, time
        from swarm.process.lifecycle import Reaper

        with Reaper() as reaper:
            child = subprocess.Popen(["sleep", "300"])
            shell = subprocess.Popen(["sh", "-c", "sleep 300 & wait"])
            print(json.dumps({"watchdog": reaper.watchdog_pid, "child": child.pid, "shell": shell.pid}), flush=True)
            sys.stdin.readline()
            started = time.monotonic()
        print(json.dumps({"closed_in": time.monotonic() - started, "running": reaper.running,
                          "codes": [child.wait(timeout=5), shell.wait(timeout=5)]}), flush=True)
        time.sleep(300)
    """
    owner = cleanup.owner(script, tmp_path, stdin=subprocess.PIPE)
    pids = owner.read()
    cleanup.remember(list(pids.values()))
    wait_for(lambda: descendants(pids["shell"]), timeout=10)
    tree = cleanup.remember(descendants(owner.pid))
    time.sleep(3 * watchdog.INTERVAL)

    assert owner.proc.stdin is not None
    owner.proc.stdin.write(b"close\n")
    owner.proc.stdin.flush()
    report = owner.read(timeout=15)

    assert report["running"] is False
    assert report["codes"][0] == -signal.SIGTERM
    assert report["codes"][1] in (-signal.SIGTERM, 128 + signal.SIGTERM)
    assert report["closed_in"] < DEADLINE
    assert pids_alive(tree) == [], {pid: _cmdline(pid) for pid in pids_alive(tree)}
    assert pids_alive([owner.pid]) == [owner.pid], "close() must never touch the owner"
    assert "reaped (asked)" in owner.reaper_said(), owner.tail()


def test_peers_of_one_process_share_one_watchdog_and_the_last_to_close_reaps(cleanup: Cleanup, tmp_path: Path) -> None:
    """Several peers in one process (the control-plane benchmark's 8): one watchdog scanning /proc, not one each, and
    a peer that leaves does not reap the others' daemons."""
    script = """
        import json, subprocess, sys, time
        from swarm.process.lifecycle import SharedReaper

        first, second = SharedReaper().start(), SharedReaper().start()
        from swarm.process import lifecycle
        watchdog = lifecycle._shared.watchdog_pid
        child = subprocess.Popen(["sleep", "300"])
        first.scan()
        print(json.dumps({"watchdog": watchdog, "child": child.pid}), flush=True)
        sys.stdin.readline()
        first.close()
        first.close()                         # idempotent: releasing twice must not release the second's hold
        time.sleep(1.0)
        print(json.dumps({"child_alive": child.poll() is None, "same": lifecycle._shared is not None
                          and lifecycle._shared.watchdog_pid == watchdog and lifecycle._shared.running}), flush=True)
        second.close()
        print(json.dumps({"code": child.wait(timeout=5), "shared": lifecycle._shared is None}), flush=True)
        time.sleep(300)
    """
    owner = cleanup.owner(script, tmp_path, stdin=subprocess.PIPE)
    pids = owner.read()
    cleanup.remember(list(pids.values()))
    watchdogs = [pid for pid in descendants(owner.pid) if WATCHDOG_SCRIPT.name in _cmdline(pid)]
    assert watchdogs == [pids["watchdog"]], "one watchdog for the process's two peers"
    assert owner.proc.stdin is not None
    owner.proc.stdin.write(b"close first\n")
    owner.proc.stdin.flush()
    assert owner.read(timeout=15) == {"child_alive": True, "same": True}, owner.tail()
    final = owner.read(timeout=15)
    assert final == {"code": -signal.SIGTERM, "shared": True}, owner.tail()
    wait_for(lambda: not pids_alive([pids["watchdog"]]), timeout=10)


def test_owner_death_noticed_even_if_someone_else_holds_the_pipe(cleanup: Cleanup, tmp_path: Path) -> None:
    # A child that inherited the pipe's write end (here on purpose, via pass_fds) keeps EOF from coming: the
    # watchdog must still notice the owner is gone by polling it.
    script = """
        import json, subprocess, time
        from swarm.process.lifecycle import Reaper

        reaper = Reaper().start()
        holder = subprocess.Popen(["sleep", "300"], pass_fds=(reaper._wfd,))
        print(json.dumps({"watchdog": reaper.watchdog_pid, "holder": holder.pid}), flush=True)
        time.sleep(300)
    """
    owner = cleanup.owner(script, tmp_path)
    pids = owner.read()
    cleanup.remember(list(pids.values()))
    time.sleep(3 * watchdog.INTERVAL)
    tree = cleanup.remember(descendants(owner.pid))

    took = sigkill_and_time_reaping(owner, tree)

    print(f"\nreaped by polling {took:.3f}s after SIGKILL")
    assert "reaped (owner gone)" in owner.reaper_said(), owner.tail()


def test_track_registers_a_child_spawned_just_before_death(cleanup: Cleanup, tmp_path: Path) -> None:
    # The owner spawns a child that detaches at once (double fork: it's never below the owner in any scan), tracks
    # it, and is killed right away: track() alone must get it reaped.
    script = """
        import json, os, subprocess, sys, time
        from swarm.process.lifecycle import Reaper

        reaper = Reaper(interval=60).start()  # no periodic scan in time: only track() can tell the watchdog
        time.sleep(0.5)  # the watchdog is up and has done its first scan
        out = subprocess.run(["sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True)
        orphan = int(out.stdout)
        reaper.track(orphan)
        print(json.dumps({"orphan": orphan, "ppid": int(open(f"/proc/{orphan}/stat").read().split()[3])}), flush=True)
        time.sleep(300)
    """
    owner = cleanup.owner(script, tmp_path)
    info = owner.read()
    cleanup.remember([info["orphan"]])
    assert info["ppid"] != owner.pid  # reparented already: no scan below the owner would find it

    took = sigkill_and_time_reaping(owner, [info["orphan"]])

    print(f"\ntracked orphan gone {took:.3f}s after SIGKILL")


def test_starttime_check_spares_a_recycled_pid() -> None:
    victim = subprocess.Popen(["sleep", "300"])
    try:
        info = watchdog.read_stat(victim.pid)
        assert info is not None and info.ppid == os.getpid()
        stale = info.starttime - 1  # as if the remembered process had died and its pid gone to this one

        assert watchdog.same_process(victim.pid, info.starttime)
        assert not watchdog.same_process(victim.pid, stale)
        assert not watchdog.signal_if_same(victim.pid, stale, signal.SIGKILL)
        assert watchdog.terminate({victim.pid: stale}, grace=0.1) == {}
        time.sleep(0.1)
        assert victim.poll() is None, "a process with another start time was signalled"

        # A Watchdog whose owner is gone reaps what it remembered: here only the stale record.
        dog = watchdog.Watchdog(owner=victim.pid)  # any live pid would do as the owner here
        dog.owner_start = None  # the owner is gone
        dog.remembered = {victim.pid: stale}
        assert dog.reap() == {}
        assert victim.poll() is None

        assert watchdog.terminate({victim.pid: info.starttime}, grace=1.0) == {victim.pid: info.starttime}
        assert victim.wait(timeout=5) == -signal.SIGTERM
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()


def test_terminate_escalates_to_sigkill() -> None:
    stubborn = subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 300 & wait"])
    try:
        wait_for(lambda: descendants(stubborn.pid), timeout=10)
        (sleeper,) = descendants(stubborn.pid)
        stat = watchdog.read_stat(stubborn.pid)
        assert stat is not None
        started = time.monotonic()
        victims = watchdog.terminate({stubborn.pid: stat.starttime}, grace=0.3)
        assert sleeper in victims  # current descendants of the targets are reaped too
        assert stubborn.wait(timeout=5) == -signal.SIGKILL
        assert pids_alive([sleeper]) == []
        assert time.monotonic() - started < 3
    finally:
        for pid in descendants(stubborn.pid):
            os.kill(pid, signal.SIGKILL)
        if stubborn.poll() is None:
            stubborn.kill()
            stubborn.wait()


def test_scan_parses_stat_lines_with_tricky_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def stat(pid: int, comm: str, state: str, ppid: int, starttime: int) -> str:
        rest = [state, str(ppid)] + ["0"] * 17 + [str(starttime)] + ["0"] * 30
        return f"{pid} ({comm}) " + " ".join(rest) + "\n"

    procs = {
        10: stat(10, "owner", "S", 1, 1000),
        11: stat(11, "a) (b) S 99 (", "R", 10, 1100),  # a name that fakes fields
        12: stat(12, "sleep 300", "S", 11, 1200),
        13: stat(13, "zombie", "Z", 10, 1300),
        14: stat(14, "elsewhere", "S", 1, 1400),
    }
    for pid, text in procs.items():
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(text)
    (tmp_path / "self").mkdir()
    monkeypatch.setattr(watchdog, "PROC", str(tmp_path))

    table = watchdog.scan()
    assert sorted(table) == [10, 11, 12, 13, 14]
    assert (table[11].ppid, table[11].starttime, table[11].state) == (10, 1100, "R")
    assert watchdog.descendants_in(table, [10]) == {11, 12}  # zombies are no one's to kill
    assert descendants(10) == [11, 12]
    assert pids_alive([10, 13, 99]) == [10]
    assert watchdog.read_stat(99) is None


def test_parent_death_signal_kills_the_child(cleanup: Cleanup, tmp_path: Path) -> None:
    child = (
        "import json, os, sys, time; from swarm.process.lifecycle import set_parent_death_signal; "
        "set_parent_death_signal(expected_parent=int(sys.argv[1])); "
        "print(json.dumps({'child': os.getpid()}), flush=True); time.sleep(300)"
    )
    script = """
        import os, subprocess, sys, time
        subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid())])  # from the main thread, which lives
        time.sleep(300)
    """
    parent = cleanup.owner(script, tmp_path, child)
    child = parent.read()["child"]
    cleanup.remember([child])

    took = sigkill_and_time_reaping(parent, [child])

    print(f"\nPR_SET_PDEATHSIG child gone {took:.3f}s after its parent")


def test_parent_death_signal_fires_at_once_if_the_parent_is_already_gone() -> None:
    code = (
        "from swarm.process.lifecycle import set_parent_death_signal as s; import signal, time; "
        "s(signal.SIGTERM, expected_parent=1); time.sleep(30)"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", code], env=env, timeout=30)
    assert done.returncode == -signal.SIGTERM


def test_set_parent_death_signal_is_a_no_op_off_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    import ctypes

    def no_libc(*args: object, **kwargs: object) -> None:
        raise AssertionError("prctl called off Linux")

    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    set_parent_death_signal()


def test_watchdog_imports_only_the_standard_library() -> None:
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('w', {str(WATCHDOG_SCRIPT)!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "print(sorted(k for k in sys.modules if k.split('.')[0] in ('swarm', 'torch', 'hivemind', 'numpy', 'typing')))"
    )
    # -S: no site-packages at all, so anything but the standard library would fail to import.
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_reaper_is_inert_in_a_forked_copy_and_close_is_idempotent(cleanup: Cleanup, tmp_path: Path) -> None:
    script = """
        import json, os, subprocess, time
        from swarm.process.lifecycle import Reaper

        reaper = Reaper().start()
        child = subprocess.Popen(["sleep", "300"])
        time.sleep(0.5)
        pid = os.fork()
        if pid == 0:  # the copy: closing it must neither reap nor end the watchdog
            reaper.close()
            os._exit(0 if reaper._wfd is None else 1)
        _, status = os.waitpid(pid, 0)
        alive_after_copy = child.poll() is None and reaper.running
        reaper.close()
        reaper.close()
        print(json.dumps({"copy_status": status, "alive_after_copy": alive_after_copy,
                          "child_code": child.wait(timeout=5), "running": reaper.running}), flush=True)
        time.sleep(300)
    """
    owner = cleanup.owner(script, tmp_path)
    report = owner.read()
    assert report == {"copy_status": 0, "alive_after_copy": True, "child_code": -signal.SIGTERM, "running": False}


@pytest.mark.skipif(importlib.util.find_spec("hivemind") is None, reason="hivemind is not installed")
def test_sigkill_owner_reaps_hivemind_dht_and_p2pd(cleanup: Cleanup, tmp_path: Path) -> None:
    script = """
        import json, os, time
        from swarm.process.lifecycle import Reaper

        reaper = Reaper().start()
        import hivemind

        dht = hivemind.DHT(start=True)
        print(json.dumps({"watchdog": reaper.watchdog_pid, "dht": dht.pid}), flush=True)
        time.sleep(300)
    """
    owner = cleanup.owner(script, tmp_path)
    pids = owner.read(timeout=45)
    cleanup.remember(list(pids.values()))
    wait_for(lambda: any(_comm(pid) == "p2pd" for pid in descendants(pids["dht"])), timeout=10)
    time.sleep(3 * watchdog.INTERVAL)
    tree = cleanup.remember(descendants(owner.pid))
    p2pd = [pid for pid in tree if _comm(pid) == "p2pd"]
    assert pids["dht"] in tree and pids["watchdog"] in tree and len(p2pd) == 1, {p: _cmdline(p) for p in tree}

    took = sigkill_and_time_reaping(owner, tree)

    others = [_comm(pid) for pid in tree if pid not in (pids["dht"], pids["watchdog"], *p2pd)]
    print(f"\nDHT, p2pd, watchdog and {others} gone {took:.3f}s after SIGKILL of the owner")
