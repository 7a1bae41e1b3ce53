"""Did the coordinator lose anything when it was killed -9? Its run folder's databases, before and after.

`snapshot_history(run_dir)` reads (read-only) what the coordinator persisted: the metric samples, peers and
round reports of history.sqlite, its checkpoints (rows, and whether their folders exist) and the invites and
invite uses of invites.sqlite. `compare(before, after)` lists what the first held and the second lacks; a
checkpoint that retention removed since (marked removed, a newer one written) is not a loss.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

QUERIES = {
    "samples": ("history.sqlite", "SELECT t, epoch FROM samples"),
    "peers": ("history.sqlite", "SELECT peer_id FROM peers"),
    "round_reports": ("history.sqlite", "SELECT epoch, peer_id FROM round_reports"),
    "invites": ("invites.sqlite", "SELECT id FROM invites"),
    "invite_uses": ("invites.sqlite", "SELECT invite_id, key_digest FROM invite_uses"),
}


def _rows(path: Path, query: str) -> set[tuple] | None:
    if not path.exists():
        return None
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return {tuple(r) for r in db.execute(query)}
    except sqlite3.Error:
        return None
    finally:
        db.close()


def snapshot_history(run_dir: Path) -> dict:
    snap: dict = {name: _rows(run_dir / db, q) for name, (db, q) in QUERIES.items()}
    rows = _rows(run_dir / "history.sqlite", "SELECT epoch, path, removed FROM checkpoints") or set()
    snap["checkpoints"] = {
        int(epoch): {"removed": bool(removed), "exists": Path(path).exists() or (run_dir / path).exists()}   # relative: to our cwd
        for epoch, path, removed in rows
    }
    return snap


def compare(before: dict, after: dict) -> dict:
    """What `before` held that `after` lacks: {"lost": bool, "missing": {table: count}, "held": {table: count}}."""
    missing: dict[str, int] = {}
    held: dict[str, int] = {}
    for name in QUERIES:
        b, a = before.get(name), after.get(name)
        held[name] = len(b or ())
        if b and not a:
            missing[name] = len(b)
        elif b:
            gone = len(b - a)
            if gone:
                missing[name] = gone
    held["checkpoints"] = sum(1 for c in before["checkpoints"].values() if c["exists"] and not c["removed"])
    lost_checkpoints = 0
    for epoch, c in before["checkpoints"].items():
        if not c["exists"] or c["removed"]:
            continue
        now = after["checkpoints"].get(epoch)
        if now is None or (not now["removed"] and not now["exists"]):
            lost_checkpoints += 1
    if lost_checkpoints:
        missing["checkpoints"] = lost_checkpoints
    return {"lost": bool(missing), "missing": missing, "held": held}
