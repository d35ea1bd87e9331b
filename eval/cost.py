"""Cost of sampling one image: FLOPs (counted on the `meta` device) and latency (timed on a device).

FLOPs: the real sampler (gtr/sampler.py) runs on a MAR built on `meta` -- no weights, no memory,
shapes only -- under torch.utils.flop_counter.FlopCounterMode, which reports FLOPs = 2 x MACs of
matmuls, convolutions and attention (elementwise ops are free). One image, with classifier-free
guidance: the transformer and the head run at batch 2, as in the paper's convention.

Parts, by the phase of the sampler that ran the op:
    encdec   everything outside the diffusion head: the encoder + decoder (through the method's
             cache, if any) and the method's slots (FTS scoring has no counted FLOPs)
    head     the diffusion head's network calls (gtr.models.diffusion.sample_head)
    vae      KL-16 decode of the final latents (batch 1; the paper leaves it out)

Two totals, both without the VAE (it is reported beside them, and in `flops_with_vae_T`):
    flops_T                   exact: what this method, with its own settings, computes
    flops_paper_convention_T  the head counted as the GtR paper's FLOPs column counts it: with
                              timesteps clipped to <= 950 (REFERENCE.md section 2: the paper's
                              MAR rows equal enc+dec + 0.96 x head, i.e. "100" steps visiting 96
                              distinct timesteps, which is what DiSA's default clip gives). A method
                              with its own clip (DiSA) is counted with it; enc+dec is unchanged.

Speed: on `meta` each op still costs ~1 ms of Python, so counting takes shortcuts that give the same
count as running every op (see the note above `_STRUCTURES`; fast=False turns them off). The sampler
is given a shape-only diffusion loop (its `head_loop` argument); F.scaled_dot_product_attention is
memoised while counting (restored after).
"""
import copy
import dataclasses
import time
from collections import Counter
from contextlib import contextmanager
from functools import lru_cache
from unittest import mock

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from gtr.models.lightgen import MODEL_CONFIGS as LIGHTGEN_CONFIGS, build_lightgen
from gtr.models.mar import build_mar
from gtr.models.vae import AutoencoderKL, decode_tokens
from gtr import sampler
from gtr.models.diffusion import sampling_diffusion
from gtr.engine import prepare
from gtr.runs import device_name

PAPER_CLIP_TIMESTEPS = 950  # the clip behind the paper's FLOPs column (REFERENCE.md sections 2, 4b)
TERA = 1e12

aten = torch.ops.aten


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    """Attention = Q K^T plus A V: 2 * b*h*s_q*s_k*(d_qk + d_v) FLOPs (as torch's formula for the
    fused GPU kernels). Registered for the fused CPU kernel, which FlopCounterMode would count as 0."""
    *batch, s_q, d_qk = query_shape
    s_k, d_v = key_shape[-2], value_shape[-1]
    bh = 1
    for n in batch:
        bh *= n
    return 2 * bh * s_q * s_k * (d_qk + d_v)


# On `meta`, scaled_dot_product_attention falls back to the math path (bmm: counted). On CPU it is one
# fused op that torch's registry lacks; this mapping makes counting on real CPU tensors agree.
CUSTOM_FLOPS = {aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}


@lru_cache(maxsize=None)
def meta_model(name):
    """A MAR (or LightGen, by name) built on `meta` (no memory): enough to count FLOPs. Cached per name."""
    with torch.device("meta"):
        return (build_lightgen(name) if name in LIGHTGEN_CONFIGS else build_mar(name)).eval()


def example_conditions(model, batch_size=1, device=None, first=0):
    """Condition inputs for `batch_size` images: class ids first, first+1, ... (MAR), or T5-shaped states
    (LightGen: zeros on meta, random elsewhere; the cost does not depend on the values)."""
    device = model.fake_latent.device if device is None else device
    c = model.config
    if hasattr(c, "class_num"):
        return (torch.arange(batch_size, device=device) + first) % c.class_num
    shape = (batch_size, c.max_length, c.caption_channels)
    if torch.device(device).type == "meta":
        return torch.zeros(shape, device=device)
    return torch.randn(shape, generator=torch.Generator().manual_seed(first)).to(device)


