"""A peer whose task, model, tokenizer or hyperparameters differ from the run's is refused in one line."""
from __future__ import annotations

import pytest

from peers.daemon import check_config, config_record
from swarm.config import RunConfig
from swarm.errors import ConfigError

pytestmark = pytest.mark.timeout(30)

FP = {"model_config": "aa" * 32, "tokenizer": "bb" * 32, "task": "albert"}


def test_identical_configs_pass():
    cfg = RunConfig()
    check_config(config_record(cfg, FP), config_record(cfg, FP))


def test_micro_batch_size_may_differ():
    check_config(config_record(RunConfig(micro_batch_size=8), FP), config_record(RunConfig(micro_batch_size=2), FP))


@pytest.mark.parametrize("change, needle", [
    (lambda c, fp: (c, {**fp, "tokenizer": "cc" * 32}), "tokenizer hash"),
    (lambda c, fp: (c, {**fp, "model_config": "dd" * 32}), "model_config hash"),
    (lambda c, fp: (RunConfig(lr=0.5), fp), "hyperparameter lr"),
    (lambda c, fp: (RunConfig(task="swav"), fp), "task"),
    (lambda c, fp: (RunConfig.model_validate({"engine": {"target_batch_size": 7}}), fp), "target_batch_size"),
])
def test_mismatch_is_refused_with_one_line(change, needle):
    run = config_record(RunConfig(), FP)
    cfg, fp = change(RunConfig(), FP)
    with pytest.raises(ConfigError) as e:
        check_config(run, config_record(cfg, fp))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_a_forged_earlier_config_record_does_not_block_joining():
    """Issue 13 item 5: in an open run anyone may publish a config record with created_at 0."""
    from peers.daemon import check_config_any

    real = config_record(RunConfig(), FP)
    forged = config_record(RunConfig(task="swav"), FP).model_copy(update={"created_at": 0.0})
    runs = sorted([real, forged], key=lambda r: r.created_at)
    with pytest.raises(ConfigError, match="task 'swav'"):
        check_config(runs[0], real)              # what joining did: the earliest record decided
    assert check_config_any(runs, real) is real


def test_no_matching_config_record_is_one_clear_line():
    from peers.daemon import check_config_any

    with pytest.raises(ConfigError, match="task 'swav'"):
        check_config_any([config_record(RunConfig(task="swav"), FP)], config_record(RunConfig(), FP))
