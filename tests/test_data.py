import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from gtr import data
from gtr.data import FASHION_CLASSES, load_fashion_mnist, read_idx_gz

have_debian_data = Path(data.DEFAULT_ROOT, "t10k-images-idx3-ubyte.gz").is_file()
needs_data = pytest.mark.skipif(not have_debian_data, reason="apt-get install dataset-fashion-mnist")


def _write_idx(path, arr, magic):
    header = magic.to_bytes(4, "big") + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_idx_parser_roundtrip(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    _write_idx(tmp_path / "x.gz", arr, 0x803)
    np.testing.assert_array_equal(read_idx_gz(tmp_path / "x.gz", 0x803), arr)
    with pytest.raises(ValueError, match="magic"):
        read_idx_gz(tmp_path / "x.gz", 0x801)


def test_split_checks_reject_wrong_sizes(tmp_path):
    # a well-formed but too small "test" split must be refused, not silently used
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((3, 28, 28)), 0x803)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(3), 0x801)
    with pytest.raises(ValueError, match=r"expected \(10000, 28, 28\)"):
        load_fashion_mnist("test", root=tmp_path)


def test_missing_data_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("GTR_FASHION_MNIST_ROOT", str(tmp_path))
    monkeypatch.setattr(data, "_torchvision_fallback_root", lambda: None)  # pretend offline
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("test")
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("valid")


@needs_data
def test_fashion_mnist_splits():
    x, y = load_fashion_mnist("test")
    assert x.shape == (10000, 28, 28) and x.dtype == torch.uint8
    assert y.shape == (10000,) and y.dtype == torch.int64
    assert y.bincount().tolist() == [1000] * 10  # fact: the test split is balanced
    assert len(FASHION_CLASSES) == 10
    assert 0 < x.float().mean() < 128 and x.max() == 255  # dark background, bright items
    x_tr, y_tr = load_fashion_mnist("train")
    assert x_tr.shape == (60000, 28, 28) and y_tr.bincount().tolist() == [6000] * 10
    x[0] = 0  # callers get copies: the cache is untouched
    assert load_fashion_mnist("test")[0][0].any()
