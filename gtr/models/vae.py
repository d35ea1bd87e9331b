"""KL-16 autoencoder used by MAR to map 256x256 images to 16x16x16 latents and back.

This is the convolutional KL autoencoder of latent diffusion (LDM), in the configuration MAR
uses: 128 base channels, channel multipliers (1, 1, 2, 2, 4) (four 2x down/up samplings, stride
16), 16 latent channels, self-attention in the encoder's lowest level and in both middle blocks.
Module names and shapes follow the official code so that MAR's `kl16.ckpt` / `kl16.safetensors`
load unchanged.  # fact: LTH14/mar models/vae.py, main_mar.py
"""
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

# MAR multiplies VAE latents by this before modelling them and divides by it before decoding.
MAR_LATENT_SCALE = 0.2325  # fact: LTH14/mar engine_mar.py

# Keys a training checkpoint may carry that the inference model lacks: LDM's KL autoencoder keeps
# its LPIPS + discriminator loss module under `loss.`. The published kl16 files hold none (the
# 265,856,244-byte kl16.safetensors on the HF hub repo jadechoghari/mar is byte-for-byte the size
# of the 312 model tensors in fp32; kl16.ckpt is ~254 MB, also only room for those), but such keys are
# harmless, so they are skipped like the official non-strict load would; anything else is refused.
IGNORED_KEY_PREFIXES = ("loss.",)


def Normalize(channels):
    """GroupNorm with 32 groups and eps 1e-6, the only normalisation in the model."""
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)  # fact: LTH14/mar models/vae.py


class ResnetBlock(nn.Module):
    """norm -> swish -> conv3x3, twice, plus a (1x1-projected when widths differ) skip."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.norm1 = Normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = Normalize(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        # The official block has no time embedding here (temb_channels=0) and dropout 0.0.
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all spatial positions, with 1x1 convs as projections."""

    def __init__(self, channels):
        super().__init__()
        self.norm = Normalize(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        b, c, hgt, wid = x.shape
        h = self.norm(x)
        q = self.q(h).flatten(2).transpose(1, 2)  # (b, hw, c)
        k = self.k(h).flatten(2)  # (b, c, hw)
        v = self.v(h).flatten(2)  # (b, c, hw)
        # Plain matmuls rather than F.scaled_dot_product_attention so FLOP counters see them on
        # every device (meta included).
        attn = torch.softmax((q @ k) * c ** -0.5, dim=-1)  # (b, hw_query, hw_key)
        out = (v @ attn.transpose(1, 2)).reshape(b, c, hgt, wid)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Stride-2 conv3x3; pads one zero row/column at the bottom/right only, as the official code."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # fact: LTH14/mar models/vae.py (asymmetric pad)


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a conv3x3."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution level: `block` ResnetBlocks, optional `attn` after each, optional resampler.

    The attribute names (block, attn, downsample/upsample) fix the checkpoint key names.
    """

    def __init__(self, channels_in, channels_out, num_blocks, use_attn):
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()
        for _ in range(num_blocks):
            self.block.append(ResnetBlock(channels_in, channels_out))
            if use_attn:
                self.attn.append(AttnBlock(channels_out))
            channels_in = channels_out

    def forward(self, h):
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn) > 0:
                h = self.attn[i](h)
        return h


class Middle(nn.Module):
    """ResnetBlock -> AttnBlock -> ResnetBlock at the lowest resolution."""

    def __init__(self, channels):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, h):
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    """Image (B, in_channels, H, W) -> (B, 2*z_channels, H/2^(L-1), W/2^(L-1)) Gaussian moments."""

    def __init__(self, ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,),
                 in_channels=3, resolution=256, z_channels=16):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        res, c_in = resolution, ch
        for i, mult in enumerate(ch_mult):
            level = Level(c_in, ch * mult, num_res_blocks, use_attn=res in attn_resolutions)
            c_in = ch * mult
            if i != len(ch_mult) - 1:  # no downsampling after the last level
                level.downsample = Downsample(c_in)
                res //= 2
            self.down.append(level)
        self.mid = Middle(c_in)
        self.norm_out = Normalize(c_in)
        self.conv_out = nn.Conv2d(c_in, 2 * z_channels, 3, padding=1)  # mean and log-variance

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent (B, z_channels, h, w) -> image (B, out_ch, h*2^(L-1), w*2^(L-1))."""

    def __init__(self, ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(),
                 out_ch=3, resolution=256, z_channels=16):
        super().__init__()
        c_in = ch * ch_mult[-1]
        res = resolution // 2 ** (len(ch_mult) - 1)
        self.conv_in = nn.Conv2d(z_channels, c_in, 3, padding=1)
        self.mid = Middle(c_in)
        # Built from the lowest resolution up, but stored so that up[i] is level i (same index as
        # the encoder's down[i]); forward therefore walks the list in reverse.
        levels = []
        for i in reversed(range(len(ch_mult))):
            level = Level(c_in, ch * ch_mult[i], num_res_blocks + 1, use_attn=res in attn_resolutions)
            c_in = ch * ch_mult[i]
            if i != 0:  # no upsampling after the highest level
                level.upsample = Upsample(c_in)
                res *= 2
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)
        self.norm_out = Normalize(c_in)
        self.conv_out = nn.Conv2d(c_in, out_ch, 3, padding=1)

    def forward(self, z):
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class DiagonalGaussian:
    """Axis-aligned Gaussian posterior given the encoder's moments (B, 2*C, h, w)."""

    def __init__(self, moments):
        self.moments = moments
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)  # fact: LTH14/mar models/vae.py
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator=None):
        """Draw mean + std * eps; pass a torch.Generator for reproducible draws."""
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self):
        """The most likely latent, i.e. the mean."""
        return self.mean


