"""Tokenizer: special ids, determinism (also across processes), the hash-checked cache, token-id cache."""
from __future__ import annotations

import hashlib
import logging
import random
import subprocess
import sys
from pathlib import Path

import pytest

from peers.data import tokenizer as tok
from peers.data.text import Corpus, make_corpus
from peers.data.tokenizer import (
    SPECIAL_TOKENS,
    cache_path,
    canonical_json,
    get_tokenizer,
    tokenize_corpus,
    tokenizer_hash,
    train_tokenizer,
)
from swarm.errors import ConfigError

pytestmark = pytest.mark.timeout(60)

WORDS = [a + b for a in ("ka", "lo", "mi", "ne", "su", "ta", "ri", "vo") for b in ("n", "ra", "l", "sh", "te", "m")]


def synthetic_corpus(documents: int = 40, seed: int = 0) -> Corpus:
    rng = random.Random(seed)
    docs = [
        [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))).capitalize() + "." for _ in range(8)]
        for _ in range(documents)
    ]
    return make_corpus(docs, source="synthetic")


def test_special_tokens_have_albert_ids() -> None:
    tokenizer = train_tokenizer(synthetic_corpus().sentences(), 200)
    assert [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    pair = tokenizer.encode("Kan lora.", "Mish.")
    assert pair.ids[0] == 2 and pair.ids.count(3) == 2 and pair.tokens[0] == "[CLS]"
    assert pair.type_ids[-1] == 1 and pair.type_ids[0] == 0
    assert tokenizer.encode("KAN", add_special_tokens=False).ids == tokenizer.encode("kan", add_special_tokens=False).ids


@pytest.mark.integration  # starts a process or opens a socket
def test_training_is_deterministic_within_and_across_processes(tmp_path: Path) -> None:
    corpus = synthetic_corpus()
    first = canonical_json(train_tokenizer(corpus.sentences(), 200))
    assert canonical_json(train_tokenizer(corpus.sentences(), 200)) == first
    # A fresh interpreter has fresh hash-map seeds: the trainer must not depend on them.
    sentences = tmp_path / "sentences.txt"
    sentences.write_text("\n".join(corpus.sentences()), encoding="utf-8")
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from peers.data.tokenizer import train_tokenizer, tokenizer_hash;"
        "lines = open(sys.argv[2], encoding='utf-8').read().split(chr(10));"
        "print(tokenizer_hash(train_tokenizer(lines, 200)))"
    )
    repo = Path(tok.__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", script, str(repo), str(sentences)], capture_output=True, text=True, timeout=50, check=True
    )
    assert out.stdout.strip() == hashlib.sha256(first.encode()).hexdigest()


def test_vocab_size_too_small_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="vocab_size"):
        train_tokenizer(["a b c"], 10)


def test_cache_is_written_with_its_hash_and_reused(tmp_path: Path, monkeypatch) -> None:
    corpus = synthetic_corpus()
    cached = get_tokenizer(corpus, 200, tmp_path)
    path = cache_path(tmp_path, corpus.sha256, 200)
    assert cached.path == path == tmp_path / "tokenizers" / f"{corpus.sha256[:16]}-200.json"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == cached.sha256
    assert path.with_name(path.name + ".sha256").read_text().strip() == cached.sha256
    assert tokenizer_hash(cached.tokenizer) == cached.sha256      # canonical JSON survives a load

    def no_training(*args, **kwargs):
        raise AssertionError("an intact cache must not be retrained")

    monkeypatch.setattr(tok, "train_tokenizer", no_training)
    again = get_tokenizer(corpus, 200, tmp_path)
    assert again.sha256 == cached.sha256


@pytest.mark.parametrize("damage", ["edit", "truncate", "drop_hash"])
def test_damaged_cache_is_retrained(tmp_path: Path, caplog, damage: str) -> None:
    corpus = synthetic_corpus()
    cached = get_tokenizer(corpus, 200, tmp_path)
    path = cached.path
    original = path.read_bytes()
    if damage == "edit":      # still valid JSON, but not what was recorded
        path.write_bytes(original.replace(b'"[MASK]"', b'"[MASQ]"'))
    elif damage == "truncate":
        path.write_bytes(original[: len(original) // 2])
    else:
        path.with_name(path.name + ".sha256").unlink()
    with caplog.at_level(logging.WARNING, logger=tok.__name__):
        again = get_tokenizer(corpus, 200, tmp_path)
    assert again.sha256 == cached.sha256
    assert path.read_bytes() == original
    if damage != "drop_hash":
        assert "does not match its recorded hash" in caplog.text
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_token_ids_are_cached_and_rebuilt_when_damaged(tmp_path: Path, monkeypatch) -> None:
    corpus = synthetic_corpus(documents=5)
    cached = get_tokenizer(corpus, 200, tmp_path)
    tokens = tokenize_corpus(corpus, cached, tmp_path)
    assert tokens.num_documents == 5 and len(tokens.sentence_offsets) == corpus.num_sentences + 1
    first = corpus.documents[0][0]
    expected = cached.tokenizer.encode(first, add_special_tokens=False).ids
    assert tokens.ids[: tokens.sentence_offsets[1]].tolist() == expected
    path = tmp_path / "tokenizers" / f"{corpus.sha256[:16]}-{cached.sha256[:16]}.ids.pt"
    assert path.is_file()

    class Exploding:
        def encode_batch(self, *args, **kwargs):
            raise AssertionError("cached ids must be reused")

    reused = tokenize_corpus(corpus, tok.CachedTokenizer(Exploding(), cached.sha256, cached.path), tmp_path)  # type: ignore[arg-type]
    assert reused.ids.tolist() == tokens.ids.tolist()
    path.write_bytes(b"garbage")
    rebuilt = tokenize_corpus(corpus, cached, tmp_path)
    assert rebuilt.ids.tolist() == tokens.ids.tolist()


def test_hf_tokenizer_wrapper_keeps_ids(tmp_path: Path) -> None:
    cached = get_tokenizer(synthetic_corpus(), 200, tmp_path)
    hf = tok.to_hf_tokenizer(cached.tokenizer, model_max_length=64)
    encoded = hf("Kan lora.", "Mish.")
    assert encoded["input_ids"] == cached.tokenizer.encode("Kan lora.", "Mish.").ids
    assert encoded["token_type_ids"][-1] == 1
    assert (hf.pad_token_id, hf.unk_token_id, hf.cls_token_id, hf.sep_token_id, hf.mask_token_id) == (0, 1, 2, 3, 4)
