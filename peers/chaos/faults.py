"""The fault kinds of `swarm chaos`, each a function that injects one fault and says what happened.

Every fault takes the running `ChaosSwarm` and a `FaultContext`, blocks (ticking the harness's watch) until the
fault has played out or its own timeout, and returns an event: `{"kind", "target", "outcome", ...}`. A fault
that would leave fewer than `min_trainers` trainers alive waits for restarts, or is deferred.

Kinds:
- kill_reduce_scatter, kill_all_gather, kill_leader: a trainer SIGKILLs itself at that point of its next round.
- kill_state_donor: a newcomer joins; the peer that serves its state download SIGKILLs itself mid-stream.
- stall_mid_round: a trainer SIGSTOPs itself mid-round; SIGCONT after the averaging deadline + 5 s.
- coordinator_restart: the coordinator is killed -9 and restarted on the same run folder.
- newcomer_burst: `newcomers` peers join at once (state downloads), train until they commit, then leave.
- clock_skew: a peer whose wall clock is off by `skew_minutes` (either way) joins, trains, leaves.

Newcomers join from standbys (peers that imported everything beforehand, see ChaosSwarm.newcomer) and play
out in the background (`_visit`, polled by the harness's watch): other faults go on meanwhile.
- sigint: Ctrl-C on a trainer; it must exit within 5 s.
- network_cut: not injected here (it needs a network namespace per peer, root: swarm.simulate); see SKIPPED.
"""
from __future__ import annotations

import random
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .harness import ChaosSwarm, Instance
from .history_check import compare

SIGINT_LIMIT = 5.0
DOWNLOAD_FAILED = re.compile(r"state download from \S+ failed")   # swarm.averaging.state_sync: one line per donor that failed


@dataclass
class FaultContext:
    rng: random.Random
    deadline_s: float                      # the run's averaging deadline
    newcomers: int = 3
    skew_minutes: float = 5.0              # signed: ahead (+) or behind (-)
    trigger_timeout: float = 90.0          # an armed in-peer fault not reached by then is withdrawn
    join_timeout: float = 240.0            # a newcomer that has not committed a step by then is given up
    history: list[dict] = field(default_factory=list)   # coordinator restarts: compare() of each
    started: float = field(default_factory=time.monotonic)
    end: float = float("inf")              # of the fault window

    def standbys(self, kinds: list[str]) -> list[float]:
        """The clocks of the standby peers the kinds will need first (newcomers join in seconds from them)."""
        need = {"newcomer_burst": [0.0] * self.newcomers, "kill_state_donor": [0.0], "clock_skew": [self.skew_minutes]}
        return [clock for kind in dict.fromkeys(kinds) for clock in need.get(kind, [])]

    def at(self, t: float | None = None) -> float:
        return round((t if t is not None else time.monotonic()) - self.started, 2)


def _enough_trainers(h: ChaosSwarm, ctx: FaultContext) -> bool:
    """At least min_trainers + 1 trainers alive (so min_trainers stay after one fails): wait for restarts, at most
    a minute and not past the end of the fault window."""
    timeout = max(1.0, min(60.0, ctx.end - time.monotonic()))
    return h.wait_for(lambda: h.trainers_alive() > h.min_trainers and sum(1 for i in h.peers(base=True) if i.rows) > h.min_trainers, timeout)


def _committed(inst: Instance) -> int:
    return sum(1 for r in inst.rows if not r.get("final"))


