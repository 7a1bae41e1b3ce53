"""The in-process FakeCollab stands in for Collaboration wherever the collaborative optimizer meets it: same names, same
parameters, so that a change to the real round entry point cannot leave the unit tests testing an old one."""
from __future__ import annotations

import inspect

import pytest

from swarm.collaboration import Collaboration
from swarm.optim.core import Swarm
from tests.helpers.fake_swarm import FakeCollab

pytestmark = pytest.mark.timeout(30)

USED_BY_THE_OPTIMIZER = [name for name, value in vars(Swarm).items() if inspect.isfunction(value) and not name.startswith("_")]


def test_the_protocol_lists_what_the_optimizer_calls():
    assert {"begin_training", "submit_round", "download_state"} <= set(USED_BY_THE_OPTIMIZER)


@pytest.mark.parametrize("name", [*USED_BY_THE_OPTIMIZER, "round_budget"])
def test_the_fake_and_the_real_collaboration_agree(name):
    real = list(inspect.signature(getattr(Collaboration, name)).parameters)
    fake = list(inspect.signature(getattr(FakeCollab, name)).parameters)
    assert fake == real
    if name in USED_BY_THE_OPTIMIZER:
        assert list(inspect.signature(getattr(Swarm, name)).parameters) == real
