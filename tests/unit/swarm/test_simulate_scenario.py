"""swarm.simulate.scenario: shipped scenarios load, peers expand, the LP bound matches DeDLOC's, bad files fail in one line."""
from __future__ import annotations

import pytest

from swarm.errors import ConfigError
from swarm.simulate.scenario import MBIT, Scenario, list_scenarios, load_scenario, parse_count

pytestmark = pytest.mark.timeout(60)


def test_parse_count():
    assert parse_count("10M") == 10_000_000
    assert parse_count("2.5K") == 2500
    assert parse_count(4096) == 4096
    assert parse_count("1g") == 10**9
    for bad in ("", "M", "1.5", "-3", 0, True, "10 MB"):
        with pytest.raises(ValueError):
            parse_count(bad)


def test_shipped_scenarios_load_and_are_what_the_issue_asks_for():
    names = set(list_scenarios())
    assert {"mini-hetero", "server", "workstation", "hybrid", "dedloc-albert"} <= names
    for name in names:
        scenario = load_scenario(name)
        assert scenario.name == name and scenario.size == len(scenario.peers_expanded())
    mini = load_scenario("mini-hetero")
    assert [p.upload_bps / MBIT for p in mini.peers_expanded()] == [100, 50, 25, 25]
    assert load_scenario("server").size == 8 and load_scenario("workstation").size == 16
    assert load_scenario("workstation").training is None
    hybrid = [p.role for p in load_scenario("hybrid").peers_expanded()]
    assert hybrid.count("aux") == 2 and hybrid.count("client") >= 1
    dedloc = load_scenario("dedloc-albert")
    trainers = sorted(p.upload_bps * dedloc.bandwidth_divisor / MBIT for p in dedloc.peers_expanded() if p.role == "trainer")
    assert trainers == [50] * 4 + [100] * 8 + [200] * 4
    assert any(p.role == "aux" for p in dedloc.peers_expanded())


def test_lp_bound_of_mini_hetero_is_the_reference():
    # 20 MB of fp32: the 25 Mbit/s peers must upload their whole vector, 160 Mbit / 25 Mbit/s = 6.4 s
    scenario = load_scenario("mini-hetero").with_workload(params="5M")
    assert scenario.vector_bytes() == 20_000_000
    assert scenario.lp_bound(scenario.vector_bytes()) == pytest.approx(6.4, rel=1e-6)


def test_divisor_scales_rates_and_bound():
    scenario = load_scenario("mini-hetero")
    halved = scenario.model_copy(update={"bandwidth_divisor": 2.0})
    assert halved.peers_expanded()[0].upload_bps == scenario.peers_expanded()[0].upload_bps / 2
    assert halved.lp_bound(10**6) == pytest.approx(2 * scenario.lp_bound(10**6))


def test_scaled_keeps_the_mix():
    scenario = load_scenario("dedloc-albert").scaled(1800)
    counts = [p.count for p in scenario.peers]
    assert sum(counts) == 1800
    assert counts[1] == pytest.approx(2 * counts[0], abs=2)  # twice as many 100 Mbit/s peers as 200 Mbit/s ones
    assert all(p.count >= 1 for p in load_scenario("hybrid").scaled(3).peers)  # at least one of each spec


def test_bad_scenarios_fail_in_one_line(tmp_path):
    def write(text: str):
        path = tmp_path / "s.yaml"
        path.write_text(text)
        return path

    cases = {
        "peers: [{upload_mbps: 10, download_mbps: 10, nat: true, aux: true}]\nworkload: {kind: allreduce}": "nat and aux",
        "peers: [{upload_mbps: 10, download_mbps: 10, speed: 3}]\nworkload: {kind: allreduce}": "speed",
        "peers: [{upload_mbps: 0, download_mbps: 10}]\nworkload: {kind: allreduce}": "upload_mbps",
        "peers: [{upload_mbps: 10, download_mbps: 10, nat: true}]\nworkload: {kind: allreduce}": "can reduce",
        "peers: [{upload_mbps: 10, download_mbps: 10}]\nworkload: {kind: allreduce, params: lots}": "params",
        "peers: [{upload_mbps: 10, download_mbps: 10}]\nworkload: {kind: allreduce}\nengine: {nope: 1}": "nope",
        "peers: [": "YAML",
    }
    for text, needle in cases.items():
        with pytest.raises(ConfigError) as info:
            load_scenario(write(text))
        message = str(info.value)
        assert "\n" not in message and needle in message, message
    with pytest.raises(ConfigError, match="shipped"):
        load_scenario("no-such-scenario")


