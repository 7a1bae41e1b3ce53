"""hf-mlm / hf-clm: options are checked in one line, a saved `datasets` folder and a local tokenizer folder are
read, the model is the named architecture with the given sizes, batches are shaped for the objective, and it learns."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from peers.tasks import TaskSettings, get_task
from swarm.errors import ConfigError, DataError

pytestmark = pytest.mark.timeout(180)

TEXT = "\n".join(f"In the beginning number {i} the earth was without form and void and darkness {i % 7}." for i in range(300))


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return path


def task(name, data, tmp_path, **options):
    options = {"seq_len": 16, "vocab_size": 200, **options}
    return get_task(name, TaskSettings(data_path=str(data), cache_dir=tmp_path / "cache", micro_batch_size=4, options=options))


def test_bad_options_end_in_one_line(corpus, tmp_path):
    with pytest.raises(ConfigError, match="unknown transformers architecture 'gpt5'"):
        task("hf-clm", corpus, tmp_path, architecture="gpt5")
    with pytest.raises(ConfigError, match="a gpt2 config has no field 'hidden_sizes'"):
        task("hf-clm", corpus, tmp_path, architecture="gpt2", model={"hidden_sizes": 3})
    with pytest.raises(ConfigError, match="has no task option 'layers'"):
        task("hf-mlm", corpus, tmp_path, layers=2)
    with pytest.raises(ConfigError, match="seq_len must be an integer"):
        task("hf-mlm", corpus, tmp_path, seq_len=10**9)
    with pytest.raises(ConfigError, match="exceeds the model's 8 positions"):
        task("hf-clm", corpus, tmp_path, model={"n_positions": 8}).build_model()
    with pytest.raises(DataError, match="tokenizer folder .* does not exist"):
        task("hf-clm", corpus, tmp_path, tokenizer=str(tmp_path / "nope")).fingerprint()


def test_clm_builds_the_named_architecture_and_learns(corpus, tmp_path):
    t = task("hf-clm", corpus, tmp_path, model={"n_embd": 32, "n_layer": 1, "n_head": 2})
    model = t.build_model()
    assert model.config.model_type == "gpt2" and model.config.n_embd == 32 and model.config.n_layer == 1
    assert torch.equal(next(iter(model.parameters())), next(iter(t.build_model().parameters())))   # deterministic
    batch = next(t.batches(0))
    assert batch["input_ids"].shape == (4, 16) and torch.equal(batch["labels"], batch["input_ids"])
    opt = t.make_optimizer(model.parameters(), 3e-3)
    before = t.evaluate(model)["loss"]
    it = t.batches(0)
    for _ in range(40):
        loss, _ = t.loss(model, next(it))
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert t.evaluate(model)["loss"] < before - 0.5
    out = tmp_path / "export"
    t.export(model, out)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert AutoModelForCausalLM.from_pretrained(out).config.n_embd == 32
    assert len(AutoTokenizer.from_pretrained(out)) == len(t.tokenizer)


def test_mlm_reads_a_saved_dataset_and_a_local_tokenizer_folder(corpus, tmp_path):
    datasets = pytest.importorskip("datasets")
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"body": TEXT.splitlines()}).save_to_disk(str(saved))
    with pytest.raises(DataError, match="has no column 'text'"):
        _ = task("hf-mlm", saved, tmp_path).corpus
    first = task("hf-mlm", saved, tmp_path, text_column="body")
    assert first.corpus.num_sentences == 300
    tokenizer_dir = tmp_path / "tokenizer"
    first.tokenizer.save_pretrained(tokenizer_dir)
    again = task("hf-mlm", corpus, tmp_path, tokenizer=str(tokenizer_dir))
    assert again.fingerprint()["tokenizer"] == first.fingerprint()["tokenizer"]   # the same vocabulary, read back
    batch = next(again.batches(0))
    ids, labels = batch["input_ids"], batch["labels"]
    assert ids.shape == (4, 16)
    assert (ids[:, 0] == again.tokenizer.cls_token_id).all()
    masked = labels != -100
    assert masked.any() and not masked[:, 0].any() and not masked[:, -1].any()    # [CLS] and [SEP] are never masked
    assert again.build_model().config.model_type == "bert"