class AutoencoderKL(nn.Module):
    """LDM KL autoencoder. Defaults are MAR's KL-16: AutoencoderKL(embed_dim=16, ch_mult=(1,1,2,2,4)).

    No weights are loaded here: build it (on any device, `meta` included), then call
    `load_vae_state(vae, path)`.
    """

    def __init__(self, embed_dim=16, ch_mult=(1, 1, 2, 2, 4), ch=128, num_res_blocks=2, resolution=256):
        super().__init__()
        # fact: LTH14/mar models/vae.py -- the official AutoencoderKL passes z_channels=embed_dim and
        # keeps the Encoder/Decoder defaults: ch 128, 2 res blocks, attention at resolution 16 in
        # the encoder only (the decoder's attn_resolutions is empty), 3 image channels.
        self.embed_dim = embed_dim
        self.encoder = Encoder(ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks,
                               attn_resolutions=(16,), resolution=resolution, z_channels=embed_dim)
        self.decoder = Decoder(ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks,
                               attn_resolutions=(), resolution=resolution, z_channels=embed_dim)
        self.quant_conv = nn.Conv2d(2 * embed_dim, 2 * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, embed_dim, 1)

    def encode(self, x):
        """Images in [-1, 1], (B, 3, H, W) -> DiagonalGaussian over (B, embed_dim, H/16, W/16)."""
        return DiagonalGaussian(self.quant_conv(self.encoder(x)))

    def decode(self, z):
        """Unscaled latents (B, embed_dim, h, w) -> images (B, 3, 16h, 16w), roughly in [-1, 1]."""
        return self.decoder(self.post_quant_conv(z))


def to_uint8(images):
    """[-1, 1] floats -> uint8 of the same shape, as MAR writes its PNGs: round(clip((x + 1) / 2 * 255)).

    The one conversion used everywhere (sampling, the tiny world, metrics). fact: LTH14/mar engine_mar.py
    """
    return torch.round(((images.float() + 1) / 2 * 255).clamp(0, 255)).to(torch.uint8)


