"""LightGen (gtr/models/lightgen.py): the official layout, loading, the sampling seam and the sampler.

The released size is only built on the meta device; behaviour is checked on a small configuration of
the same code. scripts/verify_lightgen.py compares with the official code itself (needs a checkout)."""
import os

import pytest
import torch

from gtr.config import ConfigError
from gtr.checkpoints import CheckpointError, load_mar
from gtr.gtr import gtr
from gtr.method import mar
from gtr.models.lightgen import LightGen, build_lightgen
from gtr.sampler import image_generator, sample
from helpers import assert_close_to_scale

torch.set_num_threads(1)
DATA = os.path.join(os.path.dirname(__file__), "data")
# 128 px: an 8x8 token grid from position embeddings learned on 2x2 (the bicubic resize path).
SMALL = dict(img_size=128, pos_grid=2)


def official_listing():
    rows = {}
    with open(os.path.join(DATA, "lightgen_keys.txt")) as f:
        for line in f:
            if not line.startswith("#"):
                key, shape = line.split(" ", 1)
                rows[key] = tuple(int(x) for x in shape.strip().strip("()").split(",") if x.strip())
    return rows


def small(seed=0, **kw):
    torch.manual_seed(seed)
    return build_lightgen("lightgen_test", **{**SMALL, **kw}).eval()


def text(batch, model, seed=0):
    c = model.config
    return torch.randn(batch, c.max_length, c.caption_channels, generator=torch.Generator().manual_seed(seed))


def test_official_names_and_shapes():
    """tests/data/lightgen_keys.txt: listed by running the official FLUID (scripts/verify_lightgen.py)."""
    with torch.device("meta"):
        model = build_lightgen("lightgen")
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    official = official_listing()
    assert len(official) == 813 and ours == official
    assert round(sum(v.numel() for v in model.state_dict().values()) / 1e6, 2) == 792.24
    assert (model.seq_h, model.seq_w, model.token_dim) == (32, 32, 64)  # 512 px, stride 8, patch 2, 16 channels


def test_official_checkpoint_loads_strictly_and_wrong_ones_are_refused(tmp_path):
    model = small(seed=1)
    path = tmp_path / "checkpoint-last.pth"
    torch.save({"model": model.state_dict()}, path)  # the official training checkpoint layout
    loaded = load_mar(small(seed=2), path, weights="model")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_mar(small(width=48, num_heads=2), path, weights="model")
    (tmp_path / "broken.pth").write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="damaged"):
        load_mar(small(), tmp_path / "broken.pth", weights="model")


def test_position_embeddings_resize_to_the_grid():
    model = small()
    x = torch.zeros(1, model.seq_len, model.config.width)
    resized = model.position(model.encoder_pos_embed_learned, x)
    assert resized.shape == (1, 64, model.config.width)
    same = build_lightgen("lightgen_test", img_size=32, pos_grid=2)  # 2x2 grid: the learned one, unchanged
    assert same.position(same.encoder_pos_embed_learned, x) is same.encoder_pos_embed_learned


def test_condition_seam():
    model = small()
    cond = model.embed_condition(text(2, model))
    assert cond.shape == (2, model.config.max_length, model.config.width)
    assert model.unconditional_embedding(3).shape == (3, model.config.max_length, model.config.width)
    tokens = torch.randn(2, model.seq_len, model.token_dim)
    for n_known in (0, 10, model.seq_len):  # nothing known at the first step: the encoder has no input
        known = torch.stack([torch.randperm(model.seq_len)[:n_known].sort().values for _ in range(2)])
        z = model.condition(tokens, known, cond)
        assert z.shape == (2, model.seq_len, model.config.width) and torch.isfinite(z).all()
    with pytest.raises(ValueError, match=r"T5 states of shape \(B, 6, 24\)"):
        model.embed_condition(torch.randn(2, 5, 24))


@pytest.mark.parametrize("method", [mar(4, 3), gtr(stages=3, t_max=3, t_min=2, t_rec=2, t_detail=3)])
def test_sampler_runs_lightgen_reproducibly_at_any_batch_size(method):
    model = small()
    states = text(3, model)
    kw = dict(cfg=4.0, cfg_schedule="constant")
    together = sample(model, method, states, [image_generator(0, i) for i in range(3)], **kw)
    assert together.shape == (3, model.seq_len, model.token_dim) and torch.isfinite(together).all()
    alone = torch.cat([sample(model, method, states[i:i + 1], [image_generator(0, i)], **kw) for i in range(3)])
    assert_close_to_scale(alone, together)  # batched vs alone: equal up to float rounding
    other_seed = sample(model, method, states[:1], [image_generator(1, 0)], **kw)
    assert not torch.allclose(other_seed, together[:1])


def test_sampler_refuses_one_condition_too_few():
    model = small()
    with pytest.raises(ValueError, match="one condition per generator"):
        sample(model, mar(2, 2), text(1, model), [image_generator(0, i) for i in range(2)])


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="unknown model"):
        build_lightgen("lightgen_xl")
    with pytest.raises(ValueError, match="unknown LightGen config fields"):
        build_lightgen("lightgen_test", buffer_size=4)
    assert isinstance(build_lightgen("lightgen_test"), LightGen)
    assert ConfigError  # the builder's errors reach users as ConfigError (tests/test_configs.py)


# ---------------------------------------------------------------- LazyMAR around LightGen
def random_lightgen(seed=0):
    """Every parameter random (as tests/test_lazymar.py does for MAR): 8x8 grid, 6 layers per stack."""
    torch.manual_seed(seed)
    model = build_lightgen("lightgen_test", **SMALL, depth=6, diffloss_d=6).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0, p.shape[-1] ** -0.5)
            else:
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
    return model


@pytest.fixture(scope="module")
def lazy_setup():
    from baselines.lazymar import lazymar
    model = random_lightgen()
    states = text(2, model)

    def run(method, seed=0, cfg=3.0):
        return sample(model, method, states, [image_generator(seed, i) for i in range(2)], cfg=cfg)
    reference = run(mar(32, 6)), run(mar(32, 6), seed=1)
    return lazymar, run, reference


def test_lazymar_wraps_lightgen_unchanged(lazy_setup):
    lazymar, run, (mar0, mar1) = lazy_setup
    off = dict(refresh=False, encoder_cache=False, decoder_pruning=False, cfg_cache=False, head_cache=False)
    assert torch.equal(run(lazymar(32, 6, **off)), mar0)
    # All steps full and every head step full: LazyMAR's own block code must compute the model's z.
    full = lazymar(5, 6, head_threshold=1)
    assert_close_to_scale(run(full), run(mar(5, 6)))
    assert full.cache.trace == ["full"] * 5
    # Keep ratio 1: the pruned decoder path recomputes every position (no buffer: 64 rows).
    keep_all = lazymar(32, 6, **{**off, "refresh": True, "decoder_pruning": True}, ratios=(1.0,))
    assert_close_to_scale(run(keep_all), mar0)
    assert set(keep_all.cache.kept) == {64}
    # Everything on: lazy steps happen, positions are pruned, and the result stays near LightGen's.
    on = lazymar(32, 6)
    tokens = run(on)
    assert on.cache.trace.count("lazy") > 0 and min(on.cache.kept) < 64
    error = ((tokens - mar0).norm() / (mar1 - mar0).norm()).item()
    assert 0 < error < 0.5, error
