"""Fashion-MNIST loading for the tiny-world experiments.

The data come from the Debian package `dataset-fashion-mnist`, which ships the four original
idx gz files (fact: /usr/share/datasets/fashion-mnist/, 60k train + 10k test, 28x28, 10 classes,
MIT; REFERENCE.md section 5). The idx format is parsed here with numpy. When the Debian files are
absent, torchvision's FashionMNIST downloader can fetch the same four files (online only).
"""

from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path

import numpy as np
import torch

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"

# fact: label order of the Fashion-MNIST README (zalandoresearch/fashion-mnist).
FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]

# split -> (images file, labels file, number of samples)
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60000),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10000),
}

# fact: idx header = 2 zero bytes, a type code (0x08 = uint8), the number of dimensions,
# then one big-endian int32 per dimension. Magic 2051 = images (3 dims), 2049 = labels (1 dim).
_MAGIC_IMAGES = 0x00000803
_MAGIC_LABELS = 0x00000801


def read_idx_gz(path: str | os.PathLike, expected_magic: int) -> np.ndarray:
    """Read one gzip-compressed idx file of unsigned bytes into a numpy array."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise ValueError(f"{path}: idx magic number {magic:#010x}, expected {expected_magic:#010x}; "
                         "the file is not a Fashion-MNIST idx file or is corrupt")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    header = 4 + 4 * ndim
    data = np.frombuffer(raw, dtype=np.uint8, offset=header)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but the file holds {data.size} bytes of data")
    return data.reshape(shape)


def _torchvision_fallback_root() -> Path | None:
    """Download the idx files with torchvision (online only); return the folder holding them."""
    try:
        from torchvision.datasets import FashionMNIST
    except ImportError:
        return None
    cache = Path(os.environ.get("GTR_CACHE_DIR", Path.home() / ".cache" / "gtr-bench")) / "torchvision"
    try:
        for train in (True, False):
            FashionMNIST(str(cache), train=train, download=True)
    except Exception:  # offline, blocked, ...: the caller reports what to install instead
        return None
    # fact: torchvision keeps the original gz files under <root>/FashionMNIST/raw/.
    return cache / "FashionMNIST" / "raw"


def _resolve_root(root) -> Path:
    if root is not None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"Fashion-MNIST root {root} does not exist")
        return root
    root = Path(os.environ.get("GTR_FASHION_MNIST_ROOT", DEFAULT_ROOT))
    if all((root / name).is_file() for files in _FILES.values() for name in files[:2]):
        return root
    fallback = _torchvision_fallback_root()
    if fallback is not None:
        return fallback
    raise FileNotFoundError(
        f"Fashion-MNIST not found in {root}. Install it with `apt-get install dataset-fashion-mnist` "
        "(Debian/Ubuntu), or go online so torchvision's FashionMNIST can download it, or pass "
        "root=<folder holding train-images-idx3-ubyte.gz etc.> (or set GTR_FASHION_MNIST_ROOT).")


@functools.lru_cache(maxsize=4)
def _load_arrays(split: str, root: str) -> tuple[np.ndarray, np.ndarray]:
    img_name, lbl_name, n = _FILES[split]
    root = Path(root)
    for name in (img_name, lbl_name):
        if not (root / name).is_file():
            raise FileNotFoundError(f"{root / name} is missing: the Fashion-MNIST {split} split needs "
                                    f"{img_name} and {lbl_name} in {root}")
    images = read_idx_gz(root / img_name, _MAGIC_IMAGES)
    labels = read_idx_gz(root / lbl_name, _MAGIC_LABELS)
    if images.shape != (n, 28, 28):
        raise ValueError(f"{root / img_name}: shape {images.shape}, expected ({n}, 28, 28)")
    if labels.shape != (n,):
        raise ValueError(f"{root / lbl_name}: shape {labels.shape}, expected ({n},)")
    if labels.max() > 9:
        raise ValueError(f"{root / lbl_name}: labels must lie in 0..9, found {int(labels.max())}")
    return images, labels


def load_fashion_mnist(split: str = "train", root=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a Fashion-MNIST split.

    Returns (images, labels): images uint8 (N, 28, 28) with 0 = black background, labels int64 (N,)
    in 0..9 (names in FASHION_CLASSES). N is 60000 for "train" and 10000 for "test".
    """
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    images, labels = _load_arrays(split, str(_resolve_root(root)))
    # copies: callers may modify the tensors without touching the in-memory cache
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))
