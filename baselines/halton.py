"""Halton order on MAR (the paper's "+Halton" rows; Besnier et al., 2025).

The Halton scheduler was released for MaskGIT only: no official Halton-on-MAR code exists, so this
file carries the official MaskGIT order and count rule over to MAR's slots
(fact: valeoai/Halton-MaskGIT Sampler/halton_sampler.py, HaltonSampler.build_halton_mask / __call__):

  order   2-D Halton points, base 2 for the row and base 3 for the column, from index 1, scaled to
          the grid and floored; a cell is kept where it first appears. The official sampler reveals
          the cells in sequence order (step i takes mask[prev_r:r]), so our order slot, which lists
          the generation order first-generated-first, is the sequence itself. In MAR's own
          convention (order[:mask_len] stays masked, the LAST entries are generated first) the
          same generation is the reversed sequence.
  counts  the official arccos rule, or MAR's cosine rule (CosineCounts) as an option.
  steps   unchanged from MAR: the same diffusion steps for every token.
"""
import math

import torch

from gtr.method import ConstantSteps, CosineCounts, Method


def radical_inverse(n, base):
    """The van der Corput value of n >= 1 in `base`, as an exact fraction (numerator, denominator)."""
    num, den = 0, 1
    while n:
        n, digit = divmod(n, base)
        num, den = num * base + digit, den * base
    return num, den


def halton_cells(h, w):
    """All cells of an h x w grid as (row, col) in Halton order.

    Point n = 1, 2, ... is (radical_inverse(n, 2), radical_inverse(n, 3)) scaled by (h, w) and floored;
    repeated cells are dropped. fact: valeoai/Halton-MaskGIT Sampler/halton_sampler.py — the naive
    generator's first value is 1/b (index 1, not 0); base 2 fills column 0 of the mask and base 3
    column 1, which index the code's (row, col) dims; floor(point * size) in float64; np.unique with
    sorted first indices keeps first appearances. The official code is square-only and draws a fixed
    10,000 points (16x16 is complete after 685, 32x32 after 2,292, but 64x64 needs 10,363); we draw
    until every cell has appeared, which gives the same order wherever the official one is complete.
    """
    if not (isinstance(h, int) and isinstance(w, int) and h >= 1 and w >= 1):
        raise ValueError(f"grid must be two positive integers, got ({h!r}, {w!r})")
    seen, cells, n = set(), [], 0
    while len(cells) < h * w:
        n += 1
        (a, b), (c, d) = radical_inverse(n, 2), radical_inverse(n, 3)
        # Python's int / int is correctly rounded, as the official code's n / d, then one float multiply.
        cell = (math.floor(a / b * h), math.floor(c / d * w))
        if cell not in seen:
            seen.add(cell)
            cells.append(cell)
    return cells


class HaltonOrder:
    """The Halton sequence of the grid as a generation order; `roll`: a per-image cyclic shift.

    The official sampler's `randomize` rolls the sequence by a shift drawn uniformly in [0, L) per
    sample with torch.roll (fact: valeoai/Halton-MaskGIT Sampler/halton_sampler.py __call__); here the
    shift comes from the image's own generator. Without `roll` nothing is drawn.
    """

    def __init__(self, roll=False):
        self.roll = roll
        self._cache = {}

    def sequence(self, grid):
        """Raster positions (L,) of the un-rolled Halton sequence."""
        h, w = grid
        if (h, w) not in self._cache:
            self._cache[(h, w)] = torch.tensor([i * w + j for i, j in halton_cells(h, w)])
        return self._cache[(h, w)]

    def __call__(self, grid, generator):
        order = self.sequence(grid).clone()
        if self.roll:
            shift = int(torch.randint(0, len(order), (1,), generator=generator))
            order = torch.roll(order, shift, 0)
        return order


def halton_arccos_counts(seq_len, num_steps):
    """Tokens per step of the official Halton schedule.

    Cumulative tokens after step i: r_i = max(i + 1, int(L * (1 - arccos((i + 1) / S) / (pi / 2)))),
    computed in float32 as the official code does (torch.tensor of a Python float), and 0 before
    step 0 (fact: valeoai/Halton-MaskGIT Sampler/halton_sampler.py __call__). The last step reaches
    r = L. S > L would ask for more tokens than exist, so it is refused.
    """
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_iter must be a positive integer, got {num_steps!r}")
    if num_steps > seq_len:
        raise ValueError(f"num_iter {num_steps} exceeds the {seq_len} tokens of the grid")
    counts, prev = [], 0
    for i in range(num_steps):
        fraction = 1 - torch.arccos(torch.tensor((i + 1) / num_steps)) / (math.pi * 0.5)
        revealed = max(i + 1, int(fraction * seq_len))
        counts.append(revealed - prev)
        prev = revealed
    return counts


class HaltonCounts:
    """The official Halton (arccos) count schedule over `num_iter` steps."""

    def __init__(self, num_iter=16):
        if not isinstance(num_iter, int) or num_iter < 1:
            raise ValueError(f"num_iter must be a positive integer, got {num_iter!r}")
        self.num_iter = num_iter

    def __call__(self, grid):
        return halton_arccos_counts(grid[0] * grid[1], self.num_iter)


SCHEDULES = ("arccos", "cosine")


def halton(num_iter=16, schedule="arccos", roll=False, diffusion_steps=100):
    """MAR with the Halton order: `schedule` 'arccos' (Halton's) or 'cosine' (MAR's) counts."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown Halton count schedule {schedule!r}; choose one of {SCHEDULES}")
    counts = HaltonCounts(num_iter) if schedule == "arccos" else CosineCounts(num_iter)
    return Method(HaltonOrder(roll), counts, ConstantSteps(diffusion_steps), name="halton")
