"""swarm: collaborative deep learning over the internet (DeDLOC), as a library.

    import swarm
    collab = swarm.join("swarm://...")          # an invite, or: swarm.join(run_id="demo", initial_peers=[...])
    opt = collab.optimizer(model.parameters(), torch.optim.AdamW, lr=1e-3)

Heavy modules (torch, hivemind) load on first use, so `swarm --help` stays fast.
"""
from __future__ import annotations

from typing import Any

from .errors import AuthError, ConfigError, DataError, NetworkError, ProtocolError, RoundFailed, SwarmError

__version__ = "0.1.0"
__all__ = [
    "join", "Collaboration", "CollaborativeOptimizer", "EngineConfig", "RunConfig",
    "SwarmError", "ConfigError", "DataError", "NetworkError", "AuthError", "ProtocolError", "RoundFailed",
]


def __getattr__(name: str) -> Any:
    if name in ("join", "Collaboration"):
        from . import collaboration

        return getattr(collaboration, name)
    if name == "CollaborativeOptimizer":
        from .optim.core import CollaborativeOptimizer

        return CollaborativeOptimizer
    if name in ("EngineConfig", "RunConfig"):
        from . import config

        return getattr(config, name)
    raise AttributeError(name)
