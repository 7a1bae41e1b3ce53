"""The run's history in SQLite (stdlib sqlite3, WAL): metrics time series, peers seen, rounds, checkpoints.

One connection, used by the coordinator's main loop only (every call is a few small statements,
microseconds to a millisecond, so they run inline rather than in a thread). WAL with
synchronous=NORMAL: a committed write survives the process being killed (-9 included); only a
power loss may drop the last transactions. Writes are idempotent where records can be seen
twice (a restarted coordinator reads the same latest records again): per-peer round reports are
keyed by (epoch, peer) and inserted once.

    history = History(Path("runs/demo/history.sqlite"))
    history.add_sample(time.time(), epoch=3, samples_per_second=120.0, loss=7.1, peers=3)
    history.series("loss", points=300)     # [(t, value), ...] averaged into at most 300 buckets
"""
from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from swarm.errors import DataError

from .private_files import private_sqlite_path

SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    t REAL NOT NULL, epoch INTEGER NOT NULL, samples_per_second REAL NOT NULL, loss REAL, peers INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_t ON samples(t);
CREATE TABLE IF NOT EXISTS peers (
    peer_id TEXT PRIMARY KEY, role TEXT NOT NULL, device TEXT NOT NULL DEFAULT '',
    first_seen REAL NOT NULL, last_seen REAL NOT NULL, online_since REAL NOT NULL,
    samples_base INTEGER NOT NULL DEFAULT 0,   -- samples of this peer id's earlier processes
    samples_last INTEGER NOT NULL DEFAULT 0,   -- samples_total of its current process
    maddrs TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS round_reports (
    epoch INTEGER NOT NULL, peer_id TEXT NOT NULL, t REAL NOT NULL, group_size INTEGER NOT NULL,
    seconds REAL NOT NULL, bytes_sent INTEGER NOT NULL, bytes_received INTEGER NOT NULL,
    PRIMARY KEY (epoch, peer_id)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    epoch INTEGER PRIMARY KEY, t REAL NOT NULL, path TEXT NOT NULL, digest TEXT NOT NULL,
    bytes INTEGER NOT NULL, donor TEXT NOT NULL, removed INTEGER NOT NULL DEFAULT 0
);
"""

SERIES = ("loss", "samples_per_second", "epoch", "peers")


@dataclass(frozen=True)
class RoundRow:
    epoch: int
    time: float
    members: int
    seconds: float
    bytes_sent: int
    reporters: int


@dataclass(frozen=True)
class PeerSeen:
    peer_id: str
    role: str
    device: str
    first_seen: float
    last_seen: float
    online_since: float
    samples_contributed: int
    maddrs: list[str]


class History:
    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            private_sqlite_path(self.path)   # before SQLite creates its -wal/-shm: they copy this file's mode
            self.db = sqlite3.connect(self.path, isolation_level=None, timeout=5.0)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
        except (sqlite3.DatabaseError, OSError) as e:
            raise DataError(f"history database {self.path} is unreadable ({e}); move it away or launch with --fresh") from None

    def close(self) -> None:
        self.db.close()

    # -- metrics time series -----------------------------------------------------------------------------

    def add_sample(self, t: float, *, epoch: int, samples_per_second: float, loss: float | None, peers: int) -> None:
        self.db.execute("INSERT INTO samples VALUES (?, ?, ?, ?, ?)", (t, epoch, samples_per_second, loss, peers))

    def series(self, metric: str, *, since: float = 0.0, points: int = 500) -> list[tuple[float, float]]:
        """(time, value) of `metric`, averaged into at most `points` equal time buckets; NULL losses skipped."""
        if metric not in SERIES:
            raise ValueError(f"unknown metric {metric!r}: one of {', '.join(SERIES)}")
        lo, hi = self.db.execute("SELECT MIN(t), MAX(t) FROM samples WHERE t >= ?", (since,)).fetchone()
        if lo is None:
            return []
        bucket = max((hi - lo) / max(points, 1), 1e-9)
        rows = self.db.execute(
            f"SELECT MAX(t), AVG({metric}) FROM samples WHERE t >= ? AND {metric} IS NOT NULL "
            "GROUP BY CAST((t - ?) / ? AS INTEGER) ORDER BY 1",
            (since, lo, bucket),
        ).fetchall()
        return [(float(t), float(v)) for t, v in rows]

    def last_sample(self) -> dict | None:
        row = self.db.execute("SELECT t, epoch, samples_per_second, loss, peers FROM samples ORDER BY t DESC LIMIT 1").fetchone()
        return None if row is None else dict(zip(("time", "epoch", "samples_per_second", "loss", "peers"), row))

    # -- peers -------------------------------------------------------------------------------------------

    def see_peer(self, peer_id: str, *, role: str, device: str, t: float, samples_total: int | None,
                 absent_before: float | None = None) -> None:
        """Record that a peer is online now; `samples_total` is its process's counter (it restarts at 0).

        A peer last seen before `absent_before` starts a new online session (`online_since` = now). The
        tracker passes a time at which it was watching and did not see the peer, so a coordinator that
        was down itself does not reset everyone's session."""
        row = self.db.execute("SELECT samples_base, samples_last, last_seen FROM peers WHERE peer_id = ?", (peer_id,)).fetchone()
        if row is None:
            self.db.execute(
                "INSERT INTO peers (peer_id, role, device, first_seen, last_seen, online_since, samples_last) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (peer_id, role, device, t, t, t, samples_total or 0),
            )
            return
        base, last, last_seen = row
        if absent_before is not None and last_seen < absent_before:
            self.db.execute("UPDATE peers SET online_since = ? WHERE peer_id = ?", (t, peer_id))
        if samples_total is not None and samples_total < last:   # a new process with the same identity
            base, last = base + last, samples_total
        elif samples_total is not None:
            last = samples_total
        self.db.execute(
            "UPDATE peers SET role = ?, device = CASE WHEN ? = '' THEN device ELSE ? END, last_seen = ?, "
            "samples_base = ?, samples_last = ? WHERE peer_id = ?",
            (role, device, device, t, base, last, peer_id),
        )

    def set_maddrs(self, peer_id: str, maddrs: list[str]) -> None:
        self.db.execute("UPDATE peers SET maddrs = ? WHERE peer_id = ?", (json.dumps(maddrs), peer_id))

    def peers(self) -> dict[str, PeerSeen]:
        rows = self.db.execute(
            "SELECT peer_id, role, device, first_seen, last_seen, online_since, samples_base + samples_last, maddrs FROM peers"
        ).fetchall()
        return {r[0]: PeerSeen(r[0], r[1], r[2], r[3], r[4], r[5], int(r[6]), json.loads(r[7])) for r in rows}

    def peer(self, peer_id: str) -> PeerSeen | None:
        return self.peers_by_id([peer_id]).get(peer_id)

    def peers_by_id(self, ids: list[str]) -> dict[str, PeerSeen]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self.db.execute(
            "SELECT peer_id, role, device, first_seen, last_seen, online_since, samples_base + samples_last, maddrs "
            f"FROM peers WHERE peer_id IN ({marks})", ids,
        ).fetchall()
        return {r[0]: PeerSeen(r[0], r[1], r[2], r[3], r[4], r[5], int(r[6]), json.loads(r[7])) for r in rows}

    def leaderboard(self, limit: int = 20) -> list[tuple[str, int]]:
        """(peer id, samples contributed) of every peer ever seen, best first."""
        rows = self.db.execute(
            "SELECT peer_id, samples_base + samples_last AS s FROM peers WHERE s > 0 ORDER BY s DESC LIMIT ?", (limit,)
        ).fetchall()
        return [(p, int(s)) for p, s in rows]

    def recent_peers(self, within: float, limit: int = 200) -> dict[str, list[str]]:
        """{peer id: multiaddrs} of the peers seen in the last `within` seconds."""
        rows = self.db.execute(
            "SELECT peer_id, maddrs FROM peers WHERE last_seen >= ? ORDER BY last_seen DESC LIMIT ?", (time.time() - within, limit)
        ).fetchall()
        return {pid: json.loads(text) for pid, text in rows}

    def recent_maddrs(self, within: float, limit: int = 20) -> list[str]:
        """Multiaddrs of peers seen in the last `within` seconds (to rejoin the swarm after a restart)."""
        rows = self.db.execute(
            "SELECT maddrs FROM peers WHERE last_seen >= ? ORDER BY last_seen DESC LIMIT ?", (time.time() - within, limit)
        ).fetchall()
        return [m for (text,) in rows for m in json.loads(text)]

    # -- rounds ------------------------------------------------------------------------------------------

    def add_round_report(self, epoch: int, peer_id: str, *, t: float, group_size: int, seconds: float,
                         bytes_sent: int, bytes_received: int) -> bool:
        """One peer's view of the round that reached `epoch`; False if it was already recorded."""
        cur = self.db.execute(
            "INSERT OR IGNORE INTO round_reports VALUES (?, ?, ?, ?, ?, ?, ?)",
            (epoch, peer_id, t, group_size, seconds, bytes_sent, bytes_received),
        )
        return cur.rowcount > 0

    def rounds(self, limit: int = 20) -> list[RoundRow]:
        rows = self.db.execute(
            "SELECT epoch, MIN(t), MAX(group_size), MAX(seconds), SUM(bytes_sent), COUNT(*) FROM round_reports "
            "GROUP BY epoch ORDER BY epoch DESC LIMIT ?", (limit,)
        ).fetchall()
        return [RoundRow(int(e), float(t), int(m), float(s), int(b), int(n)) for e, t, m, s, b, n in rows]

    def bytes_sent_total(self) -> int:
        (total,) = self.db.execute("SELECT COALESCE(SUM(bytes_sent), 0) FROM round_reports").fetchone()
        return int(total)

    def round_seconds_all(self) -> list[float]:
        return [float(s) for (s,) in self.db.execute("SELECT seconds FROM round_reports")]

    # -- checkpoints -------------------------------------------------------------------------------------

    def add_checkpoint(self, epoch: int, *, t: float, path: str, digest: str, size: int, donor: str) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO checkpoints (epoch, t, path, digest, bytes, donor, removed) VALUES (?, ?, ?, ?, ?, ?, 0)",
            (epoch, t, path, digest, size, donor),
        )

    def mark_removed(self, epoch: int) -> None:
        self.db.execute("UPDATE checkpoints SET removed = 1 WHERE epoch = ?", (epoch,))

    def checkpoints(self, include_removed: bool = False) -> list[dict]:
        rows = self.db.execute(
            "SELECT epoch, t, path, digest, bytes, donor, removed FROM checkpoints "
            + ("" if include_removed else "WHERE removed = 0 ") + "ORDER BY epoch DESC"
        ).fetchall()
        keys = ("epoch", "time", "path", "digest", "bytes", "donor", "removed")
        return [dict(zip(keys, r)) | {"removed": bool(r[6])} for r in rows]
