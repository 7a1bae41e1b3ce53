"""`swarm invite create | list | revoke`: the organizer manages a run's invites (a `swarm.commands` plug-in).

    swarm invite create --run-dir runs/bert --expires 7d --max-uses 50
    swarm invite list
    swarm invite revoke ID

They work on the run folder's files (invites.sqlite, organizer.key), so they need no running
coordinator: a running one reads the same database on every token request and publishes new
revocations within seconds. `create` needs the run to have been launched once (it names the
coordinator's address), or `--initial-peers`.
"""
from __future__ import annotations

import argparse
import json
import re
import time
from datetime import datetime
from pathlib import Path

from swarm.errors import ConfigError, SwarmError

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """'90s', '30m', '12h', '7d', '2w' (or plain seconds) -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not match or float(match[1]) <= 0:
        raise ConfigError(f"bad duration {text!r}: a number with s, m, h, d or w, e.g. 7d")
    return float(match[1]) * UNITS[match[2] or "s"]


def register_invite(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("invite", help="make, list and revoke a run's invites", description="Make, list and revoke the invites of a run (works on the run folder; no running coordinator needed).")
    actions = p.add_subparsers(dest="invite_command", metavar="ACTION", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--run-dir", type=Path, help="the run's folder (default: the only one under ./runs)")

    c = actions.add_parser("create", help="make an invite and print it")
    common(c)
    c.add_argument("--expires", default="7d", help="admits newcomers for this long: 90s, 30m, 12h, 7d, 2w (default 7d)")
    c.add_argument("--max-uses", type=int, default=0, help="peers it admits (0: no limit)")
    c.add_argument("--label", default="", help="a note for `swarm invite list` (who it is for)")
    c.add_argument("--initial-peers", nargs="+", metavar="MULTIADDR", help="coordinator addresses (default: the run's, from its launch)")
    c.add_argument("--full", action="store_true", help="print the full invite (about 1 kB) instead of its one-line link")
    c.set_defaults(func=cmd_create)

    ls = actions.add_parser("list", help="show the run's invites and their uses")
    common(ls)
    ls.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    ls.set_defaults(func=cmd_list)

    r = actions.add_parser("revoke", help="revoke an invite: its peers are refused within seconds")
    common(r)
    r.add_argument("invite_id", metavar="ID", help="the invite's id (an older id that begins with '-': put -- before it)")
    r.set_defaults(func=cmd_revoke)


def resolve_run_dir(run_dir: Path | None, runs: Path = Path("runs")) -> Path:
    if run_dir is not None:
        if not (run_dir / "organizer.key").exists():
            raise ConfigError(f"{run_dir} is not a launched run folder (no organizer.key): swarm launch it first")
        return run_dir
    found = sorted(p.parent for p in runs.glob("*/organizer.key"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise ConfigError(f"no launched run under {runs}/: pass --run-dir runs/RUN")
    raise ConfigError(f"several runs under {runs}/ ({', '.join(p.name for p in found)}): pass --run-dir runs/RUN")


def _store(run_dir: Path):
    from .invites import InviteStore
    from .run_folder import RunFolder

    return InviteStore(RunFolder(run_dir).invites_path)


def cmd_create(args: argparse.Namespace) -> int:
    from .identity import load_or_create_rsa_key
    from .run_folder import RunFolder

    run_dir = resolve_run_dir(args.run_dir)
    expires_in = parse_duration(args.expires)
    folder = RunFolder(run_dir)
    store = _store(run_dir)
    try:
        state = folder.load_state()
        run_id = store.meta("run_id") or (state.run_id if state else run_dir.name)
        peers = args.initial_peers or store.meta("initial_peers") or []
        invite_only = bool(store.meta("invite_only", False))
        invite = store.create(load_or_create_rsa_key(folder.organizer_key_path), run_id=str(run_id), initial_peers=list(peers),
                              expires_in=expires_in, max_uses=args.max_uses, invite_only=invite_only, label=args.label)
    finally:
        store.close()
    uses = f"up to {args.max_uses} peers" if args.max_uses else "any number of peers"
    kind = "" if invite_only else " (open run: the invite is a join link; anyone may join without one)"
    print(f"invite {invite.invite_id} to run {run_id}: admits {uses} until {_when(invite.expires_at)}{kind}")
    from swarm.net.invite_link import make_link

    print(f"swarm join {invite.encode() if args.full else make_link(invite)}")
    return 0


def _when(t: float) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M")


def _invite_only(text: str) -> bool:
    """Whether the invite admits through tokens (counted uses); an open run's invite is only a join link."""
    from swarm.net.invite import Invite

    try:
        return Invite.parse(text).invite_only
    except SwarmError:
        return True


def cmd_list(args: argparse.Namespace) -> int:
    run_dir = resolve_run_dir(args.run_dir)
    store = _store(run_dir)
    try:
        rows = store.list()
    finally:
        store.close()
    now = time.time()
    if args.json:
        for row in rows:
            print(json.dumps({"id": row.invite_id, "label": row.label, "created": row.created, "expires": row.expires, "max_uses": row.max_uses,
                              "uses": row.uses, "revoked": row.revoked, "status": row.status(now), "invite": row.text}))
        return 0
    if not rows:
        print(f"no invites in {run_dir} yet: swarm invite create")
        return 0
    print(f"{'ID':<10} {'STATUS':<8} {'USES':>7} {'EXPIRES':<16} {'CREATED':<16} LABEL")
    for row in rows:
        uses = (f"{row.uses}/{row.max_uses}" if row.max_uses else f"{row.uses}") if _invite_only(row.text) else "-"
        print(f"{row.invite_id:<10} {row.status(now):<8} {uses:>7} {_when(row.expires):<16} {_when(row.created):<16} {row.label}")
    if any(not _invite_only(row.text) for row in rows):
        print("USES -: an open run's invite is a join link; anyone may join without one, so nothing is counted")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    run_dir = resolve_run_dir(args.run_dir)
    store = _store(run_dir)
    try:
        row = store.revoke(args.invite_id)
    finally:
        store.close()
    print(f"revoked invite {row.invite_id} ({row.uses} peers joined with it): a running coordinator refuses its tokens "
          "now and the swarm within seconds")
    return 0
