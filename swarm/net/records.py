"""Signed, schema-validated DHT records: the run's config, each peer's progress and metrics,
and the organizer's revoked invites (see swarm.net.auth).

Every key is prefixed by the run id. A value is a msgpack dict validated against a
pydantic schema (strict: a wrong type is rejected, not coerced) and signed by its
owner through hivemind's RSASignatureValidator: the subkey carries `[owner:KEY]`, so
nobody can overwrite another peer's record. Validation runs on every peer that stores
or returns a record, so a malformed or forged record never reaches the training loop.
"""
from __future__ import annotations

import logging
import math
from typing import Annotated, Literal

import msgpack
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord, RecordValidatorBase
from pydantic import BaseModel, ConfigDict, Field, ValidationError

logger = logging.getLogger(__name__)

Role = Literal["trainer", "client", "aux"]

# Bounds no real peer reaches, so that one hostile record cannot overflow a consumer (SQLite holds int64, a
# float of samples/s times seconds must stay finite): a billion epochs, 2**53 samples or bytes (exact in a
# float64), a billion samples/s, a petabit per second, a million members, a week per round.
MAX_EPOCH = 10**9
MAX_COUNT = 2**53
MAX_RATE = 1e9
MAX_BPS = 1e15
MAX_MEMBERS = 10**6
MAX_SECONDS = 7 * 86400.0
# Peers one progress summary lists (about 300 B each: a summary stays under 400 KB, a DHT value p2pd carries).
MAX_SUMMARY_PEERS = 1024

Epoch = Annotated[int, Field(ge=0, le=MAX_EPOCH)]
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
Rate = Annotated[float, Field(ge=0, le=MAX_RATE, allow_inf_nan=False)]
Bandwidth = Annotated[float, Field(ge=0, le=MAX_BPS, allow_inf_nan=False)]
Timestamp = Annotated[float, Field(allow_inf_nan=False, ge=-1e12, le=1e12)]


class _Record(BaseModel):
    # extra="ignore": a newer peer's record with fields this version does not know still validates
    # (forward compatibility across a rolling upgrade); every known field is still strictly typed.
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class ConfigRecord(_Record):
    """The run's config: what every peer must agree on to join."""

    run_id: str = Field(min_length=1, max_length=128)
    task: str = Field(min_length=1, max_length=64)
    target_batch_size: int = Field(gt=0, le=MAX_COUNT)
    fingerprint: dict[str, str] = Field(max_length=256)            # e.g. model_config / tokenizer hashes
    hyperparameters: dict[str, float | int | str | bool] = Field(max_length=1024)
    created_at: Timestamp
    run_config: str = Field(default="", max_length=65536)   # the RunConfig as JSON: `swarm join INVITE` needs no file


class ProgressRecord(_Record):
    """A peer's training progress, refreshed every few seconds."""

    peer_id: str = Field(min_length=1, max_length=128)
    epoch: Epoch
    samples: Count                           # accumulated towards `epoch`'s global batch
    samples_per_second: Rate
    role: Role
    upload_bps: Bandwidth
    download_bps: Bandwidth
    time: Timestamp                          # sender's clock, informative only
    params_hash: str = Field(default="", max_length=128)   # hash of the parameters at the start of `epoch`
    serves_state: bool = True
    leaving: bool = False
    training: bool = False                   # its optimizer is attached: it can lead and join rounds
    states_asked: Count = 0                  # state downloads it has begun to serve: newcomers prefer the least asked


class ProgressSummary(_Record):
    """One aggregator's copy of the run's progress records, as it read them at `time` (swarm.averaging.summaries):
    the peers that are not aggregators read a few of these instead of every record."""

    aggregator: str = Field(min_length=1, max_length=128)    # its peer id: readers accept only the window's aggregators
    window: int = Field(ge=0, le=2**40)                      # the aggregator window it was chosen for
    time: Timestamp                                          # the aggregator's (synchronised) clock when it read the records
    peers: list[ProgressRecord] = Field(max_length=MAX_SUMMARY_PEERS)


class MetricsRecord(_Record):
    """A peer's latest training metrics, for the coordinator and dashboards."""

    peer_id: str = Field(min_length=1, max_length=128)
    epoch: Epoch
    loss: float                              # may be NaN or inf: a diverging run reports it as it is
    samples_per_second: Rate
    mini_steps: Count
    samples_total: Count
    round_seconds: float = Field(ge=0, le=MAX_SECONDS, allow_inf_nan=False)
    device: str = Field(default="cpu", max_length=64)
    time: Timestamp
    # The round that reached `epoch`, as this peer saw it (optional: records of older peers lack them).
    group_size: int = Field(default=0, ge=0, le=MAX_MEMBERS)
    bytes_sent: Count = 0
    bytes_received: Count = 0


