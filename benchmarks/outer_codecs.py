"""Outer-gradient codecs for DiLoCo, in one process: bytes per value and the loss they reach at equal samples.

Three peers train a 2-layer MLP student on a random MLP teacher (each peer its own data), DiLoCo with
H inner AdamW steps and an outer Nesterov SGD, for a number of outer steps. Each outer round goes
through the real round codecs and tensor codecs (`wire_round`): every member encodes its buckets, one
reducer decodes them (`decode_checked`), averages them by weight and encodes the mean once, and every
member decodes those bytes, as the butterfly all-reduce does part by part. No network: this measures
what a codec does to the update and to the bytes, not time.

    python -m benchmarks.outer_codecs [--outer-steps 30] [--inner-steps 20] [--configs none,topk-2%]
        [--outer-lr 0.7 --outer-momentum 0.9] [--peers 3] [--json PATH]

Small tensors (under 1024 values) travel exactly, as the CompressionPolicy does for biases.
"""
from __future__ import annotations

import argparse
import asyncio
import copy
import json
import time

import torch

from swarm.averaging.balancing import MemberLink
from swarm.averaging.group import GroupView
from swarm.averaging.rounds import RoundRequest
from swarm.compression.codecs import CompressionPolicy, decode_checked
from swarm.compression.fragments import FragmentedRoundCodec
from swarm.compression.policy import FixedRoundCodec
from swarm.compression.round_codec import RoundCodec, RoundContext
from swarm.compression.topk import TopKRoundCodec
from swarm.optim.strategies import StreamingDiLoCo, layers_of

CONFIGS = ("none", "fp16", "uniform8bit", "uniform4bit", "uniform2bit", "topk-1%", "topk-2%", "topk-3%", "topk-2%-exact")
SMALL = 2**10


async def wire_round(codecs: list[RoundCodec], inputs: list[list[torch.Tensor] | None], weights: list[float], epoch: int = 0):
    """One round of len(codecs) members through the real encoders and one reducer, which sends back the mean (a sparse
    result's top) or, for the sparse codecs, the inputs themselves when smaller (as swarm.averaging.allreduce): returns (results, bytes
    each member sent, bytes of the reducer's reply per bucket)."""
    n = len(codecs)
    arrived: dict[int, list[bytes]] = {}
    done = asyncio.Event()
    sent_bytes = [0] * n
    reply: dict[str, list] = {}

    def ctx_for(i: int) -> RoundContext:
        group = GroupView(round_id=bytes(16), peer_ids=tuple(f"p{j}" for j in range(n)), roles=("trainer",) * n,
                          weights=(1.0,) * n, shares=tuple([1.0 / n] * n), my_index=i, timeout=30.0)
        links = [MemberLink(upload_bps=1e7, download_bps=1e7) for _ in range(n)]

        async def phase(layout, local):
            messages = [codec.encode(flat) for codec, flat in zip(layout.codecs, local)]
            sent_bytes[i] = sum(len(m) for m in messages)
            arrived[i] = messages
            if len(arrived) == n:
                means = []
                for b, (codec, size) in enumerate(zip(layout.codecs, layout.bucket_sizes)):
                    values = [decode_checked(codec, arrived[j][b], size) for j in range(n)]
                    averaged = sum(w * v for w, v in zip(weights, values)) / sum(weights)
                    if getattr(codec, "sparse_result", False):   # the top of the average (swarm.compression.topk)
                        averaged = codec.reduce_result(averaged, [arrived[j][b] for j in range(n)])
                    mean = codec.encode(averaged)
                    if hasattr(codec, "bundle"):   # as swarm.averaging.allreduce: the inputs back when smaller than the mean
                        relayed = codec.bundle([(w, arrived[j][b]) for j, w in enumerate(weights)], size)
                        mean = relayed if len(relayed) < len(mean) * codec.bundle_preference else mean
                    means.append(mean)
                reply["data"], reply["codecs"] = means, layout.codecs
                done.set()
            await done.wait()
            return [codec.decode(data) for codec, data in zip(reply["codecs"], reply["data"])]

        return RoundContext(group=group, links=links, phase=phase, epoch=epoch)

    results = await asyncio.gather(*(codec.average(ctx_for(i), x) for i, (codec, x) in enumerate(zip(codecs, inputs))))
    return results, sent_bytes, [len(d) for d in reply["data"]]


def round_codec(config: str, shapes) -> RoundCodec:
    """A config's round codec: a tensor codec's name, or topk-F% (the reducers send the top of the average) and
    topk-F%-exact (they send every member's message back)."""
    if config.startswith("topk-"):
        fraction, _, reply = config[5:].partition("%")
        return TopKRoundCodec(shapes, fraction=float(fraction) / 100, min_numel=SMALL, sparse_result=reply != "-exact")
    return FixedRoundCodec(shapes, CompressionPolicy(default=config, small_tensor_threshold=SMALL))


def _mlp(seed: int, hidden_layers: int = 2) -> torch.nn.Module:
    torch.manual_seed(seed)
    hidden = [m for _ in range(hidden_layers - 1) for m in (torch.nn.Linear(256, 256), torch.nn.GELU())]
    return torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), *hidden, torch.nn.Linear(256, 16))


class SimulatedPeer:
    """What a run mode uses of its optimizer (swarm.optim.strategies.Wrapped), for one peer of this process."""

    def __init__(self, model: torch.nn.Module):
        self.params = list(model.parameters())
        self.inner = torch.optim.AdamW(self.params, lr=1e-3)
        self.epoch = 0


