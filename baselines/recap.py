"""ReCAP ("Plug-and-Play Context Feature Reuse for Efficient Masked Generation", arXiv 2505.19089): MAR whose
AR steps come in groups of one full step and `cache_iters` cheap "local" steps that reuse the full
step's attention keys and values.

Read from the official code (liebenxj/ReCAP 4d1da38, examples/MAR+ReCAP/: models/mar.py sample_tokens,
forward_mae_encoder / forward_mae_decoder with past_kvs, models/diffloss.py, cache_decoding.py,
run_mar_recap.sh) and written here in the four slots; the model is untouched.
  * Steps 0 .. pre_full_iters - 1 are plain MAR steps; after them, step k is full when
    (k - pre_full_iters) % (cache_iters + 1) == 0, else local (`is_full_step`). The scripts use
    pre_full_iters = num_iter / 2 and cache_iters = 1.
  * A group (a full step and the local steps after it) predicts the tokens MAR's steps would, MAR's
    cosine counts per step, but splits the group's tokens among its steps by position, ascending, not by
    the random order (fact: sample_tokens takes torch.where of the group's mask): `GroupSortedOrder`.
  * Full step: plain MAR, keeping every layer's K and V: the encoder's of the buffer and the known tokens,
    the decoder's of every position (`ReCAP`, the cache slot).
  * Local step, encoder: only the class buffer and the tokens predicted since the group's full step are
    computed; they attend to the full step's K/V of the tokens known before the group plus their own.
    Decoder: the buffer and every position of the group are computed (mask token where not yet
    predicted); they attend to the full step's (stale) K/V of every other position plus their own.
  * Diffusion steps: 100 on full steps, 50 on local ones (`ReCAPSteps`). The scripts pass
    --diff_fast_ratio 0.4 (parsed as a string), but it is never applied: DiffLoss.sample builds its
    "fast" sampler once, at its first call, with int(100 * fast_ratio) steps, and that first call is a
    full step's, which passes sample()'s default fast_ratio 0.5 (fact: models/diffloss.py sample,
    models/mar.py sample_tokens; scripts/verify_recap.py measures it). method.local_steps=40 runs the
    ratio's evident intent.
  * Guidance: MAR's linear schedule without its clamp at the last step (cfg_schedule: linear_exact in the
    method's config): the official code sets the last step's mask length to 0 where MAR keeps 1.
Not modelled: the official code keeps the K/V in fp16 under autocast (it samples in fp16); here they are
in the model's dtype. Its cache_buffer=True variant is not what the scripts run (the launcher's flag is off).
"""
import torch

from baselines.blocks import attend, heads_index, qkv, seq_index
from gtr.method import CosineCounts, DiffusionSteps, PlainHead, RandomOrder, mar_cosine_counts
from gtr.sampler import put, take


def check_schedule(pre_full_iters, cache_iters):
    """Refuse a schedule that is not two non-negative integers (cache_iters 0: plain MAR)."""
    for name, value in (("pre_full_iters", pre_full_iters), ("cache_iters", cache_iters)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"ReCAP {name} must be an integer >= 0, got {value!r}")


def is_full_step(index, pre_full_iters, cache_iters):
    """Whether AR step `index` (0-based) runs the transformer in full (fact: liebenxj/ReCAP
    examples/MAR+ReCAP/models/mar.py sample_tokens: a group of cache_iters * (k > pre_full_iters - 1)
    local steps follows each full step k)."""
    return index < pre_full_iters or (index - pre_full_iters) % (cache_iters + 1) == 0


def group_of(index, num_steps, pre_full_iters, cache_iters):
    """(first, last) AR step of the group that step `index` belongs to."""
    first = index
    while not is_full_step(first, pre_full_iters, cache_iters):
        first -= 1
    last = first
    while last + 1 < num_steps and not is_full_step(last + 1, pre_full_iters, cache_iters):
        last += 1
    return first, last


