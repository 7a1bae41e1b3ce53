"""Task registry: `get_task("albert", settings)` (or "swav", "hf-mlm", "hf-clm") returns a ready task plug-in.

EXPORT_FORMATS says which `swarm export --format` each task writes (the first is its default); it lives in
peers.task_names, not on the classes, so that `swarm export --help` lists it without importing torch.
"""
from __future__ import annotations

from swarm.errors import ConfigError

from ..task_names import EXPORT_FORMATS, TASKS
from .base import Task, TaskSettings


def get_task(name: str, settings: TaskSettings | None = None) -> Task:
    settings = settings or TaskSettings()
    if name == "albert":
        from .albert import AlbertTask

        return AlbertTask(settings)
    if name == "swav":
        from .swav import SwavTask

        return SwavTask(settings)
    if name == "hf-mlm":
        from .hf_text import HfMaskedLMTask

        return HfMaskedLMTask(settings)
    if name == "hf-clm":
        from .hf_text import HfCausalLMTask

        return HfCausalLMTask(settings)
    raise ConfigError(f"unknown task {name!r}: choose one of {', '.join(TASKS)}")


__all__ = ["Task", "TaskSettings", "get_task", "TASKS", "EXPORT_FORMATS"]
