"""Baselines: step reduction, Halton, DiSA and the Table 5 orders (fast, CPU, tiny random model)."""
import math

import pytest
import torch

from baselines.disa import DISA_CLIP_TIMESTEPS, DiSASteps, disa, disa_steps
from baselines.halton import HaltonCounts, HaltonOrder, halton, halton_arccos_counts, halton_cells
from baselines.orders import RasterOrder, SubsampleOrder, quadrants
from gtr.method import ConstantSteps, CosineCounts, Method, mar, mar_cosine_counts
from gtr.models.mar import build_mar
from gtr.sampler import image_generator, sample

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    """mar_test (4x4 grid, 16-dim tokens) with every weight random: the official init zeroes the head's
    output layer, which would make samples ignore z."""
    torch.manual_seed(0)
    m = build_mar("mar_test").eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return m


def run(model, method, seed, labels=(1, 7), cfg=2.0, **kwargs):
    generators = [image_generator(seed, i) for i in range(len(labels))]
    return sample(model, method, torch.tensor(labels), generators, cfg=cfg, **kwargs)


def is_permutation(order, n):
    return order.dtype == torch.long and torch.equal(order.sort().values, torch.arange(n))


# ---------------------------------------------------------------- step reduction
def test_step_reduction_is_mar_with_fewer_steps():
    method = mar(16)
    # fact: REFERENCE section 1 (LTH14/mar sample_tokens, N=16 on 256 tokens)
    assert method.counts((16, 16)) == [2, 3, 7, 8, 11, 13, 15, 16, 19, 20, 22, 23, 23, 25, 24, 25]
    assert mar(8).counts((16, 16)) == [5, 15, 24, 31, 39, 45, 48, 49]
    assert method.steps(None, None) == [(None, 100)]
    with pytest.raises(ValueError, match="num_iter"):
        mar(0)


# ---------------------------------------------------------------- Halton
def test_halton_first_cells_16x16():
    # fact: REFERENCE section 3, from valeoai/Halton-MaskGIT Sampler/halton_sampler.py (base 2 -> row).
    assert halton_cells(16, 16)[:10] == [(8, 5), (4, 10), (12, 1), (2, 7), (10, 12), (6, 3), (14, 8),
                                         (1, 14), (9, 0), (5, 5)]


def test_halton_non_square_scales_rows_by_h_and_columns_by_w():
    # By hand, Halton points 1..4 = (1/2, 1/3), (1/4, 2/3), (3/4, 1/9), (1/8, 4/9) on 5 rows x 7 columns.
    assert halton_cells(5, 7)[:4] == [(2, 2), (1, 4), (3, 0), (0, 3)]
    assert halton_cells(7, 5)[:4] == [(3, 1), (1, 3), (5, 0), (0, 2)]


