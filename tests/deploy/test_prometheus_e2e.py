"""Debian's Prometheus scrapes a live swarm with the shipped deploy/prometheus/prometheus.yml, and swarm's figures
(epoch, samples/s, peers by role, a trainer's own metrics) come out of its query API with sane values; every query
of the Grafana dashboard evaluates; promtool accepts the shipped config and real scrapes; the image's health check
tells a healthy process from a dead port.

The scrape config is the shipped one with each job's targets swapped for the live loopback ports (compose names
there) and 1 s intervals; job names, labels and relabelling are kept. Prometheus runs on a free loopback port with
its own storage folder under tmp, and ends with the test.
"""
from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest
import yaml

from tests.deploy.conftest import RUN_ID, free_port
from tests.deploy.deploy_files import DASHBOARD, HEALTHCHECK, PROMETHEUS_CONFIG, load_yaml, tool
from tests.helpers.running_swarm import Proc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def live_scrape_config(targets: dict[str, str]) -> dict:
    config = copy.deepcopy(load_yaml(PROMETHEUS_CONFIG))
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    assert {job["job_name"] for job in config["scrape_configs"]} == set(targets)
    for job in config["scrape_configs"]:
        labels = next((sc["labels"] for sc in job.get("static_configs", []) if sc.get("labels")), None)
        for key in [k for k in job if k.endswith("_sd_configs") or k == "static_configs"]:
            del job[key]
        job["static_configs"] = [{"targets": [targets[job["job_name"]]], **({"labels": labels} if labels else {})}]
        job["scrape_interval"] = "1s"
    return config


class Prometheus:
    def __init__(self, proc: Proc, url: str):
        self.proc, self.url = proc, url

    def query(self, expr: str) -> list[dict]:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]["result"]

    def values(self, expr: str) -> list[float]:
        return [float(r["value"][1]) for r in self.query(expr)]


