"""Simulation of a swarm on heterogeneous networks, in two modes that share one scenario format.

- `emulate` (swarm.simulate.emulate): real peers, each in its own Linux network namespace, joined
  through veth pairs to a router namespace; per-peer upload and download shaped with tc (tbf).
  Needs root. netem is not available on these machines, so links add no latency.
- `model` (swarm.simulate.model): an event-driven fluid model of the same protocol (progress,
  matchmaking, LP shares, transfers with max-min fair bandwidth sharing, commits, churn) that runs
  thousands of peers in seconds; checked against `emulate` on the shipped scenarios.

Scenarios (swarm.simulate.scenario) are YAML files; the shipped ones live in `scenarios/`.
"""
from .scenario import PeerSpec, Scenario, list_scenarios, load_scenario

__all__ = ["PeerSpec", "Scenario", "list_scenarios", "load_scenario"]
