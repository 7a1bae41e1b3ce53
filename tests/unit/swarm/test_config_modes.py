"""mode, overlap, diloco and codec settings: validated with one clear line; flags and YAML map onto the same fields."""
from __future__ import annotations

import pytest

from swarm.config import load_run_config
from swarm.errors import ConfigError

pytestmark = pytest.mark.timeout(120)


def test_diloco_yaml_and_overrides(tmp_path):
    p = tmp_path / "e.yaml"
    p.write_text("mode: diloco\noverlap: true\ndiloco:\n  inner_steps: 20\n  outer_lr: 0.5\nengine:\n  compression: powersgd\n")
    cfg = load_run_config(p, {"inner_steps": 7, "outer_momentum": 0.8})
    assert cfg.mode == "diloco" and cfg.overlap and cfg.diloco.inner_steps == 7 and cfg.diloco.outer_lr == 0.5
    assert cfg.diloco.outer_momentum == 0.8 and cfg.engine.compression == "powersgd"
    hp = cfg.hyperparameters()
    assert hp["mode"] == "diloco" and hp["overlap"] is True and hp["diloco_outer_lr"] == 0.5 and hp["powersgd_rank"] == 4


def test_sync_hyperparameters_are_unchanged_by_the_new_fields():
    hp = load_run_config(None).hyperparameters()
    assert set(hp) == {"lr", "warmup_epochs", "total_epochs", "mode", "compression", "seed", "micro_batch_size"}


@pytest.mark.parametrize("text, needle", [
    ("mode: async", "mode"),
    ("mode: diloco\ndiloco:\n  inner_steps: 0", "inner_steps"),
    ("diloco:\n  outer_momentum: 1.5", "outer_momentum"),
    ("diloco:\n  inner_optimizer: lamb", "inner_optimizer"),
    ("diloco:\n  unknown: 1", "unknown"),
    ("engine:\n  compression: zstd", "unknown codec 'zstd'"),
    ("engine:\n  powersgd_rank: 0", "powersgd_rank"),
    ("overlap: maybe", "overlap"),
])
def test_bad_mode_settings_are_one_clear_line(tmp_path, text, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_run_config(p)
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("codec", ["none", "fp16", "uniform8bit", "quantile8bit", "powersgd", "auto"])
def test_every_codec_name_is_accepted(codec):
    assert load_run_config(None, {"compression": codec}).engine.compression == codec
