"""Tests of LazyMAR's caches (baselines/lazymar.py) around the unchanged MAR.

A small MAR with every weight random (MAR's own init zeroes the head's output layer, which would make
every sample independent of z and hide any cache): 8x8 tokens, buffer 4, width 32, 2 encoder and 6
decoder layers (decoder layers 4 and 5 come after the pruning at layer 3), a head of 6 res blocks
(blocks 1-4 are the skipped ones).
"""
import pytest
import torch

from baselines.lazymar import RETAIN_RATIOS, LazyHead, LazyMAR, is_full_step, keep_ratio, lazymar
from eval.cost import count_run
from gtr.gtr import gtr
from gtr.method import Step, mar, mar_cosine_counts
from gtr.models.diffusion import sample_head, sampling_diffusion
from gtr.models.mar import build_mar
from gtr.sampler import image_generator, sample
from helpers import assert_close_to_scale

torch.set_num_threads(1)

SMALL = dict(img_size=128, depth=2, decoder_depth=6, diffloss_d=6)  # on mar_test: 8x8 grid, width 32, buffer 4
DIFFUSION = 10                                     # head steps in the sampling tests (time budget)
OFF = dict(refresh=False, encoder_cache=False, decoder_pruning=False, cfg_cache=False, head_cache=False)


def random_mar(seed=0, **overrides):
    """A MAR whose every parameter is random (matrices ~ N(0, 1/fan_in), norms ~ 1 +- 0.1)."""
    torch.manual_seed(seed)
    model = build_mar("mar_test", **{**SMALL, **overrides}).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0, p.shape[-1] ** -0.5)
            elif name.endswith("weight"):
                p.normal_(1.0, 0.1)
            else:
                p.normal_(0, 0.1)
    return model


@pytest.fixture(scope="module")
def model():
    return random_mar()


def run(model, method, seed=0, cfg=3.0, callback=None):
    gens = [image_generator(seed, i) for i in range(2)]
    return sample(model, method, torch.tensor([1, 2]), gens, cfg=cfg, callback=callback)


@pytest.fixture(scope="module")
def reference(model):
    """MAR's tokens at 64 steps for seeds 0 and 1: the scale that says what 'close' means."""
    return run(model, mar(64, DIFFUSION)), run(model, mar(64, DIFFUSION), seed=1)


def relative_error(tokens, reference):
    """|tokens - MAR| relative to |MAR(seed 1) - MAR(seed 0)|: 0 is MAR, about 1 is another image."""
    mar0, mar1 = reference
    return ((tokens - mar0).norm() / (mar1 - mar0).norm()).item()


# ---------------------------------------------------------------- schedules
def full_steps(num_steps, **kw):
    return [s for s in range(num_steps) if is_full_step(s, num_steps, **kw)]


def test_refresh_schedule_by_index():
    # Official rule: step < 5 or (step - 5) % 9 == 0, whatever the number of steps.
    assert full_steps(64) == [0, 1, 2, 3, 4, 5, 14, 23, 32, 41, 50, 59]
    assert full_steps(16) == [0, 1, 2, 3, 4, 5, 14]
    assert full_steps(8) == [0, 1, 2, 3, 4, 5]
    assert full_steps(64, periodic=False) == [0, 1, 2, 3, 4]


def test_refresh_schedule_by_fraction():
    # Step s of N covers steps [64s/N, 64(s+1)/N) of the official 64-step run.
    assert full_steps(64, mode="fraction") == full_steps(64)
    assert full_steps(16, mode="fraction") == [0, 1, 3, 5, 8, 10, 12, 14]
    assert full_steps(8, mode="fraction") == [0, 1, 2, 4, 5, 6, 7]
    assert full_steps(128, mode="fraction")[:6] == [0, 2, 4, 6, 8, 10]
    with pytest.raises(ValueError, match="mode"):
        is_full_step(0, 8, mode="steps")


def test_ratio_table():
    expected = [1.0] * 20 + [0.6] + [0.5] * 4 + [0.4] * 5 + [0.15] * 5 + [0.12] * 5 + [0.05] * 24
    assert list(RETAIN_RATIOS) == expected
    assert [keep_ratio(s, 64) for s in range(64)] == expected
    assert keep_ratio(200, 256) == 0.05                      # past the table: its last entry
    assert [keep_ratio(s, 16) for s in (0, 5, 15)] == [1.0, 1.0, 1.0]
    assert [keep_ratio(s, 16, mode="fraction") for s in (0, 5, 6, 8, 15)] == [1.0, 0.6, 0.5, 0.15, 0.05]


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="ratio_mode"):
        LazyMAR(ratio_mode="time")
    with pytest.raises(ValueError, match="refresh_interval"):
        LazyMAR(refresh_interval=0)
    with pytest.raises(ValueError, match="ratios"):
        LazyMAR(ratios=(1.5,))


