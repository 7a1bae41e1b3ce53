"""coordinator.invites and coordinator.access without a network: uses, expiry, revocation, the issuer's checks."""
from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from hivemind.p2p import PeerID
from hivemind.proto.auth_pb2 import AccessToken
from hivemind.utils.crypto import RSAPrivateKey

from coordinator.access import INVITE_ONLY_HINT, AccessControl
from coordinator.invite_cli import parse_duration
from coordinator.invites import InviteStore
from coordinator.run_folder import RunFolder
from swarm.errors import ConfigError
from swarm.net.auth import token_problem, token_request_bytes
from swarm.net.invite import Invite
from swarm.proto import swarm_pb2

pytestmark = pytest.mark.timeout(60)

COORDINATOR = PeerID.from_base58("QmTUAGoJuL1Zi9qLgqcpJUGHxVmbakfX7LDivA6Q6CJrBm")
PEERS = [f"/ip4/127.0.0.1/tcp/4000/p2p/{COORDINATOR}"]


@pytest.fixture(scope="module")
def keys():
    return {name: RSAPrivateKey() for name in ("organizer", "mallory", "alice", "bob")}


@pytest.fixture
def store(tmp_path):
    s = InviteStore(tmp_path / "invites.sqlite")
    yield s
    s.close()


def test_max_uses_count_distinct_peers(store, keys):
    invite = store.create(keys["organizer"], run_id="run", initial_peers=PEERS, expires_in=60, max_uses=1)
    assert store.admit(invite.invite_id, "alice") is None
    assert store.admit(invite.invite_id, "alice") is None            # renewing is not a new use
    assert store.admit(invite.invite_id, "bob") == "used up (1 of 1 uses)"
    row = store.get(invite.invite_id)
    assert row.uses == 1 and row.status() == "used up"


def test_expiry_admits_no_newcomer_but_keeps_members(store, keys):
    invite = store.create(keys["organizer"], run_id="run", initial_peers=PEERS, expires_in=60)
    assert store.admit(invite.invite_id, "alice") is None
    later = time.time() + 120
    assert store.admit(invite.invite_id, "bob", now=later) == "expired"
    assert store.admit(invite.invite_id, "alice", now=later) is None
    assert store.get(invite.invite_id).status(later) == "expired"


def test_revocation_is_final_and_survives_reopening(tmp_path, keys):
    store = InviteStore(tmp_path / "invites.sqlite")
    invite = store.create(keys["organizer"], run_id="run", initial_peers=PEERS, expires_in=60)
    assert store.admit(invite.invite_id, "alice") is None
    assert store.revoke(invite.invite_id).uses == 1
    with pytest.raises(ConfigError, match="already revoked"):
        store.revoke(invite.invite_id)
    with pytest.raises(ConfigError, match="no invite"):
        store.revoke("nope")
    store.close()
    again = InviteStore(tmp_path / "invites.sqlite")   # what a restarted coordinator (kill -9 included) reads
    try:
        assert again.admit(invite.invite_id, "alice") == "revoked"
        assert again.revoked_ids() == [invite.invite_id]
        assert again.admit("unknown", "alice").startswith("unknown invite")
    finally:
        again.close()


def test_invite_only_is_sticky(store):
    assert store.invite_only(False) is False
    assert store.invite_only(True) is True
    assert store.invite_only(False) is True


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("30m", 1800), ("12h", 43200), ("7d", 604800), ("2w", 1209600), ("5", 5), ("1.5h", 5400)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "7x", "-1d", "0", "d"])
def test_parse_duration_rejects(text):
    with pytest.raises(ConfigError):
        parse_duration(text)


# -- the issuer ---------------------------------------------------------------------------------------------


@pytest.fixture
def access(tmp_path, keys):
    a = AccessControl(RunFolder(tmp_path), "run", keys["organizer"], invite_only=True)
    a._node = SimpleNamespace(peer_id=COORDINATOR)   # what start() records: the issuer signs requests to this id
    yield a
    a.close()


def token_request(invite: str, key: RSAPrivateKey, *, t: float | None = None, to: PeerID = COORDINATOR) -> swarm_pb2.TokenRequest:
    t = time.time() if t is None else t
    public = key.get_public_key().to_bytes()
    return swarm_pb2.TokenRequest(invite=invite, public_key=public, time=t, signature=key.sign(token_request_bytes(invite, public, t, to)))


def test_issuer_checks(access, keys):
    good = access.store.create(keys["organizer"], run_id="run", initial_peers=PEERS, expires_in=60, max_uses=1).encode()
    forged = Invite.create(keys["mallory"], run_id="run", initial_peers=PEERS, expires_at=time.time() + 60).encode()
    other_run = access.store.create(keys["organizer"], run_id="other", initial_peers=PEERS, expires_in=60).encode()
    assert access._refusal(token_request(good, keys["alice"]), "peer") is None
    assert access._refusal(token_request(good, keys["bob"]), "peer") == "used up (1 of 1 uses)"
    assert access._refusal(token_request(forged, keys["alice"]), "peer") == "forged (not signed by this run's organizer)"
    assert "not 'run'" in access._refusal(token_request(other_run, keys["alice"]), "peer")
    assert access._refusal(swarm_pb2.TokenRequest(), "peer") == INVITE_ONLY_HINT
    assert access._refusal(token_request(good, keys["alice"], t=time.time() - 600), "peer").startswith("stale")
    wrong_target = token_request(good, keys["alice"], to=PeerID.from_base58("QmcJ3KdqgMmnLkzKHUwPL57HZxcQDnaumuJv8T2syLXUx2"))
    assert access._refusal(wrong_target, "peer") == "bad token request signature"
    stolen_key = token_request(good, keys["bob"])
    stolen_key.public_key = keys["alice"].get_public_key().to_bytes()   # bob asks a token for alice's key
    assert access._refusal(stolen_key, "peer") == "bad token request signature"


def test_issued_token_is_the_organizers(access, keys):
    invite = access.store.create(keys["organizer"], run_id="run", initial_peers=PEERS, expires_in=60)
    import asyncio

    reply = asyncio.run(access._handle_issue(token_request(invite.encode(), keys["alice"]), SimpleNamespace(remote_id=COORDINATOR)))
    assert not reply.error
    token = AccessToken()
    token.ParseFromString(reply.token)
    assert token_problem(token, keys["organizer"].get_public_key(), "run") is None
    assert token.public_key == keys["alice"].get_public_key().to_bytes()
    assert token.username == f"run/{invite.invite_id}"


def test_launch_invite_is_reused_while_valid(access):
    first = access.launch_invite(PEERS)
    assert access.launch_invite(PEERS) == first
    moved = access.launch_invite([p.replace("4000", "4001") for p in PEERS])
    assert moved.invite_id != first.invite_id
    assert access.store.meta("initial_peers") == [p.replace("4000", "4001") for p in PEERS]
    access.store.revoke(moved.invite_id)
    assert access.launch_invite(access.store.meta("initial_peers")).invite_id != moved.invite_id
