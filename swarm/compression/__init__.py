"""Compression: tensor codecs for the wire (lower layer), error feedback, and round codecs that run one or more all-reduce phases (PowerSGD, top-k; above swarm.averaging)."""
