"""Checkpoints: the training state a newcomer would download, kept on the organizer's disk.

Format (one folder per checkpoint, `checkpoints/epoch-00000010/`):

- `state.safetensors`: every tensor of the state under its wire name (`param.i` in the order of
  `[p for p in model.parameters() if p.requires_grad]`, then `opt.i.key`);
- `meta.json`: format, epoch, the state's sha256 digest (swarm.averaging.state_sync.state_digest, over the
  tensors in `tensor_order`), task, task options, the run's config, the task fingerprint, the
  optimizer's non-tensor state (`extra`), the donor and the time.

A checkpoint is written into a hidden temporary folder, fsynced, and renamed into place, so a
crash never leaves a half-written checkpoint under a real name; `load()` recomputes the digest,
so a corrupted file is refused with one line (CheckpointError) instead of training on garbage.
Retention keeps the newest K.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from swarm.averaging.state_sync import TrainingState
from swarm.errors import DataError

FORMAT = "swarm-checkpoint/1"
STATE_FILE = "state.safetensors"
META_FILE = "meta.json"


class CheckpointError(DataError):
    """A checkpoint is missing, unreadable, or does not match its digest."""


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    epoch: int
    digest: str
    meta: dict[str, Any]

    @property
    def size(self) -> int:
        return sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())


def checkpoint_name(epoch: int) -> str:
    return f"epoch-{epoch:08d}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_checkpoint(folder: Path, state: TrainingState, meta: dict[str, Any]) -> Checkpoint:
    """Write `state` (+ `meta`) as `folder/epoch-N/` atomically; an existing checkpoint of that epoch is replaced."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    digest = state.digest()
    full_meta = {
        "format": FORMAT, "epoch": state.epoch, "digest": digest, "tensor_order": list(state.tensors),
        "extra": state.extra, "created_at": time.time(), **meta,
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".{checkpoint_name(state.epoch)}.", dir=folder))
    try:
        tensors = {name: t.detach().contiguous().cpu() for name, t in state.tensors.items()}
        save_file(tensors, str(tmp / STATE_FILE), metadata={"format": FORMAT, "epoch": str(state.epoch), "digest": digest})
        (tmp / META_FILE).write_text(json.dumps(full_meta, indent=1, default=_json_default))
        for name in (STATE_FILE, META_FILE):
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
        final = folder / checkpoint_name(state.epoch)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Checkpoint(final, state.epoch, digest, full_meta)


def _json_default(value: Any) -> Any:
    if isinstance(value, (set, tuple)):
        return list(value)
    if torch.is_tensor(value):
        return value.tolist()
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def read_meta(path: Path) -> dict[str, Any]:
    path = Path(path)
    meta_path = path / META_FILE
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is not a checkpoint: no {META_FILE}") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} has an unreadable {META_FILE}: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has an unknown format {meta.get('format') if isinstance(meta, dict) else None!r}")
    for key in ("epoch", "digest", "tensor_order", "task"):
        if key not in meta:
            raise CheckpointError(f"checkpoint {path} lacks {key!r} in {META_FILE}")
    return meta


def load_checkpoint(path: Path) -> tuple[TrainingState, dict[str, Any]]:
    """Read and verify a checkpoint folder: CheckpointError (one line) when anything does not match."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist")
    meta = read_meta(path)
    try:
        loaded = load_file(str(path / STATE_FILE))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} has no {STATE_FILE}") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupted: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    order = list(meta["tensor_order"])
    if set(order) != set(loaded):
        raise CheckpointError(f"checkpoint {path} is corrupted: its tensors do not match {META_FILE}")
    state = TrainingState(epoch=int(meta["epoch"]), tensors={name: loaded[name] for name in order}, extra=meta.get("extra") or {})
    if state.digest() != meta["digest"]:
        raise CheckpointError(f"checkpoint {path} is corrupted: its tensors do not match the digest in {META_FILE}")
    return state, meta


def list_checkpoints(folder: Path) -> list[Checkpoint]:
    """Complete checkpoints under `folder`, oldest first (hidden temporary folders are ignored)."""
    out = []
    for child in sorted(Path(folder).glob("epoch-*")):
        try:
            meta = read_meta(child)
        except CheckpointError:
            continue
        out.append(Checkpoint(child, int(meta["epoch"]), str(meta["digest"]), meta))
    return sorted(out, key=lambda c: c.epoch)


def doomed_checkpoints(folder: Path, keep: int) -> list[Checkpoint]:
    """The checkpoints that `prune(folder, keep)` deletes. The history marks them removed before they go: a kill -9
    between the two then leaves a removed row whose folder the next prune deletes, never a kept row whose folder is
    gone (the chaos suite's history check counted that as a lost checkpoint)."""
    existing = list_checkpoints(Path(folder))
    return existing[:-keep] if keep > 0 else existing


def prune(folder: Path, keep: int) -> list[Checkpoint]:
    """Delete all but the newest `keep` checkpoints (and stale temporary folders); returns the deleted ones."""
    folder = Path(folder)
    for tmp in folder.glob(".epoch-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    doomed = doomed_checkpoints(folder, keep)
    for c in doomed:
        shutil.rmtree(c.path, ignore_errors=True)
    return doomed


def resolve_checkpoint(ref: str | Path, runs_dir: Path = Path("runs"), epoch: int | None = None) -> Path:
    """A checkpoint folder from a checkpoint path, a run folder, or a run id (the newest, or `epoch`)."""
    ref = Path(ref)
    candidates = [ref] if ref.exists() else [Path(runs_dir) / ref]
    for base in candidates:
        if (base / META_FILE).exists():
            return base
        for folder in (base / "checkpoints", base):
            found = list_checkpoints(folder) if folder.is_dir() else []
            if epoch is not None:
                found = [c for c in found if c.epoch == epoch]
            if found:
                return found[-1].path
    where = f" at epoch {epoch}" if epoch is not None else ""
    raise CheckpointError(f"no checkpoint{where} found for {ref} (a checkpoint folder, a run folder, or a run id under {runs_dir})")
