"""Generic Hugging Face language-model tasks: `task: hf-mlm` (masked LM) and `task: hf-clm` (causal LM).

An organizer names a transformers architecture and its sizes, a tokenizer and a dataset in
experiment.yaml, and `swarm launch --config` trains that model with no Python written:

    task: hf-clm
    data_path: corpus/                 # text files (a file, or *.txt under a folder), a `datasets.save_to_disk`
                                       # folder (column `text_column`), hf:NAME..., or none: the KJV
    task_options:
      architecture: gpt2               # any transformers model type (AutoConfig.for_model); default bert / gpt2
      model: {n_embd: 128, n_layer: 2, n_head: 2}   # config fields; each must exist in that architecture
      tokenizer: path/to/folder        # AutoTokenizer.from_pretrained(folder), local files only;
      vocab_size: 4000                 #   without it a BPE tokenizer is trained on the corpus (cached)
      seq_len: 64

Data: every sentence is tokenized without special tokens, documents are joined with the
end-of-text token (SEP of the trained tokenizer, else the tokenizer's eos/sep), and the flat
stream is cut into consecutive blocks; every 50th block is held out for `evaluate`. hf-clm
trains on blocks of seq_len tokens (labels = inputs); hf-mlm wraps blocks of seq_len - 2 tokens
in [CLS] ... [SEP] and masks 15 % of the others BERT-style (80 % mask, 10 % random, 10 % kept).

Determinism: the model is built under `torch.manual_seed(settings.seed)`; `batches(w)` draws
from a generator seeded with `settings.seed * 1000003 + w`. The fingerprint hashes the model
config and the tokenizer, so peers with another architecture or vocabulary are refused.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import torch

from peers.data.text import Corpus, load_corpus, make_corpus, split_sentences
from peers.data.tokenizer import canonical_json, get_tokenizer, to_hf_tokenizer
from swarm.errors import ConfigError, DataError

from .base import Task, TaskSettings

logger = logging.getLogger(__name__)

HELD_OUT_EVERY = 50
MASK_RATE = 0.15
MAX_SEQ_LEN = 8192
EVAL_SEED = 20_240_601
KNOWN_OPTIONS = {"architecture", "model", "tokenizer", "vocab_size", "seq_len", "text_column", "lr"}
TINY: dict[str, dict[str, Any]] = {   # the default architectures' sizes when `model` leaves them out: CPU-sized
    "bert": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256),
    "gpt2": dict(n_embd=128, n_layer=2, n_head=2),
}


def _int_option(options: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"task option {key} must be an integer in [{low}, {high}], got {value!r}")
    return value


def is_saved_dataset(path: Path) -> bool:
    """A folder written by `datasets.Dataset.save_to_disk` (or DatasetDict's)."""
    return path.is_dir() and any((path / name).is_file() for name in ("state.json", "dataset_dict.json"))


def load_saved_dataset(path: Path, column: str) -> Corpus:
    """A saved `datasets` folder's `column` as documents (one per row; a DatasetDict's train split)."""
    try:
        import datasets
    except ImportError as e:
        raise DataError(f"data path {path} is a saved dataset and needs the `datasets` package: pip install datasets") from e
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as e:  # the library raises many kinds; all mean "cannot load this"
        raise DataError(f"cannot load the saved dataset {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise DataError(f"saved dataset {path} has no train split; splits: {', '.join(loaded)}")
        loaded = loaded["train"]
    if column not in loaded.column_names:
        raise DataError(f"saved dataset {path} has no column {column!r}; columns: {', '.join(loaded.column_names)}")
    documents = [[s for line in text.splitlines() for s in split_sentences(line)]
                 for text in loaded[column] if isinstance(text, str)]
    corpus = make_corpus(documents, source=str(path))
    if not corpus.documents:
        raise DataError(f"saved dataset {path} has no text in column {column!r}")
    return corpus


class HfTextTask(Task):
    """A transformers language model built from a config, trained on a text corpus (see the module docstring)."""

    name: ClassVar[str]
    default_architecture: ClassVar[str]

    def __init__(self, settings: TaskSettings):
        super().__init__(settings)
        options = dict(settings.options)
        unknown = sorted(set(options) - KNOWN_OPTIONS)
        if unknown:
            raise ConfigError(f"{self.name} has no task option {unknown[0]!r}; options: {', '.join(sorted(KNOWN_OPTIONS))}")
        self.architecture = options.get("architecture", self.default_architecture)
        from transformers import CONFIG_MAPPING

        if not isinstance(self.architecture, str) or self.architecture not in CONFIG_MAPPING:
            raise ConfigError(f"{self.name}: unknown transformers architecture {self.architecture!r} (a model type such as bert, gpt2, roberta, llama)")
        sizes = options.get("model", {})
        if not isinstance(sizes, dict) or not all(isinstance(v, (int, float, str, bool)) for v in sizes.values()):
            raise ConfigError(f"{self.name}: task option model must map config fields to numbers or strings")
        defaults = CONFIG_MAPPING[self.architecture]()
        missing = sorted(k for k in sizes if not hasattr(defaults, k))
        if missing:
            raise ConfigError(f"{self.name}: a {self.architecture} config has no field {missing[0]!r}")
        self.sizes = {**(TINY.get(self.architecture, {}) if "architecture" not in options else {}), **sizes}
        self.seq_len = _int_option(options, "seq_len", 64, 8, MAX_SEQ_LEN)
        self.requested_vocab_size = _int_option(options, "vocab_size", 4000, 64, 1_000_000)
        self.tokenizer_path = options.get("tokenizer")
        self.text_column = str(options.get("text_column", "text"))
        if settings.micro_batch_size < 1:
            raise ConfigError(f"micro_batch_size must be positive, got {settings.micro_batch_size}")

    # -- data ------------------------------------------------------------------------
    @cached_property
    def corpus(self) -> Corpus:
        path = self.settings.data_path
        if path and is_saved_dataset(Path(path).expanduser()):
            return load_saved_dataset(Path(path).expanduser(), self.text_column)
        return load_corpus(path, Path(self.settings.cache_dir))

    @cached_property
    def _tokenizer(self) -> tuple[Any, str]:
        """(a transformers fast tokenizer, its sha256)."""
        if self.tokenizer_path is None:
            cached = get_tokenizer(self.corpus, self.requested_vocab_size, Path(self.settings.cache_dir))
            return to_hf_tokenizer(cached.tokenizer, model_max_length=self.seq_len), cached.sha256
        from transformers import AutoTokenizer

        folder = Path(str(self.tokenizer_path)).expanduser()
        if not folder.is_dir():
            raise DataError(f"tokenizer folder {folder} does not exist")
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except Exception as e:  # transformers raises OSError, ValueError...: all mean "not a tokenizer folder"
            raise DataError(f"cannot load a tokenizer from {folder}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
        if not getattr(tokenizer, "is_fast", False):
            raise DataError(f"tokenizer in {folder} is not a fast (tokenizers-backed) tokenizer")
        return tokenizer, hashlib.sha256(canonical_json(tokenizer.backend_tokenizer).encode("utf-8")).hexdigest()

    @property
    def tokenizer(self):
        return self._tokenizer[0]

    def _end_of_text(self) -> int:
        t = self.tokenizer
        for token_id in (t.sep_token_id, t.eos_token_id):
            if token_id is not None:
                return int(token_id)
        raise ConfigError(f"{self.name}: the tokenizer has neither a sep nor an eos token to separate documents")

    @cached_property
    def _splits(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(training blocks, held-out blocks), each (n, block_len) int64."""
        end = self._end_of_text()
        ids: list[int] = []
        for doc in self.corpus.documents:
            for encoded in self.tokenizer(doc, add_special_tokens=False)["input_ids"]:
                ids.extend(encoded)
            ids.append(end)
        n = len(ids) // self.block_len
        if n < 2:
            raise DataError(f"corpus {self.corpus.source} is too small: {len(ids)} tokens make {n} block(s) of {self.block_len}, need 2")
        blocks = torch.tensor(ids[:n * self.block_len], dtype=torch.long).view(n, self.block_len)
        held = torch.zeros(n, dtype=torch.bool)
        held[HELD_OUT_EVERY - 1::HELD_OUT_EVERY] = True
        if not held.any():
            held[-1] = True
        logger.info("%s data: %d training and %d held-out blocks of %d tokens from %s",
                    self.name, int((~held).sum()), int(held.sum()), self.block_len, self.corpus.source)
        return blocks[~held], blocks[held]

    @property
    def block_len(self) -> int:
        return self.seq_len

    # -- model -----------------------------------------------------------------------
    def model_config(self):
        from transformers import AutoConfig

        t = self.tokenizer
        special = {"pad_token_id": t.pad_token_id, "bos_token_id": t.bos_token_id or t.cls_token_id, "eos_token_id": self._end_of_text()}
        config = AutoConfig.for_model(self.architecture, vocab_size=len(t),
                                      **{k: v for k, v in special.items() if v is not None}, **self.sizes)
        positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        if positions is not None and positions < self.seq_len:
            raise ConfigError(f"{self.name}: seq_len {self.seq_len} exceeds the model's {positions} positions")
        return config

    def fingerprint(self) -> dict[str, str]:
        # the architecture, not the library that wrote it: peers with another transformers release may train together
        fields = {k: v for k, v in self.model_config().to_dict().items() if k != "transformers_version"}
        config = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
        return {"model_config": hashlib.sha256(config.encode("utf-8")).hexdigest(), "tokenizer": self._tokenizer[1], "task": self.name}

    def build_model(self) -> torch.nn.Module:
        config = self.model_config()
        with torch.random.fork_rng(devices=[]):   # seed the build without touching the caller's RNG
            torch.manual_seed(self.settings.seed)
            return self.auto_class().from_config(config)

    def auto_class(self):
        raise NotImplementedError

    def make_optimizer(self, params, lr: float) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.01)

    # -- batches ---------------------------------------------------------------------
    def make_batch(self, blocks: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def batches(self, worker_seed: int) -> Iterator[dict[str, torch.Tensor]]:
        train, _ = self._splits
        generator = torch.Generator().manual_seed(self.settings.seed * 1000003 + worker_seed)
        size = self.settings.micro_batch_size
        while True:   # one pass per loop, in a fresh order each time; a last partial batch is dropped
            order = torch.randperm(len(train), generator=generator)
            for start in range(0, len(order) - size + 1, size):
                yield self.make_batch(train[order[start:start + size]], generator)

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        device = next(model.parameters()).device
        outputs = model(**{k: v.to(device, non_blocking=True) for k, v in batch.items()})
        return outputs.loss, int(batch["input_ids"].shape[0])

    # -- evaluation and export -------------------------------------------------------
    def evaluate(self, model: torch.nn.Module, max_batches: int = 20) -> dict[str, float]:
        """Mean held-out loss and its perplexity."""
        _, held = self._splits
        generator = torch.Generator().manual_seed(EVAL_SEED)
        size = self.settings.micro_batch_size
        batches = [self.make_batch(held[i:i + size], generator) for i in range(0, len(held), size)][:max(1, max_batches)]
        was_training = model.training
        model.eval()
        total = samples = 0.0
        try:
            with torch.no_grad():
                for batch in batches:
                    loss, n = self.loss(model, batch)
                    total += float(loss) * n
                    samples += n
        finally:
            model.train(was_training)
        mean = total / samples
        return {"loss": mean, "perplexity": float(torch.tensor(mean).exp())}

    def export(self, model: torch.nn.Module, path: Path, fmt: str = "hf") -> None:
        """A Hugging Face folder: AutoModelFor...from_pretrained and AutoTokenizer.from_pretrained load it."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        logger.info("exported the %s model and tokenizer to %s", self.name, path)


class HfCausalLMTask(HfTextTask):
    """task: hf-clm, next-token prediction on blocks of seq_len tokens."""

    name = "hf-clm"
    default_architecture = "gpt2"

    def auto_class(self):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def make_batch(self, blocks: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {"input_ids": blocks, "attention_mask": torch.ones_like(blocks), "labels": blocks.clone()}


class HfMaskedLMTask(HfTextTask):
    """task: hf-mlm, BERT-style masked-token prediction on [CLS] block [SEP]."""

    name = "hf-mlm"
    default_architecture = "bert"

    def auto_class(self):
        from transformers import AutoModelForMaskedLM

        return AutoModelForMaskedLM

    @property
    def block_len(self) -> int:
        return self.seq_len - 2

    def make_batch(self, blocks: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        t = self.tokenizer
        if t.mask_token_id is None or t.cls_token_id is None:
            raise ConfigError(f"{self.name}: the tokenizer needs mask and cls tokens")
        n = blocks.shape[0]
        input_ids = torch.cat([torch.full((n, 1), t.cls_token_id), blocks, torch.full((n, 1), self._end_of_text())], 1)
        maskable = torch.zeros_like(input_ids, dtype=torch.bool)
        maskable[:, 1:-1] = True
        chosen = (torch.rand(input_ids.shape, generator=generator) < MASK_RATE) & maskable
        labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
        action = torch.rand(input_ids.shape, generator=generator)
        random_ids = torch.randint(len(t.all_special_ids), len(t), input_ids.shape, generator=generator)
        masked = input_ids.masked_fill(chosen & (action < 0.8), t.mask_token_id)
        masked = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, masked)
        return {"input_ids": masked, "attention_mask": torch.ones_like(masked), "labels": labels}


__all__ = ["HfTextTask", "HfCausalLMTask", "HfMaskedLMTask", "is_saved_dataset", "load_saved_dataset"]
