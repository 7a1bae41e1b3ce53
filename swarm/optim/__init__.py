"""Optimizers and learning-rate schedules used by collaborative training (LAMB, LARS, warmup schedules)."""

from swarm.optim.lamb import Lamb
from swarm.optim.lars import Lars, lars_param_groups

__all__ = ["Lamb", "Lars", "lars_param_groups"]
