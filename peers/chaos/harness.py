"""Process control for chaos runs: a coordinator and volunteer peers on loopback, watched and failed on purpose.

`ChaosSwarm` starts `swarm launch` and peers (through `peers.chaos.peer`, which can fail at a precise point
of a round when a fault is armed for it), and does all its work from the thread that created it (children
die with that thread: PR_SET_PDEATHSIG). `tick()` is its watch, called every few tenths of a second by
`sleep()` and `wait_for()`:

- it remembers each live process's descendants (p2pd, the Reaper's watchdog, the DHT process), so that after
  the process dies, however it dies, it can check that none of them is alive 5 s later (`orphans`);
- it follows the peers' metrics files and notes when each new global epoch first appears (`new_epochs`);
- it restarts killed peers of the base slots after `restart_after` seconds;
- it polls `followups`, the faults still playing out (newcomers that train a while, then leave).

Faults (peers.chaos.faults) use its primitives: `arm`/`claim`/`disarm` for in-peer faults, `kill`, `stop`,
`restart_coordinator`, `spawn` for newcomers. Tests can use it on their own.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from swarm.process.lifecycle import descendants, pids_alive, set_parent_death_signal

from ..local_swarm import peer_command, start_coordinator
from .history_check import snapshot_history

logger = logging.getLogger(__name__)

VISIBLE = re.compile(r"visible at \['([^']+)'\]")   # peers.daemon's "joined run" line
ORPHAN_GRACE = 5.0   # a dead process's descendants must all be gone this long after its death


@dataclass
class Instance:
    """One process: the coordinator or one life of a peer slot."""

    slot: str
    gen: int
    proc: subprocess.Popen
    log: Path
    metrics: Path | None
    base: bool                               # a base peer slot: restarted after it dies
    started: float = field(default_factory=time.monotonic)
    known: set[int] = field(default_factory=set)
    died_at: float | None = None
    exit_code: int | None = None
    rows: list[dict] = field(default_factory=list)
    offset: int = 0
    orphan_checked: bool = False
    restart_at: float | None = None
    clock_skew_minutes: float = 0.0
    go_file: Path | None = None              # a standby: imported everything, joins when this file exists

    @property
    def name(self) -> str:
        return f"{self.slot}-{self.gen}"

    @property
    def alive(self) -> bool:
        return self.died_at is None

    @property
    def waiting(self) -> bool:
        return self.go_file is not None and not self.go_file.exists()

    def stopped(self) -> bool:
        """SIGSTOPped right now (state T)."""
        try:
            return Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("T", "t")
        except (OSError, IndexError):
            return False


class ChaosSwarm:
    def __init__(self, config_path: Path, runs_dir: Path, run_dir: Path, *, checkpoint_every: int = 2,
                 restart_after: float = 10.0, min_trainers: int = 2):
        self.config_path, self.runs_dir, self.run_dir = config_path, runs_dir, run_dir
        self.chaos_dir = run_dir / "chaos"
        (self.chaos_dir / "arm").mkdir(parents=True, exist_ok=True)
        for old in self.chaos_dir.glob("arm/*"):
            old.unlink()
        self.checkpoint_every = checkpoint_every
        self.restart_after = restart_after
        self.min_trainers = min_trainers
        self.coordinator: Instance | None = None
        self.bootstrap = ""
        self.dashboard = ""
        self.instances: list[Instance] = []
        self.orphans: list[dict] = []           # one per dead process: its remembered descendants alive 5 s later
        self.new_epochs: list[tuple[float, int]] = []   # (monotonic time first seen, epoch)
        self.max_epoch = -1
        self._gens: dict[str, int] = {}
        self._fault_ids = itertools.count(1)
        self._last_scan = 0.0
        self.restarts = 0
        self.coordinator_timeout = 300.0         # a loaded 2-core box can take minutes to start `swarm launch`
        self.closing = False
        self.closing_at: float | None = None
        self.followups: list = []               # callables polled by tick() until they return True (faults still playing out)
        self.fault_victims: set[str] = set()    # instances an in-peer fault killed or stopped (a newcomer may be one)
        self._polling = False
        self._visitors = 0

    # -- processes ----------------------------------------------------------------------------------------------

    def _gen(self, slot: str) -> int:
        self._gens[slot] = self._gens.get(slot, -1) + 1
        return self._gens[slot]

    def start_coordinator(self, fresh: bool = True) -> Instance:
        gen = self._gen("coordinator")
        log = self.run_dir / f"coordinator-{gen}.log"
        proc, bootstrap, dashboard = start_coordinator(self.config_path, self.runs_dir, self.run_dir, port=0,
                                                       checkpoint_every=self.checkpoint_every, fresh=fresh, log_path=log,
                                                       timeout=self.coordinator_timeout, sleep=self.sleep)   # the watch goes on meanwhile
        self.bootstrap, self.dashboard = bootstrap, dashboard
        self.coordinator = Instance("coordinator", gen, proc, log, None, base=False)
        self.instances.append(self.coordinator)
        self._remember(self.coordinator)
        return self.coordinator

    def spawn(self, slot: str, *, base: bool, worker_seed: int, clock_skew_minutes: float = 0.0, standby: bool = False,
              byzantine: str = "") -> Instance:
        """Start a peer in `slot` (a new life of it); base slots are restarted when they die. A standby imports
        everything and waits for `join()`. `byzantine`: a peer of that kind (peers.attack.byzantine)."""
        gen = self._gen(slot)
        log = self.run_dir / f"{slot}-{gen}.log"
        metrics = self.run_dir / f"{slot}-{gen}.jsonl"
        metrics.unlink(missing_ok=True)
        wrapper = ["-m", "peers.chaos.peer", "--chaos-dir", str(self.chaos_dir), "--slot", slot]
        if clock_skew_minutes:
            wrapper += ["--clock-skew-minutes", f"{clock_skew_minutes:g}"]
        if byzantine:
            wrapper += ["--byzantine", byzantine]
        go_file = self.chaos_dir / "go" / f"{slot}-{gen}" if standby else None
        if go_file is not None:
            go_file.parent.mkdir(exist_ok=True)
            go_file.unlink(missing_ok=True)
            wrapper += ["--wait-file", str(go_file)]
        cmd = peer_command(self.config_path, [self.bootstrap, *self.peer_maddrs()], metrics, worker_seed=worker_seed, module=wrapper)
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=set_parent_death_signal)
        inst = Instance(slot, gen, proc, log, metrics, base=base, clock_skew_minutes=clock_skew_minutes, go_file=go_file)
        self.instances.append(inst)
        return inst

    def newcomer(self, clock_skew_minutes: float = 0.0) -> Instance:
        """A new peer joins now: a standby of that clock if one is ready (another is started in its place),
        else a cold start."""
        standby = next((i for i in self.instances if i.alive and i.waiting and i.clock_skew_minutes == clock_skew_minutes), None)
        if standby is None:
            return self.spawn(self._visitor_slot(clock_skew_minutes), base=False, worker_seed=100 + self._visitors, clock_skew_minutes=clock_skew_minutes)
        assert standby.go_file is not None
        ready = standby.go_file.with_suffix(".tmp")
        ready.write_text(" ".join(self.peer_maddrs()))   # peers alive now, besides the ones it was started with
        ready.rename(standby.go_file)
        standby.started = time.monotonic()
        self.add_standby(clock_skew_minutes)
        return standby

    def add_standby(self, clock_skew_minutes: float = 0.0) -> Instance:
        return self.spawn(self._visitor_slot(clock_skew_minutes), base=False, worker_seed=100 + self._visitors,
                          clock_skew_minutes=clock_skew_minutes, standby=True)

    def _visitor_slot(self, clock_skew_minutes: float) -> str:
        self._visitors += 1
        return f"{'s' if clock_skew_minutes else 'v'}{self._visitors}"

    def peer_maddrs(self, n: int = 2) -> list[str]:
        """Where `n` live trainers listen (from their logs): newcomers bootstrap through them too, as a volunteer
        given any peer of the run would, so that they can join while the coordinator is down."""
        found = []
        for inst in self.peers(base=True):
            match = VISIBLE.search(inst.log.read_text(errors="replace")) if inst.log.exists() else None
            if match and not inst.stopped():
                found.append(match.group(1))
        return found[:n]

    def peers(self, *, base: bool | None = None) -> list[Instance]:
        """Live peer processes (base slots only, newcomers only, or all; standbys not yet joined are not peers)."""
        return [i for i in self.instances if i.alive and i.slot != "coordinator" and not i.waiting and (base is None or i.base == base)]

    def trainers_alive(self) -> int:
        """Peers alive and not stopped (the ones that can train now)."""
        return sum(1 for i in self.peers() if not i.stopped())

    def kill(self, inst: Instance, sig: int = signal.SIGKILL) -> None:
        self._remember(inst)
        if inst.alive:
            inst.proc.send_signal(sig)

    def stop(self, inst: Instance, grace: float = 15.0) -> float | None:
        """SIGINT, then wait: seconds it took to exit (None: it did not within `grace`, and was SIGKILLed)."""
        self._remember(inst)
        sent = time.monotonic()
        inst.proc.send_signal(signal.SIGINT)
        if not self.wait_for(lambda: not inst.alive, grace, interval=0.05):
            self.kill(inst)
            self.wait_for(lambda: not inst.alive, 10, interval=0.05)
            return None
        assert inst.died_at is not None
        return inst.died_at - sent

    def restart_coordinator(self) -> dict:
        """kill -9 the coordinator, restart it on the same run folder; what its history held before and after."""
        old = self.coordinator   # None: an earlier restart did not come up; this one only starts it
        before = snapshot_history(self.run_dir)
        bootstrap = self.bootstrap
        if old is not None:
            self.kill(old)
            self.wait_for(lambda: not old.alive, 10, interval=0.05)
        started = time.monotonic()
        self.coordinator = None   # until the new one is up
        self.start_coordinator(fresh=False)
        after = snapshot_history(self.run_dir)
        return {"before": before, "after": after, "restart_s": round(time.monotonic() - started, 2),
                "same_bootstrap": self.bootstrap == bootstrap}

    # -- in-peer faults (peers.chaos.peer) ---------------------------------------------------------------------

    def arm(self, kind: str, target: str = "any") -> str:
        fault_id = f"f{next(self._fault_ids)}"
        path = self.chaos_dir / "arm" / f"{fault_id}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"kind": kind, "target": target}))
        tmp.rename(path)
        return fault_id

    def claim(self, fault_id: str) -> dict | None:
        path = self.chaos_dir / "arm" / f"{fault_id}.claimed"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def disarm(self, fault_id: str) -> dict | None:
        """Withdraw the fault; its claim if a peer took it meanwhile."""
        (self.chaos_dir / "arm" / f"{fault_id}.json").unlink(missing_ok=True)
        time.sleep(0.05)
        return self.claim(fault_id)

    def instance_of(self, pid: int) -> Instance | None:
        return next((i for i in self.instances if i.proc.pid == pid), None)

    # -- the watch ---------------------------------------------------------------------------------------------

    def _remember(self, inst: Instance) -> None:
        if inst.alive and inst.proc.poll() is None:
            inst.known.update(descendants(inst.proc.pid))

    def tick(self) -> None:
        now = time.monotonic()
        scan = now - self._last_scan >= 1.0
        if scan:
            self._last_scan = now
        for inst in list(self.instances):
            if inst.alive:
                if inst.proc.poll() is None:
                    if scan:
                        self._remember(inst)
                else:
                    inst.died_at, inst.exit_code = now, inst.proc.returncode
                    logger.info("%s exited (%s)", inst.name, inst.exit_code)
                    if inst.base and not self.closing:
                        inst.restart_at = now + self.restart_after
            elif not inst.orphan_checked and now - inst.died_at >= ORPHAN_GRACE:
                inst.orphan_checked = True
                alive = pids_alive(inst.known)
                self.orphans.append({"process": inst.name, "pid": inst.proc.pid, "children": sorted(inst.known), "alive_after_5s": alive})
                for pid in alive:   # leave nothing behind, but count it
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            if inst.restart_at is not None and now >= inst.restart_at:
                inst.restart_at = None
                if (self.coordinator is not None and self.coordinator.alive) or self.peer_maddrs(1):
                    self.restarts += 1
                    self.spawn(inst.slot, base=True, worker_seed=self._seed_of(inst.slot))
                else:
                    inst.restart_at = now + 1.0
            if inst.metrics is not None:
                self._follow(inst)
        if not self._polling:
            self._polling = True
            try:
                self.followups = [f for f in self.followups if not f()]
            finally:
                self._polling = False

    @staticmethod
    def _seed_of(slot: str) -> int:
        return int("".join(c for c in slot if c.isdigit()) or 0)

    def _follow(self, inst: Instance) -> None:
        assert inst.metrics is not None
        try:
            with open(inst.metrics, "rb") as f:
                f.seek(inst.offset)
                data = f.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n")
        if end < 0:
            return
        inst.offset += end + 1
        for line in data[: end + 1].splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            row["_seen"] = time.monotonic()   # when the harness read it (wall clocks may be skewed on purpose)
            inst.rows.append(row)
            if not row.get("final") and row["epoch"] > self.max_epoch:
                self.max_epoch = row["epoch"]
                self.new_epochs.append((time.monotonic(), row["epoch"]))

    def sleep(self, seconds: float, interval: float = 0.25) -> None:
        end = time.monotonic() + seconds
        while True:
            self.tick()
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(interval, left))

    def wait_for(self, predicate, timeout: float, interval: float = 0.25) -> bool:
        end = time.monotonic() + timeout
        while True:
            self.tick()
            if predicate():
                return True
            if time.monotonic() >= end:
                return False
            time.sleep(interval)

    # -- the end -----------------------------------------------------------------------------------------------

    def close(self, grace: float = 20.0) -> None:
        """Stop every process (SIGINT, SIGKILL after `grace`), then wait out the orphan checks."""
        self.closing = True
        self.closing_at = time.monotonic()
        for inst in self.instances:
            inst.restart_at = None
            self._remember(inst)
        live = [i for i in self.instances if i.alive]
        peers = [i for i in live if i.slot != "coordinator"]
        for inst in peers:
            inst.proc.send_signal(signal.SIGINT)
        self.wait_for(lambda: not any(i.alive for i in peers), 5.0)
        for inst in peers:   # a peer still starting up may have lost the first one before it installed its handler
            if inst.alive:
                inst.proc.send_signal(signal.SIGINT)
        self.wait_for(lambda: not any(i.alive for i in peers), grace)
        for inst in live:
            if inst.alive and inst.slot == "coordinator":
                inst.proc.send_signal(signal.SIGINT)
        self.wait_for(lambda: not any(i.alive for i in live), grace)
        for inst in live:
            if inst.alive:
                self.kill(inst)
                inst.proc.wait(10)
        self.wait_for(lambda: all(i.orphan_checked or i.alive for i in self.instances), ORPHAN_GRACE + 2)
        for inst in self.instances:
            inst.restart_at = None