def test_with_workload_switches_and_validates():
    scenario = load_scenario("mini-hetero")
    assert scenario.with_workload("training").workload.kind == "training"
    assert scenario.with_workload(params="1M", rounds=2).workload.params == 1_000_000
    with pytest.raises(ConfigError):
        scenario.with_workload(rounds=0)
    with pytest.raises(ConfigError):
        load_scenario("workstation").with_workload("training")
    assert isinstance(Scenario.model_validate(scenario.model_dump()), Scenario)


def test_training_workload_takes_the_run_modes(tmp_path):
    """mode, overlap, diloco (swarm.config.DiLoCoConfig) and a known codec; the RunConfig it builds; DiLoCo's outer batch."""
    hybrid = load_scenario("hybrid").with_workload("training")
    assert (hybrid.workload.mode, hybrid.workload.overlap) == ("sync", False)
    diloco = hybrid.with_workload(mode="diloco", overlap=True, diloco={"inner_steps": 10, "inner_lr": 0.001}, compression="powersgd")
    w = diloco.workload
    assert w.diloco.inner_steps == 10 and w.target_for(12) == 10 * 12 * w.micro_batch_size
    config = w.run_config({"averaging_timeout": 120.0}, trainers=12)
    assert (config.mode, config.overlap, config.diloco.inner_lr, config.warmup_epochs) == ("diloco", True, 0.001, 0)
    assert config.engine.compression == "powersgd" and config.engine.averaging_timeout == 120.0
    assert config.engine.target_batch_size == 480 and config.lr == w.lr
    sync = hybrid.workload.run_config({"target_batch_size": 1}, trainers=12)
    assert sync.engine.target_batch_size == hybrid.workload.target_batch_size   # sync: the workload's own target
    for changes, needle in (({"mode": "async"}, "mode"), ({"compression": "zip"}, "unknown codec 'zip'"),
                            ({"diloco": {"inner_steps": 0}}, "diloco.inner_steps"), ({"diloco": {"h": 5}}, "diloco.h"),
                            ({"overlap": "sometimes"}, "overlap")):
        with pytest.raises(ConfigError) as info:
            hybrid.with_workload(**changes)
        assert "\n" not in str(info.value) and needle in str(info.value), str(info.value)
    path = tmp_path / "s.yaml"
    path.write_text("peers: [{upload_mbps: 10, download_mbps: 10}]\nworkload: {kind: training, task_plugin: 'm:f', mode: diloco, "
                    "diloco: {inner_steps: -1}}")
    with pytest.raises(ConfigError, match="workload.training.diloco.inner_steps"):
        load_scenario(path)


def test_emulate_cli_flags_choose_the_mode():
    import argparse

    from swarm.simulate.cli import register, scenario_from_args

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["simulate", "emulate", "--scenario", "hybrid", "--workload", "training", "--mode", "diloco",
                              "--inner-steps", "10", "--overlap", "--compression", "powersgd"])
    w = scenario_from_args(args).workload
    assert (w.mode, w.overlap, w.diloco.inner_steps, w.diloco.outer_lr, w.compression) == ("diloco", True, 10, 0.7, "powersgd")
    plain = scenario_from_args(parser.parse_args(["simulate", "emulate", "--scenario", "hybrid", "--workload", "training"])).workload
    assert (plain.mode, plain.overlap, plain.compression) == ("sync", False, "fp16")
    with pytest.raises(ConfigError, match="inner_steps"):
        scenario_from_args(parser.parse_args(["simulate", "emulate", "--scenario", "hybrid", "--workload", "training", "--inner-steps", "0"]))
