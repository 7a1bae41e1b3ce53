"""Image datasets for the vision tasks: Fashion-MNIST from its idx files, and ImageNet-layout folders.

A data path is one of:
  * None: Fashion-MNIST from the Debian package dataset-fashion-mnist
    (`/usr/share/datasets/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`),
    60 000 training and 10 000 test images, 28x28, one grey channel, 10 classes, held in memory;
  * a folder holding those four idx files (MNIST, Fashion-MNIST, KMNIST... in the same format);
  * an image folder in the ImageNet layout, `ROOT/CLASS/*.jpg|png|...` (one folder per class),
    optionally split as `ROOT/train/CLASS/...` and `ROOT/val/CLASS/...`; without a split, every
    10th image of each class (by sorted path) is held out as the test split. Needs Pillow.
    Images are decoded when a batch asks for them: converted to the configured mode ("L" or "RGB"),
    resized (shorter side to `image_size`, then a centre crop to a square) when their size differs.

Bad input ends in one `DataError` line: a missing path, a folder without class folders or images,
unreadable or malformed idx files, or a folder in which no image can be read. Corrupt images are
skipped and counted (a warning names the first few); images of another size or mode are converted
and counted (`dataset.stats`). A file that passes the scan but fails to decode later is dropped from
its batch, counted and logged once.

Guarantees: the same files give the same dataset (same order, same labels, same `sha256`); the
sha256 hashes the idx files' bytes, or a folder's sorted list of relative paths and file sizes.

    data = load_images(None)                       # Fashion-MNIST
    images, labels = data.train.load([0, 1, 2])    # uint8 (3, 1, 28, 28), int64 (3,)
"""
from __future__ import annotations

import abc
import hashlib
import logging
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from swarm.errors import DataError

logger = logging.getLogger(__name__)

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
HELD_OUT_EVERY = 10            # folders without train/val: every 10th image of a class is a test image
MODES = {"L": 1, "RGB": 3}
WARN_NAMES = 5                 # corrupt files named in the warning


@dataclass
class LoadStats:
    """What the loader skipped or converted."""

    corrupt: int = 0           # files skipped: not an image, or failed to decode
    resized: int = 0           # images whose size differed from the configured one
    converted: int = 0         # images whose mode differed from the configured one
    corrupt_files: list[str] = field(default_factory=list)


