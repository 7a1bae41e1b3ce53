"""The ALBERT task: options, deterministic model, SOP/MLM batches, loss, evaluation, export."""
from __future__ import annotations

import random
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch

from peers.tasks import TaskSettings, get_task
from peers.tasks.albert import HELD_OUT_EVERY, AlbertTask
from swarm.errors import ConfigError, DataError

pytestmark = pytest.mark.timeout(120)

WORDS = [a + b for a in ("ka", "lo", "mi", "ne", "su", "ta", "ri", "vo", "pe") for b in ("n", "ra", "l", "sh", "te", "m")]
SEQ_LEN = 32


def write_corpus(folder: Path, documents: int = 120, seed: int = 0) -> Path:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for part in range(2):
        lines = []
        for _ in range(documents // 2):
            lines += [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))).capitalize() + "." for _ in range(6)]
            lines.append("")
        (folder / f"part{part}.txt").write_text("\n".join(lines), encoding="utf-8")
    return folder


def make_task(tmp: Path, seed: int = 0, **options) -> AlbertTask:
    options = {"seq_len": SEQ_LEN, "vocab_size": 300, **options}
    settings = TaskSettings(data_path=str(tmp / "data"), cache_dir=tmp / "cache", micro_batch_size=8, seed=seed, options=options)
    task = get_task("albert", settings)
    assert isinstance(task, AlbertTask)
    return task


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("albert")
    write_corpus(root / "data")
    return root


@pytest.fixture(scope="module")
def task(root: Path) -> AlbertTask:
    return make_task(root)


@pytest.fixture()
def lamb_or_adamw(monkeypatch) -> None:
    """swarm.optim.lamb is written elsewhere; until it exists, stand AdamW in for Lamb."""
    try:
        import swarm.optim.lamb  # noqa: F401
    except ImportError:
        fake = types.ModuleType("swarm.optim.lamb")
        fake.Lamb = lambda params, lr, weight_decay: torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        monkeypatch.setitem(sys.modules, "swarm.optim.lamb", fake)


def test_options_defaults_and_validation(tmp_path: Path) -> None:
    tiny = get_task("albert", TaskSettings(cache_dir=tmp_path))
    assert (tiny.size, tiny.seq_len, tiny.requested_vocab_size) == ("tiny", 64, 4000)
    base = get_task("albert", TaskSettings(cache_dir=tmp_path, options={"size": "base"}))
    assert (base.seq_len, base.requested_vocab_size) == (128, 30000)
    assert get_task("albert", TaskSettings(options={"seq_len": "96"})).seq_len == 96
    for bad in ({"size": "huge"}, {"seq_len": 4}, {"seq_len": 1024}, {"seq_len": "long"}, {"vocab_size": 3.5}):
        with pytest.raises(ConfigError):
            get_task("albert", TaskSettings(options=bad))


def test_model_is_identical_for_the_same_seed(task: AlbertTask, root: Path) -> None:
    state = torch.get_rng_state()
    first, second = task.build_model(), make_task(root).build_model()
    assert torch.equal(torch.get_rng_state(), state), "building must not disturb the global RNG"
    a, b = first.state_dict(), second.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = make_task(root, seed=1).build_model().state_dict()
    assert not all(torch.equal(a[k], other[k]) for k in a)
    assert first.config.vocab_size == task.vocab_size and first.config.hidden_size == 128


def test_fingerprint(task: AlbertTask, root: Path) -> None:
    fp = task.fingerprint()
    assert set(fp) == {"model_config", "tokenizer", "task"} and fp["task"] == "albert"
    assert fp["tokenizer"] == task.tokenizer.sha256 and len(fp["model_config"]) == 64
    assert make_task(root).fingerprint() == fp
    assert make_task(root, size="small").fingerprint()["model_config"] != fp["model_config"]


def test_batch_layout(task: AlbertTask) -> None:
    batch = next(task.batches(worker_seed=0))
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels", "sentence_order_label"}
    for key in ("input_ids", "token_type_ids", "attention_mask", "labels"):
        assert batch[key].shape == (8, SEQ_LEN) and batch[key].dtype == torch.long
    assert batch["sentence_order_label"].shape == (8,)
    for row in range(8):
        length = int(batch["attention_mask"][row].sum())
        ids, types_, labels = batch["input_ids"][row], batch["token_type_ids"][row], batch["labels"][row]
        original = torch.where(labels != -100, labels, ids)
        seps = (original == 3).nonzero().flatten().tolist()
        assert original[0] == 2 and len(seps) == 2 and seps[1] == length - 1
        assert bool((batch["attention_mask"][row, :length] == 1).all()) and bool((ids[length:] == 0).all())
        assert types_[: seps[0] + 1].eq(0).all() and types_[seps[0] + 1 : length].eq(1).all() and types_[length:].eq(0).all()
        special = torch.zeros(SEQ_LEN, dtype=torch.bool)
        special[[0, *seps]] = True
        special[length:] = True
        assert bool((labels[special] == -100).all()), "only segment tokens may be labelled"
        assert seps[0] >= 2 and seps[1] - seps[0] >= 2, "both segments are non-empty"


def test_masking_rates(task: AlbertTask) -> None:
    stream = task.batches(worker_seed=3)
    labelled = candidates = as_mask = unchanged = 0
    for _ in range(40):
        batch = next(stream)
        selected = batch["labels"] != -100
        real = (batch["attention_mask"] == 1).sum() - 3 * 8
        labelled += int(selected.sum())
        candidates += int(real)
        as_mask += int((batch["input_ids"][selected] == 4).sum())
        unchanged += int((batch["input_ids"][selected] == batch["labels"][selected]).sum())
    assert 0.13 <= labelled / candidates <= 0.17
    assert 0.75 <= as_mask / labelled <= 0.85
    assert 0.06 <= unchanged / labelled <= 0.14


