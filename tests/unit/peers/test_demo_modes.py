"""`swarm demo`, `swarm launch` and `swarm join` take the run modes from the same flags; the demo derives the round's batch."""
from __future__ import annotations

import argparse

import pytest

from peers.cli import run_config_from_args
from peers.demo import demo_config, register_demo
from swarm.errors import ConfigError

pytestmark = pytest.mark.timeout(30)


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register_demo(parser.add_subparsers())
    return parser.parse_args(["demo", *argv])


def test_demo_streaming_diloco_rounds_are_a_fragment_s_share_of_h_steps_of_every_peer():
    config = demo_config(_args("--mode", "streaming-diloco", "--inner-steps", "40", "--fragments", "4", "--peers", "3",
                               "--micro-batch-size", "8", "--outer-codec", "uniform4bit"))
    assert config.mode == "streaming-diloco" and config.diloco.fragments == 4 and config.codec() == "uniform4bit"
    assert config.engine.target_batch_size == 40 * 3 * 8 // 4
    assert demo_config(_args("--mode", "diloco", "--inner-steps", "40", "--peers", "3", "--micro-batch-size", "8")).engine.target_batch_size == 960


def test_an_unknown_mode_or_too_few_fragments_is_one_line():
    with pytest.raises(ConfigError, match="mode") as e:
        run_config_from_args(_args("--mode", "streaming"))
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="fragments"):
        run_config_from_args(_args("--mode", "streaming-diloco", "--fragments", "1"))
