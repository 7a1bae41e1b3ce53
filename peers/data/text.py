"""Text corpora for language-model tasks: documents made of sentences, with a content hash.

A data path is one of:
  * None: the default corpus, the King James Bible printed by the `bible` program
    (Debian package bible-kjv), cached as `cache_dir/corpus/kjv.txt`; one document
    per chapter, one sentence per verse, verse numbers stripped;
  * a text file, or a folder searched recursively for `*.txt` files (sorted by path):
    blank lines separate documents, every other line is a sentence (very long lines
    are split at sentence ends);
  * `hf:NAME[@CONFIG][:SPLIT][:COLUMN]`: a Hugging Face dataset (needs the `datasets`
    package; split defaults to "train", column to "text"), one document per row.

Guarantees: the same input gives the same `Corpus` (same documents, same order, same
`sha256`); a user-caused problem (missing path, empty folder, binary file, missing
`datasets`) raises `DataError` with one line saying what to fix.

    corpus = load_corpus(None, cache_dir)        # KJV: 1189 chapters, 31102 verses
    corpus = load_corpus("~/texts", cache_dir)   # every *.txt under ~/texts
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from swarm.errors import DataError

logger = logging.getLogger(__name__)

KJV_RANGE = "Gen1:1-Rev22:21"
KJV_FILE = "kjv.txt"
BIBLE_TIMEOUT_S = 120.0
LONG_LINE_CHARS = 1000
_VERSE = re.compile(r"^\s+(\d+)\s+(.*)$")
_CHAPTER = re.compile(r"^(\S.*?)\s+(\d+)$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class Corpus:
    """Documents, each a non-empty list of non-empty single-line sentences; `sha256` hashes them all."""

    documents: list[list[str]]
    source: str
    sha256: str

    @property
    def num_sentences(self) -> int:
        return sum(len(doc) for doc in self.documents)

    def sentences(self) -> Iterator[str]:
        for doc in self.documents:
            yield from doc


def make_corpus(documents: Iterable[Iterable[str]], source: str) -> Corpus:
    """A `Corpus` from raw documents: sentences are stripped, empty ones and empty documents dropped."""
    docs: list[list[str]] = []
    digest = hashlib.sha256()
    for doc in documents:
        sentences = [s for s in (" ".join(line.split()) for line in doc) if s]
        if not sentences:
            continue
        docs.append(sentences)
        # "\n" cannot occur inside a sentence, so "\n" between sentences and "\n\n"
        # after each document make the serialisation, and hence the hash, unambiguous.
        digest.update(("\n".join(sentences) + "\n\n").encode("utf-8"))
    return Corpus(documents=docs, source=source, sha256=digest.hexdigest())


def split_sentences(line: str) -> list[str]:
    """A line as sentences: itself, or split after . ! ? when longer than LONG_LINE_CHARS."""
    line = line.strip()
    if len(line) <= LONG_LINE_CHARS:
        return [line] if line else []
    return [s for s in _SENTENCE_END.split(line) if s]


def parse_documents(text: str) -> list[list[str]]:
    """Blank lines separate documents; every other line holds one or more sentences."""
    documents: list[list[str]] = []
    current: list[str] = []
    for line in text.splitlines():
        if line.strip():
            current.extend(split_sentences(line))
        elif current:
            documents.append(current)
            current = []
    if current:
        documents.append(current)
    return documents


def parse_bible_output(text: str) -> list[list[str]]:
    """The `bible` program's output as chapters of verses.

    It prints a "Book N" header line, then "  V text" for each verse; a verse that was
    wrapped continues on unindented lines, which are joined back to it.
    """
    chapters: list[list[str]] = []
    verses: list[str] = []
    after_blank = True
    for line in text.splitlines():
        if not line.strip():
            after_blank = True
            continue
        verse = _VERSE.match(line)
        if verse:
            verses.append(verse.group(2).strip())
        elif after_blank and _CHAPTER.match(line):
            if verses:
                chapters.append(verses)
            verses = []
        elif verses:
            verses[-1] = f"{verses[-1]} {line.strip()}"
        after_blank = False
    if verses:
        chapters.append(verses)
    return chapters


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and os.replace, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _run_bible() -> str:
    exe = shutil.which("bible")
    if exe is None:
        raise DataError(
            "the default corpus needs the `bible` program (Debian package bible-kjv); "
            "install it or pass a data path"
        )
    try:
        # -l sets the line width: wide enough that no verse is wrapped.
        done = subprocess.run(
            [exe, "-l100000", KJV_RANGE], capture_output=True, text=True, timeout=BIBLE_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as e:
        raise DataError(f"`bible` did not finish within {BIBLE_TIMEOUT_S:.0f} s") from e
    if done.returncode != 0 or not done.stdout.strip():
        detail = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "no output"
        raise DataError(f"`bible {KJV_RANGE}` failed (exit {done.returncode}): {detail}")
    return done.stdout


def load_kjv(cache_dir: Path) -> Corpus:
    """The King James Bible, one document per chapter; cached as plain text after the first call."""
    path = Path(cache_dir) / "corpus" / KJV_FILE
    if path.is_file():
        try:
            return make_corpus(parse_documents(path.read_text(encoding="utf-8")), source="kjv")
        except (OSError, UnicodeDecodeError) as e:
            logger.warning("cached corpus %s is unreadable (%s); regenerating it", path, e)
    chapters = parse_bible_output(_run_bible())
    if not chapters:
        raise DataError("`bible` printed no verses")
    atomic_write_text(path, "\n\n".join("\n".join(verses) for verses in chapters) + "\n")
    logger.info("cached the KJV corpus (%d chapters) at %s", len(chapters), path)
    return make_corpus(chapters, source="kjv")


def read_text_file(path: Path) -> str:
    """A file's text as UTF-8; DataError if it is unreadable or binary."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from e
    if b"\x00" in data:
        raise DataError(f"{path} is a binary file, not UTF-8 text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (bad byte at offset {e.start})") from e


