"""Final-state files: what a peer writes when it stops (`swarm join --save-final PATH`), and `swarm eval` reads.

Format (one `torch.save` dict, loadable with `weights_only=True`):

    {"format": "swarm.final/1", "task": "swav", "task_options": {...}, "seed": 0, "data_path": None,
     "micro_batch_size": 8, "run_id": "demo", "epoch": 42, "params_hash": "...", "model": state_dict}

`load_checkpoint` also accepts a bare state dict, or any dict holding one under "model",
"state_dict" or "model_state_dict" (other tools' files), and the coordinator's checkpoint folders
(`runs/RUN/checkpoints/epoch-N/`: `meta.json` + `state.safetensors` with the trainable parameters as
`param.i`, in model.parameters() order, verified against the folder's sha256 digest). They hold the
buffers (BatchNorm statistics, `buffer.i` in model.buffers() order) when the donor shared them (peers do since
buffers joined the training state; older checkpoints have none); the linear probe re-estimates them by default.
The final-state file is written to a temporary name and renamed, so a reader never sees half a file.
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

__all__ = ["FORMAT", "save_final_state", "load_checkpoint", "load_model_state", "load_params"]


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
    """The checkpoint as a dict with "model" (a state dict) or "params" (trainable parameters in order); DataError if unreadable."""
    path = Path(path)
    if path.is_dir() or path.suffix == ".safetensors":
        return _load_coordinator_checkpoint(path if path.is_dir() else path.parent)
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


def _load_coordinator_checkpoint(folder: Path) -> dict[str, Any]:
    import json

    from safetensors.torch import load_file

    from swarm.averaging.state_sync import state_digest

    meta_path, state_path = folder / "meta.json", folder / "state.safetensors"
    if not meta_path.is_file() or not state_path.is_file():
        raise DataError(f"checkpoint folder {folder} lacks meta.json or state.safetensors")
    try:
        meta = json.loads(meta_path.read_text())
        tensors = load_file(str(state_path))
        order = list(meta["tensor_order"])
        ordered = {name: tensors[name] for name in order}
        epoch = int(meta["epoch"])
    except Exception as e:
        raise DataError(f"checkpoint {folder} cannot be read: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if meta.get("digest") and state_digest(ordered, epoch) != meta["digest"]:
        raise DataError(f"checkpoint {folder} does not match its sha256 digest (corrupted?)")
    count = sum(1 for name in order if name.startswith("param."))
    run = meta.get("run_config") or {}
    return {"format": meta.get("format"), "epoch": epoch, "task": meta.get("task") or run.get("task"),
            "task_options": meta.get("task_options") or run.get("task_options") or {}, "seed": run.get("seed", 0),
            "data_path": run.get("data_path"), "micro_batch_size": run.get("micro_batch_size"), "run_id": meta.get("run_id"),
            "params": [ordered[f"param.{i}"] for i in range(count)],
            "buffers": {int(name.split(".")[1]): t for name, t in ordered.items() if name.startswith("buffer.")}}


def load_params(model: torch.nn.Module, params: list[torch.Tensor], source: str = "checkpoint",
                buffers: dict[int, torch.Tensor] | None = None) -> None:
    """Copy `params` into the model's trainable parameters, in order, and `buffers` (index in model.buffers()
    order -> tensor) into its buffers; DataError if a count or a shape differs."""
    own_buffers = list(model.buffers())
    for i, t in (buffers or {}).items():
        if i >= len(own_buffers) or tuple(own_buffers[i].shape) != tuple(t.shape):
            raise DataError(f"{source} buffer {i} does not fit this task's model: check --task and its options")
    own = [p for p in model.parameters() if p.requires_grad]
    if len(own) != len(params):
        raise DataError(f"{source} holds {len(params)} parameters, this task's model has {len(own)}: check --task and its options")
    for i, (p, t) in enumerate(zip(own, params)):
        if tuple(p.shape) != tuple(t.shape):
            raise DataError(f"{source} parameter {i} has shape {tuple(t.shape)}, the model's is {tuple(p.shape)}")
    with torch.no_grad():
        for p, t in zip(own, params):
            p.copy_(t)
        for i, t in (buffers or {}).items():
            own_buffers[i].copy_(t.to(own_buffers[i].dtype))


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