def decode_for_cost(vae, model, tokens):
    """Decode tokens to pixels with `vae`: MAR's KL-16 (gtr.models.vae) or a diffusers VAE (LightGen's
    SD3.5: latents / scale + shift, elementwise, so only vae.decode costs FLOPs)."""
    latents = model.unpatchify(tokens)
    if isinstance(vae, AutoencoderKL):
        return decode_tokens(vae, latents)
    return vae.decode(latents).sample


@lru_cache(maxsize=None)
def meta_vae():
    """MAR's KL-16 autoencoder on `meta`."""
    with torch.device("meta"):
        return AutoencoderKL(embed_dim=16, ch_mult=(1, 1, 2, 2, 4)).eval()


def has_kl16_latents(model):
    """True when the model's tokens are KL-16 latents (16 channels, stride 16, patch 1), i.e. decodable."""
    c = model.config
    return c.vae_embed_dim == 16 and c.vae_stride == 16 and c.patch_size == 1


# ---------------------------------------------------------------- counting on meta, fast and exact
# On `meta` every op still runs in Python (meta kernels, the counter's dispatch): 1-40 ms per op on
# this CPU, so a 64-step image (6,400 head calls, ~70 elementwise ops per diffusion step) would take
# hours. Three shortcuts make it seconds to minutes. They give the same count as running every op
# (tests/test_cost.py compares fast=True with fast=False for MAR, GtR and LazyMAR):
#  1. Memo: the FLOPs of a module (or of scaled_dot_product_attention) depend only on its structure
#     and input shapes. Every submodule of the model and VAE is wrapped: the first call with a given
#     (structure, input signature) runs under FlopCounterMode; later ones add that count and return an
#     empty meta tensor of the recorded shape. Blocks of one stack share a structure.
#  2. The head's diffusion loop (the sampler's head_loop, gtr.models.diffusion.sample_head) is replaced
#     by `_HeadLoop`, which makes the same head calls (one per distinct timestep, same shapes, CFG rows
#     doubled) without the elementwise update (0 FLOPs in FlopCounterMode's convention anyway). A head
#     that says it is `stateless` (the model's own) costs one call times the chain's steps.
#  3. A head with state (a cache, e.g. LazyMAR's) runs its whole chain on a 1-token probe, scaled by
#     the tokens: every op of MAR's head is row-wise, so its FLOPs are linear in the rows, and a chain
#     starts afresh at its first step (gtr.method.Head). Memoised by the head's settings and the chain.
_STRUCTURES = {}   # structure tuple -> small id
_MEMO = {}         # (structure id, input signature) -> (FLOPs by op, output shape, output dtype)
_GROUP_MEMO = {}   # (head class, settings, net structure, probe signature, steps) -> FLOPs by op of 1 token


def _simple(value):
    """A plain setting value as a hashable (sets sorted), or None if it is not one."""
    if isinstance(value, (int, float, bool, str)):
        return value
    if isinstance(value, (tuple, list, set, frozenset)):
        items = [_simple(v) for v in value]
        if any(i is None for i in items):
            return None
        return tuple(sorted(items, key=repr)) if isinstance(value, (set, frozenset)) else tuple(items)
    return None


def _settings(obj):
    """An object's plain attributes (its settings) as a sorted, hashable tuple."""
    return tuple(sorted((k, _simple(v)) for k, v in vars(obj).items()
                        if not k.startswith("_") and (v is None or _simple(v) is not None)))


def _structure_id(module):
    """A small id shared by modules of identical structure (types, settings, parameter shapes)."""
    items = [(name, type(m).__module__, type(m).__qualname__, _settings(m)) for name, m in module.named_modules()]
    items += [(n, tuple(t.shape), t.dtype) for n, t in module.named_parameters()]
    items += [(n, tuple(t.shape), t.dtype) for n, t in module.named_buffers()]
    return _STRUCTURES.setdefault(tuple(items), len(_STRUCTURES))


def _signature(args, kwargs):
    """Hashable input signature (shapes, dtypes, plain values), or None if any input is not meta."""
    key = []
    for a in list(args) + [kwargs[k] for k in sorted(kwargs)]:
        if torch.is_tensor(a):
            if a.device.type != "meta":
                return None
            key.append((tuple(a.shape), a.dtype))
        elif a is None or _simple(a) is not None:
            key.append(_simple(a))
        else:
            return None
    return tuple(key) + tuple(sorted(kwargs))


