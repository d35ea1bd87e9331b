"""MAR model: official layout, checkpoint loading, diffusion maths."""
import math
import os

import numpy as np
import pytest
import torch

from gtr.checkpoints import CheckpointError, load_mar, read_state_dict, resolve, save_official
from gtr.models.diffusion import Diffusion, cosine_betas, respaced_timesteps, sample_head, sampling_diffusion
from gtr.models.mar import build_mar

DATA = os.path.join(os.path.dirname(__file__), "data")


def official_listing(name):
    rows = {}
    with open(os.path.join(DATA, f"{name}_keys.txt")) as f:
        for line in f:
            if line.startswith("#"):
                continue
            key, shape = line.split(" ", 1)
            rows[key] = tuple(int(x) for x in shape.strip().strip("()").split(",") if x.strip())
    return rows


@pytest.mark.parametrize("name,params", [("mar_base", 207.92), ("mar_large", 478.33), ("mar_huge", 942.40)])
def test_official_keys_and_shapes(name, params):
    """Names and shapes equal the official model's (listing made by running LTH14/mar models/mar.py)."""
    with torch.device("meta"):
        model = build_mar(name)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == official_listing(name)
    # Parameter counts of REFERENCE.md section 1 (measured with the official code).
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == params


def test_unknown_model_and_fields():
    with pytest.raises(ValueError, match="unknown model 'mar_giant'"):
        build_mar("mar_giant")
    with pytest.raises(ValueError, match="unknown MAR config fields"):
        build_mar("mar_test", depht=3)
    with pytest.raises(ValueError, match="not a multiple"):
        build_mar("mar_test", img_size=70)


def test_checkpoint_round_trip_and_weights_choice(tmp_path):
    torch.manual_seed(0)
    model, ema = build_mar("mar_test"), build_mar("mar_test")
    path = str(tmp_path / "checkpoint-last.pth")
    save_official(model, path, ema_model=ema)
    loaded = load_mar(build_mar("mar_test"), path)  # model_ema by default
    for (k, a), b in zip(loaded.state_dict().items(), ema.state_dict().values()):
        assert torch.equal(a, b), k
    loaded = load_mar(build_mar("mar_test"), path, weights="model")
    assert torch.equal(loaded.fake_latent, model.fake_latent)
    with torch.device("meta"):
        meta_model = build_mar("mar_test")
    load_mar(meta_model, path)
    assert not meta_model.fake_latent.is_meta


def test_official_training_checkpoint_with_namespace_loads(tmp_path):
    """Official training checkpoints also pickle an argparse.Namespace of their arguments."""
    import argparse
    model = build_mar("mar_test")
    path = str(tmp_path / "checkpoint-last.pth")
    ema = build_mar("mar_test")
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(1.0)  # EMA weights differ from the raw ones: which entry was read is visible
    torch.save({"model": model.state_dict(), "model_ema": ema.state_dict(), "epoch": 3,
                "args": argparse.Namespace(model="mar_test", cfg=2.9)}, path)
    loaded = load_mar(build_mar("mar_test"), path)  # model_ema by default, as MAR evaluates
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), ema.state_dict().values()))
    raw = load_mar(build_mar("mar_test"), path, weights="model")
    assert all(torch.equal(a, b) for a, b in zip(raw.state_dict().values(), model.state_dict().values()))


def test_safetensors_round_trip(tmp_path):
    from safetensors.torch import save_file
    model = build_mar("mar_test")
    path = str(tmp_path / "mar-test.safetensors")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    loaded = load_mar(build_mar("mar_test"), path)
    assert torch.equal(loaded.mask_token, model.mask_token)


