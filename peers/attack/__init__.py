"""`swarm attack`: hostile input (issue 13, items 1-7) replayed against a live loopback run."""
