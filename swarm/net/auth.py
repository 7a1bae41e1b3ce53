"""Access control for invite-only runs: organizer-signed tokens, checked on every request.

The protocol (hivemind's moderated-network design, learning-at-home/hivemind#253):

1. A volunteer holds an invite (swarm.net.invite). At start-up its node asks the coordinator for an
   access token (`swarm.net.auth.issue`, a unary P2P handler): the request carries the invite and the
   peer's RSA public key, signed by that key. The coordinator checks the invite (signed by its
   organizer key, not expired, not revoked, uses left) and answers a hivemind `AccessToken`:
   subject `RUN/INVITE_ID`, the peer's public key, an expiry (an hour by default), and the
   organizer's signature. The peer renews it at half its lifetime; a coordinator that is down
   then only matters once the token expires.
2. Every request a node sends carries its token and is signed by its key:
   - DHT RPCs through hivemind's own machinery: `SwarmAuthorizer` is a `TokenAuthorizerBase`
     passed as `authorizer=` to `DHTNode.create` on every node of the run, the coordinator's
     included, so requests *and* responses are signed and checked (token, signature, freshness,
     nonce);
   - swarm's own handlers (JoinRequest, the first PartChunk of an aggregate stream, StateRequest)
     carry the same `RequestAuthInfo` in their `auth` bytes, signed over the message *and the
     sender's peer id* (`sign_message` / `check_message`), so a captured request is refused when
     replayed (nonce seen) or replayed by another peer (signature does not match its id).
3. A request is refused unless its token is signed by the organizer key of the run, names this run,
   has not expired, and its invite is not revoked. Revocations are a `RevocationRecord` in the DHT
   signed by the organizer key; every node re-reads it every few seconds (`keep_access`).

A run without an authorizer (None) is an open run: nothing is signed or checked. A node of an
invite-only run and a node of an open run do not understand each other (their DHT responses are
unsigned or unexpected), which is why the invite says which kind of run it is.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
from datetime import datetime, timezone
from typing import Awaitable, Callable, Protocol, Sequence

import msgpack
from google.protobuf.message import DecodeError, Message
from hivemind.p2p import P2P, PeerID
from hivemind.proto.auth_pb2 import AccessToken, RequestAuthInfo
from hivemind.utils.auth import TokenAuthorizerBase
from hivemind.utils.crypto import RSAPrivateKey, RSAPublicKey
from hivemind.utils.timed_storage import TimedStorage

from swarm.errors import AuthError, NetworkError, describe
from swarm.net import clock
from swarm.net.invite import Invite
from swarm.proto import swarm_pb2

logger = logging.getLogger(__name__)

ISSUE_HANDLER = "swarm.net.auth.issue"
ORGANIZER = "organizer"             # the invite id in the coordinator's own tokens
MAX_CLOCK_SKEW = 60.0               # a request signed longer ago (or ahead) than this is stale
NONCE_MEMORY = 3 * MAX_CLOCK_SKEW
NEAR_EXPIRY = 60.0                  # a token this close to expiry must be renewed before use
_DOMAIN = b"swarm-auth-v1\0"


# ---------------------------------------------------------------------------------------------------
# Tokens


def _format_time(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat()


def token_expiry(token: AccessToken) -> float:
    """The token's expiry as UNIX time (-inf when unreadable)."""
    try:
        return datetime.fromisoformat(token.expiration_time).timestamp()
    except (ValueError, TypeError):
        return float("-inf")


def issue_token(organizer: RSAPrivateKey, run_id: str, invite_id: str, public_key: bytes, lifetime: float) -> AccessToken:
    """An access token for `public_key`, signed by the organizer key (hivemind's AccessToken convention)."""
    token = AccessToken(username=f"{run_id}/{invite_id}", public_key=public_key, expiration_time=_format_time(clock.now() + lifetime))
    token.signature = organizer.sign(token.SerializeToString())
    return token


