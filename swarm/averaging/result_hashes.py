"""Comparing what members received: a reducer that sends different results to different members is caught.

Each member hashes every averaged part as it received it (`PhaseStats.part_hashes`: reducer -> sha256 of the part's
bytes in chunk order; a reducer hashes what it sent). An honest reducer encodes each chunk once and sends the same
bytes to everyone, so all members that received its whole part hold one hash for it; two different hashes for one
part can only come from its reducer (the streams are authenticated end to end by libp2p, so nobody else could have
changed them). A missing part has no hash and accuses nobody.

This is the unsigned comparison (a diagnostic: it proves nothing to a third party). Rounds that check results
compare the reducers' signed statements instead (swarm.averaging.result_statements, result_exchange).
"""
from __future__ import annotations

from typing import Mapping

__all__ = ["equivocating_reducers"]


def equivocating_reducers(reported: Mapping[str, Mapping[str, str]]) -> dict[str, set[str]]:
    """From each member's part hashes (member -> {reducer -> hash}), the reducers whose part reached members with
    different hashes, each with the distinct hashes seen."""
    seen: dict[str, set[str]] = {}
    for hashes in reported.values():
        for reducer, digest in hashes.items():
            seen.setdefault(reducer, set()).add(digest)
    return {reducer: digests for reducer, digests in seen.items() if len(digests) > 1}