def test_sentence_order_labels(task: AlbertTask) -> None:
    """Label 0: A then B continue each other in the corpus; label 1: they were swapped."""
    flat = task._tokens.ids.tolist()
    text = " ".join(map(str, flat))
    seen = set()
    stream = task.batches(worker_seed=1)
    for _ in range(5):
        batch = next(stream)
        for row in range(8):
            labels, ids = batch["labels"][row], batch["input_ids"][row]
            original = torch.where(labels != -100, labels, ids).tolist()
            first_sep = original.index(3)
            end = int(batch["attention_mask"][row].sum()) - 1
            a, b = original[1:first_sep], original[first_sep + 1 : end]
            order = int(batch["sentence_order_label"][row])
            seen.add(order)
            run = a + b if order == 0 else b + a
            assert " ".join(map(str, run)) in text
    assert seen == {0, 1}


def test_streams_are_reproducible_per_worker(task: AlbertTask) -> None:
    a, b, c = task.batches(0), task.batches(0), task.batches(1)
    first_a, first_b, first_c = next(a), next(b), next(c)
    assert all(torch.equal(first_a[k], first_b[k]) for k in first_a)
    assert not torch.equal(first_a["input_ids"], first_c["input_ids"])


def test_held_out_blocks_never_reach_training(task: AlbertTask) -> None:
    train, held = task._splits
    assert held and not set(train) & set(held)
    assert len(held) == max(1, (len(train) + len(held)) // HELD_OUT_EVERY)
    stream = task.batches(worker_seed=0)
    passes = -(-len(train) // 8) + 2
    seen: set[tuple[int, ...]] = set()
    text_of = {b: task._tokens.ids[b[0] : b[-1]].tolist() for b in held}
    for _ in range(passes):
        batch = next(stream)
        for row in range(8):
            original = torch.where(batch["labels"][row] != -100, batch["labels"][row], batch["input_ids"][row]).tolist()
            tokens = [t for t in original if t > 4]
            seen.add(tuple(tokens))
    for tokens in text_of.values():
        assert not any(sorted(tokens) == sorted(s) for s in seen)


def test_loss_is_finite_and_a_few_steps_reduce_it(task: AlbertTask, lamb_or_adamw) -> None:
    torch.manual_seed(0)
    model = task.build_model()
    batch = next(task.batches(worker_seed=0))
    optimizer = task.make_optimizer(model.parameters(), lr=2e-2)   # LAMB steps scale with weight norms
    loss, n = task.loss(model, batch)
    assert n == 8 and torch.isfinite(loss)
    first = loss.item()
    for _ in range(8):
        optimizer.zero_grad()
        loss, _ = task.loss(model, batch)
        loss.backward()
        optimizer.step()
    assert task.loss(model, batch)[0].item() < first - 0.5


def test_evaluate_restores_mode_and_is_repeatable(task: AlbertTask) -> None:
    model = task.build_model()
    model.train()
    metrics = task.evaluate(model, max_batches=3)
    assert set(metrics) == {"loss", "mlm_accuracy", "sop_accuracy"}
    assert metrics["loss"] > 0 and 0 <= metrics["mlm_accuracy"] <= 1 and 0 <= metrics["sop_accuracy"] <= 1
    assert model.training
    model.eval()
    assert task.evaluate(model, max_batches=3) == metrics
    assert not model.training


def test_export_round_trips_through_from_pretrained(task: AlbertTask, tmp_path: Path) -> None:
    from transformers import AlbertForPreTraining, AutoTokenizer

    model = task.build_model()
    task.export(model, tmp_path / "export")
    loaded = AlbertForPreTraining.from_pretrained(tmp_path / "export")
    a, b = model.state_dict(), loaded.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    hf = AutoTokenizer.from_pretrained(tmp_path / "export")
    sentence = task.corpus.documents[0][0]
    assert hf(sentence)["input_ids"] == task.tokenizer.tokenizer.encode(sentence).ids
    assert (hf.pad_token_id, hf.cls_token_id, hf.sep_token_id, hf.mask_token_id) == (0, 2, 3, 4)
    loaded.eval()
    with torch.no_grad():
        out = loaded(**hf(sentence, return_tensors="pt"))
    assert out.prediction_logits.shape[-1] == task.vocab_size


def test_tiny_corpus_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "one.txt").write_text("Kan.\n")
    with pytest.raises(DataError, match="too small"):
        next(make_task(tmp_path).batches(0))


@pytest.mark.integration  # starts a process or opens a socket
@pytest.mark.skipif(shutil.which("bible") is None, reason="needs the bible-kjv package")
def test_default_kjv_tiny_task_trains(tmp_path: Path) -> None:
    task = get_task("albert", TaskSettings(cache_dir=tmp_path, micro_batch_size=8))
    assert task.vocab_size == 4000
    train, held = task._splits
    assert 0.015 < len(held) / (len(train) + len(held)) < 0.025
    model = task.build_model()
    loss, n = task.loss(model, next(task.batches(worker_seed=0)))
    loss.backward()
    assert n == 8 and torch.isfinite(loss)
    assert 7.0 < loss.item() < 10.0        # about ln(4000) + ln(2) at initialisation
