"""The run's invites in SQLite (`runs/RUN/invites.sqlite`, WAL): what was issued, used and revoked.

    store = InviteStore(folder.invites_path)
    invite = store.create(organizer_key, run_id="bert", initial_peers=[...], expires_in=7 * 86400, max_uses=50)
    store.admit(invite.invite_id, key_digest, peer_id)     # None: a token may be issued; else why not
    store.revoke(invite.invite_id)

A file of its own, next to the organizer key rather than in history.sqlite: `swarm launch --fresh`
discards the history, and must not bring revoked invites back to life or reset their use counts.
Written by the coordinator (token requests) and by `swarm invite` (another process) at the same
time: WAL, short transactions, and a busy timeout. Every committed write survives `kill -9`.

Semantics. An invite admits up to `max_uses` distinct peers (RSA public keys; 0: no limit) until it
expires; a peer it admitted keeps renewing its token after the expiry (an expiry closes the door to
newcomers, it does not evict members) until the invite is revoked.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from hivemind.utils.crypto import RSAPrivateKey

from swarm.errors import ConfigError, DataError
from swarm.net.invite import Invite

from .private_files import private_sqlite_path

SCHEMA = """
CREATE TABLE IF NOT EXISTS invites (
    id TEXT PRIMARY KEY, created REAL NOT NULL, expires REAL NOT NULL, max_uses INTEGER NOT NULL,
    revoked REAL, label TEXT NOT NULL DEFAULT '', invite TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS invite_uses (
    invite_id TEXT NOT NULL, key_digest TEXT NOT NULL, peer_id TEXT NOT NULL DEFAULT '',
    first_used REAL NOT NULL, last_used REAL NOT NULL, tokens INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (invite_id, key_digest)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class InviteRow:
    invite_id: str
    created: float
    expires: float
    max_uses: int
    revoked: float | None
    label: str
    uses: int
    text: str

    def status(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        if self.revoked is not None:
            return "revoked"
        if self.max_uses and self.uses >= self.max_uses:
            return "used up"
        if now > self.expires:
            return "expired"
        return "active"


class InviteStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()   # the coordinator uses it from its main loop and its engine loop
        try:
            private_sqlite_path(self.path)   # before SQLite creates its -wal/-shm: they copy this file's mode
            self.db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
        except (sqlite3.DatabaseError, OSError) as e:
            raise DataError(f"invite database {self.path} is unreadable ({e})") from None

    def close(self) -> None:
        with self._lock:
            self.db.close()

    # -- the run's facts that `swarm invite create` needs (written by the coordinator at launch) ----------

    def set_meta(self, **values: object) -> None:
        with self._lock:
            for key, value in values.items():
                self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def meta(self, key: str, default: object = None) -> object:
        with self._lock:
            row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def invite_only(self, requested: bool) -> bool:
        """Once a run is invite-only it stays so: a relaunch without --invite-only must not open it by accident."""
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                row = self.db.execute("SELECT value FROM meta WHERE key = 'invite_only'").fetchone()
                mode = bool(requested or (row is not None and json.loads(row[0])))
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('invite_only', ?)", (json.dumps(mode),))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        return mode

    # -- invites -------------------------------------------------------------------------------------------

    def create(self, organizer: RSAPrivateKey, *, run_id: str, initial_peers: Sequence[str], expires_in: float,
               max_uses: int = 0, invite_only: bool = True, label: str = "") -> Invite:
        if expires_in <= 0:
            raise ConfigError("an invite must expire in the future")
        if max_uses < 0:
            raise ConfigError("--max-uses must be 0 (no limit) or more")
        if not initial_peers:
            raise ConfigError("an invite needs the coordinator's address: launch the run first, or pass --initial-peers")
        now = time.time()
        invite = Invite.create(organizer, run_id=run_id, initial_peers=initial_peers, expires_at=now + expires_in,
                               max_uses=max_uses, invite_only=invite_only)
        with self._lock:
            self.db.execute("INSERT INTO invites (id, created, expires, max_uses, revoked, label, invite) VALUES (?, ?, ?, ?, NULL, ?, ?)",
                            (invite.invite_id, now, invite.expires_at, invite.max_uses, label, invite.encode()))
        return invite

    def _rows(self, where: str = "", args: tuple = ()) -> list[InviteRow]:
        with self._lock:
            rows = self.db.execute(
                "SELECT i.id, i.created, i.expires, i.max_uses, i.revoked, i.label, "
                "(SELECT COUNT(*) FROM invite_uses u WHERE u.invite_id = i.id), i.invite "
                f"FROM invites i {where} ORDER BY i.created", args,
            ).fetchall()
        return [InviteRow(*row) for row in rows]

    def get(self, invite_id: str) -> InviteRow | None:
        rows = self._rows("WHERE i.id = ?", (invite_id,))
        return rows[0] if rows else None

    def list(self) -> list[InviteRow]:
        return self._rows()

    def find(self, label: str) -> list[InviteRow]:
        return self._rows("WHERE i.label = ?", (label,))

    def revoke(self, invite_id: str) -> InviteRow:
        with self._lock:
            changed = self.db.execute("UPDATE invites SET revoked = ? WHERE id = ? AND revoked IS NULL", (time.time(), invite_id)).rowcount
        row = self.get(invite_id)
        if row is None:
            raise ConfigError(f"no invite {invite_id!r} in this run (swarm invite list shows them)")
        if not changed:
            raise ConfigError(f"invite {invite_id} was already revoked")
        return row

    def revoked_ids(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self.db.execute("SELECT id FROM invites WHERE revoked IS NOT NULL ORDER BY id")]

    # -- token requests ------------------------------------------------------------------------------------

    def admit(self, invite_id: str, key_digest: str, peer_id: str = "", now: float | None = None) -> str | None:
        """Record a token request for (invite, peer key); None when a token may be issued, else why not."""
        now = time.time() if now is None else now
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")   # count and insert atomically: two newcomers cannot share the last use
            try:
                why = self._admit(invite_id, key_digest, peer_id, now)
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        return why

    def _admit(self, invite_id: str, key_digest: str, peer_id: str, now: float) -> str | None:
        row = self.db.execute("SELECT expires, max_uses, revoked FROM invites WHERE id = ?", (invite_id,)).fetchone()
        if row is None:
            return "unknown invite (not in this run's records)"
        expires, max_uses, revoked = row
        if revoked is not None:
            return "revoked"
        known = self.db.execute("SELECT 1 FROM invite_uses WHERE invite_id = ? AND key_digest = ?", (invite_id, key_digest)).fetchone()
        if known:   # a member renewing its token
            self.db.execute("UPDATE invite_uses SET last_used = ?, tokens = tokens + 1, peer_id = ? WHERE invite_id = ? AND key_digest = ?",
                            (now, peer_id, invite_id, key_digest))
            return None
        if now > expires:
            return "expired"
        used = self.db.execute("SELECT COUNT(*) FROM invite_uses WHERE invite_id = ?", (invite_id,)).fetchone()[0]
        if max_uses and used >= max_uses:
            return f"used up ({used} of {max_uses} uses)"
        self.db.execute("INSERT INTO invite_uses (invite_id, key_digest, peer_id, first_used, last_used) VALUES (?, ?, ?, ?, ?)",
                        (invite_id, key_digest, peer_id, now, now))
        return None
