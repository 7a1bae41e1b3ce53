"""Image data: idx files (Fashion-MNIST format), ImageNet-layout folders, and their bad-input errors."""
from __future__ import annotations

import gzip
import logging
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from peers.data.images import FASHION_MNIST_DIR, IDX_FILES, load_image_folder, load_images, read_idx
from swarm.errors import DataError

pytestmark = pytest.mark.timeout(60)

Image = pytest.importorskip("PIL.Image")


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def make_idx_folder(root: Path, train: int = 20, test: int = 10, size: int = 8) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("test", test)):
        images_name, labels_name = IDX_FILES[split]
        write_idx(root / images_name, rng.integers(0, 256, (n, size, size)))
        write_idx(root / labels_name, np.arange(n) % 3)
    return root


def save_image(path: Path, size: tuple[int, int] = (16, 16), mode: str = "RGB", value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode in ("L", "P") else (value,) * len(mode)).save(path)
    return path


def make_image_folder(root: Path, classes=("cat", "dog"), per_class: int = 10, size=(16, 16)) -> Path:
    for c, name in enumerate(classes):
        for i in range(per_class):
            save_image(root / name / f"{i:03d}.png", size=size, value=20 * c + i)
    return root


# -- idx -------------------------------------------------------------------------------------------------------

def test_idx_folder_loads_train_and_test_splits(tmp_path):
    data = load_images(make_idx_folder(tmp_path / "idx"))
    assert (len(data.train), len(data.test), data.channels, data.image_size) == (20, 10, 1, 8)
    images, labels = data.train.load([0, 4, 5])
    assert images.dtype == torch.uint8 and images.shape == (3, 1, 8, 8)
    assert labels.tolist() == [0, 1, 2]
    assert data.classes == ["0", "1", "2"]
    assert load_images(tmp_path / "idx").sha256 == data.sha256


def test_idx_errors_are_one_line_data_errors(tmp_path):
    root = make_idx_folder(tmp_path / "idx")
    (root / IDX_FILES["test"][1]).unlink()
    with pytest.raises(DataError, match="lacks t10k-labels"):
        load_images(root)
    bad = tmp_path / "bad.gz"
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="cannot read"):
        read_idx(bad)
    bad.write_bytes(gzip.compress(b"\x01\x02\x08\x01"))
    with pytest.raises(DataError, match="magic"):
        read_idx(bad)
    truncated = tmp_path / "short"
    write_idx(truncated, np.zeros((4, 3, 3)), compress=False)
    truncated.write_bytes(truncated.read_bytes()[:-5])
    with pytest.raises(DataError, match="header says 36"):
        read_idx(truncated)
    mismatched = make_idx_folder(tmp_path / "mismatch")
    write_idx(mismatched / IDX_FILES["train"][1], np.zeros(7))
    with pytest.raises(DataError, match="20 train images but 7 labels"):
        load_images(mismatched)


@pytest.mark.skipif(not (FASHION_MNIST_DIR / IDX_FILES["test"][0]).exists(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_default():
    data = load_images(None)
    assert (len(data.train), len(data.test), data.channels, data.image_size) == (60000, 10000, 1, 28)
    assert data.classes[0] == "T-shirt/top" and sorted(set(data.test.labels.tolist())) == list(range(10))
    mean, std = data.channel_stats()
    assert 0.2 < mean[0] < 0.4 and 0.25 < std[0] < 0.45


# -- image folders ---------------------------------------------------------------------------------------------

def test_image_folder_holds_out_every_tenth_image_per_class(tmp_path):
    data = load_image_folder(make_image_folder(tmp_path / "imgs"), image_size=16, channels=3)
    assert data.classes == ["cat", "dog"]
    assert (len(data.train), len(data.test)) == (18, 2)
    images, labels = data.test.load([0, 1])
    assert images.shape == (2, 3, 16, 16) and labels.tolist() == [0, 1]
    assert int(images[0, 0, 0, 0]) == 9 and int(images[1, 0, 0, 0]) == 29   # the 10th image of each class
    assert load_image_folder(tmp_path / "imgs", image_size=16).sha256 == data.sha256


def test_image_folder_train_val_layout(tmp_path):
    make_image_folder(tmp_path / "imgs" / "train", per_class=3)
    make_image_folder(tmp_path / "imgs" / "val", per_class=2)
    data = load_images(tmp_path / "imgs", image_size=16)
    assert (len(data.train), len(data.test)) == (6, 4)


def test_mixed_sizes_and_modes_are_converted_and_counted(tmp_path):
    root = tmp_path / "mixed"
    save_image(root / "a" / "rgb.png", size=(16, 16), mode="RGB")
    save_image(root / "a" / "grey.png", size=(16, 16), mode="L")
    save_image(root / "a" / "wide.jpg", size=(40, 20), mode="RGB")
    save_image(root / "b" / "rgba.png", size=(10, 30), mode="RGBA")
    save_image(root / "b" / "palette.gif", size=(16, 16), mode="P")
    data = load_image_folder(root, image_size=16, channels=3)
    assert (data.stats.resized, data.stats.converted, data.stats.corrupt) == (2, 3, 0)
    images, _ = data.train.load(range(len(data.train)))
    assert images.shape == (5, 3, 16, 16) and images.dtype == torch.uint8
    grey = load_image_folder(root, image_size=12, channels=1)
    assert grey.train.load([0])[0].shape == (1, 1, 12, 12)
    assert grey.stats.converted == 4


def test_corrupt_files_are_skipped_counted_and_logged(tmp_path, caplog):
    root = make_image_folder(tmp_path / "imgs", per_class=3)
    (root / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    (root / "dog" / "empty.png").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="peers.data.images"):
        data = load_image_folder(root, image_size=16)
    assert data.stats.corrupt == 2 and len(data.train) == 6   # 3 per class: no held-out images, test = train
    assert "skipped 2 unreadable" in caplog.text and "broken.jpg" in caplog.text


def test_file_failing_to_decode_later_is_dropped_from_its_batch(tmp_path, caplog):
    root = make_image_folder(tmp_path / "imgs", per_class=3)
    data = load_image_folder(root, image_size=16)
    good = Path(data.train.files[1]).read_bytes()
    Path(data.train.files[1]).write_bytes(good[: len(good) // 2])   # truncated after the scan
    with caplog.at_level(logging.WARNING, logger="peers.data.images"):
        images, labels = data.train.load([0, 1, 2])
        again, _ = data.train.load([1])
    assert images.shape[0] == 2 and labels.shape[0] == 2 and again.shape[0] == 0
    assert data.stats.corrupt == 1 and "unreadable image" in caplog.text


@pytest.mark.parametrize(
    "setup, match",
    [
        (lambda root: None, "does not exist"),
        (lambda root: root.mkdir(), "no class folders"),
        (lambda root: (root / "cat").mkdir(parents=True), "no usable training image: no image files"),
        (lambda root: save_image(root / "notes.png").parent, "no class folders"),
        (lambda root: (root / "cat").mkdir(parents=True) or (root / "cat" / "x.jpg").write_bytes(b"junk"), "1 file\\(s\\), none readable"),
    ],
    ids=["missing", "empty", "empty-class", "no-class-folders", "all-corrupt"],
)
def test_unusable_folders_raise_one_line_data_error(tmp_path, setup, match):
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(DataError, match=match) as info:
        load_images(root)
    assert "\n" not in str(info.value)


def test_data_path_that_is_a_file_is_rejected(tmp_path):
    f = tmp_path / "x.txt"
    f.write_text("hello")
    with pytest.raises(DataError, match="not a folder"):
        load_images(f)
