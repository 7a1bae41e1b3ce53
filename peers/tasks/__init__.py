"""Task registry: `get_task("albert", settings)` (or "swav") returns a ready task plug-in."""
from __future__ import annotations

from swarm.errors import ConfigError

from .base import Task, TaskSettings

TASKS = ("albert", "swav")


def get_task(name: str, settings: TaskSettings | None = None) -> Task:
    settings = settings or TaskSettings()
    if name == "albert":
        from .albert import AlbertTask

        return AlbertTask(settings)
    if name == "swav":
        from .swav import SwavTask

        return SwavTask(settings)
    raise ConfigError(f"unknown task {name!r}: choose one of {', '.join(TASKS)}")


__all__ = ["Task", "TaskSettings", "get_task", "TASKS"]
