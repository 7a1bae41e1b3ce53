"""Run configuration: one pydantic model, YAML and flags map onto it, errors are one line."""
from __future__ import annotations

import pytest

from swarm.config import load_run_config
from swarm.errors import ConfigError

pytestmark = pytest.mark.timeout(30)


def test_defaults_and_overrides(tmp_path):
    cfg = load_run_config(None, {"run_id": "x", "target_batch_size": 512, "compression": "none", "lr": None})
    assert cfg.run_id == "x" and cfg.engine.target_batch_size == 512 and cfg.engine.compression == "none"


def test_yaml_file(tmp_path):
    p = tmp_path / "e.yaml"
    p.write_text("run_id: exp1\ntask: albert\nengine:\n  target_batch_size: 64\n")
    cfg = load_run_config(p)
    assert cfg.run_id == "exp1" and cfg.engine.target_batch_size == 64


@pytest.mark.parametrize("text, needle", [
    ("run_id: [unclosed", "not valid YAML"),
    ("- a list", "mapping"),
    ("unknown_key: 1", "unknown_key"),
    ("engine:\n  target_batch_size: -5", "target_batch_size"),
    ("run_id: 'has space'", "run_id"),
])
def test_bad_config_is_one_clear_line(tmp_path, text, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_run_config(p)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_run_config("/nonexistent/e.yaml")
