"""LightGen: MAR for text-to-image (Fluid-style), with the sampling seam of gtr/models/mar.py.

Written for gtr-bench from the official code's structure (fact: XianfengWu01/LightGen
models/fluid_arbitrary.py `FLUID`, models/utils.py `Text_Embedding`, `Attention_Block`); the
parameter names and shapes are the official ones, so its `checkpoint-*.pth` (`{"model": ...}`) loads
strictly. Only inference is implemented (no training objective).

How it differs from class-conditional MAR:
  * no class buffer: the encoder sees only the known tokens (none at the first step);
  * the condition is the T5-XXL output (B, max_length, 4096) of the prompt, projected and refined once
    per image by `text_emb` (PixArt-alpha projection + 6 ViT blocks); the unconditional input is the
    learned `fake_latent` repeated max_length times;
  * after the decoder, a third stack of `cross_attn_blocks` attends from the image tokens to the text;
    its output (no extra position embedding) is the diffusion head's z;
  * the position embeddings are learned on a 16x16 grid and resized bicubically to the run's grid
    (32x32 at 512 px) on every call, with DINO's 0.1 offset, as the official code does.

The seam the sampler and caches use (same as MAR):
    embed_condition(text_states)        -> (B, max_length, D) refined text (None rows: not allowed)
    unconditional_embedding(B)          -> (B, max_length, D) the fake latent
    encode(tokens, known, cond)         -> encoder output on the known tokens (cond unused: no buffer)
    condition(tokens, known, cond)      -> z (B, L, D) after the text cross-attention
    head(x, t, z)                       -> the diffusion head (same network as MAR's)
and the pieces caches use, as MAR's (buffer_size 0; output(hidden, cond) runs the cross stack).
"""
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from gtr.models.mar import MAR, Block, DiffLoss, Mlp


@dataclass
class LightGenConfig:
    """Architecture of a LightGen model; defaults are the released one (fact: XianfengWu01/LightGen
    scripts/geneval.py and pipeline_image.py: fluid_large, vae_stride 8, patch 2, 16 latent channels,
    DiffLoss 8 x 1536, max_length 128, 512 x 512 images)."""
    img_size: int = 512
    vae_stride: int = 8
    patch_size: int = 2
    vae_embed_dim: int = 16
    width: int = 1024            # encoder = decoder = cross-attention width (fluid_large)
    depth: int = 16              # encoder depth = decoder depth = cross-attention depth
    num_heads: int = 16
    text_depth: int = 6          # ViT blocks refining the projected T5 states
    caption_channels: int = 4096  # T5-XXL hidden size
    max_length: int = 128        # T5 tokens per prompt (padded): the fake latent is repeated this often
    pos_grid: int = 16           # learned position embeddings: a 16 x 16 grid ("start from 256px ckpt")
    interpolate_offset: float = 0.1
    mlp_ratio: float = 4.0
    diffloss_d: int = 8
    diffloss_w: int = 1536

    @property
    def grid(self):
        cell = self.vae_stride * self.patch_size
        if self.img_size % cell:
            raise ValueError(f"image size {self.img_size} is not a multiple of vae_stride*patch_size={cell}")
        return self.img_size // cell, self.img_size // cell

    @property
    def token_dim(self):
        return self.vae_embed_dim * self.patch_size ** 2


MODEL_CONFIGS = {
    "lightgen": {},  # the released model: fluid_large at 512 px (fact: LightGen models/fluid_arbitrary.py)
    # A small model of the same code for tests (not official).
    "lightgen_test": dict(img_size=64, width=32, depth=1, num_heads=2, text_depth=1, caption_channels=24,
                          max_length=6, pos_grid=2, diffloss_d=1, diffloss_w=32),
}


