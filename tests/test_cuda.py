"""The sampler, the caches and the FID extractor on a CUDA GPU (make gpu-check runs these: pytest -m cuda).

Every test is marked `cuda` and skips without a GPU. Results are compared relative to their scale, or as
uint8 images (tests/helpers.py): CUDA picks its kernels by shape, as CPUs do.
"""
from pathlib import Path

import numpy as np
import pytest
import torch

from baselines.lazymar import lazymar
from gtr.gtr import gtr
from gtr.method import mar
from gtr.checkpoints import load_mar
from gtr.engine import FastHeadLoop, GraphedHeadLoop, head_loop
from gtr.method import PlainHead
from gtr.models.diffusion import sampling_diffusion
from gtr.models.mar import build_mar
from gtr.load import to_uint8_nhwc
from gtr.sampler import image_generator, sample
from helpers import assert_close_to_scale

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU (make gpu-check runs these)")]
CUDA = torch.device("cuda")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_mar("mar_test").eval()
    with torch.no_grad():  # the zero-initialised head output layers moved, so samples depend on z
        for p in m.diffloss.net.final_layer.parameters():
            p.normal_(std=0.02)
    return m.to(CUDA)


def gens(n, start=0, seed=0):
    return [image_generator(seed, i) for i in range(start, start + n)]


@pytest.mark.parametrize("method", [mar(4, 5), gtr(stages=2, steps=[2, 2], t_max=5, t_min=3, t_rec=3, t_detail=5), lazymar(8, 5)],
                         ids=["mar", "gtr", "lazymar"])
def test_batch_size_and_rank_independent_on_cuda(model, method):
    labels = torch.tensor([0, 3, 5, 7])
    together = sample(model, method, labels, gens(4), cfg=2.5)
    assert together.device.type == "cuda" and torch.isfinite(together).all()
    assert torch.equal(together, sample(model, method, labels, gens(4), cfg=2.5))  # same call, same bits
    halves = [sample(model, method, labels[i:i + 2], gens(2, start=i), cfg=2.5) for i in (0, 2)]  # two "ranks"
    assert_close_to_scale(torch.cat(halves), together, rtol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_gives_the_fp32_images_on_cuda(dtype):
    """The trained tiny MAR (a random one overflows fp16: its tokens reach 1e5) under autocast, as the
    official evaluation samples: finite tokens, and most uint8 pixels within a few levels of fp32's."""
    tiny = load_mar(build_mar("mar_tiny"), str(ROOT / "results" / "tiny_mar" / "tiny_mar_ema.pth")).eval().to(CUDA)
    labels, method = torch.arange(4), mar(8, 20, clip_timesteps=950)
    ref = sample(tiny, method, labels, gens(4), cfg=4.0)
    with torch.autocast("cuda", dtype=dtype):
        low = sample(tiny, method, labels, gens(4), cfg=4.0)
    assert torch.isfinite(low).all()
    a, b = (to_uint8_nhwc(tiny.unpatchify(t.float())).cpu().numpy().astype(np.int16) for t in (low, ref))
    assert np.median(np.abs(a - b)) <= 8  # reduced precision: near, not equal


def test_lazymar_with_its_switches_off_is_plain_mar_on_cuda(model):
    """LazyMAR's cache protocol around the model, every switch off: plain MAR bit for bit, on CUDA too."""
    labels = torch.tensor([4, 9])
    off = dict(refresh=False, encoder_cache=False, decoder_pruning=False, cfg_cache=False, head_cache=False)
    plain = sample(model, mar(8, 5), labels, gens(2), cfg=2.5)
    assert torch.equal(sample(model, lazymar(8, 5, **off), labels, gens(2), cfg=2.5), plain)


def test_a_graphed_chain_reads_new_inputs_at_every_replay(model):
    """engine=graphs: one graph for chains of one shape and setting (temperature 0.9), replayed with new
    inputs (cond, uncond, noise and a per-row guidance tensor), gives what engine=fast computes on them,
    bit for bit."""
    graphed, fast = GraphedHeadLoop(model), FastHeadLoop(model)
    g = torch.Generator(device=CUDA).manual_seed(0)
    width, channels, process = model.config.width, model.token_dim, sampling_diffusion(10)
    for _ in range(3):
        cond, uncond = (torch.randn(6, width, generator=g, device=CUDA) for _ in range(2))
        noise = torch.randn(6, 11, channels, generator=g, device=CUDA)
        scale = 1 + torch.rand(6, generator=g, device=CUDA)
        args = (PlainHead(model), cond, process, noise)
        with torch.no_grad():
            assert torch.equal(graphed(*args, uncond=uncond, cfg=scale, temperature=0.9),
                               fast(*args, uncond=uncond, cfg=scale, temperature=0.9))
    assert len(graphed.graphs) == 1
    with torch.no_grad():  # a tensor temperature runs eagerly; a matmul setting that picks kernels is a new graph
        graphed(*args, uncond=uncond, cfg=scale, temperature=torch.tensor(0.9, device=CUDA))
        assert len(graphed.graphs) == 1
        flag = torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction
        try:
            torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = not flag
            graphed(*args, uncond=uncond, cfg=scale, temperature=0.9)
        finally:
            torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = flag
        assert len(graphed.graphs) == 2


@pytest.mark.parametrize("autocast", [None, torch.float16], ids=["fp32", "fp16-autocast"])
def test_cuda_graphs_give_the_fast_engines_images(autocast):
    """What users see: GtR's tokens on engine=graphs equal engine=fast's bit for bit, fp32 and under the
    official fp16 autocast, over batches that replay the graphs earlier batches captured (MAR's linear
    cfg schedule: a new scale, so a new graph, at every AR step). The trained tiny MAR: a random one
    overflows fp16."""
    tiny = load_mar(build_mar("mar_tiny"), str(ROOT / "results" / "tiny_mar" / "tiny_mar_ema.pth")).eval().to(CUDA)
    fast, graphed = head_loop(tiny, "fast"), head_loop(tiny, "graphs")
    method = gtr(stages=2, steps=[3, 2], t_max=20, t_min=10, t_rec=10, t_detail=20, clip_timesteps=950)
    with torch.autocast("cuda", dtype=autocast or torch.float16, enabled=autocast is not None):
        for start in (0, 4, 8):
            labels = torch.arange(start, start + 4) % 10
            ours = sample(tiny, method, labels, gens(4, start), cfg=4.0, head_loop=graphed)
            assert torch.equal(ours, sample(tiny, method, labels, gens(4, start), cfg=4.0, head_loop=fast))
    assert graphed.graphs and torch.isfinite(ours).all()


def test_fid_extractor_on_cuda_matches_cpu():
    from eval.fid import extract_features
    images = np.random.default_rng(0).integers(0, 256, size=(8, 64, 64, 3), dtype=np.uint8)
    name = "inception"
    try:
        cpu = extract_features(images, name, cuda=False)
    except Exception as e:  # noqa: BLE001 -- the Inception weights are an optional download
        pytest.skip(f"Inception weights not available here: {e}")
    gpu = extract_features(images, name, cuda=True)
    for layer in cpu:
        assert_close_to_scale(gpu[layer].cpu(), cpu[layer], rtol=1e-3)
