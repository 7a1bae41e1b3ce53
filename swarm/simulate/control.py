"""The control plane in `swarm simulate model`: what a peer sends per second besides the rounds' vectors, by protocol.

The counts follow the engine's own rules (their constants are imported, not copied); the sizes of the messages are
measured (`ControlParams`, from `benchmarks.control_plane` at 16 real peers: benchmarks/README.md says which run),
so that the model's figures at 64 peers and beyond can be checked against real peers it was not fitted to.

- progress.read (swarm.averaging.progress): a peer reads the swarm's records every third of the estimated time to
  the target, but no more often than every READ_SECONDS_PER_PEER per peer in its view (nor than `min_read`, nor less
  often than `max_read`); a peer that averages also reads when its matchmaking begins and when its step pokes a
  read (each joining a read still under way; their moments vary between peers). A read takes every record of the key
  (the live peers', and for about a record's lifetime those of peers that left) from READ_FROM replicas. Every read
  is a request sent and an answer some replica serves, so per peer the mean is what one peer's reads cost.
- progress.write: our record is published every third of the time to the target, within [PUBLISH_FLOOR,
  MAX_PUBLISH], and at once when the epoch changes; a publish is one STORE on each of the DHT's `store_replicas`.
- matchmaking: per member and round, a join request and its answer, the group's info, which lists every member.
- robust mode's result exchange and audits (swarm.averaging.result_exchange, audits): flat groups only; per member
  and round, bytes per other member. A hierarchical round runs them in its columns (swarm.averaging.hierarchy), which
  this does not count: 64 real peers spent 1.1-1.8 KB/s a peer on them with toy vectors and 21.8 KB/s with 2 MB ones
  (benchmarks/README.md, session 26), so audits' bytes follow the vector, which one calibrated size cannot.
- dht.maintenance: pings and routing-table refreshes, the same per peer whatever the swarm's size.
- the p2p daemons' own traffic (identify, libp2p's kad-dht, noise and yamux framing): a share of the bytes above.

Not modelled: state downloads (a joiner's, in the training model's churn), clock syncs, calls to a gathering (a few
bytes a round), the progress summaries (off by default).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from swarm.averaging.progress import MAX_PUBLISH, PUBLISH_FLOOR, PUBLISHED_TTLS, READ_JOIN_WITHIN, READ_SECONDS_PER_PEER
from swarm.net.replicas import READ_FROM

__all__ = ["ControlParams", "control_bytes"]


@dataclass
class ControlParams:
    """Message sizes and the engine's cadence settings. The defaults are benchmarks.model_vs_real's calibration on 16
    real peers (results/model-vs-real-s23.json; benchmarks/README.md, "The model follows")."""

    record_bytes: float = 1076.0           # one record in a read's answer from one replica (~700 of it RSA key and signature)
    store_bytes: float = 1055.0            # one STORE of our record on one replica, as it leaves the publisher
    store_replicas: int = 5                # hivemind's DHT num_replicas
    matchmaking_bytes: float = 211.0       # per member-round: the join request and the group's info without its members
    member_entry_bytes: float = 94.0       # per member-round and per member listed in the group's info
    robust_bytes_per_member: float = 5033.0  # per member-round and other member: signed results, audits (flat groups)
    dht_maintenance_Bps: float = 2415.0    # per peer
    p2pd_own_share: float = 0.33           # the daemons' own bytes per byte counted above
    min_read: float = 0.2                  # swarm.averaging.progress.ProgressTracker's defaults
    max_read: float = 30.0
    record_ttl: float = 8.0
    read_seconds: float = 0.3              # how long a read is under way (a refresh that comes meanwhile joins it)


def _turns(epoch: float, accumulate: float, shortest: float, longest: float, events: tuple[float, ...], join_within: float) -> int:
    """Turns of a periodic loop in one epoch (the third of its three, so that it starts in its steady state): a turn
    every third of the time to the target (which falls from `accumulate` to 0 over the epoch's first `accumulate`
    seconds, and stays at 0 through its matchmaking and round) within [shortest, longest]; and one at each of `events`
    (seconds into an epoch) unless a turn began at most `join_within` seconds before it (a read still under way is
    joined, swarm.net.detached). Any turn restarts the period."""
    last, count = 0.0, 0
    for k in range(3):
        start = k * epoch
        marks = sorted(start + e for e in events)
        for mark in [*marks, start + epoch]:
            while True:
                eta = max(0.0, accumulate - (last - start)) if last >= start else 0.0
                due = last + min(longest, max(shortest, eta / 3))
                if due >= mark:
                    break
                last = due
                count += k == 2
            if mark < start + epoch and mark - last > join_within:
                last = mark
                count += k == 2
    return count


def _reads_and_publishes(accumulate: float, rest: float, view: int, p: ControlParams, averaging: float = 1.0) -> tuple[float, float]:
    """Reads and publishes of one peer in one epoch: `accumulate` seconds while the samples gather, then `rest`
    seconds of matchmaking and the round. Reads: the tracker's loop, and for a peer that averages this epoch (a share
    `averaging` of the peers) a read when matchmaking begins (a fresh view picks the same leader everywhere) and one
    when its step pokes one, each joining a read still under way. Publishes: the loop's, and a step's new epoch at
    once (a store never joins another)."""
    epoch = accumulate + rest
    shortest = max(p.min_read, READ_SECONDS_PER_PEER * view)
    join = min(p.read_seconds, READ_JOIN_WITHIN)
    # a peer's matchmaking begins when its own view says the batch is ready, and it steps when its round ends: the moment
    # varies from peer to peer by about a read period, which decides whether a read of the loop falls before it or is
    # replaced by it; the mean over such offsets, not one alignment (one alignment jumped by a read an epoch)
    jitters = [shortest * (k / 8 - 0.5) for k in range(9)]
    member = sum(_turns(epoch, min(epoch, max(0.0, accumulate + d)), shortest, p.max_read,
                        (min(epoch - 2e-9, max(0.0, accumulate + d)), epoch - 1e-9), join) for d in jitters) / len(jitters)
    idle = _turns(epoch, accumulate, shortest, p.max_read, (), join)
    reads = averaging * member + (1 - averaging) * idle
    publishes = averaging * _turns(epoch, accumulate, PUBLISH_FLOOR, max(2.0, MAX_PUBLISH), (epoch - 1e-9,), 0.0) + \
        (1 - averaging) * _turns(epoch, accumulate, PUBLISH_FLOOR, max(2.0, MAX_PUBLISH), (), 0.0)
    return float(reads), float(publishes)


def control_bytes(peers: int, epoch_seconds: float, round_seconds: float, *, members: float, group: float, flat: bool,
                  robust: bool, churn_per_s: float = 0.0, params: ControlParams | None = None) -> dict[str, float]:
    """Bytes per peer per second by protocol, for `peers` peers whose epochs take `epoch_seconds`, of which the
    averaging (matchmaking and round) `round_seconds`; `members` of the peers average each epoch, in groups of
    `group` (flat or hierarchical); `churn_per_s` peers leave per second (their records linger)."""
    p = params or ControlParams()
    if epoch_seconds <= 0 or not math.isfinite(epoch_seconds):
        raise ValueError(f"epoch_seconds must be positive and finite, got {epoch_seconds}")
    accumulate = max(0.0, epoch_seconds - round_seconds)
    reads, publishes = _reads_and_publishes(accumulate, round_seconds, peers, p, averaging=min(1.0, max(0.0, members / peers)))
    # a record lives PUBLISHED_TTLS publish periods (at least record_ttl): near the target about record_ttl
    records = peers + churn_per_s * max(p.record_ttl, PUBLISHED_TTLS * PUBLISH_FLOOR)
    member_rounds = members / peers / epoch_seconds   # rounds a peer averages in per second
    out = {
        "progress.read": reads / epoch_seconds * READ_FROM * records * p.record_bytes,
        "progress.write": publishes / epoch_seconds * p.store_replicas * p.store_bytes,
        "matchmaking": member_rounds * (p.matchmaking_bytes + group * p.member_entry_bytes),
        "robust": member_rounds * (group - 1) * p.robust_bytes_per_member if robust and flat else 0.0,
        "dht.maintenance": p.dht_maintenance_Bps,
    }
    out["p2pd_own"] = p.p2pd_own_share * sum(out.values())
    return out