def _in_peer(kind: str, target_any: bool = False) -> Callable[[ChaosSwarm, FaultContext], dict]:
    def inject(h: ChaosSwarm, ctx: FaultContext) -> dict:
        if not _enough_trainers(h, ctx):
            return {"kind": kind, "target": None, "outcome": "deferred: too few trainers alive"}
        trainers = [i for i in h.peers(base=True) if i.rows and not i.stopped()]
        target = "any" if target_any else ctx.rng.choice(trainers).slot
        fault_id = h.arm(kind, target)
        h.wait_for(lambda: h.claim(fault_id) is not None, max(10.0, min(ctx.trigger_timeout, ctx.end + 30.0 - time.monotonic())))
        claim = h.disarm(fault_id)
        if claim is None:
            return {"kind": kind, "target": target, "outcome": "not_triggered: no round reached the fault point in time"}
        inst = h.instance_of(claim["pid"])
        event = {"kind": kind, "target": claim["slot"], "epoch": claim["epoch"], "t": ctx.at()}
        if inst is None:
            return {**event, "outcome": "claimed by an unknown process"}
        h.fault_victims.add(inst.name)
        if kind == "stall_mid_round":
            h.wait_for(inst.stopped, 5.0, interval=0.05)
            h.sleep(ctx.deadline_s + 5.0)
            if inst.alive:
                inst.proc.send_signal(signal.SIGCONT)
            event["stopped_s"] = round(ctx.deadline_s + 5.0, 1)
            event["resumed_at"] = ctx.at()
            event["outcome"] = "stopped past the deadline, then continued"
            event["instance"] = inst.name
            event["ok"] = inst.alive
            return event
        died = h.wait_for(lambda: not inst.alive, 10.0, interval=0.05)
        event["outcome"] = "killed" if died else "did not die"
        event["instance"] = inst.name
        event["ok"] = died
        return event

    inject.__name__ = kind
    return inject


def _visit(h: ChaosSwarm, ctx: FaultContext, event: dict, crowd: list[Instance], steps: int = 1) -> None:
    """Let newcomers train until each committed `steps` steps (or join_timeout), then Ctrl-C them; when all have
    left, fill `event` ("visitors": what each did, "ok": all committed) and print it. Polled by the harness's
    watch, so other faults go on meanwhile."""
    joined = time.monotonic()
    sent: dict[str, float] = {}
    seen: dict[str, dict] = {}

    def poll() -> bool:
        now = time.monotonic()
        for inst in crowd:
            if inst.name not in seen and (not inst.alive or _committed(inst) >= steps or now - joined > ctx.join_timeout):
                log = inst.log.read_text(errors="replace")
                seen[inst.name] = {"instance": inst.name, "committed": _committed(inst), "loaded_state": "loaded the state" in log,
                                   "download_failures": len(DOWNLOAD_FAILED.findall(log)),
                                   "joined_s": round(now - joined, 1) if _committed(inst) else None, "exit_s": None,
                                   # a newcomer that became the leader (say) and was killed by kill_leader before its
                                   # first step: that fault's doing, not a failed join
                                   "killed_by_fault": not inst.alive and inst.name in h.fault_victims}
                if inst.alive:
                    sent[inst.name] = now
                    inst.proc.send_signal(signal.SIGINT)
            elif inst.name in sent and inst.alive and now - sent[inst.name] > SIGINT_LIMIT + 10:
                h.kill(inst)
        if len(seen) < len(crowd) or any(i.alive for i in crowd):
            return False
        for inst in crowd:
            if inst.name in sent and inst.died_at is not None:
                seen[inst.name]["exit_s"] = round(inst.died_at - sent[inst.name], 2)
        visitors = [seen[i.name] for i in crowd]
        ok = sum(1 for v in visitors if v["committed"])
        victims = sum(1 for v in visitors if v["killed_by_fault"] and not v["committed"])
        event["visitors"] = visitors
        event.pop("pending", None)
        event["ok"] = event.get("ok", True) and ok + victims == len(crowd)
        event["outcome"] = (event.get("outcome", "") + f"{ok}/{len(crowd)} newcomers committed a step, "
                            + (f"{victims} killed by another fault first, " if victims else "")
                            + f"{sum(v['download_failures'] for v in visitors)} download failures")
        print(f"[{ctx.at():7.1f}s] epoch {h.max_epoch:4d} | {event['kind']:20s} {event.get('target') or '-':14s} {event['outcome']}", flush=True)
        return True

    h.followups.append(poll)