class _Counting:
    """A running FlopCounterMode with memoised modules and per-part attribution (see above)."""

    def __init__(self, counter, modules, fast):
        self.counter, self.extra, self.parts = counter, Counter(), Counter()
        self.paper_head, self.paper_exact = Counter(), True
        self.patched = []
        for module in modules if fast else []:
            # An instance attribute shadows the class's forward; close() removes it.
            module.forward = self.memoised(_structure_id(module), module.forward)
            self.patched.append(module)

    def by_op(self):
        return Counter(self.counter.get_flop_counts().get("Global", {})) + self.extra

    def total(self):
        return self.counter.get_total_flops() + sum(self.extra.values())

    @contextmanager
    def part(self, label):
        start = self.total()
        try:
            yield
        finally:
            self.parts[label] += self.total() - start

    def add(self, ops, times=1):
        for op, n in ops.items():
            self.extra[op] += n * times

    def ops_of(self, fn):
        """Run fn and return the FLOPs by op it made, taking them back out of the running count."""
        before = self.by_op()
        fn()
        ops = self.by_op() - before
        self.add(ops, -1)
        return ops

    def memoised(self, structure, fn):
        def run(*args, **kwargs):
            sig = _signature(args, kwargs)
            if sig is None:
                return fn(*args, **kwargs)
            key = (structure, sig)
            if key in _MEMO:
                ops, shape, dtype = _MEMO[key]
                self.add(ops)
                return torch.empty(shape, dtype=dtype, device="meta")
            before = self.by_op()
            out = fn(*args, **kwargs)
            if torch.is_tensor(out):
                _MEMO[key] = (self.by_op() - before, out.shape, out.dtype)
            return out
        return run

    def close(self):
        for module in self.patched:
            del module.forward


class _CountingSteps:
    """The method's steps slot, remembering the T of the last process it gave (for the paper's count)."""

    def __init__(self, steps):
        self.steps, self.last = steps, None

    def __call__(self, step, z):
        return self.steps(step, z)

    def process(self, num_steps):
        self.last = num_steps
        return self.steps.process(num_steps)


class _HeadLoop:
    """Stand-in for the sampler's diffusion loop while counting on meta (see the note above _STRUCTURES)."""

    def __init__(self, counting, steps, paper_clip):
        self.counting, self.steps, self.paper_clip = counting, steps, paper_clip

    def __call__(self, head, cond, process, noise, uncond=None, cfg=1.0, temperature=1.0, trace=None):
        steps = process.num_steps
        if trace is not None:  # shapes only: a speculative method's verification reads them on meta
            trace.update(mean=noise[:, 0], std=noise[:, 0], log_std=noise[:, 0])
        # The paper's convention: the same T with timesteps clipped (unless the slot clips already).
        clip = self.steps.steps.clip_timesteps
        paper_steps = sampling_diffusion(self.steps.last, self.paper_clip if clip is None else clip).num_steps
        n = noise.shape[0]
        if n == 0:
            return noise[:, 0]
        if noise.shape[1] < 1 + steps:
            raise ValueError(f"noise has {noise.shape[1]} columns, {1 + steps} needed")
        counting, guided = self.counting, uncond is not None

        def inputs(rows):
            """The head's inputs for the first `rows` tokens."""
            x = noise[:rows, 0]
            c = torch.cat([cond[:rows], uncond[:rows]]) if guided else cond[:rows]
            x = torch.cat([x, x]) if guided else x
            return x, torch.zeros(x.shape[0], dtype=torch.long, device=x.device), c

        with counting.part("head"):
            if head.stateless:
                one = counting.ops_of(lambda: head(*inputs(n), steps - 1, steps))
                counting.add(one, steps)
                counting.paper_head.update({op: k * paper_steps for op, k in one.items()})
            else:
                base = (type(head).__qualname__, _settings(head),
                        _structure_id(head.net) if isinstance(getattr(head, "net", None), torch.nn.Module) else None,
                        _signature(inputs(1), {}))

                def probe(k):  # one chain of k calls on one token
                    x, t, c = inputs(1)
                    for i in reversed(range(k)):
                        head(x, t, c, i, k)

                for k, target in ((steps, counting.extra), (paper_steps, counting.paper_head)):
                    key = base + (k,)
                    if key not in _GROUP_MEMO:
                        _GROUP_MEMO[key] = counting.ops_of(lambda k=k: probe(k))
                    target.update({op: v * n for op, v in _GROUP_MEMO[key].items()})
        return noise[:, 0]


