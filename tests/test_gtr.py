"""GtR: Algorithm 1, stage budgets, stage-aware diffusion steps, FTS."""
import pytest
import torch

from gtr.gtr import StageCounts, StagedOrder, StageSteps, fts_scores, gtr, max_stages, partition, spread
from gtr.method import Step
from gtr.models.mar import build_mar
from gtr.sampler import image_generator, sample

torch.set_num_threads(1)


def cells(stage, w):
    return [(p // w, p % w) for p in stage]


@pytest.mark.parametrize("h,w,k", [(16, 16, 3), (16, 16, 2), (16, 16, 4), (7, 5, 3), (3, 8, 2), (9, 9, 4)])
def test_partition_properties(h, w, k):
    stages = partition(h, w, k)
    flat = [p for s in stages for p in s]
    assert sorted(flat) == list(range(h * w)) and len(stages) == k  # disjoint and covering
    # the reconstruction stage is the (i+j)-odd half
    assert {(i + j) % 2 for i, j in cells(stages[-1], w)} == {1}
    # stage 1 tokens are never 4-adjacent
    first = set(cells(stages[0], w))
    assert not any((i + 1, j) in first or (i, j + 1) in first for i, j in first)
    # every interior reconstruction cell is surrounded by earlier tokens on all four sides
    earlier = set(c for s in stages[:-1] for c in cells(s, w))
    for i, j in cells(stages[-1], w):
        if 0 < i < h - 1 and 0 < j < w - 1:
            assert {(i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)} <= earlier


def test_partition_16x16_three_stages_as_reference():
    s1, s2, s3 = partition(16, 16, 3)
    assert (len(s1), len(s2), len(s3)) == (64, 64, 128)
    assert all((i + j) % 4 == 0 for i, j in cells(s1, 16))
    assert all((i + j) % 4 == 2 for i, j in cells(s2, 16))


def test_too_many_stages_refused():
    assert max_stages(2, 2) == 3
    with pytest.raises(ValueError, match="too many for a 2x2 grid"):
        partition(2, 2, 4)
    with pytest.raises(ValueError, match="at least 2 stages"):
        partition(4, 4, 1)


def test_stage_budgets_from_rates_and_steps():
    assert StageCounts(3).stage_steps((16, 16)) == [24, 6, 2]  # paper: {2.67, 10.67, 64}
    # LightGen: K=4, {16, 42.6, 85.3, 256} on 32x32 -> 8 + 3 + 3 + 2 = 16 steps (REFERENCE section 4)
    assert StageCounts(4, rates=[16, 42.6, 85.3, 256]).stage_steps((32, 32)) == [8, 3, 3, 2]
    counts = StageCounts(3, steps=[16, 3, 1], intra_stage="cosine")((16, 16))
    assert len(counts) == 20 and sum(counts) == 256 and counts[-1] == 128
    assert spread(64, 24) == [2] * 8 + [3] * 16
    with pytest.raises(ValueError, match="one step count per stage"):
        StageCounts(3, steps=[10, 2])((16, 16))
    with pytest.raises(ValueError, match="cannot be covered"):
        StageCounts(3, steps=[65, 2, 1])((16, 16))
    with pytest.raises(ValueError, match="positive"):
        StageCounts(3, rates=[1, 0, 4])((16, 16))


def test_staged_order_respects_stages_and_counts_align():
    order = StagedOrder(3)((16, 16), torch.Generator().manual_seed(0))
    s1, s2, s3 = partition(16, 16, 3)
    assert set(order[:64].tolist()) == set(s1) and set(order[64:128].tolist()) == set(s2)
    other = StagedOrder(3)((16, 16), torch.Generator().manual_seed(1))
    assert not torch.equal(order, other)  # random inside a stage


def step_at(index, counts, grid=(16, 16), n=None):
    n = counts[index] if n is None else n
    return Step(index, len(counts), counts, grid, torch.zeros(1, 0, dtype=torch.long),
                torch.zeros(1, n, dtype=torch.long), False, [torch.Generator().manual_seed(0)])


def test_stage_aware_steps_linear_then_reconstruction():
    counts = StageCounts(3)((16, 16))  # 24 + 6 + 2 steps
    policy = StageSteps(fts="none")
    steps = [policy(step_at(k, counts), torch.zeros(1, counts[k], 8))[0][1] for k in range(32)]
    assert steps[0] == 50 and steps[29] == 20 and steps[30:] == [20, 20]
    assert all(a >= b for a, b in zip(steps[:30], steps[1:30]))
    assert steps[15] == round(50 - 30 * 15 / 29)


def test_fts_scores_and_selection():
    d = 16
    smooth = torch.ones(d)
    rough = torch.tensor([(-1.0) ** i for i in range(d)])  # all energy at the Nyquist frequency
    z = torch.stack([smooth, rough, 0.5 * rough, torch.zeros(d)])[None]
    s = fts_scores(z)[0]
    assert s[0] == pytest.approx(0.0, abs=1e-5) and s[1] == pytest.approx(16 * 2.0) and s[2] == pytest.approx(16.0)
    # eq. 5 by hand for a random vector
    v = torch.randn(d)
    amp = torch.fft.rfft(v).abs()
    expected = sum(amp[n] * (1 + n / (d // 2)) for n in range(1, d // 2 + 1))
    assert fts_scores(v[None])[0] == pytest.approx(expected.item(), rel=1e-5)
    counts = [252, 4]
    groups = StageSteps(beta=0.25)(step_at(1, counts), z)
    (detail, t_detail), (rest, t_rec) = groups
    assert (t_detail, t_rec) == (50, 20) and detail.tolist() == [[1]] and sorted(rest[0].tolist()) == [0, 2, 3]
    (low, _), _ = StageSteps(beta=0.25, fts="low")(step_at(1, counts), z)
    assert low.tolist()[0][0] in (0, 3)
    assert StageSteps(fts="all")(step_at(1, counts), z) == [(None, 50)]
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\]"):
        StageSteps(beta=1.5)
    with pytest.raises(ValueError, match="unknown FTS selection"):
        StageSteps(fts="mid")


def test_gtr_samples_tiny_model_deterministically():
    torch.manual_seed(0)
    model = build_mar("mar_tiny").eval()
    method = gtr(stages=3, rates=None, rate_first=4, rate_middle=8, rate_last=32, t_max=4, t_min=2, t_rec=2,
                 t_detail=4)
    labels = torch.tensor([0, 9])
    seen = []
    a = sample(model, method, labels, [image_generator(0, i) for i in range(2)], cfg=2.0,
               callback=lambda d: seen.append(d["step"].predict))
    b = sample(model, method, labels, [image_generator(0, i) for i in range(2)], cfg=2.0)
    assert torch.equal(a, b)
    assert torch.equal(torch.cat(seen, 1).sort(1).values, torch.arange(64).expand(2, -1))
    s1 = set(partition(8, 8, 3)[0])
    first_stage = torch.cat(seen[:len(s1) // 4], 1)
    assert set(first_stage[0].tolist()) == s1
