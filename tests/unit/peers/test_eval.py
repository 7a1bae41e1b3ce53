"""`swarm eval` and final-state files: round trip, task rebuilt from the checkpoint, one-line errors; the linear probe."""
from __future__ import annotations

import argparse
import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from peers.data.images import IDX_FILES, load_images
from peers.eval.checkpoint import load_checkpoint, load_model_state, save_final_state
from peers.eval.cli import evaluate_checkpoint, register_eval
from peers.eval.linear_probe import fit_logistic_regression, linear_probe
from peers.tasks import TaskSettings, get_task
from swarm.config import RunConfig
from swarm.errors import ConfigError, DataError

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("idx")
    for split, n in (("train", 60), ("test", 30)):
        labels = np.arange(n) % 2
        images = np.zeros((n, 16, 16))
        images[labels == 0, :, ::3] = 255
        images[labels == 1, 4:12, 4:12] = 200
        for name, array in ((IDX_FILES[split][0], images), (IDX_FILES[split][1], labels)):
            header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
            (root / name).write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))
    return root


OPTIONS = {"num_prototypes": 4, "feature_dim": 4, "hidden_dim": 8, "crops": "2x12+2x6"}


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register_eval(parser.add_subparsers())
    return parser.parse_args(["eval", *argv])


def test_final_state_round_trip_and_eval_rebuilds_the_task(data_dir, tmp_path):
    config = RunConfig(task="swav", task_options=OPTIONS, data_path=str(data_dir), seed=3, micro_batch_size=4)
    task = get_task("swav", TaskSettings(data_path=str(data_dir), seed=3, options=OPTIONS))
    model = task.build_model()
    with torch.no_grad():
        model.backbone.stem[0].weight.mul_(2)   # "trained": differs from the random init
    path = save_final_state(tmp_path / "run" / "final.pt", model, epoch=7, config=config, params_hash="abc")
    payload = load_checkpoint(path)
    assert payload["epoch"] == 7 and payload["task"] == "swav" and payload["seed"] == 3
    fresh = task.build_model()
    load_model_state(fresh, payload["model"])
    assert torch.equal(fresh.backbone.stem[0].weight, model.backbone.stem[0].weight)

    out = evaluate_checkpoint(parse("--checkpoint", str(path), "--max-batches", "1"))
    assert out["task"] == "swav" and out["epoch"] == 7 and out["seed"] == 3 and out["metric"] == "linear_probe_accuracy"
    assert 0 <= out["accuracy"] <= 1 and 0 <= out["random_init_accuracy"] <= 1
    assert out["metrics"]["train_samples"] == 60 and out["metrics"]["test_samples"] == 30
    alone = evaluate_checkpoint(parse("--task", "swav", "--random-init", "--data-path", str(data_dir), "--max-batches", "1",
                                      "--seed", "3", "--config", str(_yaml(tmp_path))))
    assert alone["accuracy"] == alone["random_init_accuracy"] == out["random_init_accuracy"]


def _yaml(tmp_path: Path) -> Path:
    import yaml

    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump({"task": "swav", "task_options": OPTIONS}))
    return path


def test_bare_state_dict_is_accepted(data_dir, tmp_path):
    task = get_task("swav", TaskSettings(data_path=str(data_dir), options=OPTIONS))
    torch.save(task.build_model().state_dict(), tmp_path / "bare.pt")
    assert set(load_checkpoint(tmp_path / "bare.pt")["model"]) == set(task.build_model().state_dict())


def test_checkpoint_errors_are_one_line(data_dir, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="cannot be read"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"epoch": 3}, tmp_path / "nomodel.pt")
    with pytest.raises(DataError, match="no model state dict"):
        load_checkpoint(tmp_path / "nomodel.pt")
    small = get_task("swav", TaskSettings(data_path=str(data_dir), options=OPTIONS)).build_model()
    big = get_task("swav", TaskSettings(data_path=str(data_dir), options={**OPTIONS, "num_prototypes": 5})).build_model()
    with pytest.raises(DataError, match="shape differs: prototypes.weight"):
        load_model_state(small, big.state_dict())
    with pytest.raises(ConfigError, match="--checkpoint PATH"):
        evaluate_checkpoint(parse("--task", "swav"))
    path = save_final_state(tmp_path / "f.pt", small, epoch=1, config=RunConfig(task="swav", task_options=OPTIONS, data_path=str(data_dir)))
    with pytest.raises(ConfigError, match="holds a swav model, not albert"):
        evaluate_checkpoint(parse("--task", "albert", "--checkpoint", str(path)))


