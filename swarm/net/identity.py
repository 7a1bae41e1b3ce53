"""One key per peer: the RSA key that signs a peer's DHT records is also its libp2p identity, so its peer id names it.

A libp2p peer id is the multihash (sha256) of the peer's public key in libp2p's protobuf form; p2pd proves the id
on every connection. When the same RSA key signs the peer's records and statements, anyone holding a statement
and its signer's public key can check, offline, that the peer id it names is the signer's (`peer_id_of`): a
statement signed by one peer can never be passed off as another's. This is what makes an accusation provable to a
third party (swarm.averaging.result_statements, swarm.averaging.bans).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from contextlib import contextmanager
from typing import Iterator

import base58
import multihash
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hivemind.proto import crypto_pb2
from hivemind.utils.crypto import RSAPrivateKey, RSAPublicKey

__all__ = ["identity_bytes", "key_from_identity", "peer_id_of", "signed_by", "identity_file", "read_identity", "same_key"]

MAX_PUBLIC_KEY_BYTES = 2048   # an OpenSSH RSA key of 2048 bits is ~380 bytes; 8192 bits stay below this
MAX_IDENTITY_BYTES = 16384    # an identity file of an RSA key of 8192 bits is ~4.8 KB
MAX_PEER_ID_CHARS = 128       # base58 of a peer id (an RSA key's: 46 characters)
MAX_SIGNATURE_BYTES = 1024    # base64 of an RSA signature (hivemind signs so): 344 bytes at 2048 bits


def identity_bytes(key: RSAPrivateKey) -> bytes:
    """`key` as a p2pd identity file's content (libp2p's PrivateKey protobuf, as hivemind writes it)."""
    return crypto_pb2.PrivateKey(key_type=crypto_pb2.KeyType.RSA, data=key.to_bytes()).SerializeToString()


def key_from_identity(data: bytes) -> RSAPrivateKey | None:
    """The RSA key of a p2pd identity file's content; None when it holds another kind of key."""
    message = crypto_pb2.PrivateKey.FromString(data)
    if message.key_type != crypto_pb2.KeyType.RSA:
        return None
    loaded = serialization.load_der_private_key(message.data, password=None)
    if not isinstance(loaded, rsa.RSAPrivateKey):
        return None
    key = RSAPrivateKey.__new__(RSAPrivateKey)
    key._private_key = loaded
    return key


def read_identity(path: str) -> RSAPrivateKey | None:
    """The RSA key of the identity file at `path`; None when there is no such file. ConfigError when it is not a
    p2pd identity file of an RSA key (a peer's key signs its records and statements: swarm.net.identity)."""
    from swarm.errors import ConfigError

    try:
        with open(path, "rb") as f:
            data = f.read(MAX_IDENTITY_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError(f"cannot read the identity file {path}: {e}") from e
    key = None
    if len(data) <= MAX_IDENTITY_BYTES:
        try:
            key = key_from_identity(data)
        except Exception:   # protobuf's DecodeError, cryptography's ValueError: not an identity file
            key = None
    if key is None:
        raise ConfigError(f"{path} is not a p2pd identity file of an RSA key: give another path (a new file is created)")
    return key


def same_key(a: RSAPrivateKey, b: RSAPrivateKey) -> bool:
    return a.get_public_key().to_bytes() == b.get_public_key().to_bytes()


def peer_id_of(public_key: bytes) -> str | None:
    """The base58 peer id whose identity is the RSA key `public_key` (OpenSSH bytes, as records' owners are
    written); None for bytes that are not such a key."""
    if not isinstance(public_key, bytes) or not 0 < len(public_key) <= MAX_PUBLIC_KEY_BYTES:
        return None
    try:
        key = serialization.load_ssh_public_key(public_key)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None
    if not isinstance(key, rsa.RSAPublicKey):
        return None
    der = key.public_bytes(encoding=serialization.Encoding.DER, format=serialization.PublicFormat.SubjectPublicKeyInfo)
    encoded = crypto_pb2.PublicKey(key_type=crypto_pb2.RSA, data=der).SerializeToString()
    return base58.b58encode(multihash.encode(hashlib.sha256(encoded).digest(), multihash.coerce_code("sha2-256"))).decode()


def signed_by(peer_id: str, public_key: bytes, data: bytes, signature: bytes) -> bool:
    """Whether `signature` over `data` is by the peer `peer_id`: `public_key` is that peer's identity and checks it."""
    if peer_id_of(public_key) != peer_id:
        return False
    try:
        return RSAPublicKey.from_bytes(public_key).verify(data, signature)
    except Exception:   # a key the parser refuses: not the peer's
        return False


@contextmanager
def identity_file(key: RSAPrivateKey) -> Iterator[str]:
    """A private temporary p2pd identity file holding `key`, removed on exit (p2pd reads it once, at start)."""
    folder = tempfile.mkdtemp(prefix="swarm-identity-")
    path = os.path.join(folder, "identity.key")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(identity_bytes(key))
        yield path
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        os.rmdir(folder)
