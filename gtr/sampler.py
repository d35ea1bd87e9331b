"""The one sampling loop. It runs any Method (gtr/method.py) and knows no method names.

At each AR step: the method's order and counts say which positions are predicted; the model (or the
method's cache wrapped around it) gives their conditioning vectors z; the method's steps slot says
how many diffusion steps each token gets; the head samples them with classifier-free guidance; a
speculative method's verify hook may then re-predict recent tokens with the model and replace some.

Randomness comes only from one torch.Generator per image, seeded from (seed, image index), and is
drawn on the CPU in a fixed per-image sequence (order first, then each step's noise), so an image is
the same whatever the batch size, shard or device. On the `meta` device nothing is drawn: the loop
runs with shapes only (used to count FLOPs).
"""
import numpy as np
import torch

from gtr.method import PlainHead, Step
from gtr.models.diffusion import sample_head


def image_generator(seed, index):
    """The generator of image `index` of a run seeded `seed` (well mixed: nearby seeds don't overlap)."""
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def cfg_scale(cfg, schedule, seq_len, remaining):
    """Guidance at a step after which `remaining` tokens stay masked (MAR: linear in the generated
    fraction, counting at least one masked token, as the official clamp does at the last step;
    linear_exact: without that clamp; constant: cfg at every step)."""
    if schedule == "constant":
        return cfg
    if schedule == "linear":
        return 1 + (cfg - 1) * (seq_len - max(remaining, 1)) / seq_len
    if schedule == "linear_exact":  # linear without the clamp: the last step gets cfg itself (ReCAP's code)
        return 1 + (cfg - 1) * (seq_len - remaining) / seq_len
    raise ValueError(f"unknown cfg_schedule {schedule!r}; choose 'linear', 'linear_exact' or 'constant'")


def validate_schedule(counts, seq_len):
    counts = [int(c) for c in counts]
    if not counts or any(c < 0 for c in counts) or sum(counts) != seq_len:
        raise ValueError(f"count schedule {counts} must be non-negative and sum to {seq_len} tokens")
    return counts


def draw_noise(generators, shape, device):
    """Per-image noise (B, *shape): each image's block from its own generator, on the CPU."""
    if device.type == "meta":
        return torch.empty(len(generators), *shape, device=device)
    return torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)


