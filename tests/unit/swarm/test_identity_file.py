"""A peer's identity file: read with clear errors, and never a different key than the one its access token names."""
from __future__ import annotations

import asyncio

import pytest
from hivemind.utils.crypto import RSAPrivateKey

from swarm.errors import ConfigError
from swarm.net.auth import OrganizerTokens
from swarm.net.identity import MAX_IDENTITY_BYTES, identity_bytes, read_identity, same_key
from swarm.net.node import Node, NodeOptions


def test_an_identity_file_is_read_back_as_its_key_and_a_missing_one_is_none(tmp_path):
    key = RSAPrivateKey()
    path = tmp_path / "identity.key"
    path.write_bytes(identity_bytes(key))
    assert same_key(read_identity(str(path)), key)
    assert read_identity(str(tmp_path / "nothing-here.key")) is None


@pytest.mark.parametrize("content", [b"not a key", b"\x08\x00\x12\x03abc", b"\x00" * (MAX_IDENTITY_BYTES + 1)])
def test_a_file_that_is_not_an_rsa_identity_is_a_clear_error(tmp_path, content):
    path = tmp_path / "identity.key"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="not a p2pd identity file"):
        read_identity(str(path))


def test_an_identity_file_with_another_key_than_the_invite_access_is_refused_before_anything_starts(tmp_path):
    """p2pd would take the file's key as the peer id while the token, records and statements carry the access key:
    statements would name the wrong peer. The node refuses at once (before p2pd: a unit test may not start one)."""
    path = tmp_path / "identity.key"
    path.write_bytes(identity_bytes(RSAPrivateKey()))
    authorizer = OrganizerTokens(RSAPrivateKey(), "run").authorizer(RSAPrivateKey())
    with pytest.raises(ConfigError, match="holds another key"):
        asyncio.run(Node.create("run", NodeOptions(identity_path=str(path)), authorizer=authorizer))