def with_clip(method, clip_timesteps):
    """`method` with its steps slot's timesteps capped at `clip_timesteps` (a copy; the slot's own clip,
    if it has one, is kept)."""
    if method.steps.clip_timesteps is not None:
        return method
    steps = copy.copy(method.steps)
    steps.clip_timesteps = clip_timesteps
    return dataclasses.replace(method, steps=steps)


def count_run(model, method, cfg=3.0, cfg_schedule="linear", vae=None, label=0, fast=True,
              paper_clip=PAPER_CLIP_TIMESTEPS):
    """Run the sampler once for one image under FlopCounterMode; FLOPs (ints) per part.

    Returns encdec (everything the sampler runs outside the head: the transformer, with any cache,
    and method slots), head, vae (decode of the result, if `vae` is given), total, by_op, and
    head_paper (the head with timesteps clipped at `paper_clip` unless the steps slot clips already;
    fast runs only, else None). `model` may live on any device; on `meta` nothing is allocated or drawn.
    fast (meta only): the exact shortcuts described above; fast=False runs every op as is.
    """
    device = model.fake_latent.device
    fast = fast and device.type == "meta"
    modules = [m for _, m in model.named_modules() if m is not model]
    if vae is not None:
        modules += [m for m in vae.modules() if m is not vae]
    if fast:
        method = dataclasses.replace(method, steps=_CountingSteps(method.steps))
    with FlopCounterMode(display=False, custom_mapping=CUSTOM_FLOPS) as counter:
        counting = _Counting(counter, modules, fast)
        loop = _HeadLoop(counting, method.steps, paper_clip) if fast else _as_head(counting, sampler.sample_head)
        try:
            sdpa = F.scaled_dot_product_attention
            if fast:  # shortcut 1 for attention called outside a module (LazyMAR's cached attention)
                sdpa = counting.memoised("scaled_dot_product_attention", sdpa)
            with mock.patch.object(F, "scaled_dot_product_attention", sdpa):
                tokens = sampler.sample(model, method, example_conditions(model, 1, device, label),
                                        [sampler.image_generator(0, 0)], cfg=cfg, cfg_schedule=cfg_schedule,
                                        head_loop=loop)
            if vae is not None:
                with counting.part("vae"):
                    decode_for_cost(vae, model, tokens)
        finally:
            counting.close()
    total = counting.total()
    out = {"head": counting.parts["head"], "vae": counting.parts["vae"]}
    out["encdec"] = total - out["head"] - out["vae"]
    out["total"] = total
    out["by_op"] = {str(op): n for op, n in counting.by_op().items()}
    out["head_paper"] = sum(counting.paper_head.values()) if fast else None
    return out


def _as_head(counting, sample_head):
    """The real sample_head, its FLOPs attributed to the head."""
    def run(*args, **kwargs):
        with counting.part("head"):
            return sample_head(*args, **kwargs)
    return run


def count_flops(model_name, method, cfg=3.0, cfg_schedule="linear", include_vae=True, fast=True):
    """FLOPs of sampling ONE image with `method` on MAR `model_name` (or a MAR module), in TFLOPs.

    CFG doubles the transformer and head batch (cfg must not be 1 for the paper's convention).
    Returns flops_T (exact, VAE excluded), flops_paper_convention_T (head clipped at 950 unless the
    method's steps slot sets its own clip, VAE excluded), flops_with_vae_T, the parts encdec_T / head_T /
    head_paper_convention_T / vae_T, and the op breakdown of the exact run.
    """
    model = meta_model(model_name) if isinstance(model_name, str) else model_name
    if include_vae and not has_kl16_latents(model):
        raise ValueError("this model's tokens are not KL-16 latents: there is no VAE to count; "
                         "pass include_vae=False")
    vae = meta_vae() if include_vae else None
    clip = method.steps.clip_timesteps
    exact = count_run(model, method, cfg, cfg_schedule, vae, fast=fast)
    if clip is not None:
        head_paper = exact["head"]
    elif exact["head_paper"] is not None:
        head_paper = exact["head_paper"]
    else:
        paper = count_run(model, with_clip(method, PAPER_CLIP_TIMESTEPS), cfg, cfg_schedule, fast=fast)
        if paper["encdec"] != exact["encdec"]:  # the clip only touches the head; anything else is a bug
            raise RuntimeError(f"enc+dec FLOPs changed with the timestep clip: {exact['encdec']} vs {paper['encdec']}")
        head_paper = paper["head"]
    return {
        "flops_T": (exact["encdec"] + exact["head"]) / TERA,
        "flops_paper_convention_T": (exact["encdec"] + head_paper) / TERA,
        "flops_with_vae_T": exact["total"] / TERA,
        "encdec_T": exact["encdec"] / TERA,
        "head_T": exact["head"] / TERA,
        "head_paper_convention_T": head_paper / TERA,
        "vae_T": exact["vae"] / TERA if include_vae else None,
        "clip_timesteps": clip,
        "paper_clip_timesteps": PAPER_CLIP_TIMESTEPS if clip is None else clip,
        "cfg_batch": 2 if cfg != 1.0 else 1,
        "by_op_T": {k: v / TERA for k, v in exact["by_op"].items()},
    }


