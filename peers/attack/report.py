"""The JSON report of `swarm attack`, measured from what the processes left behind and what the harness sampled.

- `coordinator_crashes`: attacks after which the coordinator process had died or its /healthz did not answer 200.
- `round_interval_s`: the median time between two new global epochs in the baseline (before any attack);
  `baseline_longest_gap_s`: the longest such gap there. `longest_stall_s`: the longest stretch of an attack's
  window (attack plus settle time) without a new global epoch; `stall_excess_s` is it less the baseline's
  longest gap: the invariant is that the excess stays within one round.
- `premature_steps`: global steps committed during an attack with fewer samples than the target batch
  (`baseline_premature_steps`: the same count before any attack, for comparison).
- `rss_growth_per_stream_mb`: the target peer's peak RSS growth during a stream attack, divided by the
  attacker's streams (one 400 MB chunk: 1 stream; idle streams: the number opened); for the chunk, at most the
  bytes the attacker got to send (the peer cannot hold more of it; its own RSS swings by tens of MB meanwhile).
- `divergent_epochs`: epochs (from the baseline on) at which honest peers committed different parameter hashes.
"""
from __future__ import annotations

import collections
import itertools
import statistics

RSS_LIMIT_MB = 64.0


def _gaps(marks: list[float]) -> float:
    return max((b - a for a, b in itertools.pairwise(sorted(marks))), default=0.0)


def build_report(h, events: list[dict], *, baseline: tuple[float, float], target_batch_size: int, wall_s: float, summary: dict) -> dict:
    b0, b1 = baseline
    closing = h.closing_at if h.closing_at is not None else float("inf")
    peers = [i for i in h.instances if i.slot != "coordinator"]
    rows = [r for i in peers for r in i.rows if not r.get("final") and r["_seen"] < closing]
    epoch_times = [t for t, _ in h.new_epochs]
    base_marks = [b0, *(t for t in epoch_times if b0 < t <= b1), b1]
    intervals = [b - a for a, b in itertools.pairwise(base_marks[1:-1])]
    round_interval = statistics.median(intervals) if intervals else None
    baseline_gap = _gaps(base_marks)
    attacks = []
    for e in events:
        t0, t1 = e["t0"], e["t1"]
        stall = _gaps([t0, *(t for t in epoch_times if t0 < t <= t1), t1])
        premature = [r for r in rows if t0 <= r["_seen"] <= t1 and r["samples"] < target_batch_size]
        streams = {"huge_chunk": 1, "idle_streams": e.get("attacker", {}).get("opened") or 0}.get(e["kind"], 0)
        growth = None
        if streams and e.get("rss_before_mb") is not None:
            growth = (e["rss_peak_mb"] - e["rss_before_mb"]) / streams
            sent = e.get("attacker", {}).get("sent_bytes")
            if e["kind"] == "huge_chunk" and isinstance(sent, int):
                # the peer holds at most what it read of the chunk: the rest of its RSS swing is its own training (a
                # CI run measured 72 MB of growth for a chunk the peer refused before its first byte)
                growth = min(growth, sent / 2**20)
            growth = round(growth, 3)
        attacks.append({
            "kind": e["kind"], "target": e.get("target"), "seconds": round(t1 - t0, 1),
            "coordinator_alive": e["coordinator_alive"], "healthz": e["healthz"],
            "longest_stall_s": round(stall, 1), "premature_steps": len(premature),
            "premature_samples": sorted(r["samples"] for r in premature)[:20],
            "epochs_committed": sorted({r["epoch"] for r in rows if t0 <= r["_seen"] <= t1}),
            "rss_before_mb": e.get("rss_before_mb"), "rss_peak_mb": e.get("rss_peak_mb"), "rss_after_mb": e.get("rss_after_mb"),
            "fds_before": e.get("fds_before"), "fds_peak": e.get("fds_peak"), "fds_after": e.get("fds_after"),
            "rss_growth_per_stream_mb": growth, "attacker": e.get("attacker"), **({"newcomer": e["newcomer"]} if "newcomer" in e else {}),
        })
    hashes: dict[int, set[str]] = collections.defaultdict(set)
    for r in rows:
        if r["_seen"] >= b0:
            hashes[r["epoch"]].add(r["params_hash"])
    divergent = sorted(e for e, hs in hashes.items() if len(hs) > 1)
    longest = max((a["longest_stall_s"] for a in attacks), default=0.0)
    growths = [a["rss_growth_per_stream_mb"] for a in attacks if a["rss_growth_per_stream_mb"] is not None]
    report = {
        **summary,
        "wall_s": round(wall_s, 1),
        "coordinator_crashes": sum(1 for a in attacks if not (a["coordinator_alive"] and a["healthz"])),
        "round_interval_s": round(round_interval, 2) if round_interval is not None else None,
        "baseline_longest_gap_s": round(baseline_gap, 1),
        "longest_stall_s": longest,
        "stall_excess_s": round(longest - baseline_gap, 1),
        "premature_steps": sum(a["premature_steps"] for a in attacks),
        "baseline_premature_steps": sum(1 for r in rows if b0 <= r["_seen"] <= b1 and r["samples"] < target_batch_size),
        "target_batch_size": target_batch_size,
        "rss_growth_per_stream_mb_max": max(growths, default=None),
        "epochs_compared": len(hashes),
        "divergent_epochs": divergent[:20],
        "attacks": attacks,
        "timeline": [[round(t - b0, 1), ep] for t, ep in h.new_epochs if t >= b0],
    }
    newcomer = next((a["newcomer"] for a in attacks if "newcomer" in a), None)
    report["invariants"] = {
        "no_coordinator_crash": report["coordinator_crashes"] == 0,
        "stall_within_one_round": round_interval is None or report["stall_excess_s"] <= round_interval,
        "no_premature_step": report["premature_steps"] == 0,
        "rss_per_stream_below_64mb": all(g < RSS_LIMIT_MB for g in growths),
        "identical_parameters": not divergent,
        "newcomer_joined_despite_forged_config": newcomer is None or bool(newcomer["joined"]),
    }
    return report