def token_problem(token: AccessToken, organizer: RSAPublicKey, run_id: str, revoked: frozenset[str] = frozenset()) -> str | None:
    """Why `token` gives no access to the run (None: it does)."""
    if not token.public_key or not token.signature:
        return "no token"
    unsigned = AccessToken()
    unsigned.CopyFrom(token)
    unsigned.signature = b""
    if not organizer.verify(unsigned.SerializeToString(), token.signature):
        return "token not signed by this run's organizer"
    run, _, invite_id = token.username.rpartition("/")
    if run != run_id:
        return "token of another run"
    if token_expiry(token) < clock.now():
        return "token expired"
    if invite_id in revoked:
        return "invite revoked"
    return None


# ---------------------------------------------------------------------------------------------------
# The authorizer


class TokenSource(Protocol):
    async def __call__(self, p2p: P2P | None, private_key: RSAPrivateKey) -> AccessToken: ...


class SwarmAuthorizer(TokenAuthorizerBase):
    """hivemind's token authorizer for one run, plus the same checks for swarm's own P2P messages.

    `token_source(p2p, private_key)` gets a fresh token: from the coordinator for a volunteer
    (`request_token`), minted locally for the organizer (`OrganizerTokens`). Used on one event loop.
    """

    def __init__(self, private_key: RSAPrivateKey, organizer_key: bytes, run_id: str, token_source: TokenSource,
                 *, token: AccessToken | None = None, on_token: Callable[[AccessToken], None] | None = None):
        super().__init__(private_key)
        self.organizer_key = organizer_key
        self._organizer = RSAPublicKey.from_bytes(organizer_key)
        self.run_id = run_id
        self.revoked: frozenset[str] = frozenset()
        self._token_source = token_source
        self._on_token = on_token
        self._p2p: P2P | None = None
        self._token_received = clock.now()
        self._seen = TimedStorage()
        if token is not None and self.is_token_valid(token):
            self._local_access_token = token

    @property
    def private_key(self) -> RSAPrivateKey:
        return self._local_private_key

    @property
    def token(self) -> AccessToken | None:
        return self._local_access_token

    def attach(self, p2p: P2P) -> None:
        """The node's P2P, over which a volunteer asks the coordinator for tokens."""
        self._p2p = p2p

    # -- hivemind's interface ------------------------------------------------------------------------

    async def get_token(self) -> AccessToken:
        token = await self._token_source(self._p2p, self._local_private_key)
        problem = self.token_problem(token)
        if problem is not None or token.public_key != self._local_public_key.to_bytes():
            raise AuthError(f"the coordinator returned an unusable token: {problem or 'issued for another key'}")
        self._token_received = clock.now()
        if self._on_token is not None:
            self._on_token(token)
        return token

    def is_token_valid(self, access_token: AccessToken) -> bool:
        return self.token_problem(access_token) is None

    def does_token_need_refreshing(self, access_token: AccessToken) -> bool:
        return token_expiry(access_token) - clock.now() < NEAR_EXPIRY

    async def refresh_token_if_needed(self) -> None:
        if self._local_access_token is None or self.does_token_need_refreshing(self._local_access_token):
            async with self._refresh_lock:
                if self._local_access_token is None or self.does_token_need_refreshing(self._local_access_token):
                    self._local_access_token = await self.get_token()

    # -- renewal ahead of expiry -----------------------------------------------------------------------

    def renewal_due(self) -> bool:
        """Half the token's lifetime has passed (renew early, so a coordinator outage costs nothing)."""
        token = self._local_access_token
        if token is None:
            return True
        expiry = token_expiry(token)
        return clock.now() >= self._token_received + (expiry - self._token_received) / 2

    async def renew(self) -> None:
        async with self._refresh_lock:
            self._local_access_token = await self.get_token()

    def token_problem(self, token: AccessToken) -> str | None:
        return token_problem(token, self._organizer, self.run_id, self.revoked)

    @property
    def own_problem(self) -> str | None:
        """Why this node's own token no longer gives access (e.g. its invite was revoked), if it does not."""
        token = self._local_access_token
        return "no token" if token is None else self.token_problem(token)

    # -- swarm's own messages ------------------------------------------------------------------------

    def sign_message(self, message: Message, sender: PeerID) -> None:
        """Fill `message.auth` with our token and a signature over the message and our peer id."""
        token = self._local_access_token
        if token is None:
            raise AuthError("this node holds no access token")
        info = RequestAuthInfo(time=clock.now(), nonce=secrets.token_bytes(8))
        info.client_access_token.CopyFrom(token)
        message.auth = info.SerializeToString()
        info.signature = self._local_private_key.sign(_DOMAIN + sender.to_bytes() + message.SerializeToString())
        message.auth = info.SerializeToString()

    def check_message(self, message: Message, sender: PeerID) -> str | None:
        """Why `message`, received from `sender`, must be refused (None: it is authorized)."""
        if not message.auth:
            return "no token"
        info = RequestAuthInfo()
        try:
            info.ParseFromString(message.auth)
        except DecodeError:
            return "malformed auth"
        problem = self.token_problem(info.client_access_token)
        if problem is not None:
            return problem
        signature = info.signature
        info.signature = b""
        unsigned = type(message)()
        unsigned.CopyFrom(message)
        unsigned.auth = info.SerializeToString()
        try:
            client = RSAPublicKey.from_bytes(info.client_access_token.public_key)
        except ValueError:
            return "malformed token key"
        if not client.verify(_DOMAIN + sender.to_bytes() + unsigned.SerializeToString(), signature):
            return "bad request signature"
        now = clock.now()
        if abs(info.time - now) > MAX_CLOCK_SKEW:
            return "stale request (clocks differ, or a replay)"
        key = info.client_access_token.public_key + info.nonce
        with self._seen.freeze():
            if key in self._seen:
                return "replayed request"
        self._seen.store(key, None, now + NONCE_MEMORY)
        return None


