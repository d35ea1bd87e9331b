"""Step reduction: MAR's own sampler with fewer AR steps (the paper's "+Step=16" / "+Step=8" rows).

Everything but the number of AR steps is MAR's: random order, cosine counts, the same diffusion
steps for every token (fact: LTH14/mar models/mar.py sample_tokens; REFERENCE section 3).
"""
from gtr.method import mar


def step_reduction(num_iter, diffusion_steps=100):
    """MAR at `num_iter` AR steps, named e.g. 'step16'."""
    if not isinstance(num_iter, int) or num_iter < 1:
        raise ValueError(f"num_iter must be a positive integer, got {num_iter!r}")
    method = mar(num_iter, diffusion_steps)
    method.name = f"step{num_iter}"
    return method
