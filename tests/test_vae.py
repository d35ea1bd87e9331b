"""Tests for gtr/models/vae.py: checkpoint layout, parameter count, loading, shapes.

The full KL-16 model is only built on the meta device here (no weights, no compute); loading and
numerical behaviour use a small configuration of the same code. Set GTR_OFFICIAL_MAR to a checkout
of LTH14/mar to also compare against the official implementation on random weights.
"""
import importlib.util
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from gtr.models.vae import MAR_LATENT_SCALE, AutoencoderKL, decode_tokens, encode_images, load_vae_state

KEYS_FILE = Path(__file__).parent / "data" / "kl16_keys.txt"


def meta_vae():
    with torch.device("meta"):
        return AutoencoderKL()


def small_vae(seed=0):
    # Same code path as KL-16 with 2 levels (stride 2), 32/64 channels, 4 latent channels: fast on CPU.
    torch.manual_seed(seed)
    return AutoencoderKL(embed_dim=4, ch_mult=(1, 2), ch=32, num_res_blocks=1, resolution=16).eval()


def test_state_dict_layout_matches_official_listing():
    # tests/data/kl16_keys.txt was written by running LTH14/mar models/vae.py:
    # AutoencoderKL(embed_dim=16, ch_mult=(1, 1, 2, 2, 4)).state_dict(), one "name shape" per line.
    expected = KEYS_FILE.read_text().splitlines()
    ours = [f"{k} {','.join(map(str, v.shape))}" for k, v in meta_vae().state_dict().items()]
    assert len(expected) == 312
    assert ours == expected


def test_parameter_counts():
    vae = meta_vae()
    count = lambda m: sum(p.numel() for p in m.parameters())
    # Measured on the official model: 66.46M total, decoder 38.19M (REFERENCE.md section 1).
    assert count(vae) == 66_456_019
    assert count(vae.decoder) == 38_188_931
    assert count(vae.encoder) == 28_265_760


def test_full_size_shapes_on_meta():
    vae = meta_vae()
    imgs = decode_tokens(vae, torch.empty(2, 16, 16, 16, device="meta"))
    assert imgs.shape == (2, 3, 256, 256)
    posterior = vae.encode(torch.empty(2, 3, 256, 256, device="meta"))
    assert posterior.mean.shape == posterior.std.shape == (2, 16, 16, 16)
    assert posterior.sample().shape == (2, 16, 16, 16)
    assert encode_images(vae, torch.empty(2, 3, 256, 256, device="meta")).shape == (2, 16, 16, 16)


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_round_trip_ckpt_safetensors_and_dict(tmp_path):
    src = small_vae(seed=0)
    sd = src.state_dict()
    # MAR's kl16.ckpt layout: {"model": state_dict}; add LDM-style training-loss keys, which a
    # training checkpoint may carry and which must be skipped.
    extra = {"loss.logvar": torch.zeros(()), "loss.discriminator.main.0.weight": torch.randn(4, 3, 4, 4)}
    torch.save({"model": {**sd, **extra}}, tmp_path / "kl16.ckpt")
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "kl16.safetensors")

    cases = [(tmp_path / "kl16.ckpt", sorted(extra)), (str(tmp_path / "kl16.safetensors"), []),
             (sd, []), ({"model": sd}, [])]
    for source, expect_ignored in cases:
        dst = small_vae(seed=1)
        assert load_vae_state(dst, source) == expect_ignored
        _assert_same_weights(src, dst)
    # A model built on the meta device (no random init) gets real weights from the file.
    with torch.device("meta"):
        dst = AutoencoderKL(embed_dim=4, ch_mult=(1, 2), ch=32, num_res_blocks=1, resolution=16)
    load_vae_state(dst, tmp_path / "kl16.ckpt")
    _assert_same_weights(src, dst)


