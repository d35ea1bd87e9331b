"""DiSA: diffusion step annealing (Zhao et al., 2025; the paper's "+DiSA" rows).

DiSA changes only the diffusion steps: early AR steps get `upper` diffusion steps, later ones fewer,
down to `lower`. Order and counts stay MAR's (fact: Qinyu-Allen-Zhao/DiSA MAR_DiSA/models/mar.py
sample_tokens calls diffloss.sample(..., step=step, ar_num_iter=num_iter), all else as in MAR).

Its diffusion also caps every timestep at 950 (fact: MAR_DiSA/diffusion/__init__.py create_diffusion,
clip_timesteps=950 by default, used by the 'DiSA' sampler): DiSASteps owns that clip, as every steps
slot owns its diffusion process (gtr.method.DiffusionSteps).
The GtR paper's DiSA FLOPs match DiSA at 24 and 16 AR steps, not 16 and 8 (REFERENCE section 4b).
"""
import logging
import math

from gtr.method import CosineCounts, DiffusionSteps, Method, RandomOrder

log = logging.getLogger("gtr")

# fact: Qinyu-Allen-Zhao/DiSA MAR_DiSA/diffusion/__init__.py (create_diffusion default clip_timesteps=950)
DISA_CLIP_TIMESTEPS = 950

STRATEGIES = ("linear", "cosine", "two-stage", "constant")


def disa_steps(step, num_steps, upper=50, lower=5, strategy="linear"):
    """Diffusion steps DiSA gives AR step `step` (0-based) of `num_steps`.

    fact: Qinyu-Allen-Zhao/DiSA MAR_DiSA/models/diffloss.py DiffLoss.sample. The sampler list holds
    lower, lower+1, ..., upper steps; with last = S - 1 it picks entry
      linear     int((last - s) / last * (upper - lower))
      cosine     int((cos(pi * s / last) + 1) / 2 * (upper - lower))
      two-stage  upper - lower if s < last / 2 else 0
      constant   0, i.e. the LOWER bound
    so the steps are lower + entry. At S == 1 the official linear and cosine rules divide by zero; we
    give the single step `upper` (it is the first AR step: s / last read as 0). Two-stage and
    constant are defined at S == 1 in the official code and kept (both give `lower`).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown DiSA strategy {strategy!r}; choose one of {STRATEGIES}")
    if not (isinstance(lower, int) and isinstance(upper, int) and 1 <= lower <= upper):
        raise ValueError(f"DiSA needs integers 1 <= lower <= upper, got lower={lower!r}, upper={upper!r}")
    if not (isinstance(num_steps, int) and num_steps >= 1 and isinstance(step, int) and 0 <= step < num_steps):
        raise ValueError(f"AR step {step!r} is not in [0, {num_steps!r})")
    last, span = num_steps - 1, upper - lower
    if strategy == "constant":
        return lower
    if strategy == "two-stage":
        return upper if step < last / 2 else lower
    if last == 0:
        return upper
    if strategy == "linear":
        # Same float expression and order as the official code, so int() truncates alike.
        return lower + int((last - step) / last * span)
    return lower + int((math.cos(math.pi * step / last) + 1) / 2 * span)


class DiSASteps(DiffusionSteps):
    """Steps slot: every token of AR step s gets disa_steps(s, S, upper, lower, strategy) steps of a
    process whose timesteps are capped at `clip_timesteps` (DiSA's code: 950)."""

    def __init__(self, upper=50, lower=5, strategy="linear", clip_timesteps=DISA_CLIP_TIMESTEPS):
        super().__init__(clip_timesteps)
        disa_steps(0, 1, upper, lower, strategy)  # validate now, not at the first sample
        self.upper, self.lower, self.strategy = upper, lower, strategy

    def check(self, method):
        """A clip other than DiSA's is a variant of the released method: say so (gtr.build calls this)."""
        if self.clip_timesteps != DISA_CLIP_TIMESTEPS:
            log.warning("method %r uses DiSA steps with clip_timesteps=%s; DiSA's released code caps timesteps "
                        "at %s (set method.clip_timesteps=%s to match it)", method.name, self.clip_timesteps,
                        DISA_CLIP_TIMESTEPS, DISA_CLIP_TIMESTEPS)

    def schedule(self, num_steps):
        """Diffusion steps of each of `num_steps` AR steps."""
        return [disa_steps(s, num_steps, self.upper, self.lower, self.strategy) for s in range(num_steps)]

    def __call__(self, step, z):
        return [(None, disa_steps(step.index, step.num_steps, self.upper, self.lower, self.strategy))]


def disa(num_iter=64, upper=50, lower=5, strategy="linear", clip_timesteps=DISA_CLIP_TIMESTEPS):
    """MAR with DiSA's annealed diffusion steps (README defaults: 64 AR steps, linear 50 -> 5, timesteps
    capped at 950). DiSA evaluates MAR-H at cfg 3.3, MAR's own 3.2 (fact: DiSA README 3.1): model.cfg=3.3."""
    return Method(RandomOrder(), CosineCounts(num_iter), DiSASteps(upper, lower, strategy, clip_timesteps),
                  name="disa")
