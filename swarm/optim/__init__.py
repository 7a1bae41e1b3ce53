"""Optimization: the collaborative optimizer (core.py) and its run modes (strategies.py), and the optimizers and
learning-rate schedules collaborative training uses (LAMB, LARS, warmup schedules).

The collaborative optimizer is imported from `swarm.optim.core` (or as `swarm.CollaborativeOptimizer`): this
package's import stays light for the tasks that only want LAMB or LARS."""

from swarm.optim.lamb import Lamb
from swarm.optim.lars import Lars, lars_param_groups

__all__ = ["Lamb", "Lars", "lars_param_groups"]
