"""swarm.simulate.worker with benchmarks.protocol_bytes installed: its `summary` event adds the bytes it sent and
received per protocol from its `ready` event on, as the interface counters beside them count from the `go` that
follows it (`python -m benchmarks.training --protocols`). Measurement only: the peer runs unchanged."""
from __future__ import annotations

import sys

from swarm.simulate import worker


def main(argv: list[str] | None = None) -> None:
    from benchmarks.protocol_bytes import ProtocolBytes

    argv = sys.argv[1:] if argv is None else argv
    run_id = argv[argv.index("--run-id") + 1] if "--run-id" in argv else "simulate"
    counter = ProtocolBytes(run_id)
    counter.install()
    emit = worker.emit
    start: dict[str, dict[str, int]] = {}

    def counted(event: str, **fields) -> None:
        if event == "ready":
            start.update(counter.snapshot())
        if event == "summary":
            end = counter.snapshot()
            fields["protocol_bytes"] = {kind: {k: n - start.get(kind, {}).get(k, 0) for k, n in counts.items()}
                                        for kind, counts in end.items()}
        emit(event, **fields)

    worker.emit = counted
    worker.main(argv)


if __name__ == "__main__":
    main()
