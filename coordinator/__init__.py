"""The organizer's coordinator: bootstrap peer, tracker, history, checkpoints, HTTP API and dashboard.

    swarm launch --config experiment.yaml          # bootstrap + dashboard on http://127.0.0.1:8080
    swarm status                                   # the same figures in the terminal
    swarm export RUN --format hf --out model/      # the latest checkpoint as a Hugging Face folder

Modules, one job each:

- `settings`   CoordinatorSettings: the coordinator's own knobs (ports, checkpoint cadence), defaults in one place
- `run_folder` the layout of `runs/RUN/` and its small persisted state (created_at, p2p port, config digest)
- `identity`   the organizer's persistent keys: p2p identity and the RSA key that signs the run's records
- `history`    SQLite (WAL) history: metrics time series, peers seen, rounds, checkpoints
- `invites`    SQLite (WAL) invites: issued, used, revoked (its own file: `--fresh` keeps it)
- `access`     the token issuer of invite-only runs, revocations in the DHT, the invite printed at launch
- `tracker`    aggregates progress and metrics records from the DHT into swarm-wide figures
- `checkpoints` checkpoint format (safetensors + JSON), atomic writes, verification, retention
- `seed`       serves a checkpoint's state to the first peers of a run started from it
- `export`     a checkpoint -> the task's standard format (a Hugging Face folder for ALBERT)
- `metrics`    the Prometheus exposition (its own CollectorRegistry)
- `server`     the aiohttp app: /api/status, /api/history, /api/config, /metrics, /healthz, dashboard
- `service`    the Coordinator object that owns all of the above and their lifecycle
- `cli`        `swarm launch`, `swarm status`, `swarm export` (plug-ins of the `swarm.commands` group)
- `invite_cli` `swarm invite create / list / revoke`

The coordinator is only a bootstrap and an observer: peers that already know each other keep
training while it is down, and a restart on the same folder keeps its identity, history and
checkpoints.
"""
