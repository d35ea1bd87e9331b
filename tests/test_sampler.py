"""The sampling engine: MAR's schedules, CFG, determinism, batch independence, bad input."""
import math

import pytest
import torch

from gtr.method import CosineCounts, ConstantSteps, Method, RandomOrder, mar, mar_cosine_counts
from gtr.models.mar import build_mar
from gtr.sampler import cfg_scale, image_generator, sample
from helpers import assert_close_to_scale

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_mar("mar_test").eval()
    with torch.no_grad():  # move the zero-initialised head output layers so samples depend on z
        for p in m.diffloss.net.final_layer.parameters():
            p.normal_(std=0.02)
    return m


def gens(n, seed=0, start=0):
    return [image_generator(seed, i) for i in range(start, start + n)]


def test_mar_counts_equal_official():
    # fact: REFERENCE.md section 1 (official sample_tokens, 256 tokens)
    assert mar_cosine_counts(256, 16) == [2, 3, 7, 8, 11, 13, 15, 16, 19, 20, 22, 23, 23, 25, 24, 25]
    assert mar_cosine_counts(256, 8) == [5, 15, 24, 31, 39, 45, 48, 49]
    c64 = mar_cosine_counts(256, 64)
    assert len(c64) == 64 and sum(c64) == 256 and min(c64) >= 1
    # the official rule, step by step: masked after step k = floor(256 cos(pi/2 (k+1)/64)), clamped
    masked = 256
    for k, n in enumerate(c64[:-1]):
        nxt = max(1, min(masked - 1, math.floor(256 * math.cos(math.pi / 2 * (k + 1) / 64))))
        assert n == masked - nxt
        masked = nxt
    assert c64[-1] == masked
    assert sum(mar_cosine_counts(256, 256)) == 256 and mar_cosine_counts(256, 1) == [256]


def test_cfg_linear_schedule_values():
    # 1 + (cfg-1) * (L - mask_len) / L with mask_len the tokens still masked, at least 1 (official clamp)
    assert cfg_scale(3.0, "linear", 256, 255) == pytest.approx(1 + 2 / 256)
    assert cfg_scale(3.0, "linear", 256, 0) == pytest.approx(1 + 2 * 255 / 256)
    assert cfg_scale(3.0, "constant", 256, 100) == 3.0
    with pytest.raises(ValueError, match="cfg_schedule"):
        cfg_scale(3.0, "cosine", 256, 1)


def test_each_position_filled_once_in_order(model):
    seen = []
    sample(model, mar(4, 5), torch.tensor([1, 2]), gens(2), cfg=2.0,
           callback=lambda d: seen.append(d["step"].predict.clone()))
    predicted = torch.cat(seen, dim=1)
    assert predicted.shape == (2, model.seq_len)
    assert torch.equal(predicted.sort(dim=1).values, torch.arange(model.seq_len).expand(2, -1))


def test_deterministic_and_batch_size_independent(model):
    labels = torch.tensor([0, 3, 5, 7])
    a = sample(model, mar(4, 5), labels, gens(4), cfg=2.5)
    b = sample(model, mar(4, 5), labels, gens(4), cfg=2.5)
    assert torch.equal(a, b)
    parts = [sample(model, mar(4, 5), labels[i:i + 1], gens(1, start=i), cfg=2.5) for i in range(4)]
    assert_close_to_scale(torch.cat(parts), a)  # batch size changes kernels: float rounding only
    c = sample(model, mar(4, 5), labels, gens(4, seed=1), cfg=2.5)
    assert not torch.allclose(a, c)


