"""eval/intervals.py and eval/claims.py: each score equals torch-fidelity's on the same images, a bootstrap
replicate equals the score of the image list it stands for, and claims get the verdicts their intervals say."""
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from eval import classifier as C
from eval.claims import evaluate_claims, images_to_decide, load_claims, paired, verdict, write_claims
from eval.fid import evaluate, load_stats, save_stats
from eval.intervals import (Reference, fid, image_features, inception_score, interval, kid, manifold_hits,
                            mean_offdiagonal_kernel, resample_counts, row_scores, subset_index, with_intervals)
from eval.tiny_world import pareto_front
from gtr import data

pytestmark = [
    pytest.mark.skipif(not C.WEIGHTS_PATH.is_file(), reason="run scripts/train_classifier.py"),
    pytest.mark.skipif(not Path(data.DEFAULT_ROOT).is_dir(), reason="apt-get install dataset-fashion-mnist"),
]


@pytest.fixture(scope="module")
def reference():
    return Reference()


@pytest.fixture(scope="module")
def images():
    """300 training images and their labels, and the same images with noise (a worse "method")."""
    x, y = data.load_fashion_mnist("train")
    x, y = x[:300], y[:300].numpy()
    noise = torch.randint(-60, 61, x.shape, generator=torch.Generator().manual_seed(0))
    return x, y, (x.int() + noise).clamp(0, 255).to(torch.uint8)


def test_reference_is_the_test_set_as_torch_fidelity_sees_it(reference):
    mu, sigma = load_stats(C.fmnist_reference_stats())
    np.testing.assert_allclose(reference.mu, mu, rtol=1e-5, atol=1e-5 * np.abs(mu).max())
    np.testing.assert_allclose(reference.sigma, sigma, rtol=1e-4, atol=1e-5 * np.abs(sigma).max())


def test_scores_equal_torch_fidelity(reference, images, tmp_path):
    x, y, _ = images
    feats, logits = image_features(x)
    ones = np.ones((1, len(x)))
    stats = save_stats(tmp_path / "ref.npz", reference.mu, reference.sigma, feature_extractor=C.EXTRACTOR_NAME,
                       layer="feat")
    test_images, _ = data.load_fashion_mnist("test")
    real = test_images[subset_index(len(x), len(test_images))]
    ours = evaluate(x[:, None], ref_stats_path=stats, ref_images=real[:, None], prc=True,
                    feature_extractor=C.EXTRACTOR_NAME, isc_splits=1, cuda=False)
    # FID is a small difference of large traces: compare on the traces' scale. A k-NN decision may flip
    # for one point on another CPU's float kernels: precision/recall within 1.5 points of n.
    traces = np.trace(np.cov(feats, rowvar=False)) + np.trace(reference.sigma)
    assert fid(feats, ones, reference)[0] == pytest.approx(ours["fid"], abs=1e-7 * traces)
    assert inception_score(logits, ones)[0] == pytest.approx(ours["is_mean"], rel=1e-5)
    precise, recalled = manifold_hits(feats, reference.subset(len(x)))
    assert precise.mean() == pytest.approx(ours["precision"], abs=1.5 / len(x))
    assert recalled.mean() == pytest.approx(ours["recall"], abs=1.5 / len(x))
    scores = with_intervals(row_scores(feats, logits, y, reference, resample_counts(len(x), 400)))
    assert scores["accuracy"] == pytest.approx(C.class_accuracy(x, y))
    # the bootstrap's spread of a mean is the binomial one, sqrt(p (1 - p) / n), within the noise of 400 replicates
    p = scores["accuracy"]
    assert (scores["accuracy_hi"] - scores["accuracy_lo"]) / 2 == pytest.approx(1.96 * (p * (1 - p) / len(x)) ** 0.5,
                                                                             rel=0.15)
    assert "recall_lo" not in scores and scores["recall"] == pytest.approx(ours["recall"], abs=1.5 / len(x))


def test_a_replicate_is_the_score_of_the_list_it_stands_for(reference, images):
    x, y, _ = images
    feats, logits = image_features(x[:60])
    counts = resample_counts(60, replicates=3, seed=5)
    assert (counts.sum(1) == 60).all() and np.array_equal(counts, resample_counts(60, replicates=3, seed=5))
    # FID's scale is its traces; 60 images in 128 dimensions give a singular covariance, whose ~0 eigenvalues'
    # square roots turn float64 rounding into ~1e-8 of that scale
    traces = np.trace(np.cov(feats, rowvar=False)) + np.trace(reference.sigma)
    for r in range(3):
        listed = np.repeat(np.arange(60), counts[r].astype(int))
        ones = np.ones((1, 60))
        assert fid(feats, counts[r:r + 1], reference)[0] == pytest.approx(fid(feats[listed], ones, reference)[0],
                                                                          abs=1e-7 * traces)
        assert kid(feats, counts[r:r + 1], reference)[0] == pytest.approx(kid(feats[listed], ones, reference)[0],
                                                                          abs=1e-9 * reference.kid_yy)
        assert inception_score(logits, counts[r:r + 1])[0] == pytest.approx(inception_score(logits[listed], ones)[0])


