"""Adapters that let other people's training loops join a swarm.

- `transformers`: a Hugging Face `Trainer` steps through a collaborative optimizer (optimizer factory + callback).
- `local_ranks`: a multi-GPU volunteer launched with `torchrun` is one swarm peer (ranks average inside the machine).
- `start_together`: wait until n peers train before a loop starts (examples and benchmarks that start several).

Each module imports its third-party library on first use, so `import swarm` never needs them.
"""