class RevocationRecord(_Record):
    """Invites the organizer revoked (signed by the organizer key): every node refuses tokens issued for them."""

    invite_ids: list[Annotated[str, Field(max_length=128)]] = Field(max_length=100_000)
    time: Timestamp


MAX_PROOFS = 16
MAX_PROOF_BYTES = 4096
MAX_ACCUSATIONS = 4
MAX_ACCUSATION_BYTES = 1 << 15
MAX_CLAIMS = 4
MAX_CLAIM_BYTES = 1 << 15   # = swarm.averaging.claims.MAX_CLAIM_BYTES (a sender's commitment to a ~100M-value vector)


class BanRecord(_Record):
    """An accuser's proofs that peers broke the protocol (swarm.averaging.bans): each a pair of packed statements that
    every peer verifies itself before it bans anybody; the record's owner proves nothing by publishing it."""

    proofs: list[Annotated[list[Annotated[bytes, Field(max_length=MAX_PROOF_BYTES)]], Field(min_length=2, max_length=2)]] = Field(
        max_length=MAX_PROOFS)
    # audits' findings (swarm.averaging.audits.pack_accusation): each peer recomputes the part before it bans its reducer
    accusations: list[Annotated[bytes, Field(max_length=MAX_ACCUSATION_BYTES)]] = Field(default_factory=list, max_length=MAX_ACCUSATIONS)
    # commitments signed with a weight over the run's claim ceiling (swarm.averaging.claims): each peer checks them itself
    claims: list[Annotated[bytes, Field(max_length=MAX_CLAIM_BYTES)]] = Field(default_factory=list, max_length=MAX_CLAIMS)
    time: Timestamp


def bounded(value: float, upper: float) -> float:
    """`value` clamped into [0, upper], 0 when not finite: what an honest publisher puts in a bounded field."""
    value = float(value)
    return min(max(value, 0.0), upper) if math.isfinite(value) else 0.0


def config_key(run_id: str) -> str:
    return f"{run_id}_config"


def progress_key(run_id: str) -> str:
    return f"{run_id}_progress"


def progress_summary_key(run_id: str) -> str:
    return f"{run_id}_progress_summary"


def metrics_key(run_id: str) -> str:
    return f"{run_id}_metrics"


def revocations_key(run_id: str) -> str:
    return f"{run_id}_revoked"


def bans_key(run_id: str) -> str:
    return f"{run_id}_bans"


def owner_subkey(public_key: bytes) -> bytes:
    """The subkey under which the owner of this RSA public key (OpenSSH bytes) stores its records."""
    return RSASignatureValidator.PUBLIC_KEY_FORMAT.replace(b"_key_", public_key)


def encode(record: _Record) -> dict:
    """The DHT value of a record (hivemind msgpack-serialises it)."""
    return record.model_dump()


def decode(model: type[_Record], value: object) -> _Record | None:
    """Parse a DHT value; None (with a log line) when it does not match the schema."""
    try:
        return model.model_validate(value)
    except ValidationError as e:
        logger.warning("dropping a malformed %s: %s", model.__name__, e.errors()[0].get("msg"))
        return None


class SchemaValidator(RecordValidatorBase):
    """Rejects records under this run's keys whose value does not match their schema, or that lack an owner."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        self._schemas: dict[bytes, type[_Record]] = {
            DHTID.generate(source=config_key(run_id)).to_bytes(): ConfigRecord,
            DHTID.generate(source=progress_key(run_id)).to_bytes(): ProgressRecord,
            DHTID.generate(source=progress_summary_key(run_id)).to_bytes(): ProgressSummary,
            DHTID.generate(source=metrics_key(run_id)).to_bytes(): MetricsRecord,
            DHTID.generate(source=revocations_key(run_id)).to_bytes(): RevocationRecord,
            DHTID.generate(source=bans_key(run_id)).to_bytes(): BanRecord,
        }

    def validate(self, record: DHTRecord) -> bool:
        schema = self._schemas.get(record.key)
        if schema is None:
            return True  # not ours: other validators decide
        if b"[owner:" not in record.subkey:
            logger.debug("rejecting an unsigned %s", schema.__name__)
            return False
        try:
            value = msgpack.unpackb(record.value, raw=False, strict_map_key=False)
            schema.model_validate(value)
        except Exception as e:  # msgpack or pydantic: both mean garbage from the network
            logger.debug("rejecting a malformed %s: %s", schema.__name__, e)
            return False
        return True

    @property
    def priority(self) -> int:
        return 5  # after the signature validator (10) has stripped the signature

    def merge_with(self, other: RecordValidatorBase) -> bool:
        if not isinstance(other, SchemaValidator):
            return False
        self._schemas.update(other._schemas)
        return True
