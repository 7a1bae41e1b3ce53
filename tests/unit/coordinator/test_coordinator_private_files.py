"""Issue 13 item 8: invites (bearer credentials) and the run's history are readable by their owner only."""
from __future__ import annotations

import os
import stat
import time

import pytest
from hivemind.utils.crypto import RSAPrivateKey

from coordinator.history import History
from coordinator.invites import InviteStore

pytestmark = pytest.mark.timeout(30)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_invite_store_and_its_wal_are_0600(tmp_path):
    old = os.umask(0o022)   # the usual umask: before, the files came out 0644
    try:
        store = InviteStore(tmp_path / "invites.sqlite")
        store.create(RSAPrivateKey(), run_id="run", initial_peers=["/ip4/127.0.0.1/tcp/1/p2p/x"], expires_in=60, max_uses=1)
        files = [p for p in tmp_path.iterdir() if p.name.startswith("invites.sqlite")]
        assert {p.name for p in files} >= {"invites.sqlite", "invites.sqlite-wal", "invites.sqlite-shm"}
        assert all(mode(p) == 0o600 for p in files), {p.name: oct(mode(p)) for p in files}
        store.close()
    finally:
        os.umask(old)


def test_history_files_are_0600_and_older_ones_are_narrowed(tmp_path):
    path = tmp_path / "history.sqlite"
    path.touch(mode=0o644)
    os.chmod(path, 0o644)
    h = History(path)
    h.add_sample(time.time(), epoch=1, samples_per_second=1.0, loss=None, peers=1)
    files = [p for p in tmp_path.iterdir() if p.name.startswith("history.sqlite")]
    assert len(files) >= 2 and all(mode(p) == 0o600 for p in files), {p.name: oct(mode(p)) for p in files}
    h.close()
