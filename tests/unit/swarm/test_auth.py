"""swarm.net.invite and swarm.net.auth without a network: invite strings, tokens, signed messages, DHT requests."""
from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest
from hivemind.p2p import PeerID
from hivemind.proto import dht_pb2
from hivemind.utils.crypto import RSAPrivateKey

from swarm.errors import AuthError
from swarm.net.auth import OrganizerTokens, SwarmAuthorizer, issue_token, token_problem
from swarm.net.invite import Invite
from swarm.proto import swarm_pb2

pytestmark = pytest.mark.timeout(60)

ME = PeerID.from_base58("QmTUAGoJuL1Zi9qLgqcpJUGHxVmbakfX7LDivA6Q6CJrBm")
OTHER = PeerID.from_base58("QmcJ3KdqgMmnLkzKHUwPL57HZxcQDnaumuJv8T2syLXUx2")
PEERS = [f"/ip4/127.0.0.1/tcp/4000/p2p/{ME}"]


@pytest.fixture(scope="module")
def keys():
    return {name: RSAPrivateKey() for name in ("organizer", "mallory", "alice", "bob")}


def member(keys, name: str, *, run_id: str = "run", invite_id: str = "inv1", lifetime: float = 3600.0, organizer: str = "organizer") -> SwarmAuthorizer:
    """An authorizer whose tokens come straight from an organizer key (what the coordinator would answer)."""
    org = keys[organizer]

    async def source(p2p, private_key):
        return issue_token(org, run_id, invite_id, private_key.get_public_key().to_bytes(), lifetime)

    return SwarmAuthorizer(keys[name], org.get_public_key().to_bytes(), "run", source)   # trusts the key that signs its tokens


def with_token(authorizer: SwarmAuthorizer) -> SwarmAuthorizer:
    asyncio.run(authorizer.refresh_token_if_needed())
    return authorizer


# -- invites -------------------------------------------------------------------------------------------


def test_invite_round_trips_and_verifies(keys):
    invite = Invite.create(keys["organizer"], run_id="run", initial_peers=PEERS, expires_at=time.time() + 60, max_uses=3)
    text = invite.encode()
    assert text.startswith("swarm://") and len(text) < 1200
    back = Invite.parse(text)
    assert back == invite and back.verify() is back
    assert back.signed_by(keys["organizer"].get_public_key().to_bytes())
    assert not back.signed_by(keys["mallory"].get_public_key().to_bytes())
    assert not back.expired and back.max_uses == 3 and back.invite_only


def test_tampered_or_self_signed_invites(keys):
    invite = Invite.create(keys["organizer"], run_id="run", initial_peers=PEERS, expires_at=time.time() + 60)
    for change in ({"max_uses": 1000}, {"expires_at": time.time() + 10**6}, {"run_id": "other"}, {"invite_only": False}):
        with pytest.raises(AuthError, match="not validly signed"):
            dataclasses.replace(invite, **change).verify()
    # mallory's invite is self-consistent: only the coordinator can tell it is not the organizer's
    forged = Invite.create(keys["mallory"], run_id="run", initial_peers=PEERS, expires_at=time.time() + 60)
    assert forged.verify() and not forged.signed_by(keys["organizer"].get_public_key().to_bytes())


@pytest.mark.parametrize("text", ["", "http://x", "swarm://", "swarm://!!!!", "swarm://aGVsbG8", "swarm://gqF2AaNydW6g"])
def test_malformed_invites_are_one_clear_line(text):
    with pytest.raises(AuthError) as e:
        Invite.parse(text)
    assert "\n" not in str(e.value)


def test_truncated_invite(keys):
    text = Invite.create(keys["organizer"], run_id="run", initial_peers=PEERS, expires_at=time.time() + 60).encode()
    with pytest.raises(AuthError, match="damaged or truncated"):
        Invite.parse(text[:-40])


# -- tokens --------------------------------------------------------------------------------------------


def test_token_problems(keys):
    org = keys["organizer"].get_public_key()
    pub = keys["alice"].get_public_key().to_bytes()
    good = issue_token(keys["organizer"], "run", "inv1", pub, 60)
    assert token_problem(good, org, "run") is None
    assert token_problem(issue_token(keys["mallory"], "run", "inv1", pub, 60), org, "run") == "token not signed by this run's organizer"
    assert token_problem(issue_token(keys["organizer"], "run", "inv1", pub, -1), org, "run") == "token expired"
    assert token_problem(issue_token(keys["organizer"], "other", "inv1", pub, 60), org, "run") == "token of another run"
    assert token_problem(good, org, "run", frozenset({"inv1"})) == "invite revoked"
    tampered = type(good)()
    tampered.CopyFrom(good)
    tampered.public_key = keys["mallory"].get_public_key().to_bytes()   # someone else's key under alice's signature
    assert token_problem(tampered, org, "run") == "token not signed by this run's organizer"


