"""Progress summaries: a few aggregators read every progress record, everyone else reads their summaries.

Without them every peer reads every peer's record (about 1 KB each on the wire, signature and key
included) from every replica of the progress key that answers, every 0.2-2 s: a peer's control bytes
grow as N times the replicas. With them:

- **Who aggregates.** For the window `floor(clock.now() / WINDOW)` (clocks are synchronised at join,
  swarm.net.clock), the `AGGREGATORS` peers whose `sha256(run id, window, peer id)` is lowest among the
  non-leaving peers of the reader's last view (rendezvous hashing: no election, no leader, the
  coordinator plays no part; views that differ by a few peers mostly agree, and a peer whose view
  differs only reads more). During the first `GRACE` seconds of a window the previous window's
  aggregators still count, so a hand-over never leaves readers without a summary.
- **What an aggregator does.** It reads every record, as every peer did before, and stores one
  signed `ProgressSummary` (the records it read, compact: no signature or key per record) under the
  run's summary key.
- **What a reader does.** It reads the summary key, keeps the summaries of chosen aggregators that
  are fresh and well formed (`check` rejects the rest with a clear `InvalidSummary`), and needs at
  least `QUORUM` of them: no single aggregator's claim makes the view (DESIGN.md, Trust). `merge`
  keeps a peer only when most summaries list it and takes each number's median and each label's
  majority, so one hostile aggregator among three can neither add a peer nor move an epoch, a
  sample count or a rate past the honest ones. With fewer fresh summaries the reader falls back to
  reading every record. Its own record always comes from itself.

A summary still lists every peer (matchmaking forms one group of everyone at an epoch, and the
leader, donors and majority hash come from the whole list), so a read still grows with N, but by
about 300 B per peer from a handful of summaries instead of about 1 KB per peer from every replica.
"""
from __future__ import annotations

import hashlib
import statistics
from collections import Counter
from typing import Collection, Sequence

from swarm.errors import ProtocolError
from swarm.net.records import MAX_SUMMARY_PEERS, ProgressRecord, ProgressSummary

WINDOW = 60.0          # seconds an aggregator set lasts
GRACE = 10.0           # seconds into a window during which the previous window's aggregators still count
AGGREGATORS = 3        # aggregators per window
QUORUM = 2             # fresh summaries a reader needs (fewer: it reads every record)
MIN_PEERS = 6          # below this many peers in a view, everyone reads every record (as cheap, and no lag)
MAX_AGE = 8.0          # seconds (the records' TTL) after which a summary is stale
MAX_AHEAD = 5.0        # seconds a summary's time may run ahead of ours (clock error)


class InvalidSummary(ProtocolError):
    """A progress summary that a reader must not use (not from a chosen aggregator, stale, malformed)."""


def window(now: float) -> int:
    return max(0, int(now // WINDOW))


def _rank(run_id: str, window_: int, peer_id: str) -> bytes:
    return hashlib.sha256(f"{run_id}\x00{window_}\x00{peer_id}".encode()).digest()


def aggregators(run_id: str, window_: int, peer_ids: Collection[str], k: int = AGGREGATORS) -> list[str]:
    """The `k` aggregators of `window_` among `peer_ids`: the same list on every peer that sees the same ids."""
    return sorted(set(peer_ids), key=lambda pid: _rank(run_id, window_, pid))[:k]


def chosen(run_id: str, now: float, peer_ids: Collection[str], k: int = AGGREGATORS) -> dict[str, int]:
    """Aggregator peer id -> the window it serves, for the window of `now` and, within GRACE of its start, the one
    before (the current window wins for a peer chosen in both)."""
    current = window(now)
    out: dict[str, int] = {}
    if current > 0 and now - current * WINDOW < GRACE:
        out.update((pid, current - 1) for pid in aggregators(run_id, current - 1, peer_ids, k))
    out.update((pid, current) for pid in aggregators(run_id, current, peer_ids, k))
    return out


def check(summary: ProgressSummary, allowed: dict[str, int], now: float, max_age: float = MAX_AGE) -> ProgressSummary:
    """`summary` if a reader may use it; InvalidSummary (one line saying why) otherwise."""
    if summary.aggregator not in allowed or allowed[summary.aggregator] != summary.window:
        raise InvalidSummary(f"a progress summary from {summary.aggregator[:16]} for window {summary.window}, "
                             "which is not one of the window's aggregators")
    if summary.time > now + MAX_AHEAD:
        raise InvalidSummary(f"a progress summary from {summary.aggregator[:16]} dated {summary.time - now:.0f} s ahead")
    if now - summary.time > max_age:
        raise InvalidSummary(f"a progress summary from {summary.aggregator[:16]} {now - summary.time:.0f} s old")
    if len(summary.peers) > MAX_SUMMARY_PEERS:   # the schema bounds it too; a summary built in code may not be checked
        raise InvalidSummary(f"a progress summary listing {len(summary.peers)} peers (at most {MAX_SUMMARY_PEERS})")
    if len({p.peer_id for p in summary.peers}) != len(summary.peers):
        raise InvalidSummary(f"a progress summary from {summary.aggregator[:16]} lists a peer twice")
    return summary


def _majority(values: Sequence[object]) -> object:
    """The most common value; ties go to the smallest (by repr), so every reader picks the same."""
    counts = Counter(values)
    best = max(counts.values())
    return min((v for v, c in counts.items() if c == best), key=repr)


def merge(summaries: Sequence[ProgressSummary]) -> list[ProgressRecord]:
    """The records most summaries agree on: a peer listed by more than half of them, each number its median
    (the lower median for counts) and each label its majority. Needs at least QUORUM summaries."""
    if len(summaries) < QUORUM:
        raise InvalidSummary(f"{len(summaries)} progress summaries, at least {QUORUM} are needed")
    listed: dict[str, list[ProgressRecord]] = {}
    for s in summaries:
        for p in s.peers:
            listed.setdefault(p.peer_id, []).append(p)
    out = []
    for pid, copies in sorted(listed.items()):
        if 2 * len(copies) <= len(summaries):
            continue
        out.append(ProgressRecord(
            peer_id=pid,
            epoch=statistics.median_low(p.epoch for p in copies),
            samples=statistics.median_low(p.samples for p in copies),
            samples_per_second=float(statistics.median_low(p.samples_per_second for p in copies)),
            role=_majority([p.role for p in copies]),  # type: ignore[arg-type]
            upload_bps=float(statistics.median_low(p.upload_bps for p in copies)),
            download_bps=float(statistics.median_low(p.download_bps for p in copies)),
            time=float(statistics.median_low(p.time for p in copies)),
            params_hash=_majority([p.params_hash for p in copies]),  # type: ignore[arg-type]
            serves_state=_majority([p.serves_state for p in copies]),  # type: ignore[arg-type]
            leaving=_majority([p.leaving for p in copies]),  # type: ignore[arg-type]
            training=_majority([p.training for p in copies]),  # type: ignore[arg-type]
        ))
    return out


def read_time(summaries: Sequence[ProgressSummary]) -> float:
    """When the merged view was read (aggregator clocks): the lower median, so one summary cannot make it look fresh."""
    return statistics.median_low(s.time for s in summaries)
