"""Invites: the string an organizer hands to a volunteer, `swarm://` + base64url(msgpack).

    invite = Invite.create(organizer_key, run_id="bert", initial_peers=[...], expires_at=time.time() + 7 * 86400)
    text = invite.encode()                 # swarm://...
    Invite.parse(text).verify()            # AuthError when malformed or not signed by the key it names

An invite carries what a newcomer needs and cannot otherwise trust: the run id, initial peers
(the coordinator's multiaddrs), the organizer's public key (it signs the run's config record and
every access token of the run), whether the run is invite-only, the invite's id, expiry and use
limit, and the organizer's signature over all of it.

What the signature proves, and to whom. A peer can only check that the invite is consistent (signed
by the key it names): anyone can make a self-consistent invite with a key of their own. The
coordinator checks that the key is *its* organizer key before it issues a token, so a forged invite
(signed by another key) gets no token, and a forged key in an invite gets its holder nothing but a
config record and tokens nobody else accepts. The coordinator's database is the authority on
revocation and uses; expiry is in the signed invite and in the database alike.
"""
from __future__ import annotations

import base64
import binascii
import secrets
import time
from dataclasses import dataclass, field, replace
from typing import Sequence

import msgpack
from hivemind.utils.crypto import RSAPrivateKey, RSAPublicKey

from swarm.errors import AuthError, describe

SCHEME = "swarm://"
VERSION = 1


def new_invite_id() -> str:
    """8 url-safe characters, never a leading '-': `swarm invite revoke ID` would read such an id as an option (1 invite
    in 64 could not be revoked by its id; seen as a CI failure of test_revocation_reaches_the_peers)."""
    while True:
        invite_id = secrets.token_urlsafe(6)
        if not invite_id.startswith("-"):
            return invite_id


@dataclass(frozen=True)
class Invite:
    run_id: str
    invite_id: str
    initial_peers: tuple[str, ...]
    organizer_key: bytes          # OpenSSH bytes of the organizer's RSA public key
    expires_at: float             # UNIX time after which nobody new joins with it
    max_uses: int = 0             # distinct peers (public keys) that may join with it; 0: no limit
    invite_only: bool = True      # the run refuses peers without a token (False: the invite is a join link)
    signature: bytes = field(default=b"", repr=False)   # raw RSA-PSS signature of signed_bytes()

    # -- making and signing --------------------------------------------------------------------------

    @classmethod
    def create(cls, organizer: RSAPrivateKey, *, run_id: str, initial_peers: Sequence[str], expires_at: float,
               max_uses: int = 0, invite_only: bool = True, invite_id: str | None = None) -> "Invite":
        invite = cls(run_id=run_id, invite_id=invite_id or new_invite_id(), initial_peers=tuple(initial_peers),
                     organizer_key=organizer.get_public_key().to_bytes(), expires_at=float(expires_at),
                     max_uses=int(max_uses), invite_only=bool(invite_only))
        # hivemind's keys sign to base64 text; the invite keeps the raw bytes (a shorter string to paste)
        return replace(invite, signature=base64.b64decode(organizer.sign(invite.signed_bytes())))

    def signed_bytes(self) -> bytes:
        """What the organizer signs: every field but the signature, in a fixed order."""
        return msgpack.packb([VERSION, self.run_id, self.invite_id, list(self.initial_peers), self.organizer_key,
                              self.expires_at, self.max_uses, self.invite_only], use_bin_type=True)

    def signed_by(self, public_key: bytes) -> bool:
        """Whether this invite names `public_key` as its organizer and carries that key's valid signature."""
        if public_key != self.organizer_key:
            return False
        try:
            return RSAPublicKey.from_bytes(public_key).verify(self.signed_bytes(), base64.b64encode(self.signature))
        except ValueError:
            return False

    def verify(self) -> "Invite":
        """Self-consistency: signed by the key it names (AuthError otherwise)."""
        if not self.signed_by(self.organizer_key):
            raise AuthError("this invite is not validly signed (was it copied in full?)")
        return self

    @property
    def expired(self) -> bool:
        return time.time() > self.expires_at

    # -- the string ----------------------------------------------------------------------------------

    def encode(self) -> str:
        body = msgpack.packb(
            {"v": VERSION, "run": self.run_id, "id": self.invite_id, "peers": list(self.initial_peers), "org": self.organizer_key,
             "exp": self.expires_at, "uses": self.max_uses, "only": self.invite_only, "sig": self.signature},
            use_bin_type=True,
        )
        return SCHEME + base64.urlsafe_b64encode(body).decode().rstrip("=")

    @classmethod
    def parse(cls, text: str) -> "Invite":
        """Parse an invite string; AuthError with one clear line when it is not one."""
        text = text.strip()
        if not text.startswith(SCHEME):
            raise AuthError(f"an invite starts with {SCHEME} (got {text[:16]!r}...)")
        body = text[len(SCHEME):]
        if "@" in body:
            raise AuthError("this is an invite link (swarm://RUN:...@ADDRESS): swarm.net.invite_link.resolve_invite fetches its invite")
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            data = msgpack.unpackb(raw, raw=False)
            if not isinstance(data, dict) or data.get("v") != VERSION:
                raise ValueError(f"unknown invite version {data.get('v') if isinstance(data, dict) else '?'}")
            invite = cls(
                run_id=_typed(data["run"], str), invite_id=_typed(data["id"], str),
                initial_peers=tuple(_typed(p, str) for p in _typed(data["peers"], list)),
                organizer_key=_typed(data["org"], bytes), expires_at=float(_typed(data["exp"], (int, float))),
                max_uses=_typed(data["uses"], int), invite_only=_typed(data["only"], bool), signature=_typed(data["sig"], bytes),
            )
        except (binascii.Error, ValueError, KeyError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
            raise AuthError(f"this invite is damaged or truncated ({describe(e)}): copy it in full") from None
        if not invite.run_id or not invite.initial_peers:
            raise AuthError("this invite names no run or no initial peers")
        return invite


def _typed(value: object, kind: type | tuple[type, ...]):
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"unexpected {type(value).__name__} in the invite")
    return value