def test_logistic_regression_separates_separable_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    weight, bias = fit_logistic_regression(x, y, 2, l2=1e-4)
    assert float(((x.double() @ weight + bias).argmax(1) == y).double().mean()) > 0.97


def test_linear_probe_is_deterministic(data_dir):
    data = load_images(data_dir)
    backbone = get_task("swav", TaskSettings(data_path=str(data_dir), options=OPTIONS)).build_model().backbone
    a = linear_probe(backbone, data, [0.3], [0.4], train_samples=40, test_samples=20, seed=1)
    b = linear_probe(backbone, data, [0.3], [0.4], train_samples=40, test_samples=20, seed=1)
    assert a["accuracy"] == b["accuracy"] and a["train_samples"] == 40 and a["test_samples"] == 20
    assert a["accuracy"] > 0.9   # two very different synthetic classes


def test_coordinator_checkpoint_folder_is_accepted(data_dir, tmp_path):
    import json

    from safetensors.torch import save_file

    from swarm.averaging.state_sync import state_digest

    task = get_task("swav", TaskSettings(data_path=str(data_dir), seed=2, options=OPTIONS))
    model = task.build_model()
    tensors = {f"param.{i}": p.detach().clone() * 1.5 for i, p in enumerate(p for p in model.parameters() if p.requires_grad)}
    folder = tmp_path / "checkpoints" / "epoch-00000004"
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "state.safetensors"))
    meta = {"format": "swarm-checkpoint/1", "epoch": 4, "digest": state_digest(tensors, 4), "tensor_order": list(tensors),
            "task": "swav", "task_options": OPTIONS, "run_config": {"seed": 2, "data_path": str(data_dir), "micro_batch_size": 4}}
    (folder / "meta.json").write_text(json.dumps(meta))
    payload = load_checkpoint(folder)
    assert payload["epoch"] == 4 and payload["task"] == "swav" and len(payload["params"]) == len(tensors)
    out = evaluate_checkpoint(parse("--checkpoint", str(folder), "--max-batches", "1", "--no-baseline"))
    assert out["epoch"] == 4 and out["seed"] == 2 and 0 <= out["accuracy"] <= 1 and "random_init_accuracy" not in out
    meta["digest"] = "0" * 64
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="digest"):
        load_checkpoint(folder)


def test_probe_recalibrates_batchnorm_on_a_copy(data_dir):
    data = load_images(data_dir)
    backbone = get_task("swav", TaskSettings(data_path=str(data_dir), options=OPTIONS)).build_model().backbone
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    linear_probe(backbone, data, [0.3], [0.4], train_samples=40, test_samples=20)
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())   # the caller's model is untouched
    from peers.eval.linear_probe import recalibrate_batchnorm

    assert recalibrate_batchnorm(backbone, data.train, range(40), [0.3], [0.4]) == 9
    assert not torch.equal(backbone.stem[1].running_mean, before["stem.1.running_mean"])
    assert backbone.stem[1].momentum == 0.1


def test_coordinator_checkpoint_buffers_load_with_the_parameters():
    from peers.eval.checkpoint import load_params

    def bn_model(seed):
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6))
        model(torch.randn(16, 4) * (1 + seed))  # running statistics move
        return model

    src, dst = bn_model(0), bn_model(1)
    params = [p.detach().clone() for p in src.parameters()]
    buffers = {i: b.detach().clone() for i, b in enumerate(src.buffers())}
    load_params(dst, params, buffers=buffers)
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))

    other = bn_model(2)
    before = [t.clone() for t in other.state_dict().values()]
    with pytest.raises(DataError, match="buffer 0"):
        load_params(other, params, buffers={0: torch.zeros(3)})
    assert all(torch.equal(a, b) for a, b in zip(before, other.state_dict().values())), "a misfit changes nothing"
