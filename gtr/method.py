"""A sampling method is a choice in four slots; this file holds the slots' contracts and MAR's choices.

    order(grid, generator)   -> LongTensor (L,): positions in generation order (first generated first)
    counts(grid)             -> list[int]: tokens predicted at each AR step (sums to L)
    steps(step, z)           -> list[(index or None, T)]: diffusion steps for the tokens predicted now;
                                index (B, m) picks tokens of this step (None: all of them). The steps
                                slot also owns the diffusion process those T steps run: steps.process(T)
                                (respacing and timestep clip, as a diffusers scheduler owns its spacing)
    cache                    -> how the transformer and head run (what work is reused): a Cache; the
                                default PlainCache runs the model as it is

Speculative methods add one optional hook (None for every other method; see the Verify contract):
    verify(model, tokens, record) -> tokens, after every AR step: may re-predict recent tokens with the
                                sampler's model (the target) and replace the ones it rejects. Such a method
                                drafts through its cache slot, which may run a second (draft) model.

The sampler (gtr/sampler.py) calls the slots and knows no method names. A slot may read the
read-only `Step` it is given; it never reaches into the model. Grids are (h, w); positions index the
grid in raster order, p = i * w + j. Any slot may define `check(method)`, called by gtr.build when a
method is assembled, to refuse (ValueError) or warn about a combination of slots (e.g. GtR's stage
counts need an order with the same number of stages).
"""
import math
from dataclasses import dataclass, field
from typing import Callable, List, Protocol

import torch

from gtr.models.diffusion import sampling_diffusion


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
    orders: torch.Tensor = None   # (B, L) every image's generation order (first generated first), as the
                                  # sampler runs it: which positions the coming steps will predict
    conditions: object = None     # the batch's conditions as given to the sampler (class ids for MAR), for a
                                  # slot that runs a second model (a speculative method's draft)


# ---------------------------------------------------------------- the cache contract
class Head(Protocol):
    """A diffusion head as the sampler's diffusion loop calls it, once per diffusion step.

    head(x, t, c, i, n) -> (N, 2C): noisy tokens x (N, C), training timesteps t (N,), conditioning c
    (N, D) -> eps and variance values; i is the diffusion step of the chain (n - 1 first, down to 0) and
    n the chain's length. `stateless`: the output depends on (x, t, c) alone (FLOP counting may then
    count one call for the chain); a head with state (a cache) says False.
    """
    stateless: bool

    def __call__(self, x, t, c, i, n): ...


class HeadKernels(Protocol):
    """The head network's parts, for a head with a cache of its own (LazyMAR's) that runs them one by one.
    Such a head has an attribute `kernels` (None: its network's own modules); engine=fast sets it to its
    FastHeadLoop, which has these methods on packed weights (the same maths, floats at rounding level).
    j: a residual block's index; y: time + conditioning embedding; h: the hidden rows."""

    def embed(self, t, c): ...                 # time_embed(t) + cond_embed(c)
    def input(self, x): ...                    # input_proj(x)
    def modulation(self, j, y): ...            # block j's adaLN (shift, scale, gate)
    def mlp(self, j, h, shift, scale): ...     # block j's mlp(modulate(in_ln(h), shift, scale))
    def final(self, h, y): ...                 # the final layer


class Cache(Protocol):
    """How the model is run inside one batch (the cache slot). The sampler calls, per batch:

        start(model, batch_size, guided)                 once, before the first AR step (forget everything)
        condition(model, tokens, known, cond_emb, step)  -> z (rows, L, D) at every AR step, in order
        head(model, step)                                -> a Head for this AR step's diffusion chains

    `rows` is the batch, doubled under guidance (conditional rows first). A cache wraps the unchanged
    model through its sampling seam (gtr/models/mar.py) and never changes it.
    """

    def start(self, model, batch_size, guided): ...

    def condition(self, model, tokens, known, cond_emb, step): ...

    def head(self, model, step) -> Head: ...


