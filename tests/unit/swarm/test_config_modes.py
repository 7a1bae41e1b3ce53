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
    ("engine:\n  compression: sparse", "unknown codec 'sparse'"),     # it only carries top-k messages
    ("engine:\n  topk_fraction: 0.5", "topk_fraction"),
    ("engine:\n  topk_value_bits: 4", "topk_value_bits"),
    ("mode: diloco\ndiloco:\n  outer_codec: int3", "diloco.outer_codec: Value error, unknown codec 'int3'"),
    ("overlap: maybe", "overlap"),
    ("mode: streaming-diloco\ndiloco:\n  fragments: 1", "diloco.fragments"),
])
def test_bad_mode_settings_are_one_clear_line(tmp_path, text, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_run_config(p)
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("codec", ["none", "fp16", "uniform8bit", "quantile8bit", "uniform4bit", "uniform2bit", "powersgd",
                                   "topk", "auto"])
def test_every_codec_name_is_accepted(codec):
    assert load_run_config(None, {"compression": codec}).engine.compression == codec
    cfg = load_run_config(None, {"mode": "diloco", "outer_codec": codec})
    assert cfg.diloco.outer_codec == codec and cfg.codec() == codec and cfg.engine.compression == "fp16"


def test_outer_codec_is_per_mode_and_part_of_the_run_s_hyperparameters(tmp_path):
    p = tmp_path / "e.yaml"
    p.write_text("mode: diloco\ndiloco:\n  outer_codec: topk\nengine:\n  compression: uniform8bit\n  topk_fraction: 0.01\n")
    cfg = load_run_config(p)
    assert cfg.codec() == "topk" and cfg.engine.compression == "uniform8bit"
    hp = cfg.hyperparameters()
    assert (hp["diloco_outer_codec"], hp["topk_fraction"], hp["topk_value_bits"]) == ("topk", 0.01, 2)
    assert hp != load_run_config(p, {"topk_fraction": 0.03}).hyperparameters()   # peers must agree on k
    sync = load_run_config(p, {"mode": "sync"})           # the outer codec is DiLoCo's; sync keeps engine.compression
    assert sync.codec() == "uniform8bit" and "diloco_outer_codec" not in sync.hyperparameters()
    plain = load_run_config(None, {"mode": "diloco"})
    assert plain.codec() == "fp16" and "diloco_outer_codec" not in plain.hyperparameters()


def test_streaming_diloco_shares_the_diloco_section_and_peers_must_agree_on_fragments(tmp_path):
    p = tmp_path / "e.yaml"
    p.write_text("mode: streaming-diloco\ndiloco:\n  inner_steps: 40\n  outer_codec: uniform4bit\n")
    cfg = load_run_config(p, {"fragments": 8})
    assert cfg.uses_diloco and cfg.codec() == "uniform4bit" and cfg.diloco.fragments == 8
    hp = cfg.hyperparameters()
    assert (hp["mode"], hp["diloco_fragments"], hp["diloco_outer_codec"]) == ("streaming-diloco", 8, "uniform4bit")
    assert hp != load_run_config(p, {"fragments": 4}).hyperparameters()
    assert "diloco_fragments" not in load_run_config(p, {"mode": "diloco"}).hyperparameters()
