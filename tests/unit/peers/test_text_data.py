"""Corpus loading: text files, folders, the KJV default, Hugging Face specs, and the bad-input cases."""
from __future__ import annotations

import logging
import shutil
import sys
import types
from pathlib import Path

import pytest

from peers.data import text
from peers.data.text import (
    load_corpus,
    load_kjv,
    make_corpus,
    parse_bible_output,
    parse_documents,
    parse_hf_spec,
    split_sentences,
)
from swarm.errors import DataError

pytestmark = pytest.mark.timeout(60)

BIBLE_SAMPLE = """
Genesis 1

  1 In the beginning God created the heaven and the earth.
  2 And the earth was without form, and void; and darkness was upon the face of
the deep.

Genesis 2

  1 Thus the heavens and the earth were finished.
"""


def test_text_file_blank_lines_separate_documents(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("\ufeffFirst line.\n  Second   line. \n\n\n\nOther doc.\n", encoding="utf-8")
    corpus = load_corpus(str(path), tmp_path / "cache")
    assert corpus.documents == [["First line.", "Second line."], ["Other doc."]]
    assert corpus.num_sentences == 3
    assert list(corpus.sentences()) == ["First line.", "Second line.", "Other doc."]
    assert corpus.sha256 == make_corpus([["First line.", "Second line."], ["Other doc."]], "x").sha256
    assert corpus.sha256 != make_corpus([["First line."], ["Second line.", "Other doc."]], "x").sha256


def test_long_lines_are_split_into_sentences() -> None:
    line = " ".join(["This is a sentence."] * 100)
    assert split_sentences(line) == ["This is a sentence."] * 100
    assert split_sentences("Short. Line.") == ["Short. Line."]
    assert parse_documents("a\n\n\nb\nc\n") == [["a"], ["b", "c"]]


def test_folder_is_read_recursively_in_path_order(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.txt").write_text("from b/z\n")
    (tmp_path / "a.txt").write_text("from a\n")
    (tmp_path / "notes.md").write_text("ignored\n")
    corpus = load_corpus(tmp_path, tmp_path / "cache")
    assert corpus.documents == [["from a"], ["from b/z"]]


def test_missing_path_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_corpus(str(tmp_path / "nope"), tmp_path)


def test_empty_folder_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError, match="no \\*.txt files"):
        load_corpus(str(tmp_path / "data"), tmp_path)


def test_binary_and_undecodable_files_are_skipped_and_counted(tmp_path: Path, caplog) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "good.txt").write_text("Good text.\n")
    (data / "binary.txt").write_bytes(b"\x00\x01\x02binary")
    (data / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with caplog.at_level(logging.WARNING, logger=text.__name__):
        corpus = load_corpus(str(data), tmp_path)
    assert corpus.documents == [["Good text."]]
    assert "skipped 2 of 3 files" in caplog.text


def test_folder_without_usable_text_is_a_data_error(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "binary.txt").write_bytes(b"\x00\x00")
    (data / "blank.txt").write_text("\n\n  \n")
    with pytest.raises(DataError, match="1 of 2 \\*.txt files skipped"):
        load_corpus(str(data), tmp_path)


def test_single_bad_files_are_data_errors(tmp_path: Path) -> None:
    binary = tmp_path / "model.bin"
    binary.write_bytes(b"PK\x03\x04\x00\x00")
    with pytest.raises(DataError, match="binary"):
        load_corpus(str(binary), tmp_path)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(DataError, match="no text"):
        load_corpus(str(empty), tmp_path)


def test_unreadable_file_is_a_data_error(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "secret.txt"
    path.write_text("hidden\n")
    real_read_bytes = Path.read_bytes

    def read_bytes(self: Path) -> bytes:   # chmod 0 does not stop root, so fail the read directly
        if self.name == "secret.txt":
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with pytest.raises(DataError, match="cannot read .*secret.txt: Permission denied"):
        load_corpus(str(path), tmp_path)


def test_bible_output_parsing_strips_references_and_joins_wrapped_verses() -> None:
    assert parse_bible_output(BIBLE_SAMPLE) == [
        [
            "In the beginning God created the heaven and the earth.",
            "And the earth was without form, and void; and darkness was upon the face of the deep.",
        ],
        ["Thus the heavens and the earth were finished."],
    ]


def _fake_bible(tmp_path: Path, monkeypatch) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "bible"
    sample = tmp_path / "sample.txt"
    sample.write_text(BIBLE_SAMPLE)
    script.write_text(f"#!{sys.executable}\nimport sys\nsys.stdout.write(open({str(sample)!r}).read())\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(bindir))
    return bindir


@pytest.mark.integration  # starts a process or opens a socket
def test_kjv_default_is_generated_once_then_cached(tmp_path: Path, monkeypatch) -> None:
    bindir = _fake_bible(tmp_path, monkeypatch)
    cache = tmp_path / "cache"
    first = load_corpus(None, cache)
    assert (cache / "corpus" / "kjv.txt").is_file()
    assert first.documents[1] == ["Thus the heavens and the earth were finished."]
    shutil.rmtree(bindir)
    monkeypatch.setenv("PATH", str(tmp_path))  # no `bible` any more: the cache must serve
    second = load_kjv(cache)
    assert second.documents == first.documents and second.sha256 == first.sha256


def test_kjv_without_bible_program_is_a_data_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DataError, match="bible-kjv"):
        load_corpus(None, tmp_path / "cache")


@pytest.mark.integration  # starts a process or opens a socket
@pytest.mark.skipif(shutil.which("bible") is None, reason="needs the bible-kjv package")
def test_real_kjv_has_one_document_per_chapter(tmp_path: Path) -> None:
    corpus = load_corpus(None, tmp_path)
    assert len(corpus.documents) == 1189
    assert corpus.num_sentences == 31102
    assert corpus.documents[0][0] == "In the beginning God created the heaven and the earth."
    assert corpus.documents[-1][-1] == "The grace of our Lord Jesus Christ be with you all. Amen."


def test_hf_spec_parsing() -> None:
    assert parse_hf_spec("hf:wikitext@wikitext-2-raw-v1") == ("wikitext", "wikitext-2-raw-v1", "train", "text")
    assert parse_hf_spec("hf:user/set:validation:body") == ("user/set", None, "validation", "body")
    with pytest.raises(DataError, match="expected hf:NAME"):
        parse_hf_spec("hf:")
    with pytest.raises(DataError, match="expected hf:NAME"):
        parse_hf_spec("hf:a:b:c:d")


def test_hf_without_datasets_package_is_a_data_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)   # makes `import datasets` fail
    with pytest.raises(DataError, match="needs the `datasets` package"):
        load_corpus("hf:wikitext", tmp_path)


class _FakeDataset(list):
    column_names = ("text", "id")


def test_hf_dataset_rows_become_documents(tmp_path: Path, monkeypatch) -> None:
    calls = []

    def load_dataset(name, config, split):
        calls.append((name, config, split))
        return _FakeDataset([{"text": "One.\nTwo.", "id": 1}, {"text": "", "id": 2}, {"text": "Three.", "id": 3}])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    corpus = load_corpus("hf:some/set@cfg:test", tmp_path)
    assert calls == [("some/set", "cfg", "test")]
    assert corpus.documents == [["One.", "Two."], ["Three."]]
    with pytest.raises(DataError, match="no column 'body'; columns: text, id"):
        load_corpus("hf:some/set:train:body", tmp_path)
