"""A member's claimed samples have a ceiling every peer knows, so a claim above it is a proof of a lie.

A member's weight in a round is the samples it claims to have accumulated; reducers bound it at 1.5x the group's
median (swarm.averaging.robust.bound_weights), which caps the harm of an inflated claim but proves nothing against
its sender: an honest GPU volunteer among laptops claims many times the median too. A ceiling that does not depend
on who else is in the group does: in robust mode an honest peer never claims more than MAX_CLAIM_BATCHES times the
run's target batch size (`capped`). Why it costs honest peers nothing: a round starts once the swarm has one target
batch, and a peer's own samples alone start it, so a peer holds more than one batch only when its rounds failed and
it kept their samples (swarm.optim.core); past 4 batches the rest of its work still counts, only not as extra
weight (which the reducers would bound anyway).

The sender signs its weight in its commitment (swarm.averaging.commitments) before its first chunk, so a commitment
whose weight is over the ceiling is self-certifying evidence: a reducer that receives one excludes the sender from
its part and bans it (`overclaim`), and publishes the commitment in its ban record (swarm.averaging.bans); every
peer that reads it checks the signature and the weight itself. A member checks that the group carries the weight it
asked for before it commits to it (swarm.collaboration), so no leader can make an honest member sign an inflated
claim.

What it does not catch: a claim between the honest weight and the ceiling. The reducers' bound holds such a sender
to 1.5x the median weight, and CenteredClip clips its values like anyone's.
"""
from __future__ import annotations

from swarm.averaging.commitments import Commitment
from swarm.net.records import MAX_CLAIM_BYTES   # ~900 chunks of 2**17 values (~100M): a larger one bans in the round only

__all__ = ["MAX_CLAIM_BATCHES", "MAX_CLAIM_BYTES", "claim_ceiling", "capped", "overclaim"]

MAX_CLAIM_BATCHES = 4


def claim_ceiling(target_batch_size: int) -> float:
    """The most samples an honest member claims in one round of a run with this target batch size."""
    return float(MAX_CLAIM_BATCHES * target_batch_size)


def capped(weight: float, target_batch_size: int) -> float:
    """What an honest member claims for `weight` samples (robust mode)."""
    return min(weight, claim_ceiling(target_batch_size))


def overclaim(packed: bytes, target_batch_size: int) -> str | None:
    """The peer a packed commitment proves to have claimed more than the ceiling (its signature checks, its weight is
    over it), or None when it proves nothing (bytes from the network: bounded before use)."""
    if not isinstance(packed, bytes) or len(packed) > MAX_CLAIM_BYTES:
        return None
    commitment = Commitment.unpack(packed)
    if commitment is None or not commitment.weight > claim_ceiling(target_batch_size) or not commitment.valid():
        return None
    return commitment.sender
