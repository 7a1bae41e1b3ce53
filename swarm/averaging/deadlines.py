"""A round's time limits from the work it has to do, not from constants.

The all-reduce of `vector_bytes` with the group's LP shares and measured links takes at least the
LP's T (swarm.averaging.balancing.round_seconds). Two limits follow from it:

- `silence`: how long one stream may deliver nothing before its peer is dropped. Every member
  runs one stream per other member at once, so one stream carries about 1/(n-1) of the slowest
  link: a chunk needs chunk_bytes (n - 1) / slowest_rate seconds on it. The limit is `margin`
  times that, never below the configured floor. A peer that is slow but sends keeps delivering
  chunks within it; a silent one is dropped after it.
- `averaging`: the deadline of one all-reduce phase, `margin` times the LP's T plus two silences
  (a dead sender is noticed, then its chunks are averaged without it), never below the floor.

The rates are the members' measured estimates (a prior until the first transfer, which the
caller may seed from a measured state download). Config values are floors: a run whose
estimates are too high still gets at least the configured limits.

A state download follows the same rule (`transfer_limit`): the announced size over the measured
download rate, with a margin, and a stream that keeps delivering chunks keeps its donor.

Every member computes the same limits from the same GroupInfo (members' links, shares), so the
leader's `averaging` and a member's own `silence` agree without another message.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from swarm.averaging.balancing import MemberLink, round_seconds

__all__ = ["MARGIN", "RoundLimits", "round_limits", "reply_timeout", "transfer_limit"]

MARGIN = 3.0          # measured rates vary from round to round: limits allow this many times the predicted time
MAX_LIMIT = 3600.0    # no limit beyond an hour, whatever the (possibly hostile) reported rates say


@dataclass(frozen=True)
class RoundLimits:
    """Seconds: `silence` per stream, `averaging` per all-reduce phase, `predicted` the LP's T (nan if unknown)."""

    silence: float
    averaging: float
    predicted: float


def round_limits(vector_bytes: int, links: Sequence[MemberLink], shares: Sequence[float], *, chunk_bytes: int,
                 floor_silence: float, floor_averaging: float, margin: float = MARGIN) -> RoundLimits:
    """The limits of one all-reduce of `vector_bytes` over `links` with `shares` (see the module docstring)."""
    if vector_bytes < 0 or chunk_bytes < 0:
        raise ValueError(f"sizes must be >= 0, got vector {vector_bytes}, chunk {chunk_bytes}")
    if not links:
        raise ValueError("a group needs at least one member")
    try:
        predicted = round_seconds(vector_bytes, links, shares)
    except ValueError:  # shares that do not fit the links (nobody can reduce, say): only the floors apply
        predicted = float("nan")
    slowest = min(min(link.upload_bps, link.download_bps) for link in links)
    gap = min(chunk_bytes, vector_bytes) * max(len(links) - 1, 1) / slowest
    silence = min(MAX_LIMIT, max(floor_silence, margin * gap))
    work = margin * predicted if math.isfinite(predicted) else 0.0
    averaging = min(MAX_LIMIT, max(floor_averaging, work + 2 * silence))
    return RoundLimits(silence=silence, averaging=averaging, predicted=predicted)


def reply_timeout(silence: float) -> float:
    """How long a member waits for a reducer's next averaged chunk: the reducer may first wait out one silent
    sender (`silence`) before it averages without it, then send the chunk."""
    return 2 * silence + 2.0


def transfer_limit(nbytes: int, rate_bps: float, floor: float, margin: float = MARGIN) -> float:
    """Seconds allowed for one transfer of `nbytes` at `rate_bps`: `margin` times the expected time, at least `floor`,
    at most MAX_LIMIT (`nbytes` may come from a hostile sender)."""
    if nbytes < 0 or not (math.isfinite(rate_bps) and rate_bps > 0):
        raise ValueError(f"need a size >= 0 and a positive rate, got {nbytes} bytes at {rate_bps} B/s")
    return min(MAX_LIMIT, max(floor, margin * nbytes / rate_bps))