def train(config: str, peers: int = 3, outer_steps: int = 30, inner_steps: int = 20, batch: int = 32, seed: int = 0,
          outer_lr: float = 0.7, outer_momentum: float = 0.9, fragments: int = 1, delayed: bool = False,
          hidden_layers: int = 2) -> dict:
    """DiLoCo (fragments 1) or streaming DiLoCo (a round per inner_steps / fragments inner steps, each averaging one
    fragment) through the real run mode (StreamingDiLoCo) and round codecs. `delayed`: a round's update is applied
    after the next round's inner steps (the latest the optimizer settles an overlapped round), keeping their drift."""
    if inner_steps % fragments:
        raise SystemExit(f"inner steps ({inner_steps}) must be a multiple of the fragments ({fragments})")
    teacher, start = _mlp(seed + 100, hidden_layers), _mlp(seed, hidden_layers)
    for p in teacher.parameters():
        p.requires_grad_(False)
    gen_eval = torch.Generator().manual_seed(seed + 7)
    x_eval = torch.randn(2048, 64, generator=gen_eval)
    y_eval = teacher(x_eval)
    models = [copy.deepcopy(start) for _ in range(peers)]
    members = [SimulatedPeer(m) for m in models]
    modes = [StreamingDiLoCo(delayed, outer_lr=outer_lr, outer_momentum=outer_momentum, fragments=fragments, layers=layers_of(m))
             for m in models]
    for mode, member in zip(modes, members):
        mode.bind(member)
    shapes = [p.shape for p in models[0].parameters()]
    split = modes[0].fragments(members[0])
    codecs = [FragmentedRoundCodec(shapes, split, [round_codec(config, [shapes[i] for i in f]) for f in split]) for _ in range(peers)]
    gens = [torch.Generator().manual_seed(seed * 1000 + i) for i in range(peers)]
    sent = received = 0
    round_bytes: list[int] = []
    losses = []
    pending = None

    def apply(requests, results):
        with torch.no_grad():
            for mode, member, request, result in zip(modes, members, requests, results):
                mode.apply(member, result.tensors, request)
                member.epoch += 1

    for r in range(outer_steps * fragments):
        for model, member, gen in zip(models, members, gens):
            for _ in range(inner_steps // fragments):
                x = torch.randn(batch, 64, generator=gen)
                torch.nn.functional.mse_loss(model(x), teacher(x)).backward()
                member.inner.step()
                member.inner.zero_grad()
        if pending is not None:
            apply(*pending)
        requests, inputs = [], []
        for mode, member in zip(modes, members):
            tensors, payload = mode.contribution(member, 1.0)
            inputs.append(tensors)
            requests.append(RoundRequest(epoch=r, weight=1.0, payload=payload))
        results, member_bytes, reply = asyncio.run(wire_round(codecs, inputs, [1.0] * peers, epoch=r))
        for result in results:
            result.commit()
        sent += member_bytes[0]
        received += sum(reply)
        round_bytes.append(member_bytes[0])
        pending = (requests, results)
        if not delayed:
            apply(*pending)
            pending = None
        if (r + 1) % fragments == 0:   # after every H inner steps: the loss of the shared (outer) parameters
            evaluated = copy.deepcopy(start)
            with torch.no_grad():
                for p, o in zip(evaluated.parameters(), modes[0].outer_params):
                    p.copy_(o)
                losses.append(float(torch.nn.functional.mse_loss(evaluated(x_eval), y_eval)))
    if pending is not None:
        apply(*pending)
    assert all(torch.equal(a, b) for mode in modes[1:] for a, b in zip(mode.outer_params, modes[0].outer_params))
    values = sum(int(torch.Size(s).numel()) for s in shapes) * outer_steps
    return {"config": config, "fragments": fragments, "delayed": delayed, "loss": losses[-1], "losses": losses,
            "sent_bytes_per_value": sent / values, "reply_bytes_per_value": received / values,
            "max_round_bytes": max(round_bytes), "samples": peers * outer_steps * inner_steps * batch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outer-steps", type=int, default=30)
    parser.add_argument("--inner-steps", type=int, default=20)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--outer-lr", type=float, default=0.7)
    parser.add_argument("--outer-momentum", type=float, default=0.9)
    parser.add_argument("--fragments", default="1", help="streaming DiLoCo: F per run, comma-separated (1: plain DiLoCo)")
    parser.add_argument("--delayed", action="store_true", help="streaming: apply each round after the next round's inner steps")
    parser.add_argument("--hidden-layers", type=int, default=2, help="hidden layers of the MLP (fragments <= hidden layers + 1)")
    parser.add_argument("--peers", type=int, default=3)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    rows = []
    for config in args.configs.split(","):
        for fragments in (int(f) for f in args.fragments.split(",")):
            t = time.monotonic()
            row = train(config, peers=args.peers, outer_steps=args.outer_steps, inner_steps=args.inner_steps, outer_lr=args.outer_lr,
                        outer_momentum=args.outer_momentum, fragments=fragments, delayed=args.delayed and fragments > 1,
                        hidden_layers=args.hidden_layers)
            rows.append(row)
            base = rows[0]
            label = config if fragments == 1 else f"{config} F={fragments}{' delayed' if row['delayed'] else ''}"
            print(f"{label:12s} loss {row['loss']:.5f} ({row['loss'] / base['loss'] - 1:+.1%} vs {base['config']})  "
                  f"member sends {row['sent_bytes_per_value']:.4f} B/value ({4 / row['sent_bytes_per_value']:.0f}x below fp32), "
                  f"reducer replies {row['reply_bytes_per_value']:.4f} B/value, largest round {row['max_round_bytes']} B  "
                  f"[{time.monotonic() - t:.1f}s]", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
