"""swarm.net.invite_link: the one-line invite, its parsing and what it proves (no network)."""
from __future__ import annotations

import time
from dataclasses import replace

import pytest
from hivemind.utils.crypto import RSAPrivateKey

from swarm.errors import AuthError
from swarm.net.invite import Invite
from swarm.net.invite_link import is_link, make_link, most_public, parse_link

PEER = "12D3KooWHCcrL5hiVJhv5DH7JXyZgckXNry3ab2yXbQfnFe9nGZ3"
PUBLIC = f"/ip4/203.0.113.7/tcp/31337/p2p/{PEER}"
PRIVATE = f"/ip4/192.168.1.20/tcp/31337/p2p/{PEER}"
LOOPBACK = f"/ip4/127.0.0.1/tcp/31337/p2p/{PEER}"


@pytest.fixture(scope="module")
def organizer():
    return RSAPrivateKey()


def invite_of(key, **kw) -> Invite:
    return Invite.create(key, run_id=kw.pop("run_id", "albert-wiki"), initial_peers=kw.pop("peers", [PRIVATE, PUBLIC, LOOPBACK]),
                         expires_at=time.time() + 7 * 86400, **kw)


def test_link_is_one_short_line_with_the_public_address(organizer):
    invite = invite_of(organizer)
    link = make_link(invite)
    assert len(invite.encode()) > 1000     # the full invite: RSA key and signature
    assert len(link) < 300 and "\n" not in link and " " not in link
    assert link.endswith("@" + PUBLIC)
    assert is_link(link) and not is_link(invite.encode())
    parsed = parse_link(link)
    assert parsed.run_id == "albert-wiki" and parsed.invite_id == invite.invite_id and parsed.address == PUBLIC
    assert parsed.names(invite)


def test_link_names_only_its_own_invite(organizer):
    invite = invite_of(organizer)
    link = parse_link(make_link(invite))
    assert not link.names(invite_of(organizer))                          # another invite of the same organizer
    impostor = RSAPrivateKey()
    forged = Invite.create(impostor, run_id=invite.run_id, initial_peers=invite.initial_peers, expires_at=invite.expires_at,
                           invite_id=invite.invite_id)
    assert not link.names(forged)                                         # same ids, another key
    assert not link.names(replace(invite, max_uses=1))                    # altered after signing


def test_most_public_address_first():
    assert most_public([LOOPBACK, PRIVATE, PUBLIC]) == PUBLIC
    assert most_public([LOOPBACK, PRIVATE]) == PRIVATE
    assert most_public([LOOPBACK]) == LOOPBACK


@pytest.mark.parametrize("text", [
    "swarm://run:abc:short:key@/ip4/1.2.3.4/tcp/1/p2p/x",
    "swarm://run:abcdefgh:AAAAAAAAAAAAAAAA:BBBBBBBBBBBBBBBBBBBBBB@/ip4/1.2.3.4/tcp/1",   # no /p2p/
    "swarm://" + "r" * 700 + "@/ip4/1.2.3.4",
])
def test_damaged_links_are_one_clear_error(text):
    with pytest.raises(AuthError, match="link"):
        parse_link(text)


def test_launch_invite_holds_every_interface_and_its_link_the_public_one():
    from coordinator.service import invite_addresses

    peers = invite_addresses(PRIVATE, [LOOPBACK, PRIVATE, PUBLIC])
    assert peers == [PRIVATE, PUBLIC]
    invite = invite_of(RSAPrivateKey(), peers=peers)
    assert make_link(invite).endswith("@" + PUBLIC)


def test_invite_ids_never_begin_with_a_dash_so_the_cli_takes_them_as_arguments(monkeypatch):
    """`swarm invite revoke ID` read an id that begins with '-' as an option (1 invite in 64 could not be revoked)."""
    import secrets

    from swarm.net import invite as invite_module

    drawn = iter(["-abcdefg", "--xyzabc", "Qabc-def"])
    monkeypatch.setattr(secrets, "token_urlsafe", lambda n: next(drawn))
    assert invite_module.new_invite_id() == "Qabc-def"
    monkeypatch.undo()
    assert not any(invite_module.new_invite_id().startswith("-") for _ in range(2000))