def test_wrong_size_and_corrupt_checkpoints_are_refused(tmp_path):
    small = build_mar("mar_test")
    other = build_mar("mar_test", width=48, num_heads=2)
    path = str(tmp_path / "ckpt.pth")
    save_official(other, path)
    with pytest.raises(CheckpointError, match=r"shape mismatches: .*\(1, 48\) vs model \(1, 32\)"):
        load_mar(small, path)
    state = dict(small.state_dict())
    state.pop("mask_token")
    state["extra.weight"] = torch.zeros(1)
    torch.save({"model": state, "model_ema": state}, path)
    with pytest.raises(CheckpointError, match="missing keys: mask_token.*unexpected keys: extra.weight"):
        load_mar(small, path)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="damaged"):
        load_mar(small, str(tmp_path / "junk.pth"))
    torch.save({"model": small.state_dict()}, path)
    with pytest.raises(CheckpointError, match="no 'model_ema'"):
        read_state_dict(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve(str(tmp_path / "missing.pth"))


def test_offline_hub_error_names_the_file(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="mar-base.safetensors.*checkpoint=PATH"):
        resolve(None, "mar_base", cache_dir="/nonexistent-gtr-cache")


def test_respacing_matches_adm_and_clip():
    assert respaced_timesteps(2) == [0, 999]
    ts = respaced_timesteps(100)
    assert len(ts) == 100 and ts[0] == 0 and ts[-1] == 999 and ts[1] == 10
    # DiSA's clip at 950 merges the top five timesteps: "100" -> 96 distinct (REFERENCE section 2).
    assert len(respaced_timesteps(100, clip_timesteps=950)) == 96
    assert len(respaced_timesteps(50, clip_timesteps=950)) == 48
    assert respaced_timesteps(1) == [999]
    with pytest.raises(ValueError):
        respaced_timesteps(0)


def test_cosine_schedule_and_respaced_process():
    betas = cosine_betas()
    assert betas.shape == (1000,) and betas.max() == pytest.approx(0.999) and betas[0] > 0
    full, spaced = Diffusion(), sampling_diffusion(100)
    # Respacing keeps alpha_bar at the kept timesteps.
    assert np.allclose(spaced.alphas_cumprod, full.alphas_cumprod[spaced.timesteps], rtol=1e-10)


def test_one_step_diffusion_predicts_x0_from_noise():
    """T=1 (which crashes the official code) is one x0 prediction from pure noise at t=999."""
    process = sampling_diffusion(1)
    assert process.num_steps == 1 and process.timesteps == [999]
    x0, eps = torch.randn(5, 4), torch.randn(5, 4)
    x_t = process.q_sample(x0, torch.zeros(5, dtype=torch.long), eps)
    seen = []

    def oracle(x, t, c, i, n):
        seen.append(t.clone())
        return torch.cat([eps, torch.zeros_like(eps)], dim=1)
    noise = torch.stack([x_t, torch.randn(5, 4)], dim=1)
    out = sample_head(oracle, torch.zeros(5, 3), sampling_diffusion(1), noise)
    assert torch.equal(seen[0], torch.full((5,), 999))
    # float32 cancellation at t=999 (x0 = 1e4 * (x - eps)) costs about 1e-3
    assert torch.allclose(out, x0, atol=5e-3)


def test_head_sampling_with_exact_eps_recovers_data():
    """With the true eps for a single data point the sampler lands on it (many steps)."""
    x0 = torch.tensor([[0.5, -0.25, 0.1]])
    acp = torch.tensor(Diffusion().alphas_cumprod, dtype=torch.float64)

    def oracle(x, t, c, i, n):
        a = acp[t].float()[:, None]
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return torch.cat([eps, -torch.ones_like(eps)], dim=1)
    noise = torch.randn(1, 51, 3, generator=torch.Generator().manual_seed(0))
    out = sample_head(oracle, torch.zeros(1, 2), sampling_diffusion(50), noise)
    assert torch.allclose(out, x0, atol=1e-3)


def test_guidance_uses_conditional_variance_and_mixes_eps():
    calls = []

    def net(x, t, c, i, n):
        calls.append(x.shape[0])
        eps = c[:, :2]
        var = torch.where(c[:, 2:3] > 0, 1.0, -1.0).expand(-1, 2)
        return torch.cat([eps, var], dim=1)
    cond = torch.tensor([[1.0, 1.0, 1.0]])
    uncond = torch.tensor([[0.0, 0.0, -1.0]])
    noise = torch.zeros(1, 3, 2)
    a = sample_head(net, cond, sampling_diffusion(2), noise, uncond=uncond, cfg=3.0)
    b = sample_head(lambda x, t, c, i, n: torch.cat([3.0 * c[:, :2], torch.ones(1, 2)], dim=1), cond,
                    sampling_diffusion(2), noise)
    assert calls == [2, 2] and torch.allclose(a, b)


def test_training_loss_is_finite_and_decreases():
    torch.manual_seed(0)
    model = build_mar("mar_test")
    tokens = torch.randn(8, model.seq_len, model.token_dim) * 0.5
    labels = torch.arange(8) % 10
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = model(tokens, labels, generator=torch.Generator().manual_seed(len(losses)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


def test_patchify_round_trip():
    model = build_mar("mar_tiny")
    pixels = torch.randn(2, 1, 32, 32)
    tokens = model.patchify(pixels)
    assert tokens.shape == (2, 64, 16)
    assert torch.equal(model.unpatchify(tokens), pixels)
    # Token 1 is the 4x4 patch at rows 0-3, columns 4-7 (raster order of the 8x8 grid).
    assert torch.equal(tokens[0, 1].view(4, 4), pixels[0, 0, 0:4, 4:8])