def pre_full(pre_full_iters, num_iter):
    """pre_full_iters, or num_iter // 2 (the scripts' setting) when None."""
    mar_cosine_counts(1, num_iter)  # refuses a num_iter that is not a positive integer
    return num_iter // 2 if pre_full_iters is None else pre_full_iters


def sort_groups(order, counts, pre_full_iters, cache_iters):
    """A generation order (L,) or (B, L) with each group's tokens sorted by position: ReCAP splits a group's
    tokens among its steps in position order (fact: liebenxj/ReCAP sample_tokens, torch.where of the
    group's mask)."""
    order = order.clone()
    starts = [sum(counts[:k]) for k in range(len(counts) + 1)]
    k = 0
    while k < len(counts):
        first, last = group_of(k, len(counts), pre_full_iters, cache_iters)
        a, b = starts[first], starts[last + 1]
        order[..., a:b] = order[..., a:b].sort(dim=-1).values
        k = last + 1
    return order


class GroupSortedOrder:
    """MAR's random order with each group's tokens sorted by position: the order slot of ReCAP.

    The groups follow MAR's cosine counts over `num_iter` steps (the counts slot must be those: checked).
    """

    def __init__(self, num_iter=64, pre_full_iters=None, cache_iters=1):
        self.num_iter, self.cache_iters = num_iter, cache_iters
        self.pre_full_iters = pre_full(pre_full_iters, num_iter)
        check_schedule(self.pre_full_iters, cache_iters)

    def __call__(self, grid, generator):
        counts = mar_cosine_counts(grid[0] * grid[1], self.num_iter)
        return sort_groups(RandomOrder()(grid, generator), counts, self.pre_full_iters, self.cache_iters)

    def check(self, method):
        counts = method.counts
        if not isinstance(counts, CosineCounts) or counts.num_iter != self.num_iter:
            raise ValueError("ReCAP's order groups MAR's cosine counts: the counts slot must be cosine with the "
                             f"same num_iter ({self.num_iter})")