def sd35_vae_decode_T():
    """TFLOPs of decoding one 512 px image (16 x 64 x 64 latents) with SD3.5's VAE, on the meta device."""
    from gtr.models.t2i import build_sd_vae
    vae = build_sd_vae("meta")
    with FlopCounterMode(display=False, custom_mapping=CUSTOM_FLOPS) as counter:
        vae.decode(torch.empty(1, 16, 64, 64, device="meta"))
    return counter.get_total_flops() / TERA


# ---------------------------------------------------------------- latency
def measure_latency(model, method, batch_size=1, n_warmup=1, n_batches=3, device=None, cfg=3.0,
                    cfg_schedule="linear", temperature=1.0, vae=None, dtype=torch.float32, seed=0,
                    engine="reference"):
    """Seconds per image of sampling (and decoding, if `vae` is given) with real weights and noise.

    Runs `n_warmup` untimed batches, then `n_batches` timed ones of `batch_size` images. On CUDA each
    batch is timed with CUDA events after a synchronize; elsewhere with time.perf_counter. A dtype
    other than float32 runs under autocast. The model (and vae) must already be on `device`. On CUDA
    the timed batches' peak allocated memory is reported (`peak_memory_GB`; None elsewhere). `engine`:
    gtr/engine.py's reference or fast head loop.
    """
    if batch_size < 1 or n_batches < 1 or n_warmup < 0:
        raise ValueError(f"need batch_size >= 1, n_batches >= 1, n_warmup >= 0; got {batch_size}, "
                         f"{n_batches}, {n_warmup}")
    device = torch.device(device) if device is not None else model.fake_latent.device
    if device.type == "meta":
        raise ValueError("cannot time on the meta device; use count_flops for FLOPs")
    cuda = device.type == "cuda"
    loop = prepare(model, engine)

    def one_batch(b):
        gens = [sampler.image_generator(seed, b * batch_size + i) for i in range(batch_size)]
        labels = example_conditions(model, batch_size, "cpu", b * batch_size)
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            tokens = sampler.sample(model, method, labels, gens, cfg=cfg, cfg_schedule=cfg_schedule,
                                    temperature=temperature, head_loop=loop)
            if vae is not None:
                decode_for_cost(vae, model, tokens)

    for b in range(n_warmup):
        one_batch(b)
    seconds = []
    if cuda:  # caching methods cost memory: the timed batches' peak is part of the record
        torch.cuda.reset_peak_memory_stats(device)
    for b in range(n_warmup, n_warmup + n_batches):
        if cuda:
            torch.cuda.synchronize(device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            one_batch(b)
            end.record()
            torch.cuda.synchronize(device)
            seconds.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            one_batch(b)
            seconds.append(time.perf_counter() - t0)
    return {
        "seconds_per_image": sum(seconds) / (n_batches * batch_size),
        "batch_seconds": seconds,
        "device": str(device),
        "device_name": device_name(device),
        "dtype": str(dtype).replace("torch.", ""),
        "engine": engine,
        "batch_size": batch_size,
        "n_warmup": n_warmup,
        "n_batches": n_batches,
        "threads": torch.get_num_threads(),
        "includes_vae_decode": vae is not None,
        "peak_memory_GB": torch.cuda.max_memory_allocated(device) / 1e9 if cuda else None,
    }