# -- swarm's own messages ------------------------------------------------------------------------------


def join_request() -> swarm_pb2.JoinRequest:
    return swarm_pb2.JoinRequest(run_id="run", epoch=3, peer_id=str(ME), role="trainer", weight=8.0)


def test_signed_message_accepted_once(keys):
    alice, bob = with_token(member(keys, "alice")), with_token(member(keys, "bob"))
    request = join_request()
    alice.sign_message(request, ME)
    assert bob.check_message(request, ME) is None
    assert bob.check_message(request, ME) == "replayed request"        # the same bytes again
    replayed_elsewhere = with_token(member(keys, "bob"))
    assert replayed_elsewhere.check_message(request, OTHER) == "bad request signature"   # by another peer id


def test_unsigned_forged_tampered_and_stale_messages(keys):
    bob = with_token(member(keys, "bob"))
    assert bob.check_message(join_request(), ME) == "no token"
    garbage = join_request()
    garbage.auth = b"\xff\x01garbage"
    assert bob.check_message(garbage, ME) in ("malformed auth", "no token")
    forger = with_token(member(keys, "mallory", organizer="mallory"))   # a token mallory signed herself
    forged = join_request()
    forger.sign_message(forged, ME)
    assert bob.check_message(forged, ME) == "token not signed by this run's organizer"
    tampered = join_request()
    with_token(member(keys, "alice")).sign_message(tampered, ME)
    tampered.weight = 10**9
    assert bob.check_message(tampered, ME) == "bad request signature"
    expired = join_request()
    with_token(member(keys, "alice", lifetime=70)).sign_message(expired, ME)
    bob_later = with_token(member(keys, "bob"))
    real_time = time.time
    try:
        time.time = lambda: real_time() + 120    # type: ignore[assignment]
        assert bob_later.check_message(expired, ME) == "token expired"
    finally:
        time.time = real_time                  # type: ignore[assignment]


def test_revoked_invite_is_refused_at_once(keys):
    alice, bob = with_token(member(keys, "alice", invite_id="inv7")), with_token(member(keys, "bob"))
    request = join_request()
    alice.sign_message(request, ME)
    bob.revoked = frozenset({"inv7"})
    assert bob.check_message(request, ME) == "invite revoked"
    alice.revoked = frozenset({"inv7"})
    assert alice.own_problem == "invite revoked"


def test_every_swarm_message_with_auth_field():
    for message in (swarm_pb2.JoinRequest(), swarm_pb2.PartChunk(), swarm_pb2.StateRequest()):
        assert "auth" in message.DESCRIPTOR.fields_by_name


# -- hivemind's DHT requests, through the same authorizer ------------------------------------------------


def test_dht_requests_signed_checked_and_not_replayable(keys):
    async def main():
        alice, bob = member(keys, "alice"), member(keys, "bob")
        request = dht_pb2.PingRequest(peer=dht_pb2.NodeInfo(node_id=b"x"))
        await alice.sign_request(request, None)
        assert await bob.validate_request(request)
        await alice.sign_request(replay := dht_pb2.PingRequest(), None)
        replay.CopyFrom(request)
        assert not await bob.validate_request(replay)                  # nonce seen
        assert not await bob.validate_request(dht_pb2.PingRequest())   # no token at all
        mallory = member(keys, "mallory", organizer="mallory")
        forged = dht_pb2.PingRequest()
        await mallory.sign_request(forged, None)
        assert not await bob.validate_request(forged)
        response = dht_pb2.PingResponse()
        fresh = dht_pb2.PingRequest()
        await alice.sign_request(fresh, None)
        await bob.sign_response(response, fresh)
        assert await alice.validate_response(response, fresh)
    asyncio.run(main())


def test_organizer_tokens_for_the_coordinators_own_node(keys):
    authorizer = with_token(OrganizerTokens(keys["organizer"], "run").authorizer())
    assert authorizer.own_problem is None
    assert authorizer.token.username == "run/organizer"
    assert not authorizer.renewal_due()
