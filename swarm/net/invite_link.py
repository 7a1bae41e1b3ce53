"""Invite links: the one-line form of an invite, short enough to paste from a chat message.

    swarm://RUN:INVITE_ID:SECRET:KEY@/ip4/203.0.113.7/tcp/31337/p2p/12D3KooW...

A full invite (swarm.net.invite) carries the organizer's RSA public key and signature: about 1 kB of
text. A link carries only what finds the full invite and checks it, and one address of the
coordinator (the most public one it has): about 150 characters for a short run id.

- SECRET: the first 16 characters (96 bits) of the invite's signature, base64url. Only a holder of
  the invite knows it, so the coordinator hands the full invite (`swarm.net.invite.fetch`) to them
  only: an invite-only run's link is as secret as its invite, no more guessable.
- KEY: 22 characters (128 bits) of the SHA-256 of the organizer's key. The volunteer accepts the
  full invite only if it is the invite named (run, id, signature prefix), validly signed, by a key
  with this digest: a peer at the address that is not the organizer's cannot substitute its own.

After the fetch, everything proceeds as with the full invite (its initial peers list every
address of the coordinator, its expiry, use limit and invite-only flag are signed).
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import re
from dataclasses import dataclass
from typing import Sequence

from swarm.errors import AuthError, NetworkError, describe
from swarm.net.invite import SCHEME, Invite

FETCH_HANDLER = "swarm.net.invite.fetch"
SECRET_CHARS = 16
KEY_CHARS = 22
MAX_LINK = 600          # a run id (64), the ids (40) and one multiaddr: a real link is far shorter
_LINK = re.compile(r"swarm://([A-Za-z0-9_.-]{1,64}):([A-Za-z0-9_-]{1,32}):([A-Za-z0-9_-]{16}):([A-Za-z0-9_-]{22})@(/\S+)")


# addresses only a LAN (or a carrier's NAT) reaches; documentation ranges count as public here, as in examples
_LOCAL_NETS = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")]


@dataclass(frozen=True)
class InviteLink:
    run_id: str
    invite_id: str
    secret: str
    key_digest: str
    address: str

    def encode(self) -> str:
        return f"{SCHEME}{self.run_id}:{self.invite_id}:{self.secret}:{self.key_digest}@{self.address}"

    def names(self, invite: Invite) -> bool:
        """Whether `invite` is the one this link names, signed by the organizer key it names."""
        return (invite.run_id == self.run_id and invite.invite_id == self.invite_id and secret_of(invite) == self.secret
                and key_digest(invite.organizer_key) == self.key_digest and invite.signed_by(invite.organizer_key))


def key_digest(public_key: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(public_key).digest()).decode()[:KEY_CHARS]


def secret_of(invite: Invite) -> str:
    return base64.urlsafe_b64encode(invite.signature).decode()[:SECRET_CHARS]


def most_public(maddrs: Sequence[str]) -> str:
    """The address a remote volunteer most likely reaches: a public IP before a private one, loopback last."""
    def rank(m: str) -> int:
        parts = m.split("/")
        try:
            ip = ipaddress.ip_address(parts[2]) if len(parts) > 2 and parts[1] in ("ip4", "ip6") else None
        except ValueError:
            return 1
        if ip is None:
            return 0 if parts[1:2] == ["dns4"] or parts[1:2] == ["dns"] else 1
        return 3 if ip.is_loopback else 2 if ip.is_link_local or any(ip in net for net in _LOCAL_NETS) else 0
    if not maddrs:
        raise ValueError("no address")
    return sorted(maddrs, key=rank)[0]


def make_link(invite: Invite, address: str | None = None) -> str:
    """The link of `invite`, through `address` (default: its most public initial peer)."""
    address = address or most_public(invite.initial_peers)
    return InviteLink(invite.run_id, invite.invite_id, secret_of(invite), key_digest(invite.organizer_key), address).encode()


def is_link(text: str) -> bool:
    return text.strip().startswith(SCHEME) and "@" in text


def parse_link(text: str) -> InviteLink:
    text = text.strip()
    if len(text) > MAX_LINK:
        raise AuthError(f"this invite link is {len(text)} characters long, more than any real one ({MAX_LINK})")
    match = _LINK.fullmatch(text)
    if match is None:
        raise AuthError("this invite link is damaged or truncated: copy it in full (swarm://RUN:ID:SECRET:KEY@/ip4/...)")
    link = InviteLink(*match.groups())
    if "/p2p/" not in link.address:
        raise AuthError("this invite link's address names no peer (/p2p/...): copy it in full")
    return link


async def fetch_invite(p2p, link: InviteLink, timeout: float = 15.0) -> Invite:
    """Ask the coordinator at the link's address for the full invite; AuthError if refused or not the one named."""
    from hivemind.p2p import PeerID

    from swarm.proto import swarm_pb2

    coordinator = PeerID.from_base58(link.address.rsplit("/p2p/", 1)[1].split("/")[0])
    request = swarm_pb2.TokenRequest(invite=link.encode())
    try:
        reply = await asyncio.wait_for(p2p.call_protobuf_handler(coordinator, FETCH_HANDLER, request, swarm_pb2.TokenResponse), timeout)
    except asyncio.CancelledError:
        raise
    except Exception as e:
        raise NetworkError(f"the run's coordinator at {link.address} did not hand out the invite: {describe(e)}") from None
    if reply.error:
        raise AuthError(f"this run refused the invite: {reply.error}")
    try:
        invite = Invite.parse(reply.token.decode("utf-8", errors="replace"))
    except AuthError:
        raise AuthError(f"the peer at {link.address} answered something that is not an invite") from None
    if not link.names(invite):
        raise AuthError(f"the peer at {link.address} answered another invite than the link names (not this run's organizer?)")
    return invite


def resolve_invite(text: str, timeout: float = 30.0, *, reap: bool = False) -> Invite:
    """An invite string or link -> the verified full invite (a link costs one round trip to its coordinator,
    through a short-lived p2p daemon, shut down before this returns). `reap`: also run a Reaper, which ends the
    daemon even if this process is SIGKILLed meanwhile, but ends *every* descendant of the process when it closes:
    only for a process that has started no other children yet (`swarm join` does it first thing)."""
    if not is_link(text):
        return Invite.parse(text).verify()
    link = parse_link(text)
    import concurrent.futures
    import contextlib

    from hivemind.p2p import P2P
    from hivemind.utils.multiaddr import Multiaddr

    from swarm.process.lifecycle import Reaper

    async def fetch() -> Invite:
        try:
            p2p = await asyncio.wait_for(P2P.create(initial_peers=[Multiaddr(link.address)], host_maddrs=["/ip4/0.0.0.0/tcp/0"]), timeout)
        except Exception as e:
            raise NetworkError(f"could not reach the run's coordinator at {link.address}: "
                               f"{(str(e).strip().splitlines() or [type(e).__name__])[-1]}") from None
        try:
            return await fetch_invite(p2p, link, timeout)
        finally:
            await p2p.shutdown()

    with Reaper().start() if reap else contextlib.nullcontext():
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="swarm-invite") as pool:   # callers may run a loop
            return pool.submit(asyncio.run, fetch()).result()
