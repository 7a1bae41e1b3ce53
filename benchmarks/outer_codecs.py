"""Outer-gradient codecs for DiLoCo, in one process: bytes per value and the loss they reach at equal samples.

Three peers train a 2-layer MLP student on a random MLP teacher (each peer its own data), DiLoCo with
H inner AdamW steps and an outer Nesterov SGD, for a number of outer steps. Each outer round goes
through the real round codecs and tensor codecs (`wire_round`): every member encodes its buckets, one
reducer decodes them (`decode_checked`), averages them by weight and encodes the mean once, and every
member decodes those bytes, as the butterfly all-reduce does part by part. No network: this measures
what a codec does to the update and to the bytes, not time.

    python -m benchmarks.outer_codecs [--outer-steps 30] [--inner-steps 20] [--configs none,topk-2%]
        [--outer-lr 0.7 --outer-momentum 0.9] [--json PATH]

Small tensors (under 1024 values) travel exactly, as the CompressionPolicy does for biases.
"""
from __future__ import annotations

import argparse
import asyncio
import copy
import json
import time

import torch

from swarm.averaging.group import GroupView
from swarm.averaging.balancing import MemberLink
from swarm.compression.codecs import CompressionPolicy, decode_checked
from swarm.compression.policy import FixedRoundCodec
from swarm.compression.round_codec import RoundCodec, RoundContext
from swarm.compression.topk import TopKRoundCodec

CONFIGS = ("none", "fp16", "uniform8bit", "uniform4bit", "uniform2bit", "topk-1%", "topk-2%", "topk-3%")
SMALL = 2**10


async def wire_round(codecs: list[RoundCodec], inputs: list[list[torch.Tensor] | None], weights: list[float]):
    """One round of len(codecs) members through the real encoders: returns (results, bytes each member sent,
    bytes of the reducer's reply per bucket)."""
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
                    means.append(codec.encode(sum(w * v for w, v in zip(weights, values)) / sum(weights)))
                reply["data"], reply["codecs"] = means, layout.codecs
                done.set()
            await done.wait()
            return [codec.decode(data) for codec, data in zip(reply["codecs"], reply["data"])]

        return RoundContext(group=group, links=links, phase=phase)

    results = await asyncio.gather(*(codec.average(ctx_for(i), x) for i, (codec, x) in enumerate(zip(codecs, inputs))))
    return results, sent_bytes, [len(d) for d in reply["data"]]


def round_codec(config: str, shapes) -> RoundCodec:
    if config.startswith("topk-"):
        return TopKRoundCodec(shapes, fraction=float(config[5:-1]) / 100, min_numel=SMALL)
    return FixedRoundCodec(shapes, CompressionPolicy(default=config, small_tensor_threshold=SMALL))


def _mlp(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 256), torch.nn.GELU(),
                               torch.nn.Linear(256, 16))


def train(config: str, peers: int = 3, outer_steps: int = 30, inner_steps: int = 20, batch: int = 32, seed: int = 0,
          outer_lr: float = 0.7, outer_momentum: float = 0.9) -> dict:
    teacher, start = _mlp(seed + 100), _mlp(seed)
    for p in teacher.parameters():
        p.requires_grad_(False)
    gen_eval = torch.Generator().manual_seed(seed + 7)
    x_eval = torch.randn(2048, 64, generator=gen_eval)
    y_eval = teacher(x_eval)
    outer_params = [p.detach().clone() for p in start.parameters()]
    outer = torch.optim.SGD(outer_params, lr=outer_lr, momentum=outer_momentum, nesterov=outer_momentum > 0)
    shapes = [p.shape for p in outer_params]
    codecs = [round_codec(config, shapes) for _ in range(peers)]
    models = [copy.deepcopy(start) for _ in range(peers)]
    inners = [torch.optim.AdamW(m.parameters(), lr=1e-3) for m in models]
    gens = [torch.Generator().manual_seed(seed * 1000 + i) for i in range(peers)]
    sent = received = 0
    losses = []
    for _ in range(outer_steps):
        deltas = []
        for model, inner, gen in zip(models, inners, gens):
            for _ in range(inner_steps):
                x = torch.randn(batch, 64, generator=gen)
                torch.nn.functional.mse_loss(model(x), teacher(x)).backward()
                inner.step()
                inner.zero_grad()
            deltas.append([o - p.detach() for o, p in zip(outer_params, model.parameters())])
        results, member_bytes, reply = asyncio.run(wire_round(codecs, deltas, [1.0] * peers))
        for r in results:
            r.commit()
        sent += member_bytes[0]
        received += sum(reply)
        for p, g in zip(outer_params, results[0].tensors):
            p.grad = g.clone()
        outer.step()
        for model in models:
            with torch.no_grad():
                for p, o in zip(model.parameters(), outer_params):
                    p.copy_(o)
        with torch.no_grad():
            losses.append(float(torch.nn.functional.mse_loss(models[0](x_eval), y_eval)))
    values = sum(int(torch.Size(s).numel()) for s in shapes) * outer_steps
    return {"config": config, "loss": losses[-1], "losses": losses, "sent_bytes_per_value": sent / values,
            "reply_bytes_per_value": received / values, "samples": peers * outer_steps * inner_steps * batch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outer-steps", type=int, default=30)
    parser.add_argument("--inner-steps", type=int, default=20)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--outer-lr", type=float, default=0.7)
    parser.add_argument("--outer-momentum", type=float, default=0.9)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    rows = []
    for config in args.configs.split(","):
        t = time.monotonic()
        row = train(config, outer_steps=args.outer_steps, inner_steps=args.inner_steps, outer_lr=args.outer_lr,
                    outer_momentum=args.outer_momentum)
        rows.append(row)
        base = rows[0]
        print(f"{config:12s} loss {row['loss']:.5f} ({row['loss'] / base['loss'] - 1:+.1%} vs {base['config']})  "
              f"member sends {row['sent_bytes_per_value']:.4f} B/value ({4 / row['sent_bytes_per_value']:.0f}x below fp32), "
              f"reducer replies {row['reply_bytes_per_value']:.4f} B/value  [{time.monotonic() - t:.1f}s]", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