def test_refuses_wrong_shape_missing_and_unknown_keys():
    sd = small_vae().state_dict()
    wrong = dict(sd, **{"post_quant_conv.weight": torch.zeros(4, 4, 3, 3)})
    with pytest.raises(ValueError, match=r"post_quant_conv\.weight: checkpoint \(4, 4, 3, 3\) vs model \(4, 4, 1, 1\)"):
        load_vae_state(small_vae(), wrong)

    missing = {k: v for k, v in sd.items() if k != "decoder.conv_out.bias"}
    with pytest.raises(ValueError, match=r"1 missing key\(s\): decoder\.conv_out\.bias"):
        load_vae_state(small_vae(), {"model": missing})

    with pytest.raises(ValueError, match=r"unexpected key\(s\): encoder\.extra\.weight"):
        load_vae_state(small_vae(), dict(sd, **{"encoder.extra.weight": torch.zeros(1)}))

    # The full KL-16 model must refuse a checkpoint of another configuration outright.
    with pytest.raises(ValueError, match="missing key"):
        load_vae_state(meta_vae(), sd)


def test_refuses_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_vae_state(small_vae(), tmp_path / "absent.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="could not read VAE checkpoint"):
        load_vae_state(small_vae(), tmp_path / "junk.ckpt")
    # A truncated safetensors file (e.g. an interrupted download).
    sd = small_vae().state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "full.safetensors")
    data = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="could not read VAE checkpoint"):
        load_vae_state(small_vae(), tmp_path / "cut.safetensors")


@torch.no_grad()
def test_scaling_helpers_and_sampling():
    vae = small_vae()
    tokens = torch.randn(2, 4, 2, 2)
    imgs = decode_tokens(vae, tokens)
    assert imgs.shape == (2, 3, 4, 4) and torch.isfinite(imgs).all()
    torch.testing.assert_close(imgs, vae.decode(tokens / MAR_LATENT_SCALE))

    x = torch.rand(2, 3, 8, 8) * 2 - 1
    posterior = vae.encode(x)
    torch.testing.assert_close(encode_images(vae, x, sample=False), posterior.mean * MAR_LATENT_SCALE)
    a = encode_images(vae, x, generator=torch.Generator().manual_seed(3))
    b = encode_images(vae, x, generator=torch.Generator().manual_seed(3))
    c = encode_images(vae, x, generator=torch.Generator().manual_seed(4))
    assert a.shape == (2, 4, 4, 4) and torch.equal(a, b) and not torch.equal(a, c)
    eps = torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, (posterior.mean + posterior.std * eps) * MAR_LATENT_SCALE)

    with pytest.raises(ValueError, match=r"expects \(B, 4, h, w\)"):
        decode_tokens(vae, torch.randn(2, 16, 2, 2))
    with pytest.raises(ValueError, match=r"expects \(B, 3, H, W\)"):
        encode_images(vae, torch.randn(3, 8, 8))


OFFICIAL = os.environ.get("GTR_OFFICIAL_MAR")


@pytest.mark.skipif(not OFFICIAL, reason="set GTR_OFFICIAL_MAR to an LTH14/mar checkout to compare")
@torch.no_grad()
def test_matches_official_implementation():
    path = Path(OFFICIAL) / "models" / "vae.py"
    if not path.is_file():
        pytest.fail(f"GTR_OFFICIAL_MAR={OFFICIAL!r} has no models/vae.py")
    spec = importlib.util.spec_from_file_location("official_mar_vae", path)
    official = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(official)

    torch.manual_seed(0)
    ref = official.AutoencoderKL(embed_dim=16, ch_mult=(1, 1, 2, 2, 4)).eval()
    for p in ref.parameters():  # make norms and biases non-trivial
        p.add_(0.05 * torch.randn_like(p))
    ours = AutoencoderKL().eval()
    assert load_vae_state(ours, {"model": ref.state_dict()}) == []

    # Small spatial sizes keep this fast; every layer (incl. attention at the lowest level) runs.
    z = torch.randn(1, 16, 4, 4)
    torch.testing.assert_close(ours.decode(z), ref.decode(z), atol=5e-5, rtol=0)
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    po, pr = ours.encode(x), ref.encode(x)
    torch.testing.assert_close(po.mean, pr.mean, atol=5e-5, rtol=0)
    torch.testing.assert_close(po.std, pr.std, atol=5e-5, rtol=0)