# ---------------------------------------------------------------------------------------------------
# Where tokens come from


class OrganizerTokens:
    """The coordinator's token source: it signs its own tokens with the organizer key."""

    def __init__(self, organizer: RSAPrivateKey, run_id: str, lifetime: float = 3600.0):
        self.organizer, self.run_id, self.lifetime = organizer, run_id, lifetime

    async def __call__(self, p2p: P2P | None, private_key: RSAPrivateKey) -> AccessToken:
        return issue_token(self.organizer, self.run_id, ORGANIZER, private_key.get_public_key().to_bytes(), self.lifetime)

    def authorizer(self, private_key: RSAPrivateKey | None = None) -> SwarmAuthorizer:
        """The organizer node's authorizer (its DHT records are signed by the organizer key too, by default)."""
        key = private_key or self.organizer
        return SwarmAuthorizer(key, self.organizer.get_public_key().to_bytes(), self.run_id, self)


def token_request_bytes(invite: str, public_key: bytes, t: float, coordinator: PeerID) -> bytes:
    return msgpack.packb([_DOMAIN, invite, public_key, t, coordinator.to_bytes()], use_bin_type=True)


def coordinator_ids(initial_peers: Sequence[str]) -> list[PeerID]:
    ids = []
    for maddr in initial_peers:
        if "/p2p/" in maddr:
            try:
                ids.append(PeerID.from_base58(maddr.rsplit("/p2p/", 1)[1].split("/")[0]))
            except Exception:
                continue
    return list(dict.fromkeys(ids))