class ImageSplit(abc.ABC):
    """One split: labels up front, images loaded by index as uint8 (n, C, H, W)."""

    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @abc.abstractmethod
    def load(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(images uint8 (n, C, H, W), labels int64 (n,)); n can be smaller than len(indices) if files fail to decode."""


class TensorSplit(ImageSplit):
    """A split held in memory."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def load(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(list(indices), dtype=torch.long)
        return self.images[index], self.labels[index]


class FileSplit(ImageSplit):
    """A split of image files decoded on demand (with Pillow), converted to `mode` and `size` x `size`."""

    def __init__(self, files: list[Path], labels: list[int], size: int, mode: str, stats: LoadStats):
        self.files = files
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.size, self.mode, self.stats = size, mode, stats
        self.failed: set[int] = set()

    def load(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        images, kept = [], []
        for i in indices:
            if i in self.failed:
                continue
            try:
                images.append(decode_image(self.files[i], self.size, self.mode))
                kept.append(i)
            except Exception as e:   # a truncated or otherwise broken file: drop it for good
                self.failed.add(i)
                self.stats.corrupt += 1
                logger.warning("skipping unreadable image %s: %s", self.files[i], e)
        channels = MODES[self.mode]
        if not images:
            return torch.empty((0, channels, self.size, self.size), dtype=torch.uint8), torch.empty(0, dtype=torch.long)
        return torch.stack(images), self.labels[torch.tensor(kept, dtype=torch.long)]


@dataclass
class ImageDataset:
    train: ImageSplit
    test: ImageSplit
    classes: list[str]
    channels: int
    image_size: int
    source: str
    sha256: str
    stats: LoadStats = field(default_factory=LoadStats)

    def channel_stats(self, max_images: int = 1000) -> tuple[list[float], list[float]]:
        """Per-channel mean and std (of pixel values in [0, 1]) over up to `max_images` evenly spaced training images."""
        n = len(self.train)
        step = max(1, n // max_images)
        images, _ = self.train.load(range(0, n, step))
        if images.shape[0] == 0:
            raise DataError(f"no training image of {self.source} can be read")
        x = images.float().div_(255).transpose(0, 1).reshape(self.channels, -1)
        return x.mean(1).tolist(), x.std(1).clamp_min(1e-3).tolist()


def load_images(data_path: str | Path | None, image_size: int | None = None, channels: int | None = None,
                folder_size: int = 64) -> ImageDataset:
    """Fashion-MNIST (None), a folder of idx files, or an ImageNet-layout image folder (see the module docstring).

    `image_size` and `channels` are required of idx data and applied to image folders, which
    default to `folder_size` px and 3 channels.
    """
    if data_path is None:
        dataset = load_idx_folder(FASHION_MNIST_DIR, classes=FASHION_MNIST_CLASSES, hint="install the Debian package dataset-fashion-mnist")
    else:
        root = Path(data_path).expanduser()
        if not root.exists():
            raise DataError(f"data path {root} does not exist")
        if not root.is_dir():
            raise DataError(f"data path {root} is not a folder (expected idx files or ROOT/CLASS/IMAGE files)")
        if (root / IDX_FILES["train"][0]).exists():
            dataset = load_idx_folder(root)
        else:
            return load_image_folder(root, image_size=image_size or folder_size, channels=channels or 3)
    if channels is not None and channels != dataset.channels:
        raise DataError(f"{dataset.source} has {dataset.channels} channel(s), not {channels}")
    if image_size is not None and image_size != dataset.image_size:
        raise DataError(f"{dataset.source} has {dataset.image_size} px images, not {image_size}")
    return dataset


# -- idx files (MNIST format) ---------------------------------------------------------------------------------

def read_idx(path: Path, digest: "hashlib._Hash | None" = None) -> np.ndarray:
    """An idx array (unsigned bytes) from a gzip or plain file; DataError if it is missing or malformed.

    With `digest`, the file's name and the sha256 of its bytes (as stored) are fed to it.
    """
    if not path.is_file():
        raise DataError(f"missing idx file {path}")
    try:
        raw = path.read_bytes()
        data = zlib.decompress(raw, 16 + zlib.MAX_WBITS) if path.suffix == ".gz" else raw
    except (OSError, zlib.error) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    if digest is not None:
        digest.update(path.name.encode())
        digest.update(hashlib.sha256(raw).digest())
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path} is not an idx file (bad magic number)")
    dtype_code, ndim = data[2], data[3]
    if dtype_code != 0x08:
        raise DataError(f"{path} holds idx type 0x{dtype_code:02x}; only unsigned bytes (0x08) are supported")
    header = 4 + 4 * ndim
    if ndim < 1 or len(data) < header:
        raise DataError(f"{path} has a truncated idx header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise DataError(f"{path} holds {len(data) - header} bytes of data, its header says {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def load_idx_folder(root: Path, classes: list[str] | None = None, hint: str = "") -> ImageDataset:
    """Train and test splits from the four idx files of an MNIST-format folder, in memory."""
    root = Path(root)
    missing = [name for pair in IDX_FILES.values() for name in pair if not (root / name).is_file()]
    if missing:
        raise DataError(f"{root} lacks {', '.join(missing)}" + (f": {hint}" if hint else ""))
    digest = hashlib.sha256()
    splits = {}
    for split, (images_name, labels_name) in IDX_FILES.items():
        images, labels = read_idx(root / images_name, digest), read_idx(root / labels_name, digest)
        if images.ndim != 3 or labels.ndim != 1:
            raise DataError(f"{root / images_name} must hold (N, H, W) images and {labels_name} (N,) labels")
        if images.shape[0] != labels.shape[0] or images.shape[0] == 0:
            raise DataError(f"{root}: {images.shape[0]} {split} images but {labels.shape[0]} labels")
        if images.shape[1] != images.shape[2]:
            raise DataError(f"{root / images_name}: images must be square, got {images.shape[1]}x{images.shape[2]}")
        splits[split] = TensorSplit(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))
    num_classes = int(max(splits["train"].labels.max(), splits["test"].labels.max())) + 1
    names = classes if classes is not None and len(classes) == num_classes else [str(i) for i in range(num_classes)]
    size = int(splits["train"].images.shape[-1])
    logger.info("images: %d training and %d test images of %d px from %s", len(splits["train"]), len(splits["test"]), size, root)
    return ImageDataset(splits["train"], splits["test"], names, channels=1, image_size=size, source=str(root), sha256=digest.hexdigest())


# -- image folders (ImageNet layout) ---------------------------------------------------------------------------

def _pil():
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise DataError("reading image folders needs Pillow: pip install pillow") from None
    return Image, ImageOps


def decode_image(path: Path, size: int, mode: str) -> torch.Tensor:
    """One image as uint8 (C, size, size): converted to `mode`, shorter side resized to `size`, centre-cropped."""
    Image, ImageOps = _pil()
    with Image.open(path) as img:
        img.load()
        if img.mode != mode:
            img = img.convert(mode)
        if img.size != (size, size):
            img = ImageOps.fit(img, (size, size), method=Image.BILINEAR)
        array = np.asarray(img, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def _class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def load_image_folder(root: Path, image_size: int = 64, channels: int = 3) -> ImageDataset:
    """An ImageNet-layout folder (see the module docstring): every file is scanned (header only) up front."""
    Image, _ = _pil()
    root = Path(root)
    if channels not in (1, 3):
        raise DataError(f"image folders load as 1 (grey) or 3 (RGB) channels, not {channels}")
    if image_size < 8:
        raise DataError(f"image_size must be at least 8 px, got {image_size}")
    mode = "L" if channels == 1 else "RGB"
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    split_roots = {"train": root / "train", "test": root / "val"}
    presplit = split_roots["train"].is_dir() and split_roots["test"].is_dir()
    class_root = split_roots["train"] if presplit else root
    classes = [p.name for p in _class_folders(class_root)]
    if not classes:
        raise DataError(f"image folder {class_root} has no class folders (expected {class_root}/CLASS/IMAGE.jpg)")

    stats = LoadStats()
    digest = hashlib.sha256()

    def scan(folder: Path) -> list[tuple[Path, int]]:
        found = []
        for label, name in enumerate(classes):
            for path in _image_files(folder / name):
                rel = path.relative_to(root).as_posix()
                try:
                    with Image.open(path) as img:   # reads the header only
                        size, img_mode = img.size, img.mode
                except Exception:
                    stats.corrupt += 1
                    if len(stats.corrupt_files) < WARN_NAMES:
                        stats.corrupt_files.append(rel)
                    continue
                stats.resized += size != (image_size, image_size)
                stats.converted += img_mode != mode
                digest.update(f"{rel}\0{path.stat().st_size}\n".encode())
                found.append((path, label))
        return found

    if presplit:
        train, test = scan(split_roots["train"]), scan(split_roots["test"])
    else:
        train, test = [], []
        seen = [0] * len(classes)
        for item in scan(root):
            (test if seen[item[1]] % HELD_OUT_EVERY == HELD_OUT_EVERY - 1 else train).append(item)
            seen[item[1]] += 1
    if stats.corrupt:
        logger.warning("skipped %d unreadable image file(s) under %s, e.g. %s", stats.corrupt, root, ", ".join(stats.corrupt_files))
    if stats.resized or stats.converted:
        logger.info("%s: %d image(s) will be resized to %d px, %d converted to %s", root, stats.resized, image_size, stats.converted, mode)
    if not train:
        what = f"{stats.corrupt} file(s), none readable" if stats.corrupt else "no image files (.jpg, .png, ...)"
        raise DataError(f"image folder {class_root} has no usable training image: {what}")
    if not test:   # tiny folders: evaluate on the training images rather than fail
        logger.warning("image folder %s has no held-out images; evaluating on training images", root)
        test = list(train)
    logger.info("images: %d training and %d test images in %d classes from %s", len(train), len(test), len(classes), root)
    make = lambda items: FileSplit([p for p, _ in items], [label for _, label in items], image_size, mode, stats)  # noqa: E731
    return ImageDataset(make(train), make(test), classes, channels=channels, image_size=image_size,
                        source=str(root), sha256=digest.hexdigest(), stats=stats)
