"""CoordinatorSettings: the coordinator's own knobs; the run's config stays in swarm.config.RunConfig.

`swarm launch` flags map onto these fields; the defaults live here only.
"""
from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class CoordinatorSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    runs_dir: Path = Field(Path("runs"), description="the run's folder is RUNS_DIR/RUN_ID/")
    host: str = Field("127.0.0.1", description="address of the HTTP server (dashboard, API, /metrics)")
    port: int = Field(8080, ge=0, le=65535, description="port of the HTTP server; 0 picks a free one")
    p2p_host: str = Field("0.0.0.0", description="address the bootstrap peer listens on")
    p2p_port: int = Field(0, ge=0, le=65535, description="0: the port this run folder used last time, else a free one")
    announce_maddrs: list[str] | None = Field(None, description="public multiaddrs to announce (behind NAT or a proxy)")
    tracker_period: float = Field(2.0, gt=0, description="seconds between two reads of the swarm's records")
    checkpoint_every: int = Field(5, ge=0, description="checkpoint every N epochs (0: never)")
    keep_checkpoints: int = Field(3, ge=1, description="how many checkpoints to keep")
    checkpoint_timeout: float = Field(120.0, gt=0, description="deadline of one state download")
    config_ttl: float = Field(600.0, gt=10, description="TTL of the config record; republished every third of it")
    rounds_shown: int = Field(20, ge=1, description="recent rounds in /api/status")
    fresh: bool = Field(False, description="discard this run folder's history and checkpoints first")
    invite_only: bool = Field(False, description="peers need an invite (a token from this coordinator); sticky for the run folder")
    invite_expires: float = Field(7 * 86400.0, gt=0, description="seconds the invite printed at launch admits newcomers")
    token_lifetime: float = Field(3600.0, gt=60, description="seconds an access token is valid; peers renew at half of it")
