"""Evaluation of trained models: linear probes for vision backbones, and `swarm eval`."""