@torch.no_grad()
def sample(model, method, labels, generators, cfg=1.0, cfg_schedule="linear", temperature=1.0,
           orders=None, noise_fn=None, callback=None, head_loop=sample_head):
    """Generate tokens (B, L, C) for the conditions `labels` with `method`.

    labels: one condition per image, given to model.embed_condition: class ids (B,) for MAR (-1:
    unconditional), T5 states (B, max_length, 4096) for LightGen.
    generators: one torch.Generator per image (see image_generator).
    cfg / cfg_schedule: guidance scale and 'linear' (MAR), 'linear_exact' (ReCAP) or 'constant' schedule;
    cfg == 1: no guidance.
    A model cast to bf16/fp16 (model.to(dtype)) runs in its dtype; the tokens, the noise and the diffusion
    arithmetic stay float32 (the head's output is read as float32).
    temperature: scales the noise of each diffusion step. The diffusion process itself (respacing,
    timestep clip) is the method's steps slot's (method.steps.process).
    orders: (B, L) generation orders overriding the method's (e.g. to replay the official code).
    noise_fn(step_index, shape) -> (B, *shape) overrides the per-image noise (tests / replay).
    callback(dict): called after every AR step with the step, its z and the tokens so far.
    head_loop: the function that runs one chain of diffusion steps (gtr.models.diffusion.sample_head's
    signature); FLOP counting passes a shape-only stand-in (eval/cost.py).
    """
    device = model.fake_latent.device
    batch = len(generators)
    labels = torch.as_tensor(labels, device=device)
    if labels.ndim == 0 or labels.shape[0] != batch:
        raise ValueError(f"labels has shape {tuple(labels.shape)}, expected one condition per generator ({batch})")
    grid, seq_len, channels = (model.seq_h, model.seq_w), model.seq_len, model.token_dim
    counts = validate_schedule(method.counts(grid), seq_len)
    if orders is None:
        orders = torch.stack([method.order(grid, g).cpu() for g in generators])
    orders = orders.cpu().long()
    if orders.shape != (batch, seq_len) or (orders.sort(dim=1).values != torch.arange(seq_len)).any():
        raise ValueError(f"orders must be {batch} permutations of {seq_len} positions")
    guided = cfg != 1.0
    cond_emb = model.embed_condition(labels)
    if guided:
        cond_emb = torch.cat([cond_emb, model.unconditional_embedding(batch).to(cond_emb.dtype)])
    cache, verify = method.cache, getattr(method, "verify", None)
    cache.start(model, batch, guided)
    if verify is not None:
        verify.start(model, batch, guided)
    noise_fn = noise_fn or (lambda k, shape: draw_noise(generators, shape, device))

    def target_sample(z_cond, z_uncond, noise, scale, num_steps):  # the verify hook's view of the head
        trace = {}
        x = head_loop(PlainHead(model), z_cond.reshape(-1, z_cond.shape[-1]), method.steps.process(num_steps),
                      noise.flatten(0, 1), uncond=None if z_uncond is None else z_uncond.reshape(-1, z_uncond.shape[-1]),
                      cfg=scale, temperature=temperature, trace=trace)
        shape = z_cond.shape[:2] + (channels,)
        return x.view(shape), {name: value.view(shape) for name, value in trace.items()}

    tokens = torch.zeros(batch, seq_len, channels, device=device)
    done = 0
    for k, n in enumerate(counts):
        known = orders[:, :done].sort(dim=1).values.to(device)
        predict = orders[:, done:done + n].sort(dim=1).values.to(device)
        step = Step(k, len(counts), counts, grid, known, predict, guided, generators, orders, labels)
        x_in = (torch.cat([tokens, tokens]) if guided else tokens).to(model.fake_latent.dtype)
        known_in = torch.cat([known, known]) if guided else known
        z = cache.condition(model, x_in, known_in, cond_emb, step)
        z_cond = take(z[:batch], predict)
        z_uncond = take(z[batch:], predict) if guided else None
        groups = method.steps(step, z_cond) if n else []
        scale = cfg_scale(cfg, cfg_schedule, seq_len, seq_len - done - n)
        noise, trace = None, {} if verify is not None else None
        if groups:
            t_max = max(t for _, t in groups)
            noise = noise_fn(k, (n, 1 + t_max, channels))
            head = cache.head(model, step)
            new = torch.empty(batch, n, channels, device=device)
            for index, t in groups:
                new = _sample_group(head_loop, head, method.steps.process(t), new, index, t, z_cond, z_uncond,
                                    noise, scale, temperature, trace)
            tokens = put(tokens, predict, new)
        done += n
        if verify is not None:
            tokens = verify(model, tokens, {"step": step, "noise": noise, "trace": trace, "cond_emb": cond_emb,
                                            "scale": scale, "sample": target_sample})
        if callback is not None:
            callback({"step": step, "z": z, "tokens": tokens})
    return tokens


def take(x, index):
    """x (B, L, D) at positions index (B, n) -> (B, n, D)."""
    return torch.gather(x, 1, index[..., None].expand(-1, -1, x.shape[-1]))


def put(x, index, values):
    """x (B, L, D) with values (B, n, D) written at positions index (B, n) (a new tensor, x's dtype)."""
    return x.scatter(1, index[..., None].expand(-1, -1, x.shape[-1]), values.to(x.dtype))


def _sample_group(head_loop, head, process, new, index, num_steps, z_cond, z_uncond, noise, cfg, temperature,
                  trace=None):
    """Sample the tokens `index` (B, m) of this step (None: all) with the `num_steps`-step `process`.
    Noise columns: the first 1 + num_steps of this step's draw (a clip may merge steps; the draw does not
    depend on it). trace: None, or a dict of (B, n, C) tensors that receives the group's last Gaussians."""
    batch, channels = new.shape[0], new.shape[2]
    if index is None:
        zc, zu, nz = z_cond, z_uncond, noise
    else:
        zc, nz = take(z_cond, index), take(noise.flatten(2), index).view(batch, -1, *noise.shape[2:])
        zu = take(z_uncond, index) if z_uncond is not None else None
    m = zc.shape[1]
    extra = {} if trace is None else {"trace": {}}  # head loops without a trace are called as before
    x = head_loop(head, zc.reshape(batch * m, -1), process, nz[:, :, :1 + num_steps].reshape(batch * m, -1, channels),
                  uncond=None if zu is None else zu.reshape(batch * m, -1), cfg=cfg,
                  temperature=temperature, **extra).view(batch, m, channels)
    for name, value in extra.get("trace", {}).items():
        value = value.reshape(batch, m, channels)
        trace[name] = value if index is None else put(trace.get(name, torch.zeros_like(new)), index, value)
    if index is None:
        return x.to(new.dtype)
    return put(new, index, x)
