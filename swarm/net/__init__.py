"""The network layer: the peer's DHT node, signed records, invites and tokens, contacts, the swarm clock and the wire's size limits."""