@pytest.mark.parametrize("grid", [(16, 16), (5, 7), (7, 5), (1, 1), (1, 6), (3, 3), (8, 8)])
def test_halton_order_is_permutation(grid):
    order = HaltonOrder()(grid, torch.Generator())
    assert is_permutation(order, grid[0] * grid[1])
    assert [(int(p) // grid[1], int(p) % grid[1]) for p in order] == halton_cells(*grid)


def test_halton_roll_is_a_per_image_cyclic_shift():
    grid, sequence = (16, 16), HaltonOrder().sequence((16, 16))
    plain = torch.Generator().manual_seed(3)
    assert torch.equal(HaltonOrder()(grid, plain), sequence)
    assert torch.equal(plain.get_state(), torch.Generator().manual_seed(3).get_state())  # nothing drawn
    shifts = set()
    for seed in range(6):
        order = HaltonOrder(roll=True)(grid, image_generator(seed, 0))
        again = HaltonOrder(roll=True)(grid, image_generator(seed, 0))
        assert torch.equal(order, again)
        shift = int((order == sequence[0]).nonzero())  # where the sequence's first cell landed
        assert torch.equal(order, torch.roll(sequence, shift))
        shifts.add(shift)
    assert len(shifts) > 1


def test_halton_arccos_counts():
    # fact: valeoai/Halton-MaskGIT Sampler/halton_sampler.py: cumulative r_i = max(i+1, int(N*(1 -
    # arccos((i+1)/S)/(pi/2)))). S=16 on 256 tokens as in REFERENCE section 3.
    assert halton_arccos_counts(256, 16) == [10, 10, 10, 11, 10, 11, 11, 12, 12, 13, 13, 15, 16, 19, 25, 58]
    # S=8 from the same rule: r = 20, 41, 62, 85, 110, 138, 173, 256.
    assert halton_arccos_counts(256, 8) == [20, 21, 21, 23, 25, 28, 35, 83]
    assert HaltonCounts(8)((16, 16)) == [20, 21, 21, 23, 25, 28, 35, 83]
    assert halton_arccos_counts(256, 1) == [256]
    assert halton_arccos_counts(16, 16) == [1] * 16  # the max(i+1, .) floor binds
    for steps in (3, 24, 64, 100):
        counts = halton_arccos_counts(256, steps)
        assert sum(counts) == 256 and min(counts) >= 1
        cumulative = [sum(counts[:i + 1]) for i in range(steps)]
        for i, r in enumerate(cumulative):  # the float64 rule agrees on 256 tokens
            assert r == max(i + 1, int(256 * (1 - math.acos((i + 1) / steps) / (math.pi / 2))))
    # The official rule runs in float32; on 1024 tokens with S=45 that moves one token (float64: 16, 17).
    assert halton_arccos_counts(1024, 45)[21:23] == [17, 16]
    with pytest.raises(ValueError, match="exceeds"):
        halton_arccos_counts(16, 17)
    with pytest.raises(ValueError, match="num_iter"):
        HaltonCounts(0)


def test_halton_factory():
    method = halton(16)
    assert method.name == "halton" and isinstance(method.order, HaltonOrder) and not method.order.roll
    assert method.counts((16, 16))[0] == 10
    assert halton(16, schedule="cosine").counts((16, 16)) == mar_cosine_counts(256, 16)
    assert halton(16, diffusion_steps=7).steps(None, None) == [(None, 7)]
    with pytest.raises(ValueError, match="schedule"):
        halton(16, schedule="linear")


def test_halton_sampler_follows_the_sequence(model):
    """The sampler predicts the Halton cells chunk by chunk, first cells first."""
    seen = []
    run(model, halton(4, diffusion_steps=3), seed=0, callback=lambda d: seen.append(d["step"].predict[0]))
    counts, sequence = halton_arccos_counts(16, 4), HaltonOrder().sequence((4, 4))
    starts = [sum(counts[:k]) for k in range(4)]
    assert [p.tolist() for p in seen] == [sorted(sequence[s:s + n].tolist()) for s, n in zip(starts, counts)]


# ---------------------------------------------------------------- DiSA
def test_disa_linear_schedules():
    # fact: Qinyu-Allen-Zhao/DiSA MAR_DiSA/models/diffloss.py: lower + int((S-1-s)/(S-1)*(upper-lower)).
    for S in (64, 24, 16, 8):
        steps = DiSASteps().schedule(S)
        assert steps[0] == 50 and steps[-1] == 5
        assert steps == [5 + (S - 1 - s) * 45 // (S - 1) for s in range(S)]  # exact floor, same here
        assert all(a >= b for a, b in zip(steps, steps[1:]))
    assert DiSASteps().schedule(16) == list(range(50, 4, -3))
    assert DiSASteps().schedule(8) == [50, 43, 37, 30, 24, 17, 11, 5]
    assert DiSASteps(upper=20, lower=20).schedule(5) == [20] * 5


def test_disa_other_strategies():
    cosine = DiSASteps(strategy="cosine").schedule(8)
    assert cosine == [50, 47, 41, 32, 22, 13, 7, 5]
    assert cosine == [5 + int((math.cos(math.pi * s / 7) + 1) / 2 * 45) for s in range(8)]
    assert DiSASteps(strategy="two-stage").schedule(8) == [50] * 4 + [5] * 4
    assert DiSASteps(strategy="two-stage").schedule(7) == [50] * 3 + [5] * 4  # s < (S-1)/2 = 3
    assert DiSASteps(strategy="constant").schedule(8) == [5] * 8  # the LOWER bound
    # S == 1: linear/cosine divide by zero officially -> upper (our choice); the others keep the rule.
    assert [disa_steps(0, 1, strategy=s) for s in ("linear", "cosine", "two-stage", "constant")] == [50, 50, 5, 5]


def test_disa_rejects_bad_settings():
    with pytest.raises(ValueError, match="strategy"):
        DiSASteps(strategy="exp")
    with pytest.raises(ValueError, match="lower <= upper"):
        DiSASteps(upper=5, lower=50)
    with pytest.raises(ValueError, match="lower <= upper"):
        DiSASteps(lower=0)
    with pytest.raises(ValueError, match="AR step"):
        disa_steps(8, 8)
    with pytest.raises(ValueError, match="num_iter"):
        disa(0)


def test_disa_constants():
    assert DISA_CLIP_TIMESTEPS == 950  # fact: MAR_DiSA/diffusion/__init__.py
    method = disa()
    assert method.name == "disa" and method.counts((16, 16)) == mar_cosine_counts(256, 64)


def test_disa_samples_each_position_once(model):
    method = disa(16)
    steps_used, records = [], []

    class Recorded(DiSASteps):
        def __call__(self, step, z):
            steps_used.append(super().__call__(step, z))
            return steps_used[-1]
    method.steps = Recorded()
    record = lambda d: records.append((d["step"].predict.clone(), d["tokens"].clone()))
    assert method.steps.clip_timesteps == DISA_CLIP_TIMESTEPS  # DiSA's process, as released
    tokens = run(model, method, seed=5, callback=record)
    assert [t for [(index, t)] in steps_used] == DiSASteps().schedule(16)
    assert len(records) == 16
    before = torch.zeros_like(tokens)
    filled = torch.zeros(tokens.shape[:2], dtype=torch.long)
    for predict, after in records:
        changed = (after != before).any(-1)
        now = torch.zeros_like(changed).scatter(1, predict, True)
        assert torch.equal(changed, now)  # this step wrote its positions and nothing else
        filled += now.long()
        before = after
    assert torch.equal(filled, torch.ones_like(filled))
    assert torch.equal(before, tokens)


# ---------------------------------------------------------------- Table 5 orders
def test_raster_order():
    assert torch.equal(RasterOrder()((5, 7), torch.Generator()), torch.arange(35))


def test_subsample_order_16x16():
    order = SubsampleOrder()((16, 16), torch.Generator())
    assert is_permutation(order, 256)
    for t in range(64):
        for q, (qi, qj) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
            # t-th cell of quadrant q, in raster order inside the 8x8 quadrant
            assert int(order[4 * t + q]) == (8 * qi + t // 8) * 16 + 8 * qj + t % 8
    # each step of MAR's cosine counts spreads its tokens over the four quadrants evenly
    done = 0
    for n in mar_cosine_counts(256, 16):
        cells = order[done:done + n]
        per_quadrant = [int(((cells // 16 >= 8) * 2 + (cells % 16 >= 8)).eq(q).sum()) for q in range(4)]
        assert max(per_quadrant) - min(per_quadrant) <= 1
        done += n


@pytest.mark.parametrize("grid", [(5, 7), (1, 5), (4, 1), (3, 3), (1, 1)])
def test_subsample_order_odd_grids(grid):
    h, w = grid
    order = SubsampleOrder()(grid, torch.Generator()).tolist()
    assert is_permutation(torch.tensor(order), h * w)
    for part in quadrants(h, w):  # each quadrant is visited in its own raster order
        assert [p for p in order if p in part] == sorted(part)
    if grid == (5, 7):
        assert [divmod(p, 7) for p in order[:4]] == [(0, 0), (0, 4), (3, 0), (3, 4)]
        assert [len(p) for p in quadrants(5, 7)] == [12, 9, 8, 6]


# ---------------------------------------------------------------- every factory
FACTORIES = {
    "step4": lambda: mar(4, diffusion_steps=4),
    "halton": lambda: halton(4, diffusion_steps=4),
    "halton-cosine-roll": lambda: halton(4, schedule="cosine", roll=True, diffusion_steps=4),
    "disa": lambda: disa(4, upper=6, lower=2),
    "raster": lambda: Method(RasterOrder(), CosineCounts(4), ConstantSteps(100)),
    "subsample": lambda: Method(SubsampleOrder(), CosineCounts(4), ConstantSteps(100)),
}


@pytest.mark.parametrize("name", FACTORIES)
def test_factory_samples_deterministically(model, name):
    first = run(model, FACTORIES[name](), seed=11)
    again = run(model, FACTORIES[name](), seed=11)
    other = run(model, FACTORIES[name](), seed=12)
    assert first.shape == (2, 16, 16) and torch.isfinite(first).all()
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
