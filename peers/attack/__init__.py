"""`swarm attack`: hostile records, messages and streams replayed against a live loopback run."""
