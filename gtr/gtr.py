"""GtR: Generation then Reconstruction, with Frequency-Weighted Token Selection (paper section 3).

Three slot choices (see gtr/method.py):
  StagedOrder   Algorithm 1's checkerboard stages, a random order inside each stage
  StageCounts   per-stage budgets (tokens/step rates or step counts), spread over each stage's steps
  StageSteps    diffusion steps linear T_max -> T_min over the generation stage, T_rec in the
                reconstruction stage, and FTS: the top beta of each reconstruction step's tokens by
                high-frequency energy of z get T_detail
No official GtR code has been released: everything follows the paper's text, and every choice the
text leaves open is a documented config value.
"""

import torch

from gtr.method import DiffusionSteps, Method, PlainCache, mar_cosine_counts


def partition(h, w, num_stages):
    """Algorithm 1: split the h x w grid into `num_stages` disjoint stages of raster positions.

    Stage 1 holds (i + j) % 2^(K-1) == 0, ..., the last stage (reconstruction) (i + j) odd.
    """
    if not isinstance(num_stages, int) or num_stages < 2:
        raise ValueError(f"GtR needs at least 2 stages, got {num_stages!r}")
    remaining = [(i, j) for i in range(h) for j in range(w)]
    stack = []
    for k in range(1, num_stages):
        stack.append([c for c in remaining if sum(c) % 2 ** k == 2 ** (k - 1)])
        remaining = [c for c in remaining if sum(c) % 2 ** k == 0]
    stack.append(remaining)
    stages = [[i * w + j for i, j in cells] for cells in reversed(stack)]
    if any(not s for s in stages):
        raise ValueError(f"{num_stages} stages are too many for a {h}x{w} grid: a stage would be empty "
                         f"(at most {max_stages(h, w)} stages fit)")
    return stages


def max_stages(h, w):
    """The largest K for which Algorithm 1 leaves no stage empty on an h x w grid."""
    sums = {i + j for i in range(h) for j in range(w)}
    k = 1
    # K stages fit while stage 1 ((i+j) % 2^(K-1) == 0) and stage 2 ((i+j) % 2^(K-1) == 2^(K-2)) are non-empty.
    while any(s % 2 ** k == 2 ** (k - 1) for s in sums):
        k += 1
    return k


class StagedOrder:
    """Stages of Algorithm 1 in turn, each in a random order (per image)."""

    def __init__(self, num_stages=3):
        self.num_stages = num_stages

    def __call__(self, grid, generator):
        stages = partition(grid[0], grid[1], self.num_stages)
        return torch.cat([torch.tensor(s)[torch.randperm(len(s), generator=generator)] for s in stages])


def spread(num_tokens, num_steps, rule="uniform"):
    """Split a stage's tokens over its steps: 'uniform' (sizes differ by at most one, larger ones last)
    or 'cosine' (MAR's cosine rule applied inside the stage)."""
    if rule == "uniform":
        base, extra = divmod(num_tokens, num_steps)
        return [base] * (num_steps - extra) + [base + 1] * extra
    if rule == "cosine":
        return mar_cosine_counts(num_tokens, num_steps)
    raise ValueError(f"unknown intra-stage rule {rule!r}; choose 'uniform' or 'cosine'")


class StageCounts:
    """Per-stage budgets. Give `steps` (one step count per stage) or rates in tokens/step: `rates` (one
    per stage) or the three defaults for the first stage, the stages in between and the last
    (paper: K=3 with {2.67, 10.67, 64} tokens/step on 16x16 = 24 + 6 + 2 steps)."""

    def __init__(self, num_stages=3, steps=None, rates=None, rate_first=2.67, rate_middle=10.67, rate_last=64.0,
                 intra_stage="uniform"):
        self.num_stages = num_stages
        self.steps, self.rates, self.intra_stage = steps, rates, intra_stage
        self.default_rates = (rate_first, rate_middle, rate_last)

    def stage_steps(self, grid):
        """Steps M_k of each stage."""
        sizes = [len(s) for s in partition(grid[0], grid[1], self.num_stages)]
        k = self.num_stages
        if self.steps is not None:
            steps = list(self.steps)
            if len(steps) != k:
                raise ValueError(f"gtr steps {steps} must give one step count per stage ({k} stages)")
        else:
            if self.rates is not None:
                rates = list(self.rates)
                if len(rates) != k:
                    raise ValueError(f"gtr rates {rates} must give one rate per stage ({k} stages)")
            else:
                first, middle, last = self.default_rates
                rates = [first] + [middle] * (k - 2) + [last]
            if any(r <= 0 for r in rates):
                raise ValueError(f"gtr rates {rates} must be positive (tokens per step)")
            steps = [max(1, round(n / r)) for n, r in zip(sizes, rates)]
        for n, m in zip(sizes, steps):
            if not isinstance(m, int) or m < 1 or m > n:
                raise ValueError(f"stage sizes {sizes} cannot be covered by steps {steps}: "
                                 "each stage needs 1 <= steps <= its tokens")
        return steps

    def __call__(self, grid):
        sizes = [len(s) for s in partition(grid[0], grid[1], self.num_stages)]
        return [c for n, m in zip(sizes, self.stage_steps(grid)) for c in spread(n, m, self.intra_stage)]

    def check(self, method):
        """Under a StagedOrder both must use the same number of stages, or a step would mix two stages.
        (Under another order StageCounts is only a count schedule: Table 5 changes nothing but the order.)"""
        if isinstance(method.order, StagedOrder) and method.order.num_stages != self.num_stages:
            raise ValueError(f"StageCounts has {self.num_stages} stages but the StagedOrder has "
                             f"{method.order.num_stages}; they must be equal (set method.stages=K, which both read)")


