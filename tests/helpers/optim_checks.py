"""Checks every torch optimizer of ours must pass (LAMB, LARS): same inputs, same bytes; a resumed run is the run."""
from __future__ import annotations

from typing import Callable

import torch


def assert_deterministic_and_resumable(make_opt: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer],
                                       shape: tuple[int, ...], seed: int = 1, steps: int = 4) -> None:
    """Train one parameter on fixed gradients: twice gives equal bytes, and stopping halfway, saving the state dict
    and resuming from it gives the same bytes as the run without a stop."""
    grads = [torch.randn(*shape, generator=torch.Generator().manual_seed(100 + i)) for i in range(steps)]

    def train(chunk, opt_state=None, start=None):
        p = torch.nn.Parameter(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) if start is None else start)
        opt = make_opt([p])
        if opt_state is not None:
            opt.load_state_dict(opt_state)
        for g in chunk:
            p.grad = g.clone()
            opt.step()
        return p.detach().clone(), opt.state_dict()

    full, _ = train(grads)
    again, _ = train(grads)
    assert torch.equal(full, again)
    half, state = train(grads[: steps // 2])
    resumed, _ = train(grads[steps // 2 :], opt_state=state, start=half.clone())
    assert torch.equal(resumed, full)