class ReCAPSteps(DiffusionSteps):
    """`full_steps` diffusion steps on full AR steps, `local_steps` on local ones (the official code: 100
    and 50, see the module docstring)."""

    def __init__(self, num_iter=64, pre_full_iters=None, cache_iters=1, full_steps=100, local_steps=50,
                 clip_timesteps=None):
        super().__init__(clip_timesteps)
        for name, value in (("full_steps", full_steps), ("local_steps", local_steps)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ReCAP {name} must be a positive integer, got {value!r}")
        self.pre_full_iters, self.cache_iters = pre_full(pre_full_iters, num_iter), cache_iters
        check_schedule(self.pre_full_iters, cache_iters)
        self.full_steps, self.local_steps = full_steps, local_steps

    def __call__(self, step, z):
        full = is_full_step(step.index, self.pre_full_iters, self.cache_iters)
        return [(None, self.full_steps if full else self.local_steps)]


class ReCAP:
    """ReCAP's K/V reuse as a cache policy for gtr.sampler.sample (see the module docstring). After a run,
    `trace` lists 'full' / 'local' per AR step."""

    def __init__(self, num_iter=64, pre_full_iters=None, cache_iters=1):
        self.pre_full_iters, self.cache_iters = pre_full(pre_full_iters, num_iter), cache_iters
        check_schedule(self.pre_full_iters, cache_iters)
        self.start(None, 0, False)

    # ---- the cache protocol (gtr.method.Cache) ----
    def start(self, model, batch_size, guided):
        """Forget everything cached: a new batch begins."""
        self.trace, self._last_index = [], -1
        self._enc_k = self._enc_v = self._dec_k = self._dec_v = None
        self._group_known = 0    # tokens known when the group's full step ran

    def condition(self, model, tokens, known, cond_emb, step):
        """z (rows, L, D) for the sampler: plain MAR on full steps, the local computation otherwise."""
        if step.index != self._last_index + 1:
            raise RuntimeError(f"ReCAP got AR step {step.index} after step {self._last_index}: "
                               "steps must come in order from 0 (start() resets it)")
        self._last_index = step.index
        full = is_full_step(step.index, self.pre_full_iters, self.cache_iters)
        self.trace.append("full" if full else "local")
        local_next = step.index + 1 < step.num_steps and not is_full_step(
            step.index + 1, self.pre_full_iters, self.cache_iters)
        if full and not local_next:
            return model.condition(tokens, known, cond_emb)
        if full:
            return model.output(self._full(model, tokens, known, cond_emb), cond_emb)
        return model.output(self._local(model, tokens, known, cond_emb, step), cond_emb)

    def head(self, model, step):
        """The model's own head: ReCAP changes only how many steps it runs (ReCAPSteps)."""
        return PlainHead(model)

    # ---- full steps: plain MAR, keeping every layer's K/V ----
    def _full(self, model, tokens, known, cond_emb):
        keep = seq_index(model, known)
        x = take(model.encoder_input(tokens, cond_emb), keep)
        self._enc_k, self._enc_v, self._dec_k, self._dec_v = [], [], [], []
        for block in model.encoder_blocks:
            q, k, v = qkv(block, block.norm1(x))
            self._enc_k.append(k[:, :, model.buffer_size:])   # local steps recompute the buffer's
            self._enc_v.append(v[:, :, model.buffer_size:])
            x = x + attend(block, q, k, v)
            x = x + block.mlp(block.norm2(x))
        x = model.decoder_input(model.encoder_norm(x), known)
        for block in model.decoder_blocks:
            q, k, v = qkv(block, block.norm1(x))
            self._dec_k.append(k)
            self._dec_v.append(v)
            x = x + attend(block, q, k, v)
            x = x + block.mlp(block.norm2(x))
        self._group_known = known.shape[1]
        return x

    # ---- local steps ----
    def _local(self, model, tokens, known, cond_emb, step):
        """The last decoder layer's output (rows, buffer + L, D), valid at the group's positions."""
        rows, seq_len = tokens.shape[0], model.seq_len
        first, last = group_of(step.index, step.num_steps, self.pre_full_iters, self.cache_iters)
        order = step.orders.to(known.device)
        order = torch.cat([order] * (rows // order.shape[0]))
        start = sum(step.counts[:first])
        group = order[:, start:sum(step.counts[:last + 1])].sort(dim=1).values     # every position of the group
        new = order[:, start:start + known.shape[1] - self._group_known].sort(dim=1).values  # predicted since
        # Encoder: the buffer and the new tokens, over the full step's K/V of the tokens known before.
        x = take(model.encoder_input(tokens, cond_emb), seq_index(model, new))
        for layer, block in enumerate(model.encoder_blocks):
            q, k, v = qkv(block, block.norm1(x))
            x = x + attend(block, q, torch.cat([self._enc_k[layer], k], 2), torch.cat([self._enc_v[layer], v], 2))
            x = x + block.mlp(block.norm2(x))
        # Decoder: the buffer and the group's positions, over the full step's K/V of every other position.
        rows_in = seq_index(model, group)
        x = take(model.decoder_input(model.encoder_norm(x), new), rows_in)
        in_group = torch.zeros(rows, seq_len, dtype=torch.bool, device=group.device).scatter(1, group, True)
        others = torch.sort(in_group.to(torch.uint8), dim=1, stable=True).indices[:, :seq_len - group.shape[1]]
        others = others + model.buffer_size
        for layer, block in enumerate(model.decoder_blocks):
            q, k, v = qkv(block, block.norm1(x))
            index = heads_index(others, k)
            stale_k = torch.gather(self._dec_k[layer], 2, index)
            stale_v = torch.gather(self._dec_v[layer], 2, index)
            x = x + attend(block, q, torch.cat([stale_k, k], 2), torch.cat([stale_v, v], 2))
            x = x + block.mlp(block.norm2(x))
        hidden = x.new_zeros(rows, model.buffer_size + seq_len, x.shape[-1])
        return put(hidden, rows_in, x)
