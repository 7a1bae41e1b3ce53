"""A SentencePiece-style subword tokenizer (BPE over Metaspace words), trained on a corpus and cached.

Every peer of a run must tokenize identically, so training is deterministic: the
`tokenizers` BPE trainer breaks ties by pair id, and gives bit-identical JSON on
every run and thread count. (Its Unigram trainer does not: the float scores of
pieces drift between runs, which is why this is BPE.)

The tokenizer is identified by `sha256(canonical JSON)`, where the canonical JSON is
`tokenizer.to_str()` re-dumped with sorted keys and no whitespace. The cache holds
`cache_dir/tokenizers/{corpus_sha[:16]}-{vocab_size}.json` (canonical JSON) and a
`.sha256` file beside it; a file whose content does not hash to the recorded value
is retrained and rewritten (atomically: temporary file, then os.replace).

`tokenize_corpus` turns a corpus into one flat int32 array of token ids, cached beside
the tokenizer as `{corpus_sha[:16]}-{tokenizer_sha[:16]}.ids.pt`.

Special tokens have fixed ids, as in ALBERT's SentencePiece model:
[PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4.

    cached = get_tokenizer(corpus, vocab_size=4000, cache_dir=cache_dir)
    ids = cached.tokenizer.encode("In the beginning", add_special_tokens=False).ids
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from swarm.errors import ConfigError

from .text import Corpus, atomic_write_text

logger = logging.getLogger(__name__)

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, CLS, SEP, MASK)
MIN_VOCAB_SIZE = 64


@dataclass(frozen=True)
class CachedTokenizer:
    """A trained tokenizer, its hash (sha256 of its canonical JSON) and the file it is cached in."""

    tokenizer: Tokenizer
    sha256: str
    path: Path

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()


def canonical_json(tokenizer: Tokenizer) -> str:
    """The tokenizer's JSON with sorted keys and no whitespace: equal tokenizers give equal strings."""
    return json.dumps(json.loads(tokenizer.to_str()), sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def tokenizer_hash(tokenizer: Tokenizer) -> str:
    """sha256 (hex) of the canonical JSON."""
    return hashlib.sha256(canonical_json(tokenizer).encode("utf-8")).hexdigest()


def train_tokenizer(sentences: Iterable[str], vocab_size: int) -> Tokenizer:
    """A lowercasing BPE tokenizer over Metaspace ("▁word") pieces, with ALBERT's special tokens."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise ConfigError(f"vocab_size must be at least {MIN_VOCAB_SIZE}, got {vocab_size}")
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    tokenizer.train_from_iterator(sentences, trainer)
    ids = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
    assert [ids[t] for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS))), ids
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}",
        pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=[(CLS, ids[CLS]), (SEP, ids[SEP])],
    )
    return tokenizer


def cache_path(cache_dir: Path, corpus_sha: str, vocab_size: int) -> Path:
    return Path(cache_dir) / "tokenizers" / f"{corpus_sha[:16]}-{vocab_size}.json"


def _load_cached(path: Path) -> CachedTokenizer | None:
    """The cached tokenizer if its file hashes to the recorded value, else None."""
    hash_path = path.with_name(path.name + ".sha256")
    if not path.is_file() or not hash_path.is_file():
        return None
    try:
        data = path.read_bytes()
        recorded = hash_path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as e:
        logger.warning("cannot read cached tokenizer %s (%s); retraining", path, e)
        return None
    actual = hashlib.sha256(data).hexdigest()
    if actual != recorded:
        logger.warning("cached tokenizer %s does not match its recorded hash; retraining", path)
        return None
    try:
        tokenizer = Tokenizer.from_str(data.decode("utf-8"))
    except Exception as e:  # tokenizers raises plain Exception on bad JSON
        logger.warning("cached tokenizer %s does not load (%s); retraining", path, e)
        return None
    return CachedTokenizer(tokenizer=tokenizer, sha256=actual, path=path)


def get_tokenizer(corpus: Corpus, vocab_size: int, cache_dir: Path) -> CachedTokenizer:
    """The tokenizer for `corpus` and `vocab_size`: from the cache if intact, else trained and cached."""
    path = cache_path(cache_dir, corpus.sha256, vocab_size)
    cached = _load_cached(path)
    if cached is not None:
        return cached
    logger.info("training a %d-token tokenizer on %d sentences from %s", vocab_size, corpus.num_sentences, corpus.source)
    tokenizer = train_tokenizer(corpus.sentences(), vocab_size)
    text = canonical_json(tokenizer)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    atomic_write_text(path, text)
    atomic_write_text(path.with_name(path.name + ".sha256"), digest + "\n")
    return CachedTokenizer(tokenizer=Tokenizer.from_str(text), sha256=digest, path=path)


def to_hf_tokenizer(tokenizer: Tokenizer, model_max_length: int):
    """The tokenizer as a `transformers.PreTrainedTokenizerFast`, ready for save_pretrained."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        model_max_length=model_max_length,
        pad_token=PAD,
        unk_token=UNK,
        cls_token=CLS,
        sep_token=SEP,
        mask_token=MASK,
        padding_side="right",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


@dataclass(frozen=True)
class TokenizedCorpus:
    """A corpus as one flat array of token ids (no special tokens).

    Sentence i is `ids[sentence_offsets[i]:sentence_offsets[i + 1]]`; document d holds
    sentences `doc_offsets[d]` to `doc_offsets[d + 1] - 1`.
    """

    ids: torch.Tensor               # int32, (num_tokens,)
    sentence_offsets: torch.Tensor  # int64, (num_sentences + 1,)
    doc_offsets: torch.Tensor       # int64, (num_documents + 1,)

    @property
    def num_documents(self) -> int:
        return len(self.doc_offsets) - 1

    def check(self) -> None:
        """Raise ValueError unless the offsets are consistent with each other and with `ids`."""
        so, do = self.sentence_offsets, self.doc_offsets
        if len(so) < 1 or len(do) < 1 or so[0] != 0 or do[0] != 0:
            raise ValueError("offsets must start at 0")
        if so[-1] != len(self.ids) or do[-1] != len(so) - 1:
            raise ValueError("offsets do not end at the array ends")
        if bool((so[1:] < so[:-1]).any()) or bool((do[1:] < do[:-1]).any()):
            raise ValueError("offsets are not sorted")


def tokenize_corpus(corpus: Corpus, cached: CachedTokenizer, cache_dir: Path) -> TokenizedCorpus:
    """Every sentence of `corpus` as token ids, cached beside the tokenizer (keyed by both hashes)."""
    path = Path(cache_dir) / "tokenizers" / f"{corpus.sha256[:16]}-{cached.sha256[:16]}.ids.pt"
    key = {"corpus_sha": corpus.sha256, "tokenizer_sha": cached.sha256}
    if path.is_file():
        try:
            state = torch.load(path, weights_only=True)
            if {k: state[k] for k in key} == key:
                tokenized = TokenizedCorpus(state["ids"], state["sentence_offsets"], state["doc_offsets"])
                tokenized.check()
                return tokenized
            logger.warning("token cache %s belongs to another corpus or tokenizer; rebuilding it", path)
        except Exception as e:  # a truncated or foreign file: rebuild it
            logger.warning("token cache %s is unusable (%s); rebuilding it", path, e)
    sentences = list(corpus.sentences())
    encodings = cached.tokenizer.encode_batch(sentences, add_special_tokens=False)
    lengths = torch.tensor([0] + [len(e.ids) for e in encodings], dtype=torch.int64)
    ids = torch.tensor([i for e in encodings for i in e.ids], dtype=torch.int32)
    doc_lengths = torch.tensor([0] + [len(doc) for doc in corpus.documents], dtype=torch.int64)
    tokenized = TokenizedCorpus(ids, torch.cumsum(lengths, 0), torch.cumsum(doc_lengths, 0))
    tokenized.check()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save({**key, "ids": ids, "sentence_offsets": tokenized.sentence_offsets,
                    "doc_offsets": tokenized.doc_offsets}, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tokenized


__all__ = [
    "SPECIAL_TOKENS",
    "PAD",
    "UNK",
    "CLS",
    "SEP",
    "MASK",
    "CachedTokenizer",
    "canonical_json",
    "tokenizer_hash",
    "train_tokenizer",
    "cache_path",
    "get_tokenizer",
    "to_hf_tokenizer",
    "TokenizedCorpus",
    "tokenize_corpus",
]
