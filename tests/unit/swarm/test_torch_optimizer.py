"""The collaborative optimizer is a torch optimizer: param_groups shared with the inner one, state_dict with the
swarm's epoch, LR schedulers that follow the global epoch, GradScaler whose overflowed steps never reach the average."""
from __future__ import annotations

import copy

import pytest
import torch

from swarm.errors import ConfigError
from swarm.optim.core import CollaborativeOptimizer
from tests.helpers.fake_swarm import FakeSwarm

pytestmark = pytest.mark.timeout(120)

PER_PEER = 16
MICRO = 8


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def _loss(model, gen):
    x = torch.randn(MICRO, 4, generator=gen)
    return (model(x) - x.sum(dim=1, keepdim=True)).pow(2).mean()


def _train_to(opt, model, gen, epochs, *, after_step=lambda: None, max_steps=200):
    for _ in range(max_steps):
        if opt.epoch >= epochs:
            return
        _loss(model, gen).backward()
        opt.step(samples=MICRO)
        opt.zero_grad()
        after_step()
    raise AssertionError("the swarm did not reach its epoch")


@pytest.fixture
def solo():
    """A one-peer fake swarm whose batch is complete at PER_PEER samples; (collab, a second swarm's collab)."""
    swarms = [FakeSwarm(1, per_peer_target=PER_PEER), FakeSwarm(1, per_peer_target=PER_PEER)]
    yield swarms[0].collabs[0], swarms[1].collabs[0]
    for swarm in swarms:
        swarm.close()


@pytest.mark.parametrize("mode", ["sync", "diloco"])
def test_it_is_a_torch_optimizer_sharing_the_inner_param_groups(solo, mode):
    model = _model()
    opt = CollaborativeOptimizer(solo[0], model.parameters(), torch.optim.SGD, lr=0.1, mode=mode)
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups is opt.inner.param_groups
    opt.param_groups[0]["lr"] = 0.5
    assert opt.inner.param_groups[0]["lr"] == 0.5
    _loss(model, torch.Generator().manual_seed(0)).backward()
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ConfigError, match="cannot change once"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(3))]})


def test_step_with_a_closure_returns_its_loss_and_counts_samples_per_step(solo):
    model = _model()
    opt = CollaborativeOptimizer(solo[0], model.parameters(), torch.optim.SGD, lr=0.1, samples_per_step=3)
    gen = torch.Generator().manual_seed(0)

    def closure():
        opt.zero_grad()
        loss = _loss(model, gen)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert torch.is_tensor(loss) and opt.local_samples == 3
    opt.step()
    assert opt.local_samples == 6
    with pytest.raises(ConfigError, match="samples"):
        opt.step(samples=0)


@pytest.mark.parametrize("mode", ["sync", "diloco"])
def test_state_dict_carries_the_epoch_and_loads_back_exactly(solo, mode):
    model = _model()
    opt = CollaborativeOptimizer(solo[0], model.parameters(), torch.optim.AdamW, lr=0.01, mode=mode)
    _train_to(opt, model, torch.Generator().manual_seed(0), epochs=3)
    saved = opt.state_dict()
    assert saved["epoch"] == 3
    fresh_model = _model(seed=1)
    fresh = CollaborativeOptimizer(solo[1], fresh_model.parameters(), torch.optim.AdamW, lr=0.01, mode=mode)
    fresh.load_state_dict(saved)
    assert fresh.epoch == 3 and fresh.params_hash() == opt.params_hash()
    assert all(torch.equal(a, b) for a, b in zip(fresh_model.parameters(), model.parameters()))
    wrong = CollaborativeOptimizer(solo[1], torch.nn.Linear(3, 3).parameters(), torch.optim.AdamW, lr=0.01, mode=mode)
    before = wrong.params_hash()
    with pytest.raises(ConfigError):
        wrong.load_state_dict(saved)
    assert wrong.epoch == 0 and wrong.params_hash() == before, "a state that does not fit changes nothing"


def _halving(epoch: int) -> float:
    return 0.5 ** epoch


@pytest.mark.parametrize("mode", ["sync", "diloco"])
def test_lambda_lr_gives_every_peer_the_same_lr_at_the_same_epoch(mode):
    """Each peer's loop calls scheduler.step() after every local step, as a torch loop (or transformers.Trainer)
    does; the peers take different numbers of local steps per epoch, yet their LR follows the global epoch."""
    swarm = FakeSwarm(3, per_peer_target=PER_PEER * 2)
    seen: list[dict[int, set[float]]] = [{} for _ in range(3)]
    initial = _model()   # built here: torch's global RNG is not for threads

    def peer(i, collab):
        model = copy.deepcopy(initial)
        opt = CollaborativeOptimizer(collab, model.parameters(), torch.optim.SGD, lr=0.2, mode=mode)
        scheduler = opt.attach_scheduler(torch.optim.lr_scheduler.LambdaLR(opt, _halving))
        gen = torch.Generator().manual_seed(i)
        micro = MICRO * (i + 1)     # peers differ in micro-batch size, hence in local steps per epoch

        for _ in range(300):
            if opt.epoch >= 4:
                break
            x = torch.randn(micro, 4, generator=gen)
            (model(x) - x.sum(dim=1, keepdim=True)).pow(2).mean().backward()
            opt.step(samples=micro)
            opt.zero_grad()
            scheduler.step()
            seen[i].setdefault(opt.epoch, set()).add(opt.param_groups[0]["lr"])
        return opt.params_hash()

    try:
        hashes = swarm.run_peers(peer)
    finally:
        swarm.close()
    assert len(set(hashes)) == 1
    for i in range(3):
        assert set(seen[i]) >= {1, 2, 3, 4}
        for epoch, lrs in seen[i].items():
            assert len(lrs) == 1 and lrs.pop() == pytest.approx(0.2 * 0.5 ** epoch), f"peer {i} epoch {epoch}"