# ---------------------------------------------------------------- exactness
def test_all_off_is_mar_bitwise(model, reference):
    assert torch.equal(run(model, lazymar(64, DIFFUSION, **OFF)), reference[0])


@pytest.mark.parametrize("cfg", [3.0, 1.0])
def test_full_steps_are_mar_bitwise(model, cfg):
    # 5 AR steps are all full; head_threshold 1 makes every head step full: every part is on, and
    # LazyMAR's own block and head code must then compute exactly what the model computes.
    method = lazymar(5, DIFFUSION, head_threshold=1)
    assert torch.equal(run(model, method, cfg=cfg), run(model, mar(5, DIFFUSION), cfg=cfg))
    assert method.cache.trace == ["full"] * 5 and method.cache.head_calls["lazy"] == 0


def test_pruning_that_keeps_everything_is_mar(model, reference):
    # Keep ratio 1: the pruned path recomputes every position through its gathers and K/V scatters.
    method = lazymar(64, DIFFUSION, **{**OFF, "refresh": True, "decoder_pruning": True}, ratios=(1.0,))
    tokens = run(model, method)
    assert method.cache.trace.count("lazy") == 52 and set(method.cache.kept) == {68}
    assert_close_to_scale(tokens, reference[0])


def encoder_rows_vs_model(model, method):
    """Largest error, per AR step of an unguided run, of the decoder input that the lazy encoder wrote
    (buffer + tokens predicted at the step before) against the model's encoder on all known tokens."""
    errors, before = [], [torch.zeros(2, model.seq_len, model.token_dim)]
    class_emb = model.class_embedding(torch.tensor([1, 2]))
    buffer = model.buffer_size

    def callback(info):
        step, cache = info["step"], method.cache
        if step.index > 0:
            new = cache_prev[0]                                    # predicted at the previous step
            encoded = model.decoder_embed(model.encode(before[0], step.known, class_emb))
            rows = torch.cat([torch.arange(buffer).expand(2, -1), buffer + torch.searchsorted(step.known, new)], 1)
            exact = torch.gather(encoded, 1, rows[..., None].expand(-1, -1, encoded.shape[-1]))
            where = torch.cat([torch.arange(buffer).expand(2, -1), buffer + new], 1)
            cached = torch.gather(cache._dec_in - model.decoder_pos_embed_learned, 1,
                                  where[..., None].expand(-1, -1, encoded.shape[-1]))
            errors.append((cached - exact).abs().max().item())
        cache_prev[0], before[0] = step.predict, info["tokens"]

    cache_prev = [None]
    run(model, method, cfg=1.0, callback=callback)
    return errors


def test_incremental_encoder():
    # The lazy encoder runs the buffer and the new tokens over cached K/V of the older ones. With one
    # encoder layer those K/V depend only on the tokens' (unchanged) inputs: the rows it writes are
    # exact. With two layers the older tokens' K/V at layer 1 go stale: they are not.
    only_encoder = dict(OFF, encoder_cache=True, start_step=1)     # step 0 full, the rest lazy
    one = encoder_rows_vs_model(random_mar(depth=1), lazymar(16, DIFFUSION, **only_encoder))
    two = encoder_rows_vs_model(random_mar(depth=2), lazymar(16, DIFFUSION, **only_encoder))
    assert len(one) == 15 and max(one) < 1e-4
    assert two[0] < 1e-4            # step 1: only the buffer was cached before, and it is recomputed
    assert max(two[1:]) > 1e-2


def test_selection_keeps_predicted_and_most_changed():
    cache = LazyMAR(extra_tokens=1, ratios=(0.0,))
    model = random_mar()
    v_prev = torch.randn(1, 2, 68, 16)
    v = v_prev.clone()
    v[:, :, 4 + 7] = -v[:, :, 4 + 7]              # token 7: V reversed (cosine -1), the most changed
    v[:, :, 4 + 20] += torch.randn(1, 2, 16)      # token 20: changed a little
    cache._v_prev, cache._prev_predict = v_prev, torch.tensor([[40]])
    step = Step(30, 64, [1] * 64, (8, 8), torch.zeros(1, 0, dtype=torch.long), torch.tensor([[30]]), False)
    chosen = cache._select(model, v, step, rows=1)
    assert chosen.tolist() == [[4 + 7, 4 + 30, 4 + 40]]           # 1 + 1 forced + 1 extra
    cache.extra_tokens = 2
    assert chosen.shape[1] == 3 and cache._select(model, v, step, rows=1).tolist() == [[11, 24, 34, 44]]


# ---------------------------------------------------------------- approximation
def test_all_on_is_close_to_mar(model, reference):
    method = lazymar(64, DIFFUSION)
    tokens = run(model, method)
    cache = method.cache
    assert cache.trace.count("lazy") == 52
    # Positions recomputed after layer 3: max(n_pred + n_prev + 15, int(N * ratio[step])), N = 4 + 64.
    counts = mar_cosine_counts(64, 64)
    lazy = [s for s, kind in enumerate(cache.trace) if kind == "lazy"]
    assert cache.kept == [min(68, max(counts[s] + counts[s - 1] + 15, int(68 * RETAIN_RATIOS[s]))) for s in lazy]
    assert min(cache.kept) < 68
    # Head: full at i == 9, 7, 0 of 10 diffusion steps, at each of 64 AR steps.
    assert cache.head_calls == {"full": 3 * 64, "lazy": 7 * 64}
    error = relative_error(tokens, reference)
    assert 0 < error < 0.3, error


