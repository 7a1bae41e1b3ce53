"""The tasks a run can train and the export formats of each, without importing torch: `swarm --help` and every
subcommand's parser read them (peers.tasks re-exports both)."""
from __future__ import annotations

TASKS = ("albert", "swav", "hf-mlm", "hf-clm")
EXPORT_FORMATS: dict[str, tuple[str, ...]] = {
    "albert": ("hf",),             # a Hugging Face folder: model + tokenizer
    "swav": ("safetensors",),      # model.safetensors + config.json that peers.models.resnet loads back
    "hf-mlm": ("hf",),
    "hf-clm": ("hf",),
}