def load_text_path(path: Path) -> Corpus:
    """A text file, or every `*.txt` file under a folder; undecodable files in a folder are skipped."""
    if not path.exists():
        raise DataError(f"data path {path} does not exist")
    if path.is_file():
        documents = parse_documents(read_text_file(path))
        if not documents:
            raise DataError(f"data file {path} contains no text")
        return make_corpus(documents, source=str(path))
    if not path.is_dir():
        raise DataError(f"data path {path} is neither a file nor a folder")
    files = sorted((p for p in path.rglob("*.txt") if p.is_file()), key=lambda p: p.relative_to(path).as_posix())
    if not files:
        raise DataError(f"data folder {path} contains no *.txt files")
    documents: list[list[str]] = []
    skipped: list[str] = []
    for file in files:
        try:
            documents.extend(parse_documents(read_text_file(file)))
        except DataError as e:
            skipped.append(str(e))
    if skipped:
        logger.warning("skipped %d of %d files under %s, e.g. %s", len(skipped), len(files), path, skipped[0])
    if not documents:
        raise DataError(f"data folder {path} has no usable text: {len(skipped)} of {len(files)} *.txt files skipped")
    return make_corpus(documents, source=str(path))


def parse_hf_spec(spec: str) -> tuple[str, str | None, str, str]:
    """`hf:NAME[@CONFIG][:SPLIT][:COLUMN]` as (name, config, split, column)."""
    parts = spec[len("hf:"):].split(":")
    if not parts[0] or len(parts) > 3 or any(not p for p in parts):
        raise DataError(f"bad Hugging Face data path {spec!r}: expected hf:NAME[@CONFIG][:SPLIT][:COLUMN]")
    name, _, config = parts[0].partition("@")
    split = parts[1] if len(parts) > 1 else "train"
    column = parts[2] if len(parts) > 2 else "text"
    return name, config or None, split, column


def load_hf_dataset(spec: str) -> Corpus:
    """A Hugging Face dataset column as documents (one per row)."""
    name, config, split, column = parse_hf_spec(spec)
    try:
        import datasets  # optional dependency
    except ImportError as e:
        raise DataError(f"data path {spec!r} needs the `datasets` package: pip install datasets") from e
    try:
        dataset = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # the library raises many kinds; all mean "cannot load this"
        raise DataError(f"cannot load Hugging Face dataset {spec!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    columns = list(getattr(dataset, "column_names", None) or [])
    if column not in columns:
        raise DataError(f"dataset {name!r} has no column {column!r}; columns: {', '.join(columns) or 'none'}")
    documents = []
    for row in dataset:
        text = row[column]
        if isinstance(text, str):
            documents.append([s for line in text.splitlines() for s in split_sentences(line)])
    corpus = make_corpus(documents, source=spec)
    if not corpus.documents:
        raise DataError(f"dataset {spec!r} has no text in column {column!r}")
    return corpus


def load_corpus(data_path: str | os.PathLike | None, cache_dir: Path) -> Corpus:
    """The corpus a data path names (see the module docstring); None means the KJV default."""
    if data_path is None or str(data_path) == "":
        return load_kjv(cache_dir)
    if isinstance(data_path, str) and data_path.startswith("hf:"):
        return load_hf_dataset(data_path)
    return load_text_path(Path(data_path).expanduser())


__all__ = [
    "Corpus",
    "make_corpus",
    "load_corpus",
    "load_kjv",
    "load_text_path",
    "load_hf_dataset",
    "parse_documents",
    "parse_bible_output",
    "parse_hf_spec",
    "split_sentences",
    "read_text_file",
    "atomic_write_text",
]
