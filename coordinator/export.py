"""Export a checkpoint in one of its task's formats (`swarm export RUN [--format F]`, peers.tasks.EXPORT_FORMATS).

The task's model is rebuilt from the checkpoint's own run config (task, options, data, seed),
its fingerprint is checked against the checkpoint's (a different tokenizer or architecture is
refused with one line), the checkpoint's `param.i` tensors are copied into
`[p for p in model.parameters() if p.requires_grad]` in order (exactly how the collaborative
optimizer names them), and `task.export()` writes the folder (for ALBERT, one that
`AlbertForPreTraining.from_pretrained` and `AutoTokenizer.from_pretrained` load; for SwAV, a
safetensors backbone with a config that peers.models.resnet_export.load_resnet loads back).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from swarm.errors import ConfigError

from .checkpoints import CheckpointError, load_checkpoint

logger = logging.getLogger(__name__)

FORMATS = ("hf", "safetensors")


def task_formats(task: str) -> tuple[str, ...]:
    from peers.tasks import EXPORT_FORMATS

    return EXPORT_FORMATS.get(task, ())


def model_from_checkpoint(path: Path):
    """(task, model with the checkpoint's parameters, meta)."""
    from peers.tasks import TaskSettings, get_task

    state, meta = load_checkpoint(path)
    config = meta.get("run_config") or {}
    settings = TaskSettings(
        data_path=config.get("data_path"), micro_batch_size=int(config.get("micro_batch_size", 8)),
        seed=int(config.get("seed", 0)), options=dict(meta.get("task_options") or config.get("task_options") or {}),
    )
    task = get_task(str(meta["task"]), settings)
    expected = meta.get("fingerprint") or {}
    actual = task.fingerprint()
    for key in sorted(expected):
        if actual.get(key) != expected[key]:
            raise ConfigError(
                f"checkpoint {path} was trained with another {key} ({str(expected[key])[:12]}, here {str(actual.get(key))[:12]}): "
                "export it with the run's data and task options"
            )
    model = task.build_model()
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():
        for i, p in enumerate(params):
            t = state.tensors.get(f"param.{i}")
            if t is None or tuple(t.shape) != tuple(p.shape):
                raise CheckpointError(f"checkpoint {path} does not fit the {meta['task']} model (parameter {i})")
            p.copy_(t.to(p.dtype))
    extra = [n for n in state.tensors if n.startswith("param.") and int(n.split(".")[1]) >= len(params)]
    if extra:
        raise CheckpointError(f"checkpoint {path} has {len(extra)} more parameters than the {meta['task']} model")
    with torch.no_grad():  # buffers (BatchNorm statistics), in model.buffers() order, when the donor shared them
        for i, b in enumerate(model.buffers()):
            t = state.tensors.get(f"buffer.{i}")
            if t is None:
                continue
            if tuple(t.shape) != tuple(b.shape):
                raise CheckpointError(f"checkpoint {path} does not fit the {meta['task']} model (buffer {i})")
            b.copy_(t.to(b.dtype))
    return task, model, meta


def _readable(folder: Path) -> None:
    """Give every exported file the mode of a file the user writes (0644 under the usual umask 022): an export is
    meant to be shared, and some writers (safetensors) create their files 0600."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)


def export_checkpoint(path: Path, out: Path, fmt: str | None = None) -> Path:
    """Write the checkpoint's model in `fmt` (default: its task's first format) under `out`."""
    if fmt is not None and fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}: one of {', '.join(FORMATS)}")
    task, model, meta = model_from_checkpoint(path)
    formats = task_formats(task.name)
    fmt = fmt or (formats[0] if formats else "hf")
    if fmt not in formats:
        raise ConfigError(f"task {task.name} exports as {', '.join(formats) or 'nothing'}, not {fmt}")
    try:
        task.export(model, Path(out), fmt)
    except NotImplementedError as e:
        raise ConfigError(str(e)) from None
    _readable(Path(out))
    logger.debug("exported the checkpoint of epoch %s to %s", meta["epoch"], out)
    return Path(out)
