"""LazyMAR (Yan et al., ICCV 2025): feature caching for MAR, as a cache policy around an unchanged model.

Read from the official code (feihongyan1/LazyMAR, models/mar_cache.py, models/basic.py,
models/diffloss_cached.py, diffusion_cached/gaussian_diffusion.py) and re-written here: the model
class is untouched; this file runs its submodules (norm1, attn.qkv, attn.proj, mlp, ...) itself
where LazyMAR needs the block internals (keys and values).

AR steps are "full" (plain MAR, and every cache refreshed) or "lazy". On a lazy step:
  encoder_cache    the encoder runs only the buffer and the tokens predicted at the previous step;
                   their queries attend to a per-layer K/V cache of every known token (each token's
                   K/V as last computed: at the last full step or when it was new).
  decoder_pruning  decoder layers 0..3 run on all positions; after layer 3's attention only the
                   positions whose layer-3 values V changed most since the previous step (lowest
                   cosine similarity) go on; they attend to a K/V cache that holds the others.
  cfg_cache        the transformer runs on the conditional rows only; the unconditional rows are
                   cond + (uncond - cond) of the last decoder layer's output at the last full step.
And inside every AR step, head_cache: of the head's diffusion steps only the first and those with
index % 7 == 0 run in full (16 of 100); the others run the conditional rows only, with the
guidance difference of eps, the res-block MLP outputs and the whole of res blocks 1-4 reused from
the last full diffusion step (the MLPs are re-run for indices above 0.9 T).

Deviations, all without effect on the official setting (64 steps, CFG, 100 diffusion steps):
  * The ratio table and the refresh rule are indexed by step, as the official code does. It has 64
    entries; the official code crashes beyond them: here the last entry holds (ratio_mode="index").
    ratio_mode / refresh_mode="fraction" map step s of N onto the 64-step timeline instead.
  * Positions that decoder pruning does not recompute keep their last-layer output of the previous
    step (the official code leaves them zero; only predicted positions are ever read, and they are
    always recomputed).
  * Tokens predicted now or at the previous step are scored below any cosine similarity, so they are
    always kept; the official code scores them 0, which keeps them as long as fewer than 15 others
    have a negative similarity (it then selects the same set).
  * Without guidance (cfg == 1) the official code breaks (it halves the batch); here the caches
    work on all rows and the CFG caches are off.
  * On lazy steps the decoder embedding runs on the changed rows only (the official code embeds
    every known row and discards most): a few GFLOPs less on mar_base, nothing else changes.
Small models: pruning needs decoder layers after prune_layer (3), the head cache skips res blocks
1-4 where they exist; with fewer layers those parts do less or nothing (both are settings).

FLOPs (eval/cost.py, mar_base, one image, CFG, 100 head steps): 64 AR steps 5.269 T against MAR's
14.653 T (0.360; transformer 4.218 of 10.997, head 1.051 of 3.656); 16 steps 2.778 T; 8 steps
2.130 T (REFERENCE.md 4b, counted with the official code: 0.361, 2.78, 2.13).
"""

import torch
import torch.nn.functional as F

from baselines.blocks import attend, heads_index, qkv, seq_index
from gtr.method import ConstantSteps, CosineCounts, Method, PlainHead, RandomOrder
from gtr.models.mar import modulate
from gtr.sampler import put, take

# Decoder keep ratio per AR step (fact: feihongyan1/LazyMAR models/basic.py RETAIN_RATIO_SCHEDULE).
RETAIN_RATIOS = (1.0,) * 20 + (0.6,) + (0.5,) * 4 + (0.4,) * 5 + (0.15,) * 5 + (0.12,) * 5 + (0.05,) * 24
TABLE_STEPS = len(RETAIN_RATIOS)  # 64: the official code is tuned for 64 AR steps
MODES = ("index", "fraction")


