"""How sure the tiny world is: each score of a row with a 95% interval, and paired differences of rows.

The interval is a bootstrap over the row's images. Image i of every row with the same seed and number of
images is drawn from the same generator and label (gtr.sampler.image_generator(seed, i); the tiny world
cycles the labels, i % 10), so a row's images are independent draws and
resampling them measures the spread another seed would give; resampling the *same* indices in two rows
measures the spread of their difference (paired), which is far narrower than two separate intervals.
The reference set (Fashion-MNIST's 10k test images) stays fixed: its own noise is common to every row.

Intervals are standard bootstrap intervals, value +- 1.96 x the replicates' standard deviation (Efron &
Tibshirani 1993, "An Introduction to the Bootstrap", chapter 13). Not percentile intervals: resampling
with replacement repeats images, which inflates every replicate's FID (by ~3.6 at 1000 images), so the
replicates' quantiles sit above the value; their spread is still the sampling spread.

FID at n images is biased upward by O(1/n) (Chong & Forsyth 2020, "Effectively Unbiased FID and Inception
Score and where to find them"), so rows are only compared at equal n, and KID (Binkowski et al. 2018,
"Demystifying MMD GANs": unbiased MMD^2 with the kernel k(x, y) = (x.y / d + 1)^3) is given beside it.
Precision and recall: Kynkaanniemi et al. 2019, "Improved Precision and Recall Metric for Assessing
Generative Models" (k = 3 nearest neighbours), against as many test images as the row has images.
IS is computed over all of a row's images in one split (torch-fidelity's default of 10 splits would
give ten IS values of 100 images each).
"""
import os
from pathlib import Path

import numpy as np
import torch

from eval.classifier import load_classifier, preprocess, weights_fingerprint

REPLICATES = 1000       # bootstrap replicates: the standard deviation of 1000 is within ~5% of its limit
NEIGHBOURS = 3          # precision/recall's k (Kynkaanniemi et al. 2019; torch-fidelity's default)
MIN_IMAGES = NEIGHBOURS + 1   # k-NN radii need k other images; KID and FID need two


