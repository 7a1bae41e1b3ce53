"""Final-state files: what a peer writes when it stops (`swarm join --save-final PATH`), and `swarm eval` reads.

Format (one `torch.save` dict, loadable with `weights_only=True`):

    {"format": "swarm.final/1", "task": "swav", "task_options": {...}, "seed": 0, "data_path": None,
     "micro_batch_size": 8, "run_id": "demo", "epoch": 42, "params_hash": "...", "model": state_dict}

`load_model_state` also accepts a bare state dict, or any dict holding one under "model",
"state_dict" or "model_state_dict" (the coordinator's checkpoints, other tools' files).
The file is written to a temporary name and renamed, so a reader never sees half a file.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from swarm.errors import DataError

logger = logging.getLogger(__name__)

FORMAT = "swarm.final/1"
STATE_KEYS = ("model", "state_dict", "model_state_dict")

__all__ = ["FORMAT", "save_final_state", "load_checkpoint", "load_model_state"]


def save_final_state(path: str | Path, model: torch.nn.Module, *, epoch: int, config: Any = None, params_hash: str | None = None) -> Path:
    """Write the model's state dict, its epoch and (from a RunConfig) what rebuilds the task."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {"format": FORMAT, "epoch": int(epoch), "params_hash": params_hash,
                               "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
    if config is not None:
        payload.update(task=config.task, task_options=dict(config.task_options), seed=config.seed, data_path=config.data_path,
                       micro_batch_size=config.micro_batch_size, run_id=config.run_id)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    logger.info("wrote the final state of epoch %d to %s", epoch, path)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint as a dict with at least "model" (a state dict); DataError if it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise DataError(f"checkpoint {path} cannot be read: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if isinstance(payload, dict):
        for key in STATE_KEYS:
            if isinstance(payload.get(key), dict):
                return {**payload, "model": payload[key]}
        if payload and all(torch.is_tensor(v) for v in payload.values()):
            return {"model": payload}
    raise DataError(f"checkpoint {path} holds no model state dict")


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load `state` into `model` strictly; DataError (one line) if the shapes or names do not fit."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        detail = "; ".join(f"{what}: {', '.join(keys[:3])}{'...' if len(keys) > 3 else ''}"
                           for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape differs", wrong)) if keys)
        raise DataError(f"{source} does not fit this task's model ({detail}): check --task and its options")
    model.load_state_dict(state)