class Verify(Protocol):
    """The optional verify hook of a speculative method (Method.verify). The sampler calls, per batch:

        start(model, batch_size, guided)   once, before the first AR step (forget every window)
        __call__(model, tokens, record)    -> tokens (B, L, C), after every AR step, in order

    `model` is the sampler's model (the target). `record` holds what the step did:
        step      the Step (its known / predict positions, generators for the hook's own randomness)
        noise     (B, n, 1 + T, C) the noise of the step's tokens (column 0 the start, then one per
                  diffusion step): re-sampling a token with it replays the step's trajectory
        trace     {"mean", "std", "log_std"} (B, n, C): the last Gaussian of each token's chain (sample_head)
        cond_emb  the target's condition embedding, doubled under guidance (conditional rows first)
        scale     the step's guidance scale
        sample    sample(z_cond, z_uncond, noise, scale, num_steps) -> (tokens (B, m, C), trace): the
                  target's head on conditioning vectors (B, m, D) as the sampler runs a step's head
    A hook returns the tokens unchanged where it keeps them; it never rolls back the schedule.
    """

    def start(self, model, batch_size, guided): ...

    def __call__(self, model, tokens, record): ...


class PlainHead:
    """The model's own head: no state, the step is not needed."""
    stateless = True

    def __init__(self, model):
        self.net = model.head

    def __call__(self, x, t, c, i, n):
        return self.net(x, t, c)


class PlainCache:
    """The default cache: run the model as it is, nothing reused."""

    def start(self, model, batch_size, guided):
        pass

    def condition(self, model, tokens, known, cond_emb, step):
        return model.condition(tokens, known, cond_emb)

    def head(self, model, step):
        return PlainHead(model)


@dataclass
class Method:
    """A method = one choice per slot. `name` is only a label for outputs; the sampler ignores it."""
    order: Callable
    counts: Callable
    steps: Callable
    cache: Cache = field(default_factory=PlainCache)
    name: str = "custom"
    verify: Verify = None         # speculative methods only (see Verify)


# ---------------------------------------------------------------- the steps slot's process
def check_clip(clip_timesteps):
    """A timestep clip: None (no clip) or an integer in [1, 999]."""
    if clip_timesteps is not None and (isinstance(clip_timesteps, bool) or not isinstance(clip_timesteps, int)
                                       or not 1 <= clip_timesteps <= 999):
        raise ValueError(f"clip_timesteps must be null or an integer in [1, 999], got {clip_timesteps!r}")
    return clip_timesteps


class DiffusionSteps:
    """Base of every steps slot: the diffusion process that a token's T steps run.

    clip_timesteps caps the respaced timesteps (None: MAR's process, no cap; DiSA's code caps at 950,
    and the tiny model needs it). A subclass decides T per token in __call__(step, z).
    """

    def __init__(self, clip_timesteps=None):
        self.clip_timesteps = check_clip(clip_timesteps)

    def process(self, num_steps):
        """The respaced diffusion (gtr.models.diffusion.Diffusion) that `num_steps` steps run."""
        return sampling_diffusion(num_steps, self.clip_timesteps)

    def __call__(self, step, z):
        raise NotImplementedError


# ---------------------------------------------------------------- MAR's choices
class RandomOrder:
    """A uniformly random permutation per image (MAR)."""

    def __call__(self, grid, generator):
        return torch.randperm(grid[0] * grid[1], generator=generator)


def mar_cosine_counts(seq_len, num_steps):
    """MAR's per-step counts: after step k, floor(L * cos(pi/2 * (k+1)/N)) tokens stay masked, clamped
    so that each step predicts at least one and at least one stays masked until the last step, which
    predicts all that remain (fact: LTH14/mar models/mar.py sample_tokens)."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
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
        mar_cosine_counts(1, num_iter)  # validate now, not at the first sample
        self.num_iter = num_iter

    def __call__(self, grid):
        return mar_cosine_counts(grid[0] * grid[1], self.num_iter)


class ConstantSteps(DiffusionSteps):
    """The same number of diffusion steps for every token (MAR: 100)."""

    def __init__(self, num_steps=100, clip_timesteps=None):
        super().__init__(clip_timesteps)
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"diffusion steps must be a positive integer, got {num_steps!r}")
        self.num_steps = num_steps

    def __call__(self, step, z):
        return [(None, self.num_steps)]


def mar(num_iter=64, diffusion_steps=100, clip_timesteps=None):
    """The official MAR sampler as a Method (clip_timesteps: see DiffusionSteps)."""
    return Method(RandomOrder(), CosineCounts(num_iter), ConstantSteps(diffusion_steps, clip_timesteps), name="mar")
