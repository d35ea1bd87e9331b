"""CSpD (baselines/cspd.py, method=cspd): its schedule, the verify hook, the draft cache, its FLOPs.

Equality with the official code needs the official checkout: make verify-cspd OFFICIAL=path (bitwise at the
time of writing). Here: what can be checked alone, on the tiny MAR trained here (a random head's diffusion
chain diverges, and every drafted token would be rejected).
"""
from pathlib import Path

import pytest
import torch

from baselines.cspd import CSpDVerify, DraftCache, acceptance, is_target_step, is_verify_step
from eval.cost import count_run
from gtr.build import build_method
from gtr.config import ConfigError, compose
from gtr.load import load_mar
from gtr.method import ConstantSteps, CosineCounts, Method, RandomOrder, mar
from gtr.models.mar import build_mar
from gtr.sampler import image_generator, sample

TINY = Path(__file__).resolve().parents[1] / "results" / "tiny_mar" / "tiny_mar_ema.pth"
STEPS = 10  # diffusion steps in these tests (time budget)
torch.set_num_threads(1)


def cspd(draft, num_iter=8, num_draft=4, ratio=0.15):
    """CSpD as a Method, as configs/method/cspd.yaml assembles it (clip 950: the tiny model's process)."""
    return Method(RandomOrder(), CosineCounts(num_iter), ConstantSteps(STEPS, 950), DraftCache(draft, ratio),
                  "cspd", CSpDVerify(ratio, num_draft))


@pytest.fixture(scope="module")
def tiny():
    return load_mar(build_mar("mar_tiny"), str(TINY)).eval()


def test_schedule_of_the_code():
    # defaults (64 AR steps, ratio 0.15, num_draft 8): the target alone runs steps 0..9 (9.6 is not rounded)
    assert [k for k in range(64) if is_target_step(k, 64, 0.15)] == list(range(10))
    assert [k for k in range(10, 64) if is_verify_step(k, 64, 8)] == [16, 24, 32, 40, 48, 56, 63]
    # the demo (256, 0.05, 4): steps 0..12 by the target, the first window 13..16, the last 253..255
    assert sum(is_target_step(k, 256, 0.05) for k in range(256)) == 13
    verified = [k for k in range(13, 256) if is_verify_step(k, 256, 4)]
    assert verified[0] == 16 and verified[-2:] == [252, 255]


def test_acceptance_is_one_for_equal_gaussians_and_falls_with_the_gap():
    mean, std = torch.zeros(3, 16), torch.full((3, 16), 0.0064)
    same = {"mean": mean, "std": std, "log_std": torch.full((3, 16), -2.0)}
    assert torch.equal(acceptance(mean, same, same, 42.0), torch.ones(3))
    moved = dict(same, mean=mean + torch.tensor([0.0, 0.05, 0.2])[:, None])
    prob = acceptance(mean, same, moved, 42.0)
    assert prob[0] == 1 and 1 > prob[1] > prob[2] > 0
    # the trajectory factor: a target whose earlier steps were wider gets more than the bare ratio
    wider = dict(moved, log_std=moved["log_std"] + 0.01)
    assert (acceptance(mean, same, wider, 42.0) > prob).all()


def test_draft_equal_to_the_target_with_one_step_windows_is_mar(tiny):
    # each window is one step, seen from the same context with the same noise: every token is kept, and the
    # tokens are MAR's (the noise fixed per step, since the judging draws from the image's generator)
    fixed = {}

    def noise(k, shape):
        return fixed.setdefault(k, torch.randn((2, *shape), generator=torch.Generator().manual_seed(k)))
    method = cspd(tiny, num_draft=1)
    labels = torch.tensor([2, 7])
    ours = sample(tiny, method, labels, [image_generator(0, i) for i in range(2)], cfg=3.0, noise_fn=noise)
    plain = sample(tiny, mar(8, STEPS, 950), labels, [image_generator(0, i) for i in range(2)], cfg=3.0, noise_fn=noise)
    assert torch.equal(ours, plain)
    assert method.verify.accepted == method.verify.drafted == 2 * sum(CosineCounts(8)((8, 8))[2:])


def test_windows_reject_and_redraw(tiny):
    # the draft (the same weights) saw its own unverified tokens, the target only the context before the
    # window: some tokens are rejected and redrawn from the residual; where the residual keeps no proposal
    # the code's fallback leaves a zero token, and the hook counts those
    method = cspd(tiny, num_iter=16, num_draft=4)
    tokens = sample(tiny, method, torch.tensor([1, 4, 9]), [image_generator(0, i) for i in range(3)], cfg=3.0)
    assert torch.isfinite(tokens).all()
    assert 0 < method.verify.accepted < method.verify.drafted
    assert int((tokens.abs().sum(-1) == 0).sum()) == method.verify.zeros < method.verify.drafted - method.verify.accepted
    stats = method.verify.stats()  # what scripts/demo.py records for the row
    assert stats["accepted_fraction"] == method.verify.accepted / method.verify.drafted
    assert stats["drafted_tokens"] == method.verify.drafted and stats["zero_tokens"] == method.verify.zeros


def test_flops_count_both_models():
    # on meta, with the target as its own draft: every token gets the target's head once (pre-filling or
    # verification) and the drafted ones the draft's head too
    with torch.device("meta"):
        model = build_mar("mar_tiny").eval()
    method = cspd(model, num_iter=8, num_draft=4)
    drafted = sum(n for k, n in enumerate(CosineCounts(8)((8, 8))) if not is_target_step(k, 8, 0.15))
    ours, plain = count_run(model, method), count_run(model, mar(8, STEPS, 950))
    assert ours["head"] == pytest.approx(plain["head"] * (1 + drafted / 64), rel=1e-9)
    assert ours["encdec"] > plain["encdec"]  # the draft's steps plus the target's verifications


@pytest.mark.parametrize("override, message", [
    ("method.num_draft=0", "CSpD num_draft must be an integer >= 1"),
    ("method.ratio=1.5", "CSpD ratio must be a number in [0, 1)"),
    ("method.draft=nope", "unknown draft model 'nope'"),
    ("method.draft=mar_b", "its draft's token grid 16x16 is not the model's 8x8"),
    ("method.draft_checkpoint=/no/such.pth", "its draft's checkpoint /no/such.pth does not exist"),
])
def test_bad_knobs_are_refused_in_one_line(override, message):
    cfg = compose(["model=tiny", "method=cspd", override])
    cfg = cfg[0] if isinstance(cfg, list) else cfg
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(")", r"\)")):
        build_method(cfg.method, grid=(8, 8))


def test_a_draft_of_another_grid_is_refused(tiny):
    with torch.device("meta"):
        other = build_mar("mar_test").eval()  # 4x4 tokens
    with pytest.raises(ValueError, match="the draft's tokens"):
        sample(tiny, cspd(other), torch.tensor([0]), [image_generator(0, 0)], cfg=3.0)