@torch.no_grad()
def image_features(images, batch_size=500):
    """(features (N, 128), logits (N, 10)) float64 of the classifier (eval/classifier.py) for images in
    any layout `preprocess` accepts, e.g. uint8 (N, 1, 32, 32)."""
    net = load_classifier()
    x = preprocess(images)
    feats = torch.cat([net.features(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    return feats.double().numpy(), net.head(feats).double().numpy()


def resample_counts(n, replicates=REPLICATES, seed=0):
    """(replicates, n): how often each image is drawn in each bootstrap replicate. The same for every
    row of n images, which is what pairs the rows."""
    rng = np.random.default_rng(seed)
    counts = np.zeros((replicates, n))
    np.add.at(counts, (np.arange(replicates)[:, None], rng.integers(0, n, size=(replicates, n))), 1.0)
    return counts


def _kernel(a, b):
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def mean_offdiagonal_kernel(features, block=1000):
    """Mean of KID's kernel over pairs of distinct points (blockwise: 10k points would need 800 MB at once)."""
    m = len(features)
    total = sum(_kernel(features[i:i + block], features).sum() for i in range(0, m, block))
    diagonal = ((features ** 2).sum(1) / features.shape[1] + 1.0) ** 3
    return (total - diagonal.sum()) / (m * (m - 1))


def subset_index(n, size, seed=0):
    """`n` of `size` indices, sorted, the same for every call (precision/recall's real set)."""
    return np.sort(np.random.default_rng(seed).choice(size, size=min(n, size), replace=False))


class Reference:
    """The test set in the classifier's space: its Gaussian for FID, its features for KID, and a fixed
    subset for precision/recall. Features are cached (keyed by the classifier's weights) in $GTR_CACHE_DIR
    or ~/.cache/gtr-bench."""

    def __init__(self, cache_dir=None):
        from gtr.data import load_fashion_mnist  # local: the data module is only needed when not cached
        cache = Path(cache_dir or os.environ.get("GTR_CACHE_DIR", Path.home() / ".cache" / "gtr-bench"))
        path = cache / f"fmnist_test_classifier_features_{weights_fingerprint()}.npz"
        if not path.is_file():
            feats, _ = image_features(load_fashion_mnist("test")[0])
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
            np.savez(tmp, features=feats)
            os.replace(tmp, path)
        self.features = np.load(path)["features"]
        self.mu = self.features.mean(0)
        self.sigma = np.cov(self.features, rowvar=False)
        values, vectors = np.linalg.eigh(self.sigma)
        self.sigma_sqrt = (vectors * np.sqrt(values.clip(0))) @ vectors.T
        self.kid_yy = mean_offdiagonal_kernel(self.features)

    def subset(self, n, seed=0):
        """n test-set features, the same ones for every row of n images (precision/recall's real set)."""
        return self.features[subset_index(n, len(self.features), seed)]


def fid(feats, counts, ref):
    """FID of each weighting of the images (a row of `counts`) against the reference Gaussian: the FID of
    the image list that repeats image i counts[r, i] times (np.cov's n - 1 normalisation, as torch-fidelity)."""
    out = []
    for w in counts:
        n = w.sum()
        mu = w @ feats / n
        centred = feats - mu
        sigma = (centred * w[:, None]).T @ centred / (n - 1)
        # tr sqrt(sigma sigma_ref) = sum of sqrt eigenvalues of the symmetric sigma_ref^1/2 sigma sigma_ref^1/2
        root = np.sqrt(np.linalg.eigvalsh(ref.sigma_sqrt @ sigma @ ref.sigma_sqrt).clip(0)).sum()
        out.append(((mu - ref.mu) ** 2).sum() + np.trace(sigma) + np.trace(ref.sigma) - 2 * root)
    return np.array(out)


def kid(feats, counts, ref):
    """Unbiased MMD^2 (cubic polynomial kernel) between each weighting of the images and the test set."""
    kxx = _kernel(feats, feats)
    kxy = _kernel(feats, ref.features).mean(1)
    n = counts.sum(1)
    xx = (((counts @ kxx) * counts).sum(1) - counts @ np.diag(kxx)) / (n * (n - 1))
    return xx + ref.kid_yy - 2 * counts @ kxy / n


def inception_score(logits, counts):
    """exp(E_x KL(p(y|x) || p(y))) over all images (one split), for each weighting."""
    logp = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    p = np.exp(logp)
    n = counts.sum(1)
    py = counts @ p / n[:, None]
    return np.exp(counts @ (p * logp).sum(1) / n - (py * np.log(py)).sum(1))


def _radii(feats, k):
    """Distance of each point to its k-th nearest other point of the same set."""
    d = torch.cdist(torch.from_numpy(feats), torch.from_numpy(feats))
    return d.kthvalue(k + 1, dim=1).values.numpy()  # k + 1: the point itself is its own nearest


def manifold_hits(feats, real, k=NEIGHBOURS):
    """(images inside the real manifold (N,) bool, real points inside the images' manifold (M,) bool):
    a point is inside a set's manifold when it lies within some member's k-NN radius."""
    d = torch.cdist(torch.from_numpy(feats), torch.from_numpy(real)).numpy()
    precise = (d <= _radii(real, k)[None]).any(1)
    recalled = (d <= _radii(feats, k)[:, None]).any(0)
    return precise, recalled


def row_scores(feats, logits, labels, ref, counts):
    """{metric: (value, bootstrap replicates (len(counts),))} of one row's images; recall as (value, None):
    a resampled image set repeats points, which shrinks its k-NN radii, so recall has no interval here."""
    weights = np.r_[np.ones((1, len(feats))), counts]   # row 0: every image once, the value itself
    correct = (logits.argmax(1) == np.asarray(labels)).astype(np.float64)
    precise, recalled = manifold_hits(feats, ref.subset(len(feats)))
    scores = {"fid": fid(feats, weights, ref), "kid": kid(feats, weights, ref),
              "is": inception_score(logits, weights), "accuracy": weights @ correct / len(feats),
              "precision": weights @ precise / len(feats)}
    out = {name: (float(values[0]), values[1:]) for name, values in scores.items()}
    out["recall"] = (float(recalled.mean()), None)
    return out


def interval(value, replicates, z=1.96):
    """The standard bootstrap interval (lo, hi) of `value`: value +- z x the replicates' standard
    deviation (z = 1.96: 95%)."""
    spread = z * float(np.std(replicates, ddof=1))
    return value - spread, value + spread


def with_intervals(scores):
    """{fid, fid_lo, fid_hi, ...} for a run record, from row_scores' output."""
    out = {}
    for name, (value, replicates) in scores.items():
        out[name] = value
        if replicates is not None:
            out[f"{name}_lo"], out[f"{name}_hi"] = interval(value, replicates)
    return out