def kill_state_donor(h: ChaosSwarm, ctx: FaultContext) -> dict:
    kind = "kill_state_donor"
    if not _enough_trainers(h, ctx):
        return {"kind": kind, "target": None, "outcome": "deferred: too few trainers alive"}
    fault_id = h.arm(kind, "any")
    newcomer = h.newcomer()
    h.wait_for(lambda: h.claim(fault_id) is not None or not newcomer.alive or _committed(newcomer) > 0, ctx.join_timeout)
    claim = h.disarm(fault_id)
    event: dict = {"kind": kind, "t": ctx.at(), "newcomer": newcomer.name}
    if claim is None:
        event.update(target=None, outcome="not_triggered: the newcomer's download was not served by a peer in time")
    else:
        donor = h.instance_of(claim["pid"])
        event.update(target=claim["slot"], epoch=claim["epoch"], instance=donor.name if donor else None, outcome="donor killed mid-download; ")
    _visit(h, ctx, event, [newcomer])
    return event


def coordinator_restart(h: ChaosSwarm, ctx: FaultContext) -> dict:
    t = ctx.at()
    result = h.restart_coordinator()
    check = compare(result["before"], result["after"])
    ctx.history.append(check)
    return {"kind": "coordinator_restart", "target": "coordinator", "t": t, "restart_s": result["restart_s"],
            "same_bootstrap": result["same_bootstrap"], "history": check, "ok": result["same_bootstrap"] and not check["lost"],
            "outcome": ("restarted" + (", history kept" if not check["lost"] else f", LOST {check['missing']}"))}


def newcomer_burst(h: ChaosSwarm, ctx: FaultContext) -> dict:
    crowd = [h.newcomer() for _ in range(ctx.newcomers)]
    event = {"kind": "newcomer_burst", "target": f"{len(crowd)} newcomers", "t": ctx.at(), "outcome": "", "pending": True}
    _visit(h, ctx, event, crowd)
    return event


def clock_skew(h: ChaosSwarm, ctx: FaultContext) -> dict:
    inst = h.newcomer(clock_skew_minutes=ctx.skew_minutes)
    event = {"kind": "clock_skew", "target": inst.name, "t": ctx.at(), "skew_minutes": ctx.skew_minutes,
             "outcome": f"clock off by {ctx.skew_minutes:+g} min: ", "pending": True}
    _visit(h, ctx, event, [inst])
    return event


def sigint(h: ChaosSwarm, ctx: FaultContext) -> dict:
    if not _enough_trainers(h, ctx):
        return {"kind": "sigint", "target": None, "outcome": "deferred: too few trainers alive"}
    inst = ctx.rng.choice([i for i in h.peers(base=True) if i.rows and not i.stopped()])
    t = ctx.at()
    seconds = h.stop(inst, grace=SIGINT_LIMIT + 10)
    outcome = "did not exit (SIGKILLed)" if seconds is None else f"left in {seconds:.2f}s" + ("" if seconds <= SIGINT_LIMIT else " (too slow)")
    return {"kind": "sigint", "target": inst.name, "t": t, "exit_s": seconds, "outcome": outcome,
            "ok": seconds is not None and seconds <= SIGINT_LIMIT}


FAULTS: dict[str, Callable[[ChaosSwarm, FaultContext], dict]] = {
    "kill_reduce_scatter": _in_peer("kill_reduce_scatter"),
    "kill_all_gather": _in_peer("kill_all_gather"),
    "kill_leader": _in_peer("kill_leader", target_any=True),
    "stall_mid_round": _in_peer("stall_mid_round"),
    "kill_state_donor": kill_state_donor,
    "coordinator_restart": coordinator_restart,
    "newcomer_burst": newcomer_burst,
    "clock_skew": clock_skew,
    "sigint": sigint,
}

SKIPPED = {
    "network_cut": "needs each peer in a network namespace of its own (root, veth pairs: swarm.simulate's "
                   "EmulatedNetwork); the loopback swarm of swarm chaos shares one network stack",
}
