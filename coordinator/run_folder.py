"""The layout of a run's folder (`runs/RUN/`) and the small state the coordinator persists in it.

    runs/RUN/
      coordinator.json     created_at of the config record, p2p port, config digest, dashboard URL (atomic JSON)
      experiment.yaml      the run's RunConfig, for `swarm join --config`
      identity.key         p2p identity of the bootstrap peer      (see coordinator.identity)
      organizer.key        RSA key that signs the config record    (see coordinator.identity)
      history.sqlite       metrics, peers, rounds, checkpoints     (see coordinator.history)
      invites.sqlite       invites, their uses and revocations     (see coordinator.invites; kept by --fresh)
      checkpoints/epoch-00000010/{state.safetensors,meta.json}

Everything here survives `kill -9`: JSON files are replaced atomically, SQLite runs in WAL mode,
checkpoints are renamed into place only when complete.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from swarm.errors import ConfigError


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a crash leaves either the old or the new file, never a torn one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class FolderState:
    run_id: str
    task: str
    config_digest: str
    created_at: float          # created_at of the config record: fixed for the life of the run
    p2p_port: int = 0
    dashboard: str = ""        # the coordinator's dashboard URL, for `swarm status` run in this folder's parent


class RunFolder:
    def __init__(self, root: Path):
        self.root = Path(root)

    @classmethod
    def open(cls, runs_dir: Path, run_id: str) -> "RunFolder":
        folder = cls(Path(runs_dir) / run_id)
        try:
            folder.root.mkdir(parents=True, exist_ok=True)
            folder.checkpoints.mkdir(exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create the run folder {folder.root}: {e.strerror or e}") from None
        return folder

    def lock(self) -> None:
        """Hold the folder for this process (an flock, released by the kernel even on kill -9)."""
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ConfigError(f"run folder {self.root} is in use by another coordinator (pid {holder})") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd   # kept open for the life of the process

    @property
    def state_path(self) -> Path:
        return self.root / "coordinator.json"

    @property
    def config_path(self) -> Path:
        return self.root / "experiment.yaml"

    @property
    def identity_path(self) -> Path:
        return self.root / "identity.key"

    @property
    def organizer_key_path(self) -> Path:
        return self.root / "organizer.key"

    @property
    def invites_path(self) -> Path:
        return self.root / "invites.sqlite"

    @property
    def history_path(self) -> Path:
        return self.root / "history.sqlite"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def load_state(self) -> FolderState | None:
        if not self.state_path.exists():
            return None
        try:
            data: dict[str, Any] = json.loads(self.state_path.read_text())
            return FolderState(**data)
        except (OSError, ValueError, TypeError) as e:
            raise ConfigError(f"{self.state_path} is unreadable ({e}); move it away to start this run folder over") from None

    def save_state(self, state: FolderState) -> None:
        write_atomic(self.state_path, json.dumps(asdict(state), indent=2).encode())

    def reset(self) -> None:
        """Forget the run's history and checkpoints (keeps the keys, so the join command stays the same)."""
        for name in ("history.sqlite", "history.sqlite-wal", "history.sqlite-shm", "coordinator.json"):
            (self.root / name).unlink(missing_ok=True)
        shutil.rmtree(self.checkpoints, ignore_errors=True)
        self.checkpoints.mkdir(exist_ok=True)