def test_a_newcomer_gets_the_schedulers_epoch_with_the_state(solo):
    def step_lr(o):
        return torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.1)

    model = _model()
    opt = CollaborativeOptimizer(solo[0], model.parameters(), torch.optim.SGD, lr=0.2, scheduler=step_lr)
    _train_to(opt, model, torch.Generator().manual_seed(0), epochs=5)
    fresh = CollaborativeOptimizer(solo[1], _model().parameters(), torch.optim.SGD, lr=0.2, scheduler=step_lr)
    state = opt.snapshot()
    assert state.extra["schedulers"][0]["last_epoch"] == 5   # the scheduler's state travels with the download
    fresh.load_state(state)
    assert fresh.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"]) == pytest.approx(0.2 * 0.01)
    assert fresh.schedulers[0][0].last_epoch == 5


def test_after_a_state_download_the_schedule_still_reaches_the_inner_optimizer(solo):
    """torch's load_state_dict replaces the inner optimizer's param_groups: the rates the scheduler sets from then on
    must be the ones the inner optimizer steps with (a downloader kept the downloaded epoch's rate: peers diverged)."""
    def schedule(epoch: int) -> float:
        return 1.0 / (1 + epoch)

    model = _model()
    opt = CollaborativeOptimizer(solo[0], model.parameters(), torch.optim.SGD, lr=0.2, lr_schedule=schedule)
    _train_to(opt, model, torch.Generator().manual_seed(0), epochs=2)
    fresh_model = _model()
    fresh = CollaborativeOptimizer(solo[1], fresh_model.parameters(), torch.optim.SGD, lr=0.2, lr_schedule=schedule)
    fresh.load_state(opt.snapshot())
    fresh.load_state_dict(fresh.state_dict())
    _train_to(fresh, fresh_model, torch.Generator().manual_seed(1), epochs=5)
    assert fresh.epoch >= 5
    assert fresh.param_groups is fresh.inner.param_groups
    assert fresh.inner.param_groups[0]["lr"] == pytest.approx(0.2 * schedule(fresh.epoch))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_an_overflow_on_one_peer_under_grad_scaler_never_reaches_the_average(dtype):
    """Peer 1's third micro-batch overflows; GradScaler skips that step, so its samples are not counted and the
    others' parameters stay finite and identical to peer 1's after every round."""
    swarm = FakeSwarm(3, per_peer_target=PER_PEER)
    scales: list[float] = [0.0] * 3
    initial = _model()

    def peer(i, collab):
        model = copy.deepcopy(initial)
        opt = CollaborativeOptimizer(collab, model.parameters(), torch.optim.SGD, lr=0.05, momentum=0.9)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
        gen = torch.Generator().manual_seed(i)
        hashes = {}
        for local in range(200):
            if opt.epoch >= 4:
                break
            with torch.autocast("cpu", dtype=dtype):
                loss = _loss(model, gen)
            if i == 1 and local == 2:
                loss = loss * float("inf")      # a forced overflow
            scaler.scale(loss).backward()
            scaler.step(opt, samples=MICRO)
            scaler.update()
            opt.zero_grad()
            hashes[opt.epoch] = opt.params_hash()
        scales[i] = scaler.get_scale()
        assert all(torch.isfinite(p).all() for p in model.parameters())
        return hashes, [r.samples for r in opt.history]

    try:
        results = swarm.run_peers(peer)
    finally:
        swarm.close()
    for epoch in range(1, 5):
        assert len({hashes[epoch] for hashes, _ in results}) == 1, f"peers differ at epoch {epoch}"
    assert all(samples == [3 * PER_PEER] * 4 for _, samples in results), "the overflowed micro-batch was counted"
    assert scales[1] < scales[0], "the scaler saw the overflow"


def test_a_non_finite_gradient_without_a_scaler_is_skipped_and_not_counted(solo):
    model = _model()
    opt = CollaborativeOptimizer(solo[0], model.parameters(), torch.optim.SGD, lr=0.1)
    (_loss(model, torch.Generator().manual_seed(0)) * float("nan")).backward()
    assert opt.step(samples=MICRO) is False
    assert opt.local_samples == 0 and opt.skipped_steps == 1
    assert not any(acc.any() for acc in opt.strategy.accum)
