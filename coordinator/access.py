"""The organizer's side of access control: the token issuer, revocations, and the launch invite.

    access = AccessControl(folder, run_id, organizer_key, invite_only=True)
    observer = Observer(..., private_key=organizer_key, authorizer=access.authorizer())
    await access.start(observer.node)        # on the node's loop: registers `swarm.net.auth.issue`
    invite = access.launch_invite([bootstrap])

Token requests (`swarm.net.auth.issue`, see swarm.net.auth): the issuer parses the invite, checks that it
is for this run and signed by this run's organizer key ("forged" otherwise), that the request is
signed by the public key it asks a token for and is fresh, then asks the InviteStore (expiry,
revocation, uses; it records the use), and answers an AccessToken signed by the organizer key, or
the reason for the refusal in one line. The store is the authority, so revocations made by
`swarm invite revoke` in another process apply to the next request.

Revocations reach the swarm as a RevocationRecord under the organizer's key in the DHT, republished
whenever the set changes (checked every `period`) and every third of its TTL; every node re-reads it
(swarm.net.auth.keep_access) and from then on refuses the revoked invites' tokens.

An open run (not invite-only) registers no issuer: its invites are join links, and a peer without
an invite gets the DHT's plain refusal elsewhere. A run folder that was launched invite-only once
stays invite-only (InviteStore.invite_only).
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Awaitable, Callable

from hivemind.p2p import P2PContext
from hivemind.utils.crypto import RSAPrivateKey, RSAPublicKey

from swarm.errors import AuthError, describe
from swarm.net import clock, records
from swarm.net.auth import (
    ISSUE_HANDLER,
    MAX_CLOCK_SKEW,
    OrganizerTokens,
    SwarmAuthorizer,
    issue_token,
    token_request_bytes,
)
from swarm.net.invite import Invite
from swarm.net.invite_link import FETCH_HANDLER, parse_link, secret_of
from swarm.net.node import Node
from swarm.proto import swarm_pb2

from .invites import InviteStore
from .run_folder import RunFolder

logger = logging.getLogger(__name__)

LAUNCH_LABEL = "launch"
REVOCATIONS_TTL = 600.0
INVITE_ONLY_HINT = "this run is invite-only: join it with an invite from its organizer (swarm join swarm://...)"


def key_digest(public_key: bytes) -> str:
    return hashlib.sha256(public_key).hexdigest()[:32]


class AccessControl:
    def __init__(self, folder: RunFolder, run_id: str, organizer: RSAPrivateKey, *, invite_only: bool = False,
                 token_lifetime: float = 3600.0, invite_expires: float = 7 * 86400.0):
        self.run_id = run_id
        self.organizer = organizer
        self.organizer_key = organizer.get_public_key().to_bytes()
        self.store = InviteStore(folder.invites_path)
        self.invite_only = self.store.invite_only(invite_only)
        self.tokens = OrganizerTokens(organizer, run_id, token_lifetime)
        self.token_lifetime = token_lifetime
        self.invite_expires = invite_expires
        self._authorizer = self.tokens.authorizer() if self.invite_only else None
        self._node: Node | None = None
        self._published: tuple[str, ...] | None = None
        self._published_at = 0.0
        self.issued = 0
        self.refused = 0

    def authorizer(self) -> SwarmAuthorizer | None:
        """The coordinator node's authorizer (None for an open run)."""
        return self._authorizer

    def close(self) -> None:
        self.store.close()

    # -- the issuer (on the node's engine loop) --------------------------------------------------------------

    async def start(self, node: Node) -> None:
        self._node = node
        await node.p2p.add_protobuf_handler(FETCH_HANDLER, self._handle_fetch, swarm_pb2.TokenRequest)
        if self.invite_only:
            await node.p2p.add_protobuf_handler(ISSUE_HANDLER, self._handle_issue, swarm_pb2.TokenRequest)

    async def _handle_issue(self, request: swarm_pb2.TokenRequest, context: P2PContext) -> swarm_pb2.TokenResponse:
        why = self._refusal(request, str(context.remote_id))
        if why is not None:
            self.refused += 1
            logger.info("refused a token to %s: %s", str(context.remote_id)[-8:], why)
            return swarm_pb2.TokenResponse(error=why)
        token = issue_token(self.organizer, self.run_id, Invite.parse(request.invite).invite_id, request.public_key, self.token_lifetime)
        self.issued += 1
        return swarm_pb2.TokenResponse(token=token.SerializeToString())

    async def _handle_fetch(self, request: swarm_pb2.TokenRequest, context: P2PContext) -> swarm_pb2.TokenResponse:
        """An invite link's holder asks for the full invite (swarm.net.invite_link): given only for the secret it names."""
        try:
            link = parse_link(request.invite)
        except AuthError as e:
            return swarm_pb2.TokenResponse(error=str(e))
        row = self.store.get(link.invite_id) if link.run_id == self.run_id else None
        if row is None or secret_of(Invite.parse(row.text)) != link.secret:
            return swarm_pb2.TokenResponse(error="no such invite in this run (was the link copied in full?)")
        if row.status() in ("expired", "revoked"):   # uses are counted by the token issuer, per peer key
            return swarm_pb2.TokenResponse(error=row.status())
        return swarm_pb2.TokenResponse(token=row.text.encode())

    def _refusal(self, request: swarm_pb2.TokenRequest, peer_id: str) -> str | None:
        if not request.invite:
            return INVITE_ONLY_HINT
        try:
            invite = Invite.parse(request.invite)
        except AuthError as e:
            return str(e)
        if invite.run_id != self.run_id:
            return f"it is an invite to run {invite.run_id!r}, not {self.run_id!r}"
        if not invite.signed_by(self.organizer_key):
            return "forged (not signed by this run's organizer)"
        try:
            public_key = RSAPublicKey.from_bytes(request.public_key)
        except ValueError:
            return "malformed public key"
        if abs(request.time - clock.now()) > MAX_CLOCK_SKEW:
            return "stale token request (is this computer's clock right?)"
        assert self._node is not None
        signed = token_request_bytes(request.invite, request.public_key, request.time, self._node.peer_id)
        if not public_key.verify(signed, request.signature):
            return "bad token request signature"
        return self.store.admit(invite.invite_id, key_digest(request.public_key), peer_id)

    # -- the launch invite ------------------------------------------------------------------------------------

    def launch_invite(self, initial_peers: list[str]) -> Invite:
        """The invite `swarm launch` prints: reused across restarts while it is valid for at least a day more
        and names the same peers; otherwise a new one (unlimited uses, `invite_expires`)."""
        self.store.set_meta(run_id=self.run_id, initial_peers=initial_peers, invite_only=self.invite_only)
        for row in reversed(self.store.find(LAUNCH_LABEL)):
            invite = Invite.parse(row.text)
            if (row.status() == "active" and row.expires > time.time() + min(86400.0, self.invite_expires / 2)
                    and list(invite.initial_peers) == initial_peers and invite.invite_only == self.invite_only
                    and invite.signed_by(self.organizer_key)):
                return invite
        return self.store.create(self.organizer, run_id=self.run_id, initial_peers=initial_peers, expires_in=self.invite_expires,
                                 invite_only=self.invite_only, label=LAUNCH_LABEL)

    # -- revocations ------------------------------------------------------------------------------------------

    async def publish_revocations(self, publish: Callable[[str, records.RevocationRecord, float], Awaitable[bool]], *,
                                  force: bool = False) -> None:
        """Publish the revoked set when it changed (or `force`, or a third of its TTL passed); open runs need none."""
        if not self.invite_only:
            return
        revoked = tuple(self.store.revoked_ids())
        if self._authorizer is not None:
            self._authorizer.revoked = frozenset(revoked)   # the coordinator's own checks apply at once
        due = time.monotonic() - self._published_at > REVOCATIONS_TTL / 3
        if not (force or due or revoked != self._published):
            return
        record = records.RevocationRecord(invite_ids=list(revoked), time=time.time())
        if await publish(records.revocations_key(self.run_id), record, REVOCATIONS_TTL):
            if revoked != self._published and revoked:
                logger.info("published revocations: %s", ", ".join(revoked))
            self._published, self._published_at = revoked, time.monotonic()

    async def keep_revocations_published(self, publish: Callable[[str, records.RevocationRecord, float], Awaitable[bool]],
                                         period: float = 2.0) -> None:
        while True:
            try:
                await self.publish_revocations(publish)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                logger.warning("revocations not published: %s", describe(e))
            await asyncio.sleep(period)