def build_lightgen(name="lightgen", **overrides):
    """Build a LightGen by name (`lightgen`, `lightgen_test`) with field overrides."""
    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODEL_CONFIGS)}")
    fields = {**MODEL_CONFIGS[name], **overrides}
    unknown = set(fields) - set(LightGenConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown LightGen config fields {sorted(unknown)}")
    return LightGen(LightGenConfig(**fields))


class TextProjection(nn.Module):
    """Linear -> GELU(tanh) -> Linear, named as diffusers' PixArtAlphaTextProjection (linear_1, linear_2)."""

    def __init__(self, in_features, hidden):
        super().__init__()
        self.linear_1 = nn.Linear(in_features, hidden)
        self.linear_2 = nn.Linear(hidden, hidden)

    def forward(self, x):
        return self.linear_2(F.gelu(self.linear_1(x), approximate="tanh"))


class TextEmbedding(nn.Module):
    """T5 states -> projected -> `text_depth` ViT blocks -> LayerNorm (official `Text_Embedding`)."""

    def __init__(self, c):
        super().__init__()
        self.text_proj = TextProjection(c.caption_channels, c.width)
        self.text_aligner = nn.ModuleList([Block(c.width, c.num_heads, c.mlp_ratio, 0.0, 0.0)
                                           for _ in range(c.text_depth)])
        self.text_aligner_norm = nn.LayerNorm(c.width, eps=1e-6)

    def forward(self, states):
        x = self.text_proj(states)
        for block in self.text_aligner:
            x = block(x)
        return self.text_aligner_norm(x)


class CrossAttention(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.query_linear = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, context):
        b, n, d = x.shape
        h = self.num_heads
        q = self.query_linear(x).view(b, n, h, d // h).transpose(1, 2)
        k, v = self.kv(context).view(b, context.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


class CrossBlock(nn.Module):
    """The official cross `Attention_Block`. Note its residual: x = norm(q) + attn(norm(q), norm(text)),
    i.e. the residual stream restarts from the normalised query (not pre-norm ViT)."""

    def __init__(self, dim, num_heads, mlp_ratio):
        super().__init__()
        self.normq = nn.LayerNorm(dim, eps=1e-6)
        self.normkv = nn.LayerNorm(dim, eps=1e-6)
        self.attn = CrossAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), 0.0)

    def forward(self, x, text):
        x = self.normq(x)
        x = x + self.attn(x, self.normkv(text))
        return x + self.mlp(self.norm2(x))


class LightGen(nn.Module):
    """LightGen encoder-decoder, text cross-attention and diffusion head. See the module docstring."""

    def __init__(self, config: LightGenConfig):
        super().__init__()
        self.config = c = config
        if c.width % c.num_heads:
            raise ValueError(f"width {c.width} is not divisible by {c.num_heads} heads")
        self.seq_h, self.seq_w = c.grid
        self.seq_len = self.seq_h * self.seq_w
        self.token_dim = c.token_dim
        pos_len = c.pos_grid ** 2
        block = lambda: Block(c.width, c.num_heads, c.mlp_ratio, 0.0, 0.0)  # noqa: E731 (no dropout: inference)

        self.last_embed = nn.Linear(c.width, c.width)
        self.last_pos_embed_learned = nn.Parameter(torch.zeros(1, pos_len, c.width))
        self.fake_latent = nn.Parameter(torch.zeros(1, 1, c.width))
        self.text_emb = TextEmbedding(c)
        self.cross_attn_blocks = nn.ModuleList([CrossBlock(c.width, c.num_heads, c.mlp_ratio) for _ in range(c.depth)])
        self.cross_norm = nn.LayerNorm(c.width, eps=1e-6)

        self.z_proj = nn.Linear(self.token_dim, c.width)
        self.z_proj_ln = nn.LayerNorm(c.width, eps=1e-6)
        self.encoder_pos_embed_learned = nn.Parameter(torch.zeros(1, pos_len, c.width))
        self.encoder_blocks = nn.ModuleList([block() for _ in range(c.depth)])
        self.encoder_norm = nn.LayerNorm(c.width, eps=1e-6)

        self.decoder_embed = nn.Linear(c.width, c.width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.width))
        self.decoder_pos_embed_learned = nn.Parameter(torch.zeros(1, pos_len, c.width))
        self.decoder_blocks = nn.ModuleList([block() for _ in range(c.depth)])
        self.decoder_norm = nn.LayerNorm(c.width, eps=1e-6)

        self.diffloss = DiffLoss(self.token_dim, c.width, c.diffloss_w, c.diffloss_d)
        if not any(p.is_meta for p in self.parameters()):
            self.initialize_weights()

    def initialize_weights(self, generator=None):
        """Random weights for tests and smoke runs: normal(0.02) embeddings, xavier linears."""
        for p in (self.fake_latent, self.mask_token, self.encoder_pos_embed_learned, self.decoder_pos_embed_learned,
                  self.last_pos_embed_learned):
            nn.init.normal_(p, std=0.02, generator=generator)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight, generator=generator)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # ---- tokens <-> latents: MAR's layout and code (they read config.patch_size / vae_embed_dim, seq_h / seq_w)
    patchify = MAR.patchify
    unpatchify = MAR.unpatchify

    def position(self, pos_embed, like):
        """A learned (1, g*g, D) embedding resized to this model's grid, in `like`'s dtype.

        As the official interpolate_pos_encoding: unchanged when the grid is the learned one, else
        bicubic with scale factors (w + 0.1) / g, (h + 0.1) / g computed in float32 (the 0.1 avoids
        floating point rounding to one cell less; fact: LightGen models/fluid_arbitrary.py)."""
        g, d = self.config.pos_grid, pos_embed.shape[-1]
        if self.seq_len == g * g and self.seq_h == self.seq_w:
            return pos_embed
        offset = self.config.interpolate_offset
        grid = pos_embed.float().reshape(1, g, g, d).permute(0, 3, 1, 2)
        if offset:
            out = F.interpolate(grid, mode="bicubic", scale_factor=((self.seq_w + offset) / g, (self.seq_h + offset) / g))
        else:
            out = F.interpolate(grid, mode="bicubic", size=(self.seq_w, self.seq_h))
        if tuple(out.shape[-2:]) != (self.seq_w, self.seq_h):
            raise ValueError(f"position embedding resized to {tuple(out.shape[-2:])}, expected {(self.seq_w, self.seq_h)}")
        return out.permute(0, 2, 3, 1).reshape(1, -1, d).to(like.dtype)

    # ---- the sampling seam ----
    def embed_condition(self, text_states):
        """T5 states (B, max_length, caption_channels) -> refined text (B, max_length, D), once per image."""
        c = self.config
        text_states = torch.as_tensor(text_states, device=self.fake_latent.device)
        if text_states.ndim != 3 or text_states.shape[1:] != (c.max_length, c.caption_channels):
            raise ValueError(f"LightGen needs T5 states of shape (B, {c.max_length}, {c.caption_channels}) "
                             f"(gtr.models.t2i.TextEncoder.encode), got {tuple(text_states.shape)}")
        return self.text_emb(text_states.to(self.fake_latent.dtype))

    def unconditional_embedding(self, batch_size):
        """The learned fake latent repeated over the text length (the official CFG input)."""
        return self.fake_latent.expand(batch_size, self.config.max_length, -1)

    buffer_size = 0  # no class buffer (caches written for MAR index sequence rows past a buffer)

    def encoder_input(self, tokens, cond=None):
        """The encoder's input for every position (B, L, D) (the text does not enter the encoder)."""
        x = self.z_proj(tokens)
        return self.z_proj_ln(x + self.position(self.encoder_pos_embed_learned, x))

    def encode(self, tokens, known, cond=None):
        """Encoder on the known tokens only (an empty sequence at the first step)."""
        x = self.encoder_input(tokens)
        x = torch.gather(x, 1, known[..., None].expand(-1, -1, x.shape[-1]))
        if x.shape[1]:  # nothing known yet: the encoder has nothing to attend over
            for block in self.encoder_blocks:
                x = block(x)
        return self.encoder_norm(x)

    def decoder_pos(self, like):
        """The decoder's position embedding resized to the grid (1, L, D)."""
        return self.position(self.decoder_pos_embed_learned, like)

    def decoder_input(self, encoded, known):
        """The decoder's input: embedded encoder rows where known, the mask token elsewhere."""
        x = self.decoder_embed(encoded)
        b, _, d = x.shape
        full = self.mask_token.to(x.dtype).expand(b, self.seq_len, d).clone()
        full = full.scatter(1, known[..., None].expand(-1, -1, d), x)
        return full + self.decoder_pos(full)

    def output(self, hidden, cond):
        """z from the last decoder block's output (B, L, D): the decoder norm, then the text
        cross-attention stack (its own position embedding, no self-attention between positions)."""
        x = self.last_embed(self.decoder_norm(hidden))
        x = x + self.position(self.last_pos_embed_learned, x)
        cond = cond.to(x.dtype)
        for block in self.cross_attn_blocks:
            x = block(x, cond)
        return self.cross_norm(x)

    def condition(self, tokens, known, cond):
        """Conditioning vectors z for every position given the known tokens and the embedded text."""
        x = self.decoder_input(self.encode(tokens, known), known)
        for block in self.decoder_blocks:
            x = block(x)
        return self.output(x, cond)

    def head(self, x, t, z):
        """Diffusion head: noisy tokens x (N, C), training timesteps t (N,), z (N, D) -> (N, 2C)."""
        return self.diffloss.net(x, t, z)

    def config_dict(self):
        return asdict(self.config)