def test_unguided_runs_one_branch_and_temperature_scales_only_the_step_noise(model):
    labels, counts = torch.tensor([1, 1]), mar(2, 3).counts((model.seq_h, model.seq_w))
    rows = []
    head = model.head
    model.head = lambda x, t, z: rows.append(x.shape[0]) or head(x, t, z)
    try:
        sample(model, mar(2, 3), labels, gens(2), cfg=1.0)
        unguided, rows[:] = list(rows), []
        sample(model, mar(2, 3), labels, gens(2), cfg=2.0)
    finally:
        model.head = head
    assert unguided == [2 * n for n in counts for _ in range(3)]  # 2 images x the step's tokens, 3 steps each
    assert rows == [2 * u for u in unguided]                        # guidance doubles every head call

    def noise_with(scale):  # column 0 (the start) fixed; the per-step columns times `scale`
        def fn(k, shape):
            g = torch.Generator().manual_seed(k)
            noise = torch.randn(2, *shape, generator=g)
            noise[:, :, 1:] *= scale
            return noise
        return fn
    cold = sample(model, mar(2, 3), labels, gens(2), cfg=1.0, temperature=0.0, noise_fn=noise_with(1.0))
    colder = sample(model, mar(2, 3), labels, gens(2), cfg=1.0, temperature=0.0, noise_fn=noise_with(1e6))
    warm = sample(model, mar(2, 3), labels, gens(2), cfg=1.0, temperature=1.0, noise_fn=noise_with(1.0))
    assert torch.equal(cold, colder)  # temperature 0: the step noise is not used at all
    assert not torch.allclose(cold, warm)


def test_official_orders_and_noise_can_be_replayed(model):
    orders = torch.stack([torch.arange(model.seq_len).flip(0), torch.arange(model.seq_len)])
    counts = mar(3, 2).counts((model.seq_h, model.seq_w))
    noise = [torch.randn(2, n, 3, model.token_dim, generator=torch.Generator().manual_seed(n)) for n in counts]
    seen = []
    out = sample(model, mar(3, 2), torch.tensor([1, 2]), gens(2), cfg=2.0, orders=orders,
                 noise_fn=lambda k, shape: noise[k], callback=lambda d: seen.append(d["step"].predict))
    # the LAST entries of an order come first, as in the official code (mask keeps order[:mask_len])
    assert torch.equal(seen[0][0], torch.arange(model.seq_len)[-counts[0]:])
    assert torch.equal(seen[0][1], torch.arange(counts[0]))
    # with order and noise given, the image generators are not used: other seeds, the same tokens
    again = sample(model, mar(3, 2), torch.tensor([1, 2]), gens(2, seed=7), cfg=2.0, orders=orders,
                   noise_fn=lambda k, shape: noise[k])
    assert torch.equal(out, again) and torch.isfinite(out).all()
    mine = sample(model, mar(3, 2), torch.tensor([1, 2]), gens(2), cfg=2.0)
    assert not torch.allclose(out, mine)  # ...while without them the generators decide


def test_bad_inputs_are_refused(model):
    with pytest.raises(ValueError, match="labels has shape"):
        sample(model, mar(2, 2), torch.tensor([1, 2, 3]), gens(2))
    with pytest.raises(ValueError, match="out of range"):
        sample(model, mar(2, 2), torch.tensor([1, 10]), gens(2))
    bad_counts = Method(RandomOrder(), lambda grid: [3, 4], ConstantSteps(2))
    with pytest.raises(ValueError, match="must be non-negative and sum to 16"):
        sample(model, bad_counts, torch.tensor([1]), gens(1))
    bad_order = Method(lambda grid, g: torch.zeros(16, dtype=torch.long), CosineCounts(2), ConstantSteps(2))
    with pytest.raises(ValueError, match="permutations"):
        sample(model, bad_order, torch.tensor([1]), gens(1))
    with pytest.raises(ValueError, match="num_iter"):
        mar(0).counts((4, 4))
    with pytest.raises(ValueError, match="diffusion steps"):
        ConstantSteps(0)


def test_sampler_runs_on_meta():
    with torch.device("meta"):
        m = build_mar("mar_test")
    out = sample(m, mar(4, 3), torch.tensor([1, 2]), gens(2), cfg=3.0)
    assert out.is_meta and out.shape == (2, 16, 16)


def test_image_generator_streams_differ():
    a = torch.randn(4, generator=image_generator(0, 1))
    b = torch.randn(4, generator=image_generator(0, 2))
    c = torch.randn(4, generator=image_generator(1, 1))
    assert not torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a, torch.randn(4, generator=image_generator(0, 1)))