def decode_tokens(vae, tokens):
    """MAR tokens (B, embed_dim, h, w), in MAR's scaled latent space -> images roughly in [-1, 1]."""
    if tokens.ndim != 4 or tokens.shape[1] != vae.embed_dim:
        raise ValueError(f"decode_tokens expects (B, {vae.embed_dim}, h, w) latents, got shape {tuple(tokens.shape)}")
    return vae.decode(tokens / MAR_LATENT_SCALE)


def encode_images(vae, imgs, generator=None, sample=True):
    """Images in [-1, 1], (B, 3, H, W) -> MAR-scaled latents (B, embed_dim, H/16, W/16).

    MAR trains on a posterior sample (sample=True); sample=False returns the scaled mean.
    """
    if imgs.ndim != 4 or imgs.shape[1] != 3:
        raise ValueError(f"encode_images expects (B, 3, H, W) images, got shape {tuple(imgs.shape)}")
    posterior = vae.encode(imgs)
    z = posterior.sample(generator) if sample else posterior.mode()
    return z * MAR_LATENT_SCALE


def _read_state(path, allow_pickle):
    """Read a flat state dict from a .safetensors file or a torch checkpoint ({'model': sd} or sd)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"VAE checkpoint not found: {path!r}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            return load_file(path, device="cpu")
        # weights_only refuses arbitrary pickled objects. kl16.ckpt's size (254 MB per LTH14/mar
        # util/download.py) leaves no room for more than the weights; allow_pickle=True if needed.
        return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as e:
        raise ValueError(f"could not read VAE checkpoint {path!r} ({type(e).__name__}: {e}). "
                         "Is the file complete and a torch or safetensors checkpoint?") from e


def _describe(items, limit=8):
    items = list(items)
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def load_vae_state(vae, state_or_path, allow_pickle=False):
    """Load KL-16 weights into `vae` and return the list of checkpoint keys that were skipped.

    `state_or_path` is a path to MAR's `kl16.ckpt` (a dict whose "model" entry is the state dict),
    a `.safetensors` file (flat state dict), or an already loaded dict of either kind. Keys under
    IGNORED_KEY_PREFIXES (training-only loss modules) are skipped. Raises ValueError naming the
    offending keys when a model key is missing, a shape differs, or an unknown key is present,
    so a truncated file or the wrong model fails loudly instead of half-loading. A model built on
    the meta device receives the checkpoint's tensors as they are (device and dtype included).
    """
    state = state_or_path
    source = "state dict"
    if isinstance(state_or_path, (str, os.PathLike)):
        source = os.fspath(state_or_path)
        state = _read_state(state_or_path, allow_pickle)
    if not isinstance(state, dict):
        raise ValueError(f"VAE checkpoint {source!r} should hold a dict, got {type(state).__name__}")
    if "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # fact: LTH14/mar models/vae.py loads torch.load(path)["model"]

    expected = vae.state_dict()
    ignored = sorted(k for k in state if k not in expected and k.startswith(IGNORED_KEY_PREFIXES))
    unexpected = sorted(k for k in state if k not in expected and k not in ignored)
    missing = [k for k in expected if k not in state]
    bad = [k for k in expected if k in state and not isinstance(state[k], torch.Tensor)]
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                  for k in expected if k in state and k not in bad and state[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_describe(missing)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_describe(mismatched)}")
    if bad:
        problems.append(f"{len(bad)} non-tensor value(s): {_describe(bad)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_describe(unexpected)}")
    if problems:
        raise ValueError(f"VAE checkpoint {source!r} does not match this AutoencoderKL "
                         f"(embed_dim={vae.embed_dim}): " + "; ".join(problems))
    # A model built on the meta device has no storage to copy into: adopt the tensors instead,
    # which also skips the cost of a random init that would be overwritten anyway.
    on_meta = any(t.is_meta for t in expected.values())
    vae.load_state_dict({k: state[k] for k in expected}, strict=True, assign=on_meta)
    return ignored
