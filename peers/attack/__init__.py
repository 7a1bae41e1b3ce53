"""`swarm attack`: hostile records, messages and streams replayed against a live loopback run."""

# the hostile-input kinds, in the order `swarm attack` runs them (here, not in attacker.py, so that the `swarm`
# parser lists them without loading hivemind and torch)
KINDS = ("huge_ints", "far_epoch", "inflated_samples", "infinite_weight", "forged_config", "huge_chunk", "idle_streams")