def _span(index, num_steps):
    """Steps of the 64-step timeline that AR step `index` of `num_steps` covers: [s*64/N, (s+1)*64/N)."""
    lo = -(-index * TABLE_STEPS // num_steps)
    hi = -(-(index + 1) * TABLE_STEPS // num_steps)
    return range(lo, hi)


def is_full_step(index, num_steps, start=5, interval=9, periodic=True, mode="index"):
    """Whether AR step `index` (0-based) of `num_steps` runs the transformer in full.

    index mode: step < start or (step - start) % interval == 0 (fact: feihongyan1/LazyMAR
    models/mar_cache.py global_force_fresh, start_step 5, fresh_t 9), whatever num_steps is.
    fraction mode: full if the step covers a full step of the 64-step timeline.
    periodic=False drops the periodic refreshes: only the first `start` steps are full.
    """
    if mode not in MODES:
        raise ValueError(f"unknown LazyMAR mode {mode!r}; choose one of {MODES}")
    if mode == "fraction":
        return any(is_full_step(m, TABLE_STEPS, start, interval, periodic) for m in _span(index, num_steps))
    return index < start or (periodic and (index - start) % interval == 0)


def keep_ratio(index, num_steps, ratios=RETAIN_RATIOS, mode="index"):
    """Decoder keep ratio at AR step `index`: the table by step, clamped at its end (the official code
    indexes it by step and has no entry past 63), or by fraction of the run (mode 'fraction')."""
    if mode not in MODES:
        raise ValueError(f"unknown LazyMAR mode {mode!r}; choose one of {MODES}")
    position = index if mode == "index" else index * len(ratios) // num_steps
    return ratios[min(position, len(ratios) - 1)]


def _double(x, rows):
    """The per-image tensor x (B, ...) for `rows` rows: itself, or twice (cond rows then uncond rows)."""
    return x if rows == x.shape[0] else torch.cat([x] * (rows // x.shape[0]))


class LazyMAR:
    """LazyMAR's caches as a cache policy for gtr.sampler.sample (see the module docstring).

    Switches: refresh (periodic full steps; off: only the first `start_step` steps are full),
    encoder_cache, decoder_pruning, cfg_cache, head_cache. All off: plain MAR, bit for bit.
    Settings (official values): start_step 5, refresh_interval 9, prune_layer 3, extra_tokens 15,
    ratios (table by step), head_threshold 7, head_skip_blocks (1, 2, 3, 4), head_recompute 0.9.
    ratio_mode / refresh_mode: 'index' (official) or 'fraction' (see keep_ratio / is_full_step).
    After a run, `trace` lists 'full' / 'lazy' per AR step, `kept` the decoder positions
    recomputed after prune_layer on each pruned step, and `head_calls` the head's full and lazy
    diffusion steps.
    """

    def __init__(self, refresh=True, encoder_cache=True, decoder_pruning=True, cfg_cache=True, head_cache=True,
                 start_step=5, refresh_interval=9, prune_layer=3, extra_tokens=15, ratios=RETAIN_RATIOS,
                 ratio_mode="index", refresh_mode="index", head_threshold=7, head_skip_blocks=(1, 2, 3, 4),
                 head_recompute=0.9):
        for name, mode in dict(ratio_mode=ratio_mode, refresh_mode=refresh_mode).items():
            if mode not in MODES:
                raise ValueError(f"LazyMAR {name} must be one of {MODES}, got {mode!r}")
        if not ratios or any(not 0.0 <= r <= 1.0 for r in ratios):
            raise ValueError(f"LazyMAR ratios must be a non-empty table of values in [0, 1], got {ratios!r}")
        for name, value, low in (("start_step", start_step, 0), ("refresh_interval", refresh_interval, 1),
                                 ("prune_layer", prune_layer, 0), ("extra_tokens", extra_tokens, 0),
                                 ("head_threshold", head_threshold, 1)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"LazyMAR {name} must be an integer >= {low}, got {value!r}")
        self.refresh, self.encoder_cache, self.decoder_pruning = refresh, encoder_cache, decoder_pruning
        self.cfg_cache, self.head_cache = cfg_cache, head_cache
        self.start_step, self.refresh_interval, self.prune_layer = start_step, refresh_interval, prune_layer
        self.extra_tokens, self.ratios = extra_tokens, tuple(ratios)
        self.ratio_mode, self.refresh_mode = ratio_mode, refresh_mode
        self.head_threshold, self.head_skip_blocks = head_threshold, tuple(head_skip_blocks)
        self.head_recompute = head_recompute
        self.start(None, 0, False)

    # ---- the cache protocol (gtr.method.Cache) ----
    def start(self, model, batch_size, guided):
        """Forget everything cached: a new batch begins."""
        self.batch, self.guided = batch_size, guided
        self.trace, self.kept, self.head_calls = [], [], {"full": 0, "lazy": 0}
        self._last_index = -1
        self._prev_predict = None                     # positions predicted at the previous step (B, n)
        self._enc_k = self._enc_v = None               # per encoder layer (R, H, buffer + L, hd), by position
        self._dec_in = None                            # decoder input (R, buffer + L, D)
        self._dec_k, self._dec_v = {}, {}              # decoder layers after prune_layer, by position
        self._v_prev = None                            # prune_layer's V at the previous step
        self._hidden = None                            # last decoder layer output (R, buffer + L, D)
        self._cfg_diff = None                          # uncond - cond of that output at the last full step

    def condition(self, model, tokens, known, class_emb, step):
        """z (rows, L, D) for the sampler; full or lazy per the schedule."""
        if step.index != self._last_index + 1:
            raise RuntimeError(f"LazyMAR got AR step {step.index} after step {self._last_index}: "
                               "steps must come in order from 0 (start() resets it)")
        self._last_index = step.index
        cfg_cache = self.cfg_cache and self.guided
        if not (self.encoder_cache or self.decoder_pruning or cfg_cache):
            self.trace.append("full")
            return model.condition(tokens, known, class_emb)
        # Rows the caches hold and lazy steps run: the conditional half when the CFG cache is on
        # (fact: feihongyan1/LazyMAR basic.py keeps k[:B/2]; mar_cache.py runs x[:bsz/2] when lazy).
        rows = self.batch if cfg_cache else tokens.shape[0]
        full = self._prev_predict is None or is_full_step(
            step.index, step.num_steps, self.start_step, self.refresh_interval, self.refresh, self.refresh_mode)
        self.trace.append("full" if full else "lazy")
        if full:
            hidden = self._full(model, tokens, known, class_emb, rows, cfg_cache)
        else:
            hidden = self._lazy(model, tokens, known, class_emb, step, rows)
            if cfg_cache:
                # fact: feihongyan1/LazyMAR mar_cache.py forward_mae_decoder: cat([x, x + diff]).
                hidden = torch.cat([hidden, hidden + self._cfg_diff])
        self._prev_predict = step.predict
        # As the model's condition() ends (MAR: norm and position embedding; LightGen: its text
        # cross-attention stack, run in full: LazyMAR has no cache for it).
        return model.output(hidden, class_emb)

    def head(self, model, step):
        """The head for this AR step: the model's own, or a LazyHead (its cache lives for one AR step;
        fact: feihongyan1/LazyMAR diffusion_cached/gaussian_diffusion.py p_sample_loop_progressive
        builds a fresh cache per call)."""
        if not self.head_cache:
            return PlainHead(model)
        return LazyHead(model.diffloss.net, self.guided, self.head_threshold, self.head_skip_blocks,
                        self.head_recompute, self.head_calls)

    # ---- full steps: plain MAR, keeping what lazy steps reuse ----
    def _full(self, model, tokens, known, class_emb, rows, cfg_cache):
        keep = seq_index(model, known)
        x = take(model.encoder_input(tokens, class_emb), keep)
        if self.encoder_cache:
            self._enc_k, self._enc_v = [], []
        for block in model.encoder_blocks:
            q, k, v = qkv(block, block.norm1(x))
            x = x + attend(block, q, k, v)
            x = x + block.mlp(block.norm2(x))
            if self.encoder_cache:
                self._enc_k.append(self._by_position(model, k[:rows], keep[:rows]))
                self._enc_v.append(self._by_position(model, v[:rows], keep[:rows]))
        x = self._decoder_input(model, model.encoder_norm(x), keep)
        if self.encoder_cache:
            self._dec_in = x[:rows]
        for i, block in enumerate(model.decoder_blocks):
            q, k, v = qkv(block, block.norm1(x))
            x = x + attend(block, q, k, v)
            x = x + block.mlp(block.norm2(x))
            if self.decoder_pruning and i == self.prune_layer:
                self._v_prev = v[:rows]
            if self.decoder_pruning and i > self.prune_layer:
                self._dec_k[i], self._dec_v[i] = k[:rows], v[:rows]
        if self.decoder_pruning:
            self._hidden = x[:rows]
        if cfg_cache:
            # fact: feihongyan1/LazyMAR mar_cache.py: diff = x[half:] - x[:half] on full steps only.
            self._cfg_diff = x[self.batch:] - x[:self.batch]
        return x

    @staticmethod
    def _decoder_input(model, encoded, keep):
        """The decoder's input: embedded encoder rows at `keep` (sequence rows), the mask token elsewhere."""
        return model.decoder_input(encoded, keep[:, model.buffer_size:] - model.buffer_size)

    @staticmethod
    def _by_position(model, kv, keep):
        """K or V (B, H, n, hd) of the rows `keep` laid out by sequence row (B, H, buffer + L, hd)."""
        b, h, _, hd = kv.shape
        out = kv.new_zeros(b, h, model.buffer_size + model.seq_len, hd)
        return out.scatter(2, heads_index(keep, kv), kv)

    # ---- lazy steps ----
    def _lazy(self, model, tokens, known, class_emb, step, rows):
        """The last decoder layer's output (rows, buffer + L, D) on a lazy step."""
        keep = seq_index(model, known[:rows])
        if self.encoder_cache:
            x = self._lazy_encoder(model, tokens[:rows], class_emb[:rows], keep, rows)
        else:
            x = take(model.encoder_input(tokens[:rows], class_emb[:rows]), keep)
            for block in model.encoder_blocks:
                q, k, v = qkv(block, block.norm1(x))
                x = x + attend(block, q, k, v)
                x = x + block.mlp(block.norm2(x))
            x = self._decoder_input(model, model.encoder_norm(x), keep)
        return self._lazy_decoder(model, x, step, rows)

    def _lazy_encoder(self, model, tokens, class_emb, keep, rows):
        """Encoder on the buffer and the newly known tokens only, over the K/V cache of all known tokens
        (fact: feihongyan1/LazyMAR basic.py EncoderAttention: lazy steps write the new tokens' and the
        buffer's K/V into the cache and attend over all cached K/V); returns the updated decoder input."""
        new = seq_index(model, _double(self._prev_predict, rows))
        x = take(model.encoder_input(tokens, class_emb), new)
        for layer, block in enumerate(model.encoder_blocks):
            q, k, v = qkv(block, block.norm1(x))
            self._enc_k[layer] = self._enc_k[layer].scatter(2, heads_index(new, k), k)
            self._enc_v[layer] = self._enc_v[layer].scatter(2, heads_index(new, v), v)
            cached_k = torch.gather(self._enc_k[layer], 2, heads_index(keep, k))
            cached_v = torch.gather(self._enc_v[layer], 2, heads_index(keep, v))
            x = x + attend(block, q, cached_k, cached_v)
            x = x + block.mlp(block.norm2(x))
        # Only the buffer and the new rows of the decoder input change (fact: feihongyan1/LazyMAR
        # mar_cache.py: torch.where(prev_mask_to_pred_with_buffer, x, cache['encoder_output'])).
        x = model.decoder_embed(model.encoder_norm(x))
        fresh = x + take(model.decoder_pos(x).expand(rows, -1, -1), new)
        self._dec_in = put(self._dec_in, new, fresh)
        return self._dec_in

    def _lazy_decoder(self, model, x, step, rows):
        """Decoder layers up to prune_layer on all positions, the rest on the selected ones only
        (fact: feihongyan1/LazyMAR basic.py DecoderBlock: _prune_tokens after layer 3's attention,
        before its MLP; DecoderAttention: pruned queries attend over the K/V cache)."""
        chosen = None
        for i, block in enumerate(model.decoder_blocks):
            q, k, v = qkv(block, block.norm1(x))
            if chosen is None:
                x = x + attend(block, q, k, v)
                if self.decoder_pruning and i == self.prune_layer:
                    chosen = self._select(model, v, step, rows)
                    self._v_prev = v
                    x = take(x, chosen)
            else:
                index = heads_index(chosen, k)
                self._dec_k[i] = self._dec_k[i].scatter(2, index, k)
                self._dec_v[i] = self._dec_v[i].scatter(2, index, v)
                x = x + attend(block, q, self._dec_k[i], self._dec_v[i])
            x = x + block.mlp(block.norm2(x))
        if chosen is not None:
            x = put(self._hidden, chosen, x)
            self._hidden = x
        return x

    def _select(self, model, v, step, rows):
        """Sequence rows (rows, n) that decoder layers after prune_layer recompute, ascending.

        Score: cosine similarity of V with the previous step's, over head_dim, mean over heads; the
        lowest go on (fact: feihongyan1/LazyMAR basic.py _prune_tokens). Tokens predicted now or at the
        previous step always go on. How many: max(n_pred + n_prev + 15, int(N * ratio[step])), N the
        buffer + all positions (320 on 16x16).
        """
        score = F.cosine_similarity(v, self._v_prev, dim=-1).mean(dim=1)
        forced = torch.cat([_double(step.predict, rows), _double(self._prev_predict, rows)], 1) + model.buffer_size
        score = score.scatter(1, forced, -2.0)  # below any cosine: always kept
        n = score.shape[1]
        ratio = keep_ratio(step.index, step.num_steps, self.ratios, self.ratio_mode)
        count = min(n, max(forced.shape[1] + self.extra_tokens, int(n * ratio)))
        self.kept.append(count)
        return score.topk(count, dim=1, largest=False).indices.sort(dim=1).values


class LazyHead:
    """The diffusion head with LazyMAR's cache, for the diffusion steps of one AR step.

    Called as head(x, t, c, i, T) (gtr.method.Head) by gtr.models.diffusion.sample_head once per
    diffusion step i of a chain of T, from T-1 down to 0; with guidance x and c hold the conditional rows
    then the unconditional ones. A chain starts (and overwrites every cache) at i = T-1. Full steps (i == T-1 or i % threshold == 0) run all rows and cache: eps_cond -
    eps_uncond, each res block's MLP output, and the residual increment of the skipped blocks. Lazy
    steps run the conditional rows only; blocks in skip_blocks add their cached increment; the other
    blocks compute their adaLN modulation and reuse the cached MLP output, except for i > recompute*T
    where they re-run (and re-cache) it; eps_uncond = eps_cond - cached difference. (fact:
    feihongyan1/LazyMAR models/diffloss_cached.py forward_with_cfg, SimpleMLPAdaLN.forward,
    ResBlock.forward with cache_type 'default', cache_threshold 7, blocks 1-4.)
    """
    stateless = False
    kernels = None  # engine=fast sets its head kernels here (gtr.method.HeadKernels): the same parts, packed weights

    def __init__(self, net, guided, threshold=7, skip_blocks=(1, 2, 3, 4), recompute=0.9, counts=None):
        self.net, self.guided = net, guided
        self.threshold, self.skip_blocks, self.recompute = threshold, tuple(skip_blocks), recompute
        self.counts = counts if counts is not None else {"full": 0, "lazy": 0}
        self._cfg_diff, self._mlp, self._delta = None, {}, {}
        self._modules = HeadParts(net)

    @property
    def parts(self):
        return self._modules if self.kernels is None else self.kernels

    def __call__(self, x, t, c, i, n):
        full = i == n - 1 or i % self.threshold == 0
        self.counts["full" if full else "lazy"] += 1
        if full:
            return self._full(x, t, c)
        return self._lazy(x, t, c, recompute=i > self.recompute * n)

    def _full(self, x, t, c):
        """As HeadMLP.forward (same ops, same results), keeping what lazy steps reuse."""
        part = self.parts
        y = part.embed(t, c)
        h = part.input(x)
        for j in range(len(self.net.res_blocks)):
            shift, scale, gate = part.modulation(j, y)
            m = part.mlp(j, h, shift, scale)
            out = h + gate * m
            if j in self.skip_blocks:
                self._delta[j] = out - h
            else:
                self._mlp[j] = m
            h = out
        out = part.final(h, y)
        if self.guided:
            n, ch = x.shape[0] // 2, self.net.in_channels
            self._cfg_diff = out[:n, :ch] - out[n:, :ch]
        return out

    def _lazy(self, x, t, c, recompute):
        part = self.parts
        n = x.shape[0] // 2 if self.guided else x.shape[0]
        y = part.embed(t[:n], c[:n])
        h = part.input(x[:n])
        for j in range(len(self.net.res_blocks)):
            if j in self.skip_blocks:
                h = h + self._delta[j][:n]
                continue
            shift, scale, gate = part.modulation(j, y)
            if recompute:
                self._mlp[j] = part.mlp(j, h, shift, scale)
            h = h + gate * self._mlp[j][:n]
        out = part.final(h, y)
        if not self.guided:
            return out
        ch = self.net.in_channels
        # sample_head forms eps_u + cfg * (eps_c - eps_u) and takes the variance from the cond rows.
        uncond = torch.cat([out[:, :ch] - self._cfg_diff, out[:, ch:]], dim=1)
        return torch.cat([out, uncond])


class HeadParts:
    """The head network's parts as a head with a cache of its own calls them (gtr.method.HeadKernels), on
    the network's modules: the official arithmetic. engine=fast's FastHeadLoop has the same methods on
    its packed weights."""

    def __init__(self, net):
        self.net = net

    def embed(self, t, c):
        return self.net.time_embed(t) + self.net.cond_embed(c)

    def input(self, x):
        return self.net.input_proj(x.to(self.net.input_proj.weight.dtype))  # fp32 tokens into a cast head

    def modulation(self, j, y):
        return self.net.res_blocks[j].adaLN_modulation(y).chunk(3, dim=-1)

    def mlp(self, j, h, shift, scale):
        block = self.net.res_blocks[j]
        return block.mlp(modulate(block.in_ln(h), shift, scale))

    def final(self, h, y):
        return self.net.final_layer(h, y)


def lazymar(num_iter=64, diffusion_steps=100, **switches):
    """MAR (random order, cosine counts, `diffusion_steps` head steps) with LazyMAR's caches.

    switches: any LazyMAR argument (refresh, encoder_cache, decoder_pruning, cfg_cache, head_cache, ...).
    """
    return Method(RandomOrder(), CosineCounts(num_iter), ConstantSteps(diffusion_steps), LazyMAR(**switches),
                  "lazymar")