@pytest.fixture(scope="module")
def prometheus(live_swarm, tmp_path_factory):
    binary = tool("prometheus", "apt-get install prometheus (Debian's package; .ci/run installs it)")
    root = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    config = live_scrape_config({
        "swarm-coordinator": f"127.0.0.1:{live_swarm.http_port}",
        "swarm-aux": f"127.0.0.1:{live_swarm.aux_metrics}",
        "swarm-volunteers": f"127.0.0.1:{live_swarm.trainer_metrics}",
        "prometheus": f"127.0.0.1:{port}",
    })
    (root / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    proc = Proc([binary, f"--config.file={root / 'prometheus.yml'}", f"--storage.tsdb.path={root / 'data'}",
                 f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h", "--log.level=warn"],
                root / "prometheus.log")
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert proc.proc.poll() is None and time.monotonic() < deadline, f"prometheus did not start:\n{proc.text()[-3000:]}"
            time.sleep(0.5)
        yield Prometheus(proc, url)
    finally:
        proc.stop()


def wait_for(prometheus: Prometheus, live_swarm, what: str, check, timeout: float = 180):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (OSError, AssertionError, ValueError) as e:
            last = e
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what} (last: {last})\n{live_swarm.logs()}\n--- prometheus\n{prometheus.proc.text()[-2000:]}")


def test_prometheus_ingests_swarm_metrics_with_sane_values(live_swarm, prometheus):
    up = wait_for(prometheus, live_swarm, "every target up", lambda: (
        r if len(r := {x["metric"]["job"]: float(x["value"][1]) for x in prometheus.query("up")}) == 4 and set(r.values()) == {1.0}
        else None))
    assert set(up) == {"swarm-coordinator", "swarm-aux", "swarm-volunteers", "prometheus"}

    # the coordinator's swarm-wide figures: two live peers, one trainer and one aux, and rounds completed
    wait_for(prometheus, live_swarm, "swarm_epoch >= 1 with both peers", lambda: (
        prometheus.values('swarm_epoch{job="swarm-coordinator"}') or [0])[0] >= 1
        and prometheus.values('sum(swarm_peers{job="swarm-coordinator"})') == [2.0])
    (epoch,) = prometheus.values('swarm_epoch{job="swarm-coordinator", component="coordinator"}')
    assert epoch == int(epoch) and 1 <= epoch < 10_000
    roles = {r["metric"]["role"]: float(r["value"][1]) for r in prometheus.query("swarm_peers")}
    assert roles == {"trainer": 1.0, "aux": 1.0, "client": 0.0}, "role labels reach Prometheus unrenamed"
    (rate,) = wait_for(prometheus, live_swarm, "a swarm throughput", lambda: [v for v in prometheus.values("swarm_samples_per_second") if v > 0])
    assert 0 < rate < 100_000
    assert prometheus.values(f'swarm_run_info{{run_id="{RUN_ID}"}}') == [1.0]
    (highest,) = prometheus.values("max_over_time(swarm_epoch[10m])")
    assert highest >= epoch

    # the trainer's own endpoint (swarm join --metrics-port), scraped by the swarm-volunteers job
    (peer_epoch,) = wait_for(prometheus, live_swarm, "the trainer's epoch", lambda: [
        v for v in prometheus.values('swarm_peer_epoch{job="swarm-volunteers", component="volunteer"}') if v >= 1])
    # scraped at different moments, the trainer can be epochs ahead of the coordinator's last sample; the
    # coordinator's own series must catch up (its tracker lags the swarm by a record refresh at most)
    wait_for(prometheus, live_swarm, "the coordinator's epoch to reach the trainer's", lambda: (
        max(prometheus.values("max_over_time(swarm_epoch[10m])") or [0]) >= peer_epoch - 1) or None)
    (local_rate,) = prometheus.values('swarm_peer_samples_per_second{job="swarm-volunteers"}')
    assert 0 < local_rate < 100_000
    (samples,) = prometheus.values('swarm_peer_samples_total{job="swarm-volunteers"}')
    assert samples >= 32, "at least one global batch of samples trained"
    assert prometheus.values('swarm_peer_epoch{job="swarm-aux", component="aux"}'), "the aux peer's endpoint is scraped"

    # against the coordinator's own API
    with urllib.request.urlopen(f"{live_swarm.url}/api/status", timeout=10) as response:
        status = json.loads(response.read())
    assert abs(status["epoch"] - max(prometheus.values("swarm_epoch"))) <= 2
    assert status["peers_by_role"] == {"trainer": 1, "aux": 1}


def test_every_grafana_dashboard_query_evaluates(live_swarm, prometheus):
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p.get("targets", [])]
    assert exprs
    wait_for(prometheus, live_swarm, "a few samples of every series",
             lambda: prometheus.values('count_over_time(swarm_epoch[1m])') and prometheus.values('count_over_time(swarm_epoch[1m])')[0] >= 5)
    empty = []
    for expr in exprs:
        query = expr.replace("$instance", ".*").replace("$__rate_interval", "30s")
        assert "$" not in query, f"unknown dashboard variable in {expr}"
        if not prometheus.query(query):
            empty.append(expr)
    assert not empty, f"dashboard queries with no data from a live swarm: {empty}"


def test_promtool_checks_the_shipped_config_and_live_scrapes(live_swarm, prometheus):
    promtool = tool("promtool", "apt-get install prometheus")
    result = subprocess.run([promtool, "check", "config", str(PROMETHEUS_CONFIG)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    for url in (f"{live_swarm.url}/metrics", f"http://127.0.0.1:{live_swarm.trainer_metrics}/metrics",
                f"http://127.0.0.1:{live_swarm.aux_metrics}/metrics"):
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read().decode()
        assert re.search(r"^swarm_", body, re.M), url
        result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"promtool check metrics on {url}:\n{result.stdout}{result.stderr}"


def test_the_image_health_check_asks_the_processes(live_swarm):
    def check(*urls: str) -> int:
        return subprocess.run([sys.executable, str(HEALTHCHECK), *urls], capture_output=True, timeout=30).returncode

    assert check(f"{live_swarm.url}/healthz") == 0
    assert check(f"http://127.0.0.1:{live_swarm.aux_metrics}/metrics") == 0
    dead = f"http://127.0.0.1:{free_port()}/healthz"
    assert check(dead) == 1
    assert check(dead, f"http://127.0.0.1:{live_swarm.trainer_metrics}/metrics") == 0, "any healthy endpoint will do"