async def request_token(p2p: P2P, invite: Invite, private_key: RSAPrivateKey, timeout: float = 10.0) -> AccessToken:
    """Ask the invite's coordinator for a token. AuthError when it refuses the invite, NetworkError when unreachable."""
    text = invite.encode()
    public_key = private_key.get_public_key().to_bytes()
    errors = []
    for coordinator in coordinator_ids(invite.initial_peers):
        t = clock.now()
        request = swarm_pb2.TokenRequest(invite=text, public_key=public_key, time=t,
                                         signature=private_key.sign(token_request_bytes(text, public_key, t, coordinator)))
        try:
            reply = await asyncio.wait_for(p2p.call_protobuf_handler(coordinator, ISSUE_HANDLER, request, swarm_pb2.TokenResponse), timeout)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            errors.append(f"{str(coordinator)[-8:]}: {type(e).__name__}")
            continue
        if reply.error:
            raise AuthError(f"this run refused the invite: {reply.error}")
        token = AccessToken()
        try:
            token.ParseFromString(reply.token)
        except DecodeError:
            raise AuthError("the coordinator sent a malformed access token") from None
        return token
    raise NetworkError("could not reach the run's coordinator for an access token (" + ("; ".join(errors) or "no coordinator address in the invite") + ")")


class InviteAccess:
    """A volunteer's access to a run through an invite: its RSA key and its current token.

    `authorizer()` makes a SwarmAuthorizer for a node (None for an open run); every authorizer made
    here starts from the latest token, so a short-lived probe node and the training node share it."""

    def __init__(self, invite: Invite | str, private_key: RSAPrivateKey | None = None):
        if isinstance(invite, str):   # a full invite, or a link: then its coordinator hands out the full one
            from swarm.net.invite_link import resolve_invite

            invite = resolve_invite(invite)
        self.invite = invite.verify()
        self.private_key = private_key or RSAPrivateKey()
        self.token: AccessToken | None = None

    @property
    def run_id(self) -> str:
        return self.invite.run_id

    def _remember(self, token: AccessToken) -> None:
        self.token = token

    async def _request(self, p2p: P2P | None, private_key: RSAPrivateKey) -> AccessToken:
        if p2p is None:
            raise AuthError("no P2P node to ask the coordinator for a token")
        return await request_token(p2p, self.invite, private_key)

    def authorizer(self) -> SwarmAuthorizer | None:
        if not self.invite.invite_only:
            return None
        return SwarmAuthorizer(self.private_key, self.invite.organizer_key, self.invite.run_id, self._request,
                               token=self.token, on_token=self._remember)


# ---------------------------------------------------------------------------------------------------
# Keeping access: renew the token, follow revocations


async def keep_access(authorizer: SwarmAuthorizer, fetch_revoked: Callable[[], Awaitable[frozenset[str] | None]],
                      period: float = 5.0, retry: float = 30.0) -> None:
    """Forever: renew the token at half its lifetime (retrying while the coordinator is away), and
    re-read the organizer's revocations every `period` seconds. Runs on the node's loop; cancel to stop."""
    next_renewal = 0.0
    while True:
        if authorizer.renewal_due() and time.monotonic() >= next_renewal:
            try:
                await authorizer.renew()
            except asyncio.CancelledError:
                raise
            except AuthError as e:
                logger.error("access token not renewed: %s", e)
                next_renewal = time.monotonic() + retry
            except Exception as e:
                logger.warning("access token not renewed yet (%s); the current one expires at %s", describe(e),
                               authorizer.token.expiration_time if authorizer.token else "-")
                next_renewal = time.monotonic() + retry
        try:
            revoked = await fetch_revoked()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            logger.debug("revocations not read: %s", e)
            revoked = None
        if revoked is not None and revoked != authorizer.revoked:
            newly = revoked - authorizer.revoked
            authorizer.revoked = revoked
            if newly:
                logger.info("the organizer revoked invite(s) %s: their tokens are refused from now on", ", ".join(sorted(newly)))
            if authorizer.own_problem == "invite revoked":
                logger.error("this peer's invite was revoked by the organizer: the swarm refuses it from now on")
        await asyncio.sleep(period)
