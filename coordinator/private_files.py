"""Files that hold credentials (invites are bearer secrets) or the run's history are readable by their owner only.

SQLite creates a database's -wal and -shm files with the database file's permissions, so a database
created here as 0600 keeps all three private; files of an older version are narrowed to 0600 too.
"""
from __future__ import annotations

import os
from pathlib import Path

PRIVATE_MODE = 0o600
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def private_sqlite_path(path: Path) -> Path:
    """Create `path` (empty) with mode 0600 if it does not exist, and narrow it and its side files to 0600."""
    path = Path(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_MODE)
    os.close(fd)
    for p in [path] + [path.with_name(path.name + suffix) for suffix in SQLITE_SIDE_FILES]:
        try:
            os.chmod(p, PRIVATE_MODE)
        except FileNotFoundError:
            pass
    return path
