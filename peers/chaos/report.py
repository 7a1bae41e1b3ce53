"""The JSON report of a chaos run: the issue's invariants, measured from what the processes left behind.

- `divergent_commits`: epochs at which the peers that committed them report different parameter hashes.
- `orphan_processes`: descendants (p2pd, watchdog, DHT process) of dead peers and coordinators still alive
  5 s after their parent's death (death as seen by the harness's watch, which polls every 0.25 s).
- `history_lost`: whether a coordinator restart lost rows or checkpoints it held (None: no restart happened).
- `longest_stall_s`: the longest stretch of the fault window without a new global epoch.
- `rounds_completed`: global rounds committed (distinct epochs); `peer_commits`: commits summed over peers
  (commits after the harness began stopping the swarm are listed apart, as `shutdown_commits`);
  `rounds_failed`: failed round attempts summed over peers (their logs' "round failed" lines).
"""
from __future__ import annotations

import collections
import itertools
import re

from .faults import SKIPPED
from .harness import ChaosSwarm

FAILED_ROUND = re.compile(r"epoch \d+: round failed \(")


def build_report(h: ChaosSwarm, events: list[dict], *, history: list[dict], deadline_s: float, window: tuple[float, float],
                 wall_s: float, config_summary: dict, kinds: list[str]) -> dict:
    start, end = window
    peers = [i for i in h.instances if i.slot != "coordinator"]
    closing = h.closing_at if h.closing_at is not None else float("inf")
    # commits made once the harness began stopping everything (a peer that joined as the others left trains on its
    # own, from epoch 0) are counted apart: the invariants are about the run, not its teardown
    all_rows = [(i, r) for i in peers for r in i.rows if not r.get("final")]
    rows = [(i, r) for i, r in all_rows if r["_seen"] < closing]
    late = [(i, r) for i, r in all_rows if r["_seen"] >= closing]
    hashes: dict[int, set[str]] = collections.defaultdict(set)
    for _, r in rows:
        hashes[r["epoch"]].add(r["params_hash"])
    divergent = sorted(e for e, hs in hashes.items() if len(hs) > 1)
    round_seconds = [float(r["round_seconds"]) for _, r in rows]
    failed = sum(len(FAILED_ROUND.findall(i.log.read_text(errors="replace"))) for i in peers if i.log.exists())
    timeline = [(t, e) for t, e in h.new_epochs]
    before = [e for t, e in timeline if t <= start]
    inside = [(t, e) for t, e in timeline if start < t <= end]
    marks = [start, *(t for t, _ in inside), end]
    stall = max((b - a for a, b in itertools.pairwise(marks)), default=end - start)
    orphans = [o for o in h.orphans if o["alive_after_5s"]]
    injected = collections.Counter(e["kind"] for e in events if not str(e.get("outcome", "")).startswith(("deferred", "not_triggered")))
    sigints = [e["exit_s"] for e in events if e["kind"] == "sigint" and "exit_s" in e]
    last = inside[-1][1] if inside else (before[-1] if before else None)
    report = {
        **config_summary,
        "duration_s": round(end - start, 1),
        "wall_s": round(wall_s, 1),
        "deadline_s": deadline_s,
        "faults": dict(sorted(injected.items())),
        "faults_attempted": len(events),
        "fault_kinds": kinds,
        "epochs": {
            "at_start": before[-1] if before else None,
            "last": last,
            "new_during_faults": len(inside),
            "increasing": bool(inside) and (not before or inside[-1][1] > before[-1]),
            "timeline": [[round(t - start, 1), e] for t, e in inside],
        },
        "rounds_completed": len(hashes),
        "peer_commits": len(rows),
        "rounds_failed": failed,
        "round_seconds_max": round(max(round_seconds), 3) if round_seconds else None,
        "divergent_commits": len(divergent),
        "divergent_epochs": divergent[:20],
        "shutdown_commits": [{"instance": i.name, "epoch": r["epoch"], "group_size": r["group_size"]} for i, r in late],
        "orphan_processes": sum(len(o["alive_after_5s"]) for o in orphans),
        "orphans": orphans,
        "processes_checked": len(h.orphans),
        "history_lost": any(c["lost"] for c in history) if history else None,
        "history_checks": history,
        "longest_stall_s": round(stall, 1),
        "sigint_exit_s_max": max((s for s in sigints if s is not None), default=None) if sigints else None,
        "peer_restarts": h.restarts,
        "faults_failed": [f"{e['kind']}@{e.get('t')}: {e['outcome']}" for e in events if e.get("ok") is False],
        "events": events,
        "skipped": {k: v for k, v in SKIPPED.items()},
    }
    report["invariants"] = invariants(report)
    return report


def invariants(report: dict) -> dict[str, bool]:
    """The issue's done criteria, one flag each (a restart-free run leaves history_kept unchecked: True)."""
    rs = report["round_seconds_max"]
    return {
        "no_divergent_commits": report["divergent_commits"] == 0,
        "no_orphans": report["orphan_processes"] == 0,
        "rounds_within_deadline": rs is None or rs <= report["deadline_s"],
        "history_kept": report["history_lost"] is not True,
        "epochs_increased": report["epochs"]["new_during_faults"] > 0,
        "sigint_within_5s": all(e.get("ok", True) for e in report["events"] if e["kind"] == "sigint"),
    }


def publish(report: dict, path, shown: dict, run_dir) -> int:
    """Write the report to `path` (if any), print `shown`, and say whether its invariants held: the exit status."""
    import json
    import sys

    if path:
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"report written to {path}")
    print(json.dumps(shown, indent=2))
    broken = [k for k, ok in report["invariants"].items() if not ok]
    if broken:
        print(f"invariants broken: {', '.join(broken)} (see {run_dir}/)", file=sys.stderr)
        return 1
    print("all invariants held")
    return 0
