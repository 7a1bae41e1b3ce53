"""Scenario files: who the peers are (links, NAT, auxiliary, compute speed) and what they run.

A scenario is YAML, validated by pydantic (unknown keys are errors, reported in one line):

    name: mini-hetero
    description: four symmetric peers at 100, 50, 25 and 25 Mbit/s
    bandwidth_divisor: 1          # every rate is divided by this, so big swarms fit one machine
    peers:
      - {upload_mbps: 100, download_mbps: 100}
      - {upload_mbps: 50, download_mbps: 50}
      - {upload_mbps: 25, download_mbps: 25, count: 2}     # count repeats a spec
      - {upload_mbps: 50, download_mbps: 50, nat: true}    # behind NAT: client mode
      - {upload_mbps: 200, download_mbps: 200, aux: true}  # auxiliary: reduces, brings nothing
    workload: {kind: allreduce, params: 5M, compression: none, rounds: 4}

`compute` (default 1) is a peer's relative speed in the training workload: a peer at 0.5 takes
twice as long per local step (it sleeps the difference). The training workload names its task
plug-in as `module:function` (`task_plugin`), so the engine never imports a task.

`Scenario.peers_expanded()` gives one `PeerInstance` per peer, with rates in bytes/s after the
divisor; `Scenario.lp_bound(vector_bytes)` is the DeDLOC LP optimum (swarm.averaging.balancing) for it.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

if TYPE_CHECKING:   # swarm.averaging.balancing loads scipy (most of a second): only when a scenario is solved, not for `swarm --help`
    from swarm.averaging.balancing import MemberLink
from ..config import DiLoCoConfig, EngineConfig, RunConfig
from ..errors import ConfigError

__all__ = [
    "PeerSpec", "PeerInstance", "AllreduceWorkload", "TrainingWorkload", "ChurnSpec", "Scenario",
    "load_scenario", "list_scenarios", "parse_count", "MBIT",
]

MBIT = 1e6 / 8  # bytes per second in one Mbit/s
_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9}


def parse_count(value: Any) -> int:
    """'10M' -> 10_000_000, '2.5K' -> 2500, 4096 -> 4096 (decimal suffixes K, M, G)."""
    if isinstance(value, bool):
        raise ValueError(f"not a count: {value!r}")
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgG]?)\s*", str(value))
        if not match:
            raise ValueError(f"not a count: {value!r} (use e.g. 4096, 250K, 10M)")
        number = float(match.group(1)) * _SUFFIX[match.group(2).upper()]
    if not math.isfinite(number) or number < 1 or number != int(number):
        raise ValueError(f"not a positive whole count: {value!r}")
    return int(number)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PeerSpec(_Model):
    """One kind of peer; `count` of them."""

    name: str | None = None
    upload_mbps: float = Field(gt=0)
    download_mbps: float = Field(gt=0)
    nat: bool = False
    aux: bool = False
    compute: float = Field(1.0, gt=0, description="relative speed of local steps (training workload)")
    count: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _roles(self) -> "PeerSpec":
        if self.nat and self.aux:
            raise ValueError("a peer cannot be both nat and aux: auxiliary peers must be reachable")
        return self

    @property
    def role(self) -> str:
        return "aux" if self.aux else "client" if self.nat else "trainer"


class AllreduceWorkload(_Model):
    """Every trainer averages a random vector of `params` float32 values, `rounds` times."""

    kind: Literal["allreduce"]
    params: int = Field(5_000_000, description="values per vector (10M, 250K, ...)")
    compression: str = "none"
    rounds: int = Field(4, ge=1)

    @field_validator("params", mode="before")
    @classmethod
    def _count(cls, v: Any) -> int:
        return parse_count(v)


class TrainingWorkload(_Model):
    """Collaborative training of a task plug-in for `duration` seconds, in one of the run modes of swarm.config:

        mode: diloco          # sync (default), diloco or streaming-diloco
        overlap: true         # average in the background: updates land one step (DiLoCo: one outer step) late
        diloco: {inner_steps: 10, inner_lr: 0.001}   # swarm.config.DiLoCoConfig; an outer step is inner_steps
                                                     # local steps of every trainer (target_batch_size is sync's)
        compression: powersgd # any codec of EngineConfig.compression

    `run_config` is the RunConfig an emulated trainer builds its optimizer from (swarm.modes.mode_optimizer,
    as the volunteer daemon does).
    """

    kind: Literal["training"]
    task: str = "albert"
    task_plugin: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", description="module:function(name, settings) -> Task")
    task_options: dict[str, Any] = Field(default_factory=dict)
    micro_batch_size: int = Field(4, gt=0)
    target_batch_size: int = Field(256, gt=0)
    step_seconds: float | None = Field(None, gt=0, description="a local step at compute 1 takes at least this long")
    duration: float = Field(120.0, gt=0)
    lr: float = Field(0.002, gt=0, description="the task optimizer's lr (sync; DiLoCo's inner lr unless diloco.inner_lr)")
    compression: str = "fp16"
    mode: Literal["sync", "diloco", "streaming-diloco"] = RunConfig.model_fields["mode"]
    overlap: bool = RunConfig.model_fields["overlap"]
    diloco: DiLoCoConfig = Field(default_factory=DiLoCoConfig)
    gradient_params: int | None = Field(None, description="values averaged per step, for the model (the emulator builds the task)")

    @field_validator("gradient_params", mode="before")
    @classmethod
    def _gradient_count(cls, v: Any) -> int | None:
        return None if v is None else parse_count(v)

    @field_validator("compression")
    @classmethod
    def _known_codec(cls, name: str) -> str:
        return EngineConfig._known_codec(name)

    def target_for(self, trainers: int) -> int:
        """Samples per global step for `trainers` peers that bring samples: target_batch_size in sync mode, and in
        DiLoCo inner_steps local steps of every trainer (swarm.config.DiLoCoConfig.target_batch_size)."""
        if self.mode in ("diloco", "streaming-diloco"):   # streaming: a fragment's share per round
            return self.diloco.target_batch_size(max(1, trainers) * self.micro_batch_size, streaming=self.mode == "streaming-diloco")
        return self.target_batch_size

    def run_config(self, engine: dict[str, Any] | None = None, trainers: int = 1) -> RunConfig:
        """The RunConfig of this workload (no lr schedule: warmup 0): its mode, lr, micro-batch and compression, the
        engine settings `engine`, and the target batch for `trainers` (see target_for)."""
        return RunConfig(
            run_id="emulate", task=self.task, task_options=dict(self.task_options), micro_batch_size=self.micro_batch_size,
            lr=self.lr, warmup_epochs=0, mode=self.mode, overlap=self.overlap, diloco=self.diloco,
            engine=EngineConfig(**{**(engine or {}), "compression": self.compression, "target_batch_size": self.target_for(trainers)}),
        )


Workload = Annotated[Union[AllreduceWorkload, TrainingWorkload], Field(discriminator="kind")]


class ChurnSpec(_Model):
    """Peers leaving and joining (model only; the emulator keeps its peers)."""

    leave_per_hour: float = Field(0.0, ge=0, description="per trainer")
    join_per_hour: float = Field(0.0, ge=0, description="for the whole swarm")


@dataclass(frozen=True)
class PeerInstance:
    index: int
    name: str
    role: str            # trainer | client | aux
    upload_bps: float    # bytes/s, after the divisor
    download_bps: float
    compute: float

    @property
    def brings(self) -> bool:
        return self.role != "aux"

    @property
    def needs(self) -> bool:
        return self.role != "aux"

    @property
    def can_reduce(self) -> bool:
        return self.role != "client"

    def link(self) -> MemberLink:
        from swarm.averaging.balancing import MemberLink

        return MemberLink(self.upload_bps, self.download_bps, self.brings, self.needs, self.can_reduce)


class Scenario(_Model):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    bandwidth_divisor: float = Field(1.0, gt=0, description="divide every rate by this (so it fits one machine)")
    peers: list[PeerSpec] = Field(min_length=1)
    workload: Workload
    training: TrainingWorkload | None = Field(None, description="the training variant (`--workload training`)")
    engine: dict[str, Any] = Field(default_factory=dict, description="EngineConfig overrides")
    churn: ChurnSpec = Field(default_factory=ChurnSpec)

    @model_validator(mode="after")
    def _check(self) -> "Scenario":
        roles = [p.role for p in self.peers]
        if not any(r in ("trainer", "aux") for r in roles):
            raise ValueError("no peer can reduce: add a reachable (not nat) peer")
        if not any(r in ("trainer", "client") for r in roles):
            raise ValueError("no peer brings values: add a trainer")
        bad = set(self.engine) - set(EngineConfig.model_fields)
        if bad:
            raise ValueError(f"unknown engine settings: {', '.join(sorted(bad))}")
        return self

    # -- derived --------------------------------------------------------------------------------------------

    def peers_expanded(self) -> list[PeerInstance]:
        out: list[PeerInstance] = []
        for spec in self.peers:
            for k in range(spec.count):
                i = len(out)
                base = spec.name or f"{spec.role}-{spec.upload_mbps:g}"
                out.append(PeerInstance(
                    index=i, name=f"{base}-{k}" if spec.count > 1 else base, role=spec.role,
                    upload_bps=spec.upload_mbps * MBIT / self.bandwidth_divisor,
                    download_bps=spec.download_mbps * MBIT / self.bandwidth_divisor,
                    compute=spec.compute,
                ))
        return out

    @property
    def size(self) -> int:
        return sum(p.count for p in self.peers)

    def engine_config(self, **overrides: Any) -> EngineConfig:
        return EngineConfig(**{**self.engine, **overrides})

    def vector_bytes(self, params: int | None = None, compression: str | None = None) -> int:
        """Bytes of one vector on the wire (payload only: 4 per value uncompressed, 2 with fp16, 1 with 8-bit codecs)."""
        w = self.workload
        n = params if params is not None else (w.params if isinstance(w, AllreduceWorkload) else 0)
        codec = compression or w.compression
        return n * {"none": 4, "fp16": 2}.get(codec, 1)

    def lp_bound(self, vector_bytes: int) -> float:
        """The DeDLOC LP optimum (seconds) for one all-reduce of `vector_bytes` over the whole swarm."""
        from swarm.averaging.balancing import optimal_shares

        return optimal_shares(vector_bytes, [p.link() for p in self.peers_expanded()])[1]

    def scaled(self, peers: int) -> "Scenario":
        """The same mix of peers, `peers` in all (counts scaled proportionally, at least 1 of each spec)."""
        if peers < 1:
            raise ConfigError("--peers must be at least 1")
        total = self.size
        raw = [p.count * peers / total for p in self.peers]
        counts = [max(1, math.floor(r)) for r in raw]
        order = sorted(range(len(raw)), key=lambda i: -(raw[i] - math.floor(raw[i])))
        for i in order:
            if sum(counts) >= peers:
                break
            counts[i] += 1
        specs = [p.model_copy(update={"count": c}) for p, c in zip(self.peers, counts)]
        return self.model_copy(update={"peers": specs, "name": f"{self.name}-x{sum(counts)}"})

    def with_workload(self, kind: str | None = None, **changes: Any) -> "Scenario":
        """This scenario running workload `kind` (default: its own), with some fields changed (None: unchanged)."""
        workload: AllreduceWorkload | TrainingWorkload = self.workload
        if kind is not None and kind != workload.kind:
            if kind == "training" and self.training is not None:
                workload = self.training
            elif kind == "allreduce":
                workload = AllreduceWorkload(kind="allreduce")
            else:
                raise ConfigError(f"scenario {self.name} has no {kind} workload")
        data = workload.model_dump() | {k: v for k, v in changes.items() if v is not None}
        try:
            workload = type(workload).model_validate(data)
        except ValidationError as e:
            err = e.errors()[0]
            raise ConfigError(f"bad workload setting {'.'.join(str(x) for x in err['loc'])}: {err['msg']}") from None
        return self.model_copy(update={"workload": workload})


# ---------------------------------------------------------------------------------------------------------
# Loading


def _scenario_dir() -> Path:
    return Path(str(resources.files("swarm.simulate") / "scenarios"))


def list_scenarios() -> list[str]:
    """Names of the shipped scenarios."""
    return sorted(p.stem for p in _scenario_dir().glob("*.yaml"))


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A shipped scenario by name, or a YAML file by path; ConfigError (one line) on any problem."""
    path = Path(name_or_path)
    if not path.is_file():
        shipped = _scenario_dir() / f"{name_or_path}.yaml"
        if not shipped.is_file():
            raise ConfigError(f"no scenario file or shipped scenario {str(name_or_path)!r}; shipped: {', '.join(list_scenarios())}")
        path = shipped
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"scenario {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"scenario {path} must be a mapping")
    data.setdefault("name", path.stem)
    try:
        return Scenario.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "scenario"
        raise ConfigError(f"bad scenario {path.name}: {where}: {err['msg']}") from None