def fts_scores(z):
    """Eq. 5: importance of each token from the amplitude spectrum of its conditioning vector.

    z (..., D) -> (...): sum over n = 1..floor(D/2) of |rfft(z)_n| * (1 + n / floor(D/2)).
    """
    half = z.shape[-1] // 2
    amplitude = torch.fft.rfft(z.float(), dim=-1).abs()[..., 1:half + 1]
    weights = 1 + torch.arange(1, half + 1, device=z.device, dtype=amplitude.dtype) / half
    return (amplitude * weights).sum(-1)


class StageSteps(DiffusionSteps):
    """Stage-aware diffusion steps and FTS.

    A step belongs to the generation stage while fewer tokens than the generation stages hold (all
    but the (i+j)-odd cells) are done before it; the rest is reconstruction. This matches GtR's stages
    exactly under StagedOrder, and gives GtR's diffusion schedule alone on any other order (Table 3's
    GtR-dagger). Generation steps get round(T_max -> T_min linearly); reconstruction steps T_rec, and
    the `fts` selection of round(beta * n) tokens of each reconstruction step gets T_detail:
    'high' (FTS: highest eq.-5 scores), 'low', 'random', 'all' (Table 4's Full-Enhanced), 'none'.
    clip_timesteps: see gtr.method.DiffusionSteps (the paper states none).
    """

    SELECTIONS = ("high", "low", "random", "all", "none")

    def __init__(self, t_max=50, t_min=20, t_rec=20, t_detail=50, beta=0.1, fts="high", clip_timesteps=None):
        super().__init__(clip_timesteps)
        for name, value in dict(t_max=t_max, t_min=t_min, t_rec=t_rec, t_detail=t_detail).items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"gtr {name} must be a positive integer, got {value!r}")
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"FTS beta must be in [0, 1], got {beta!r}")
        if fts not in self.SELECTIONS:
            raise ValueError(f"unknown FTS selection {fts!r}; choose one of {self.SELECTIONS}")
        self.t_max, self.t_min, self.t_rec, self.t_detail, self.beta, self.fts = t_max, t_min, t_rec, t_detail, beta, fts

    @staticmethod
    def generation_tokens(grid):
        h, w = grid
        return sum(1 for i in range(h) for j in range(w) if (i + j) % 2 == 0)

    def __call__(self, step, z):
        gen_tokens = self.generation_tokens(step.grid)
        done = [sum(step.counts[:k]) for k in range(step.num_steps)]
        gen_steps = sum(1 for d in done if d < gen_tokens)
        if step.index < gen_steps:
            if gen_steps == 1:
                return [(None, self.t_max)]
            frac = step.index / (gen_steps - 1)
            return [(None, int(round(self.t_max - (self.t_max - self.t_min) * frac)))]
        n = z.shape[1]
        k = n if self.fts == "all" else 0 if self.fts == "none" else int(round(self.beta * n))
        if k == 0:
            return [(None, self.t_rec)]
        if k == n:
            return [(None, self.t_detail)]
        if self.fts == "random":
            ranking = torch.stack([torch.randperm(n, generator=g) for g in step.generators]).to(z.device)
        else:
            ranking = fts_scores(z).argsort(dim=1, descending=self.fts == "high")
        return [(ranking[:, :k], self.t_detail), (ranking[:, k:], self.t_rec)]


def gtr(stages=3, steps=None, rates=None, rate_first=2.67, rate_middle=10.67, rate_last=64.0, intra_stage="uniform",
        t_max=50, t_min=20, t_rec=20, t_detail=50, beta=0.1, fts="high", clip_timesteps=None, cache=None):
    """GtR + FTS with the paper's defaults (section 4.1)."""
    return Method(StagedOrder(stages), StageCounts(stages, steps, rates, rate_first, rate_middle, rate_last, intra_stage),
                  StageSteps(t_max, t_min, t_rec, t_detail, beta, fts, clip_timesteps), cache or PlainCache(), "gtr")