@pytest.mark.parametrize("part", ["encoder_cache", "decoder_pruning", "cfg_cache", "head_cache"])
def test_each_part_alone(model, reference, part):
    method = lazymar(64, DIFFUSION, **{**OFF, "refresh": True, part: True})
    error = relative_error(run(model, method), reference)
    assert 0 < error < 0.3, error       # it changes something, and not much


def test_no_periodic_refresh(model, reference):
    method = lazymar(64, DIFFUSION, refresh=False)
    tokens = run(model, method)
    assert method.cache.trace == ["full"] * 5 + ["lazy"] * 59
    assert torch.isfinite(tokens).all() and relative_error(tokens, reference) < 1.0


def test_unguided(model):
    reference = run(model, mar(64, DIFFUSION), cfg=1.0), run(model, mar(64, DIFFUSION), seed=1, cfg=1.0)
    error = relative_error(run(model, lazymar(64, DIFFUSION), cfg=1.0), reference)
    assert 0 < error < 0.3, error


def test_head_cache_schedule():
    net = random_mar().diffloss.net
    z, zu, noise = torch.randn(3, 32), torch.randn(3, 32), torch.randn(3, 101, 16)
    plain = sample_head(lambda x, t, c, i, n: net(x, t, c), z, sampling_diffusion(100), noise, uncond=zu, cfg=3.0)
    head = LazyHead(net, guided=True)
    cached = sample_head(head, z, sampling_diffusion(100), noise, uncond=zu, cfg=3.0)
    assert head.counts == {"full": 16, "lazy": 84}       # 16 of 100 (i == 99 or i % 7 == 0)
    assert 0 < ((cached - plain).norm() / plain.norm()).item() < 0.05
    # Every chain starts over with a full step (the sampler tells the head its step and chain length).
    sample_head(head, z[:1], sampling_diffusion(100), noise[:1], uncond=zu[:1], cfg=3.0)
    assert head.counts == {"full": 32, "lazy": 168}
    sample_head(head, z, sampling_diffusion(20), noise[:, :21], uncond=zu, cfg=3.0)
    assert head.counts == {"full": 36, "lazy": 184}      # i = 19, 14, 7, 0


# ---------------------------------------------------------------- composition, meta, FLOPs
def test_composes_with_gtr(model):
    # GtR's defaults on 8x8 take 8 steps; the last two (half the image) are lazy: a coarser
    # approximation than MAR's 64 steps, still well inside the distance to another sample.
    plain = run(model, gtr()), run(model, gtr(), seed=1)
    method = gtr(cache=LazyMAR())
    tokens = run(model, method)
    assert method.cache.trace == ["full"] * 6 + ["lazy"] * 2
    error = relative_error(tokens, plain)
    assert 0 < error < 0.6, error


def test_runs_on_meta():
    with torch.device("meta"):
        model = build_mar("mar_test", depth=5, diffloss_d=2)   # 4x4 grid, buffer 4: 20 positions
    # Steps 1-3 lazy; ratio 0 and no extra tokens make the decoder keep fewer than all positions.
    method = lazymar(4, 3, refresh=False, start_step=1, extra_tokens=0, ratios=(0.0,))
    tokens = sample(model, method, torch.tensor([1, 2], device="meta"),
                    [image_generator(0, i) for i in range(2)], cfg=3.0)
    assert tokens.device.type == "meta" and tokens.shape == (2, 16, 16)
    assert method.cache.trace == ["full", "lazy", "lazy", "lazy"] and max(method.cache.kept) < 20


def test_every_part_saves_flops(model):
    # Counted on the CPU at 8 AR steps, 2 full then 6 lazy, with the table by fraction (by index it
    # keeps every position before step 20). Transformer parts save in the transformer, the head
    # cache in the head.
    def flops(**switches):
        counts = count_run(model, lazymar(8, DIFFUSION, start_step=2, ratio_mode="fraction", **switches))
        return counts["encdec"], counts["head"]

    mar_tf, mar_head = flops(**OFF)
    for part in ("encoder_cache", "decoder_pruning", "cfg_cache"):
        tf, head = flops(**{**OFF, part: True})
        assert tf < mar_tf and head == mar_head, part
    tf, head = flops(**{**OFF, "head_cache": True})
    assert tf == mar_tf and head < 0.5 * mar_head
    all_tf, all_head = flops(refresh=False)
    assert all_tf < 0.6 * mar_tf and all_head == head   # measured 0.53: 2 of 8 steps full
