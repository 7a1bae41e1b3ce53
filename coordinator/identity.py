"""The organizer's persistent keys, kept in the run folder.

- `identity.key`: the bootstrap peer's libp2p identity (hivemind's protobuf format, written by
  p2pd on first use), so the peer id and thus the join multiaddr survive a restart.
- `organizer.key`: the RSA key (DER, mode 0600) that signs the run's config record. The DHT
  stores the record under the `[owner:PUBLIC_KEY]` subkey of this key, so nobody else can
  overwrite it, and a restarted coordinator republishes the same record instead of a second one.
  An invite module signs invites with this same key (`organizer_key()`).
"""
from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from hivemind.utils.crypto import RSAPrivateKey

from swarm.errors import ConfigError


def load_or_create_rsa_key(path: Path) -> RSAPrivateKey:
    """The RSA key stored at `path`, created (atomically, 0600) if the file does not exist."""
    path = Path(path)
    if path.exists():
        try:
            der = path.read_bytes()
            serialization.load_der_private_key(der, password=None)  # fail here, with a clear line
        except (OSError, ValueError, TypeError) as e:
            raise ConfigError(f"organizer key {path} is unreadable or not an RSA key: {e}") from None
        key = RSAPrivateKey.__new__(RSAPrivateKey)
        key.__setstate__({"_private_key": der})  # hivemind's own (pickle) way to rebuild a key from DER
        return key
    key = RSAPrivateKey()
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.to_bytes())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return key
