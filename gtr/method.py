"""A sampling method is a choice in four slots; this file holds the slots' contracts and MAR's choices.

    order(grid, generator)      -> LongTensor (L,): positions in generation order (first generated first)
    counts(grid)                -> list[int]: tokens predicted at each AR step (sums to L)
    steps(step, z)              -> list[(index or None, T)]: diffusion steps for the tokens predicted now;
                                   index (B, m) picks tokens of this step (None: all of them)
    cache                       -> how the transformer and head are run (reuse of features); None: plain

The sampler (gtr/sampler.py) calls the slots and knows no method names. A slot may read the
read-only `Step` it is given; it never reaches into the model. Grids are (h, w); positions index the
grid in raster order, p = i * w + j.
"""
import math
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import torch


@dataclass
class Step:
    """What a slot may read about the current AR step (read-only by convention)."""
    index: int                    # AR step, 0-based
    num_steps: int                # AR steps in all
    counts: List[int]             # tokens per step, the whole schedule
    grid: tuple                   # (h, w)
    known: torch.Tensor           # (B, n_known) positions generated before this step, ascending
    predict: torch.Tensor         # (B, n) positions predicted at this step, ascending
    guided: bool                  # classifier-free guidance on (batch doubled: cond rows then uncond rows)
    generators: list = field(default_factory=list)  # per-image torch.Generators (for random slot choices)

    @property
    def done_before(self):
        """Tokens generated before this step."""
        return sum(self.counts[:self.index])


@dataclass
class Method:
    """A method = one choice per slot. `name` is only a label for outputs; the sampler ignores it."""
    order: Callable
    counts: Callable
    steps: Callable
    cache: Optional[object] = None
    name: str = "custom"


# ---------------------------------------------------------------- MAR's choices
class RandomOrder:
    """A uniformly random permutation per image (MAR)."""

    def __call__(self, grid, generator):
        return torch.randperm(grid[0] * grid[1], generator=generator)


def mar_cosine_counts(seq_len, num_steps):
    """MAR's per-step counts: after step k, floor(L * cos(pi/2 * (k+1)/N)) tokens stay masked, clamped
    so that each step predicts at least one and at least one stays masked until the last step, which
    predicts all that remain (fact: LTH14/mar models/mar.py sample_tokens)."""
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_iter must be a positive integer, got {num_steps!r}")
    counts, masked = [], seq_len
    for k in range(num_steps):
        if k == num_steps - 1:
            counts.append(masked)
            break
        target = math.floor(seq_len * math.cos(math.pi / 2 * (k + 1) / num_steps))
        remain = max(1, min(masked - 1, target))
        counts.append(masked - remain)
        masked = remain
    return counts


class CosineCounts:
    """MAR's cosine count schedule over `num_iter` steps."""

    def __init__(self, num_iter=64):
        self.num_iter = num_iter

    def __call__(self, grid):
        return mar_cosine_counts(grid[0] * grid[1], self.num_iter)


class ConstantSteps:
    """The same number of diffusion steps for every token (MAR: 100)."""

    def __init__(self, num_steps=100):
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"diffusion steps must be a positive integer, got {num_steps!r}")
        self.num_steps = num_steps

    def __call__(self, step, z):
        return [(None, self.num_steps)]


def mar(num_iter=64, diffusion_steps=100):
    """The official MAR sampler as a Method."""
    return Method(RandomOrder(), CosineCounts(num_iter), ConstantSteps(diffusion_steps), None, "mar")
