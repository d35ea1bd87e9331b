"""ReCAP (baselines/recap.py, method=recap): its schedule, its order, its cache around the unchanged MAR.

Equality with the official code needs the official checkout: make verify-recap OFFICIAL=path (bitwise at
the time of writing). Here: the parts that can be checked alone, on a small MAR with random weights.
"""
import pytest
import torch

from baselines.recap import GroupSortedOrder, ReCAP, ReCAPSteps, group_of, is_full_step, sort_groups
from eval.cost import count_run
from gtr.build import build_method
from gtr.config import ConfigError, compose
from gtr.method import CosineCounts, Method, RandomOrder, mar, mar_cosine_counts
from gtr.models.mar import build_mar
from gtr.sampler import cfg_scale, image_generator, sample
from helpers import assert_close_to_scale
from test_lazymar import SMALL, random_mar

torch.set_num_threads(1)


def recap(num_iter, pre_full_iters=None, cache_iters=1, full_steps=10, local_steps=5):
    """ReCAP as a Method, as configs/method/recap.yaml assembles it (10 / 5 diffusion steps: time budget)."""
    knobs = dict(num_iter=num_iter, pre_full_iters=pre_full_iters, cache_iters=cache_iters)
    return Method(GroupSortedOrder(**knobs), CosineCounts(num_iter), ReCAPSteps(**knobs, full_steps=full_steps,
                  local_steps=local_steps), ReCAP(**knobs), "recap")


@pytest.fixture(scope="module")
def model():
    return random_mar()


def run(model, method, cfg=3.0, schedule="linear_exact", images=(0, 1), callback=None):
    return sample(model, method, torch.tensor([1 + i for i in images]), [image_generator(0, i) for i in images],
                  cfg=cfg, cfg_schedule=schedule, callback=callback)


def test_schedule_of_the_scripts():
    # num_iter 96, pre_full_iters 48, one local step after each full one (run_mar_recap.sh)
    full = [k for k in range(96) if is_full_step(k, 48, 1)]
    assert full == list(range(48)) + list(range(48, 96, 2))
    assert group_of(49, 96, 48, 1) == (48, 49) and group_of(47, 96, 48, 1) == (47, 47)
    assert group_of(95, 96, 48, 1) == (94, 95) and group_of(10, 12, 2, 3) == (10, 11)  # a group cut by the end
    steps = ReCAPSteps(96, None, 1, 100, 50)
    assert steps.pre_full_iters == 48
    with pytest.raises(ValueError, match="pre_full_iters"):
        ReCAPSteps(16, -1)
    with pytest.raises(ValueError, match="local_steps"):
        ReCAPSteps(16, local_steps=0)


def test_order_sorts_each_group_and_keeps_its_tokens():
    counts = mar_cosine_counts(64, 16)
    plain = RandomOrder()((8, 8), image_generator(0, 3))
    ours = GroupSortedOrder(16)((8, 8), image_generator(0, 3))
    assert torch.equal(ours, sort_groups(plain, counts, 8, 1))
    assert torch.equal(ours.sort().values, torch.arange(64))
    start = 0
    for k in range(16):
        first, last = group_of(k, 16, 8, 1)
        if k == first:
            end = start + sum(counts[first:last + 1])
            assert set(ours[start:end].tolist()) == set(plain[start:end].tolist())  # MAR's tokens for the group
            assert torch.equal(ours[start:end], ours[start:end].sort().values)       # split by position
            start = end
    with pytest.raises(ValueError, match="cosine with the same num_iter"):
        GroupSortedOrder(16).check(mar(8))


def test_without_local_steps_it_is_mar_bitwise(model):
    # cache_iters 0 (every step full) or pre_full_iters = num_iter: MAR, bit for bit
    for method in (recap(12, cache_iters=0), recap(12, pre_full_iters=12)):
        assert torch.equal(run(model, method, schedule="linear"), run(model, mar(12, 10), schedule="linear"))
        assert set(method.cache.trace) == {"full"}


def test_local_steps_reuse_the_full_steps_keys_and_values(model):
    """The local steps' z differ from a full forward (the caches act), their diffusion steps are the local
    ones, and the images stay close to what full steps give."""
    method = recap(12)
    seen = []
    tokens = run(model, method, callback=seen.append)
    assert method.cache.trace == ["full"] * 7 + ["local", "full", "local", "full", "local"]
    for k in (6, 7):
        step = seen[k]["step"]
        b = 2
        before = seen[k - 1]["tokens"]
        cond = torch.cat([model.embed_condition(torch.tensor([1, 2])), model.unconditional_embedding(b)])
        full = model.condition(torch.cat([before, before]), torch.cat([step.known, step.known]), cond)
        gap = (full - seen[k]["z"]).abs().max().item() / full.abs().max().item()
        assert (gap > 1e-3) == (k == 7), (k, gap)   # step 6 is full: the same z; step 7 is local
        assert method.steps(step, None) == [(None, 10 if k == 6 else 5)]
    assert torch.isfinite(tokens).all()


def test_batch_rows_are_independent(model):
    # unguided: random weights under guidance amplify the batch's float rounding (other kernels per shape)
    together = run(model, recap(8), cfg=1.0, images=(0, 1, 2))
    alone = torch.cat([run(model, recap(8), cfg=1.0, images=(i,)) for i in range(3)])
    assert_close_to_scale(together, alone, 1e-3)


def test_unguided_and_on_meta(model):
    assert torch.isfinite(run(model, recap(8), cfg=1.0)).all()
    with torch.device("meta"):
        meta = build_mar("mar_test", **SMALL).eval()
    ours = count_run(meta, recap(16, full_steps=100, local_steps=50), cfg=3.0)
    plain = count_run(meta, mar(16, 100), cfg=3.0)
    assert ours["encdec"] < plain["encdec"] and ours["head"] < plain["head"]  # local steps: fewer rows, fewer steps


def test_config_and_guidance_schedule():
    cfg = compose(["model=mar_l", "method=recap", "method.num_iter=96"])[0]
    method = build_method(cfg.method, grid=(16, 16))
    assert cfg.cfg_schedule == "linear_exact" and cfg.method.local_steps == 50
    assert method.cache.pre_full_iters == method.steps.pre_full_iters == method.order.pre_full_iters == 48
    assert cfg_scale(3.0, "linear_exact", 256, 0) == 3.0 and cfg_scale(3.0, "linear", 256, 0) < 3.0
    assert cfg_scale(3.0, "linear_exact", 256, 10) == cfg_scale(3.0, "linear", 256, 10)
    assert compose(["model=mar_l", "method=mar"])[0].cfg_schedule == "linear"
    with pytest.raises(ConfigError, match="pre_full_iters"):
        build_method(compose(["model=mar_l", "method=recap", "method.pre_full_iters=-2"])[0].method, grid=(16, 16))
    rows = compose(["experiment=recap"], True)
    assert {r.key for r in rows} >= {"mar_l/recap/it96", "mar_h/recap/it128", "mar_b/recap/it36"}
    assert {r.cfg for r in rows if r.model.key == "mar_h"} == {3.2}
