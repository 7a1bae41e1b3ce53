"""ALBERT pretraining (masked LM + sentence-order prediction), the task DeDLOC trained collaboratively.

Data: the corpus (peers.data.text) is tokenized once (peers.data.tokenizer) and packed,
per document, into blocks of consecutive sentences holding at most seq_len - 3 tokens.
Every 50th block (about 2 %) is held out for `evaluate`; `batches` never yields it.
Each time a training block is drawn it is cut at a random sentence boundary (or, for a
one-sentence block, at a random token) into segments A and B, swapped with probability
1/2 (sentence_order_label 1 = swapped, as in Hugging Face's ALBERT), laid out as
`[CLS] A [SEP] B [SEP]` with token_type_ids and padding, and masked BERT-style: 15 % of
the non-special tokens are chosen (80 % -> [MASK], 10 % -> random token, 10 % kept) and
labels are -100 everywhere else.

Determinism: the model is built under `torch.manual_seed(settings.seed)`, so every peer
starts from identical parameters; `batches(w)` draws from a generator seeded with
`settings.seed * 1000003 + w`; evaluation batches are fixed.

Options (`settings.options`): size = tiny | small | base | large (default tiny),
seq_len (64 for tiny, else 128), vocab_size (4000 for tiny, else 30000).

    task = AlbertTask(TaskSettings(options={"size": "tiny"}))
    model = task.build_model()
    loss, n = task.loss(model, next(task.batches(worker_seed=0)))
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from peers.data.text import Corpus, load_corpus
from peers.data.tokenizer import (
    CLS,
    MASK,
    PAD,
    SEP,
    SPECIAL_TOKENS,
    CachedTokenizer,
    TokenizedCorpus,
    get_tokenizer,
    to_hf_tokenizer,
    tokenize_corpus,
)
from swarm.errors import ConfigError, DataError

from .base import Task, TaskSettings

logger = logging.getLogger(__name__)

PAD_ID, CLS_ID, SEP_ID, MASK_ID = (SPECIAL_TOKENS.index(t) for t in (PAD, CLS, SEP, MASK))
MASK_RATE = 0.15
HELD_OUT_EVERY = 50            # block i is held out when i % 50 == 49: about 2 %
EVAL_SEED = 20_240_601         # fixes the evaluation batches, independent of the run's seed
MAX_POSITIONS = 512

# Architectures: tiny is for CPU smoke runs (~0.06-0.1 s per micro-batch of 8 on one thread);
# base and large are ALBERT v2's; small sits between.
SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(embedding_size=64, hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256),
    "small": dict(embedding_size=128, hidden_size=384, num_hidden_layers=6, num_attention_heads=6, intermediate_size=1536),
    "base": dict(embedding_size=128, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "large": dict(embedding_size=128, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}
COMMON_CONFIG: dict[str, Any] = dict(
    hidden_act="gelu_new", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout_prob=0.1,
    max_position_embeddings=MAX_POSITIONS, type_vocab_size=2, initializer_range=0.02, layer_norm_eps=1e-12,
    num_hidden_groups=1, inner_group_num=1, pad_token_id=PAD_ID, bos_token_id=CLS_ID, eos_token_id=SEP_ID,
)
KNOWN_OPTIONS = {"size", "seq_len", "vocab_size", "lr"}   # lr is read by the caller


def _int_option(options: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = options.get(key, default)
    try:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError
        number = int(value)
    except ValueError:
        raise ConfigError(f"albert option {key} must be an integer, got {value!r}") from None
    if not low <= number <= high:
        raise ConfigError(f"albert option {key} must be in [{low}, {high}], got {number}")
    return number


def pack_blocks(tokens: TokenizedCorpus, budget: int) -> list[tuple[int, ...]]:
    """Blocks of consecutive sentences of one document, each at most `budget` tokens.

    A block is the tuple of its sentence boundaries in the flat id array (start, ..., end);
    sentences longer than `budget` are cut into budget-sized pieces; blocks of fewer than
    two tokens are dropped (they cannot be split into A and B).
    """
    offsets = tokens.sentence_offsets.tolist()
    doc_offsets = tokens.doc_offsets.tolist()
    blocks: list[tuple[int, ...]] = []
    for d in range(len(doc_offsets) - 1):
        current: list[int] = []
        for s in range(doc_offsets[d], doc_offsets[d + 1]):
            start, end = offsets[s], offsets[s + 1]
            for piece_start in range(start, end, budget):
                piece_end = min(piece_start + budget, end)
                if current and piece_end - current[0] > budget:
                    blocks.append(tuple(current))
                    current = []
                if not current:
                    current = [piece_start]
                current.append(piece_end)
        if current:
            blocks.append(tuple(current))
    return [b for b in blocks if b[-1] - b[0] >= 2]


class AlbertTask(Task):
    """ALBERT masked-LM + sentence-order pretraining on a text corpus (see the module docstring)."""

    name = "albert"

    def __init__(self, settings: TaskSettings):
        super().__init__(settings)
        options = dict(settings.options)
        unknown = sorted(set(options) - KNOWN_OPTIONS)
        if unknown:
            logger.warning("albert ignores unknown options: %s", ", ".join(unknown))
        self.size: str = str(options.get("size", "tiny"))
        if self.size not in SIZES:
            raise ConfigError(f"albert size must be one of {', '.join(SIZES)}, got {self.size!r}")
        tiny = self.size == "tiny"
        self.seq_len = _int_option(options, "seq_len", 64 if tiny else 128, 8, MAX_POSITIONS)
        self.requested_vocab_size = _int_option(options, "vocab_size", 4000 if tiny else 30000, 64, 1_000_000)
        if settings.micro_batch_size < 1:
            raise ConfigError(f"micro_batch_size must be positive, got {settings.micro_batch_size}")
        self.cache_dir = Path(settings.cache_dir)

    # -- data, loaded on first use ---------------------------------------------------
    @cached_property
    def corpus(self) -> Corpus:
        return load_corpus(self.settings.data_path, self.cache_dir)

    @cached_property
    def tokenizer(self) -> CachedTokenizer:
        return get_tokenizer(self.corpus, self.requested_vocab_size, self.cache_dir)

    @cached_property
    def _tokens(self) -> TokenizedCorpus:
        return tokenize_corpus(self.corpus, self.tokenizer, self.cache_dir)

    @cached_property
    def _splits(self) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
        """(training blocks, held-out blocks)."""
        blocks = pack_blocks(self._tokens, self.seq_len - 3)
        if len(blocks) < 2:
            raise DataError(f"corpus {self.corpus.source} is too small: it makes {len(blocks)} training sequence(s), need 2")
        held = {i for i in range(len(blocks)) if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1} or {len(blocks) - 1}
        train = [b for i, b in enumerate(blocks) if i not in held]
        logger.info("albert data: %d training and %d held-out sequences of <= %d tokens from %s",
                    len(train), len(held), self.seq_len, self.corpus.source)
        return train, [blocks[i] for i in sorted(held)]

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    # -- model -----------------------------------------------------------------------
    def model_config(self) -> dict[str, Any]:
        """The AlbertConfig arguments: the architecture every peer must share."""
        return {**COMMON_CONFIG, **SIZES[self.size], "vocab_size": self.vocab_size}

    def fingerprint(self) -> dict[str, str]:
        config = json.dumps(self.model_config(), sort_keys=True, separators=(",", ":"))
        return {
            "model_config": hashlib.sha256(config.encode("utf-8")).hexdigest(),
            "tokenizer": self.tokenizer.sha256,
            "task": self.name,
        }

    def build_model(self) -> torch.nn.Module:
        from transformers import AlbertConfig, AlbertForPreTraining

        config = AlbertConfig(**self.model_config())
        with torch.random.fork_rng(devices=[]):   # seed the build without touching the caller's RNG
            torch.manual_seed(self.settings.seed)
            model = AlbertForPreTraining(config)
        return model

    def make_optimizer(self, params, lr: float) -> torch.optim.Optimizer:
        from swarm.optim.lamb import Lamb

        return Lamb(params, lr=lr, weight_decay=0.01)

    # -- batches ---------------------------------------------------------------------
    def make_batch(self, blocks: list[tuple[int, ...]], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """One SOP + MLM batch from `blocks` (see the module docstring); randomness from `generator`."""
        n, length = len(blocks), self.seq_len
        input_ids = torch.full((n, length), PAD_ID, dtype=torch.long)
        token_type_ids = torch.zeros((n, length), dtype=torch.long)
        attention_mask = torch.zeros((n, length), dtype=torch.long)
        maskable = torch.zeros((n, length), dtype=torch.bool)
        swapped = torch.rand(n, generator=generator) < 0.5
        cuts = torch.rand(n, generator=generator)
        ids = self._tokens.ids
        for row, bounds in enumerate(blocks):
            start, end = bounds[0], bounds[-1]
            if len(bounds) > 2:   # cut at one of the inner sentence boundaries
                cut = bounds[1 + min(int(cuts[row] * (len(bounds) - 2)), len(bounds) - 3)]
            else:                 # one sentence: cut at a token inside it
                cut = start + 1 + min(int(cuts[row] * (end - start - 1)), end - start - 2)
            a, b = ids[start:cut], ids[cut:end]
            if swapped[row]:
                a, b = b, a
            la, lb = len(a), len(b)
            input_ids[row, 0] = CLS_ID
            input_ids[row, 1:1 + la] = a
            input_ids[row, 1 + la] = SEP_ID
            input_ids[row, 2 + la:2 + la + lb] = b
            input_ids[row, 2 + la + lb] = SEP_ID
            token_type_ids[row, 2 + la:3 + la + lb] = 1
            attention_mask[row, :3 + la + lb] = 1
            maskable[row, 1:1 + la] = True
            maskable[row, 2 + la:2 + la + lb] = True
        input_ids, labels = self._mask(input_ids, maskable, generator)
        return {
            "input_ids": input_ids,
            "token_type_ids": token_type_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "sentence_order_label": swapped.long(),
        }

    def _mask(self, input_ids: torch.Tensor, maskable: torch.Tensor, generator: torch.Generator):
        """Choose round(15 %) (at least one) of each row's maskable tokens; 80/10/10 mask/random/keep."""
        counts = maskable.sum(1, keepdim=True)
        chosen_per_row = torch.clamp((counts.float() * MASK_RATE).round().long(), min=1)
        scores = torch.rand(input_ids.shape, generator=generator).masked_fill(~maskable, 2.0)
        ranks = scores.argsort(1).argsort(1)
        chosen = (ranks < chosen_per_row) & maskable
        labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
        action = torch.rand(input_ids.shape, generator=generator)
        random_ids = torch.randint(len(SPECIAL_TOKENS), self.vocab_size, input_ids.shape, generator=generator)
        masked = input_ids.masked_fill(chosen & (action < 0.8), MASK_ID)
        masked = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, masked)
        return masked, labels

    def batches(self, worker_seed: int) -> Iterator[dict[str, torch.Tensor]]:
        train, _ = self._splits
        generator = torch.Generator().manual_seed(self.settings.seed * 1000003 + worker_seed)
        size = self.settings.micro_batch_size
        pending: list[tuple[int, ...]] = []
        while True:   # one pass per loop, in a fresh order each time
            for i in torch.randperm(len(train), generator=generator).tolist():
                pending.append(train[i])
                if len(pending) == size:
                    yield self.make_batch(pending, generator)
                    pending = []

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        outputs = model(**_to_device(batch, model))
        return outputs.loss, int(batch["input_ids"].shape[0])

    # -- evaluation and export -------------------------------------------------------
    @cached_property
    def _eval_batches(self) -> list[dict[str, torch.Tensor]]:
        _, held = self._splits
        generator = torch.Generator().manual_seed(EVAL_SEED)
        size = self.settings.micro_batch_size
        return [self.make_batch(held[i:i + size], generator) for i in range(0, len(held), size)]

    def evaluate(self, model: torch.nn.Module, max_batches: int = 20) -> dict[str, float]:
        """Loss, masked-token accuracy and sentence-order accuracy on the held-out blocks."""
        batches = self._eval_batches[:max(1, max_batches)]
        was_training = model.training
        model.eval()
        loss_sum = mlm_correct = mlm_total = sop_correct = samples = 0.0
        try:
            with torch.no_grad():
                for batch in batches:
                    batch = _to_device(batch, model)
                    out = model(**batch)
                    n = batch["input_ids"].shape[0]
                    loss_sum += float(out.loss) * n
                    samples += n
                    selected = batch["labels"] != -100
                    predicted = out.prediction_logits.argmax(-1)
                    mlm_correct += float((predicted[selected] == batch["labels"][selected]).sum())
                    mlm_total += float(selected.sum())
                    sop_correct += float((out.sop_logits.argmax(-1) == batch["sentence_order_label"]).sum())
        finally:
            model.train(was_training)
        return {
            "loss": loss_sum / samples,
            "mlm_accuracy": mlm_correct / max(mlm_total, 1.0),
            "sop_accuracy": sop_correct / samples,
        }

    def export(self, model: torch.nn.Module, path: Path, fmt: str = "hf") -> None:
        """A Hugging Face folder: AlbertForPreTraining.from_pretrained and AutoTokenizer.from_pretrained load it."""
        path = Path(path)
        from transformers.utils import logging as hf_logging

        path.mkdir(parents=True, exist_ok=True)
        hf_logging.disable_progress_bar()   # a one-shard bar says nothing that `swarm export`'s line does not
        model.save_pretrained(path)
        to_hf_tokenizer(self.tokenizer.tokenizer, model_max_length=self.seq_len).save_pretrained(path)
        logger.debug("exported the albert model and tokenizer to %s", path)


def _to_device(batch: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    device = next(model.parameters()).device
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


__all__ = ["AlbertTask", "SIZES", "pack_blocks"]
