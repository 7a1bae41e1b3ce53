"""swarm's wire messages; `swarm_pb2` is generated from swarm.proto by grpcio-tools (see tests/unit/swarm/test_proto.py)."""
from . import swarm_pb2

__all__ = ["swarm_pb2"]