def test_kid_is_the_unbiased_mmd():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 4)), rng.normal(0.5, 1.0, size=(9, 4))
    k = lambda a, b: (a @ b / 4 + 1) ** 3  # noqa: E731
    pairs = lambda a, b, same: [k(p, q) for i, p in enumerate(a) for j, q in enumerate(b) if not (same and i == j)]  # noqa: E731
    expected = np.mean(pairs(x, x, True)) + np.mean(pairs(y, y, True)) - 2 * np.mean(pairs(x, y, False))
    assert mean_offdiagonal_kernel(y, block=4) == pytest.approx(np.mean(pairs(y, y, True)))
    ref = SimpleNamespace(features=y, kid_yy=mean_offdiagonal_kernel(y))
    assert kid(x, np.ones((1, 7)), ref)[0] == pytest.approx(expected)


def test_paired_differences_and_verdicts(reference, images):
    x, y, noisy = images
    counts = resample_counts(len(x), 200)
    clean = row_scores(*image_features(x), y, reference, counts)
    worse = row_scores(*image_features(noisy), y, reference, counts)
    assert all(d == (0.0, 0.0, 0.0) for d in paired(clean, clean).values())
    value, lo, hi = paired(clean, worse)["fid"]
    assert lo < value < hi < 0  # noise makes FID worse, beyond the paired interval
    # pairing: the difference's interval is narrower than it would be for independent image sets
    alone = [with_intervals(s) for s in (clean, worse)]
    assert hi - lo < np.hypot(*[a["fid_hi"] - a["fid_lo"] for a in alone])
    assert interval(1.0, np.array([0.0, 2.0])) == pytest.approx((1.0 - 1.96 * 2 ** 0.5, 1.0 + 1.96 * 2 ** 0.5))
    assert [verdict("better", *b) for b in [(-3, -1), (1, 2), (-1, 1)]] == ["holds", "fails", "within noise"]
    assert [verdict("no_worse", *b) for b in [(-2, 0), (0.5, 2), (-1, 1)]] == ["holds", "fails", "within noise"]
    assert [verdict("no_worse", *b, margin=1.5) for b in [(-1, 1), (0.5, 2), (1.6, 3)]] == ["holds", "within noise", "fails"]
    assert images_to_decide(1000, -2.0, -4.5, 0.5) == 1563 and images_to_decide(1000, 0.0, -1, 1) is None
    assert images_to_decide(1000, 1.0, -1.5, 3.5, threshold=2.0) == 6250


def test_claims_from_rows(reference, images, tmp_path):
    x, y, noisy = images
    features = {"good": (*image_features(x), y), "bad": (*image_features(noisy), y),
                "fewer": (*image_features(x[:100]), y[:100])}
    seed = {"config": {"seed": 0}}
    records = {"good": {"flops_T": 1.0, **seed}, "bad": {"flops_T": 4.0, **seed}, "fewer": {"flops_T": 1.0, **seed},
               "other_seed": {"flops_T": 1.0, "config": {"seed": 1}}}
    features["other_seed"] = features["good"]
    claims = {"X": {"claim": "good beats bad", "paper": "nowhere", "min_speed": 3.0,
                    "tests": [["good", "better", "bad"], ["bad", "better", "good"], ["good", "no_worse", "gone"],
                              ["good", "better", "fewer"], ["good", "no_worse", "other_seed"]]},
              "Y": {"claim": "good keeps its own quality", "paper": "-", "margin": 0.05,
                    "tests": [["good", "no_worse", "good"]]}}
    results = evaluate_claims(claims, records, features, reference)
    assert [r["verdict"] for r in results] == [
        "holds", "fails (FLOPs ratio 0.25 < 3.0)", "not run (gone missing)",
        "not comparable (different images: n, labels or seed differ)",
        "not comparable (different images: n, labels or seed differ)", "holds"]
    good_fid = fid(features["good"][0], np.ones((1, len(x))), reference)[0]
    assert results[1]["kid_agrees"] and results[-1]["margin"] == pytest.approx(0.05 * good_fid)
    text = write_claims(claims, results, tmp_path / "claims.md", "cmd").read_text()
    assert "| good better bad | 4.00 |" in text and "## X: good beats bad — 1 of 5 holds, 1 of 5 fails" in text
    assert "## Y: good keeps its own quality — holds" in text and "(margin " in text


def test_the_claims_config_is_well_formed(tmp_path):
    assert set(load_claims()) == {"C1", "C2", "C3", "C4", "C5"}
    bad = tmp_path / "claims.yaml"
    for text, error in [("C:\n  claim: x\n  paper: y\n  tests: [[a, best, b]]\n", "better|no_worse"),
                        ("C:\n  claim: x\n  tests: [[a, better, b]]\n", "`claim` and `paper`"),
                        ("C:\n  claim: x\n  paper: y\n  margin: -1\n  tests: [[a, better, b]]\n", "margin")]:
        bad.write_text(text)
        with pytest.raises(ValueError, match=error):
            load_claims(bad)


def test_pareto_front():
    assert pareto_front([1, 2, 3, 2], [5, 3, 4, 3]).tolist() == [True, True, False, True]
    assert pareto_front([1, 2, 3], [5, 3, float("nan")], [300, 1000, 1000]).tolist() == [True, True, False]
