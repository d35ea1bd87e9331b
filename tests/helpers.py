"""Comparisons that hold on any CPU or GPU.

Two computations that differ only in how the work is batched (batch size, a cache's gathers, another
machine's kernels) agree up to float rounding, not bit for bit: matmul kernels pick their blocking by
shape and CPU, so sums run in another order. Compare such results relative to the scale of the values
(a random model's tokens reach 1e5), or compare what users see (uint8 images).
"""
import numpy as np
import torch


def scale_error(a, b):
    """max |a - b| / max |b|: the largest difference relative to the values' scale."""
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    assert a.shape == b.shape, (a.shape, b.shape)
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-30)).item()


def assert_close_to_scale(a, b, rtol=1e-4):
    """a equals b up to float rounding: every difference below rtol times the largest |b|."""
    error = scale_error(a, b)
    assert error <= rtol, f"differ by {error:.3g} of the values' scale (allowed {rtol:g})"


def assert_same_images(a, b, max_pixel_fraction=0.01):
    """uint8 images equal up to rounding: a pixel differs by at most 1, and few pixels differ at all
    (a value that lands within float rounding of a .5 boundary may round either way)."""
    a, b = np.asarray(a).astype(np.int16), np.asarray(b).astype(np.int16)
    assert a.shape == b.shape, (a.shape, b.shape)
    diff = np.abs(a - b)
    assert diff.max() <= 1, f"a pixel differs by {diff.max()}"
    assert (diff > 0).mean() <= max_pixel_fraction, f"{(diff > 0).mean():.2%} of the pixels differ"
