"""ResNets: layouts, feature sizes, deterministic init, input channels."""
from __future__ import annotations

import pytest
import torch

from peers.models.resnet import build_resnet
from swarm.errors import ConfigError

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("arch, features, params", [("tiny", 64, 77_104), ("resnet18", 512, 11_176_512), ("resnet50", 2048, 23_508_032)])
def test_layouts_match_the_reference_sizes(arch, features, params):
    net = build_resnet(arch, in_channels=3)
    assert net.num_features == features
    assert sum(p.numel() for p in net.parameters()) == params + (0 if arch != "tiny" else 288)   # torchvision's counts, minus fc


def test_feature_shapes_and_in_channels():
    torch.set_num_threads(1)
    tiny = build_resnet("tiny", in_channels=1)
    assert tiny(torch.rand(2, 1, 28, 28)).shape == (2, 64)
    assert tiny(torch.rand(2, 1, 12, 12)).shape == (2, 64)
    r18 = build_resnet("resnet18", in_channels=3)
    assert r18(torch.rand(1, 3, 64, 64)).shape == (1, 512)


def test_init_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_resnet("tiny", seed=5)
    after = torch.rand(1)
    b, c = build_resnet("tiny", seed=5), build_resnet("tiny", seed=6)
    assert torch.equal(before, after)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.stem[0].weight, c.stem[0].weight)


def test_zero_init_residual_starts_blocks_as_identity():
    net = build_resnet("tiny", zero_init_residual=True)
    assert all(float(block.last_bn.weight.detach().abs().sum()) == 0 for stage in net.stages for block in stage)
    assert float(build_resnet("tiny", zero_init_residual=False).stages[0][0].last_bn.weight.detach().sum()) > 0


def test_bad_arch_and_channels():
    with pytest.raises(ConfigError, match="unknown ResNet arch"):
        build_resnet("resnet9")
    with pytest.raises(ConfigError, match="in_channels"):
        build_resnet("tiny", in_channels=0)
