"""Optimizers and learning-rate schedules used by collaborative training (LAMB, warmup schedules)."""

from swarm.optim.lamb import Lamb

__all__ = ["Lamb"]
