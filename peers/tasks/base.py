"""The task plug-in interface: a model, its data, its loss and its evaluation.

The engine (swarm/) never sees a task; the peer daemon (peers/daemon.py) drives one
through this interface, so ALBERT and SwAV plug in the same way.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterator

import torch


@dataclass
class TaskSettings:
    """What every task takes; `options` holds task-specific knobs (model size, sequence length...)."""

    data_path: str | None = None          # None: the task's embedded default corpus
    cache_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "swarm")
    micro_batch_size: int = 8
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)


class Task(abc.ABC):
    """One training workload. Subclasses must be deterministic given `settings.seed`."""

    name: ClassVar[str]

    def __init__(self, settings: TaskSettings):
        self.settings = settings

    @abc.abstractmethod
    def fingerprint(self) -> dict[str, str]:
        """Hashes that every peer of a run must share, e.g. {"model_config": sha256, "tokenizer": sha256}."""

    @abc.abstractmethod
    def build_model(self) -> torch.nn.Module:
        """The model, initialised deterministically from settings.seed (all peers start identical)."""

    @abc.abstractmethod
    def batches(self, worker_seed: int) -> Iterator[Any]:
        """An endless stream of micro-batches; different worker seeds give different orders."""

    @abc.abstractmethod
    def loss(self, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, int]:
        """Mean loss over the micro-batch (to call .backward() on) and the number of samples in it."""

    @abc.abstractmethod
    def make_optimizer(self, params, lr: float) -> torch.optim.Optimizer:
        """The task's recommended optimizer (LAMB for ALBERT, LARS for SwAV)."""

    @abc.abstractmethod
    def evaluate(self, model: torch.nn.Module, max_batches: int = 20) -> dict[str, float]:
        """Held-out metrics, e.g. {"mlm_accuracy": 0.31, "loss": 5.2}."""

    def set_epoch(self, epoch: int) -> None:
        """The swarm's global epoch, called by the peer daemon after every global step and state download.

        Tasks whose loss depends on training progress (SwAV freezes its prototypes for the first epochs)
        key it on this, so every peer agrees; the default ignores it.
        """

    def export(self, model: torch.nn.Module, path: Path, fmt: str = "hf") -> None:
        """Write the model in `fmt`, one of the task's peers.tasks.EXPORT_FORMATS (a Hugging Face folder for ALBERT)."""
        raise NotImplementedError(f"task {self.name} has no export format")
