import math
from pathlib import Path

import pytest
import torch
import torch_fidelity
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from eval import classifier as C
from eval.fid import compute_statistics, evaluate, load_stats, save_stats
from gtr import data

torch.set_num_threads(2)

pytestmark = [
    pytest.mark.skipif(not C.WEIGHTS_PATH.is_file(), reason="run scripts/train_classifier.py"),
    pytest.mark.skipif(not Path(data.DEFAULT_ROOT).is_dir(), reason="apt-get install dataset-fashion-mnist"),
]


@pytest.fixture(scope="module")
def fmnist_test():
    return data.load_fashion_mnist("test")


def test_weights_small_and_accurate(fmnist_test):
    assert C.WEIGHTS_PATH.stat().st_size < 2 * 2**20
    x, y = fmnist_test
    model = C.load_classifier()
    acc = C.class_accuracy(x[:500], y[:500], model)
    assert acc >= 0.85
    # the tiny-world format (32x32 float in [-1, 1], padded with -1) gives the same logits
    x32 = torch.nn.functional.pad(x[:64, None].float() / 127.5 - 1, (2, 2, 2, 2), value=-1.0)
    torch.testing.assert_close(C.classify(x32, model), C.classify(x[:64], model))
    # and so does an RGB uint8 copy (what torch-fidelity feeds extractors from PNGs)
    torch.testing.assert_close(C.classify(x[:64, None].expand(-1, 3, -1, -1), model), C.classify(x[:64], model))


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="28x28 or 32x32"):
        C.preprocess(torch.zeros(2, 1, 30, 30, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        C.preprocess(torch.zeros(2, 28, 28, dtype=torch.int32))
    with pytest.raises(ValueError, match="labels"):
        C.class_accuracy(torch.zeros(3, 28, 28, dtype=torch.uint8), torch.zeros(2))
    with pytest.raises(FileNotFoundError, match="train_classifier"):
        C.load_classifier("/nonexistent/fmnist.pt")


def test_registered_with_torch_fidelity(fmnist_test):
    assert FEATURE_EXTRACTORS_REGISTRY[C.EXTRACTOR_NAME] is C.FmnistFeatureExtractor
    x, _ = fmnist_test
    ds = torch.utils.data.TensorDataset(x[:200, None].expand(-1, 3, -1, -1))

    class Images(torch.utils.data.Dataset):  # torch-fidelity wants bare tensors, not tuples
        __len__ = ds.__len__
        __getitem__ = lambda self, i: ds[i][0]  # noqa: E731

    # IS through torch-fidelity's own entry point, on real images: well above 1 (10 classes, confident)
    res = torch_fidelity.calculate_metrics(input1=Images(), isc=True, feature_extractor=C.EXTRACTOR_NAME,
                                           cuda=False, cache=False, verbose=False, save_cpu_ram=True)
    assert math.isfinite(res["inception_score_mean"]) and 5 < res["inception_score_mean"] <= 10


def test_fid_and_is_in_classifier_space(fmnist_test, tmp_path):
    x, _ = fmnist_test
    a, b = x[:500], x[500:1000]
    noise = torch.randint(0, 256, (500, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    kw = dict(feature_extractor=C.EXTRACTOR_NAME, cuda=False)
    stats_b = save_stats(tmp_path / "b.npz", *compute_statistics(b, **kw), feature_extractor=C.EXTRACTOR_NAME,
                         layer="feat")
    same = evaluate(a, ref_stats_path=stats_b, **kw)
    far = evaluate(noise, ref_stats_path=stats_b, **kw)
    print(f"FID test A vs B {same['fid']:.3f}, noise vs B {far['fid']:.3f}; "
          f"IS test {same['is_mean']:.3f}, noise {far['is_mean']:.3f}")
    assert far["fid"] > 20 * same["fid"] > 0
    assert 5 < same["is_mean"] <= 10 and 1 <= far["is_mean"] < same["is_mean"]
    assert all(math.isfinite(r[k]) for r in (same, far) for k in ("is_mean", "is_std", "fid"))


def test_reference_stats_of_test_split(fmnist_test):
    # default cache: the 10k-image stats are computed once per machine and weight file (keyed by hash)
    ref = C.fmnist_reference_stats()
    assert C.weights_fingerprint() in ref.name and C.fmnist_reference_stats() == ref
    mu, sigma = load_stats(ref)
    assert mu.shape == (C.FEAT_DIM,) and sigma.shape == (C.FEAT_DIM, C.FEAT_DIM)
    x, _ = fmnist_test
    kw = dict(feature_extractor=C.EXTRACTOR_NAME, cuda=False, isc=False)
    near = evaluate(x[:500], ref_stats_path=ref, **kw)["fid"]
    flipped = evaluate(x[:500].flip(-2), ref_stats_path=ref, **kw)["fid"]  # upside-down items: off-distribution
    print(f"FID test[:500] vs test-10k stats {near:.3f}, upside-down {flipped:.3f}")
    assert 0 < near < 0.2 * flipped
