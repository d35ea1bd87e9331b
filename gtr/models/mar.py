"""MAR: the masked autoregressive encoder-decoder and its per-token diffusion head.

Written for gtr-bench; the parameter names and shapes are those of the official checkpoints
(fact: LTH14/mar models/mar.py, models/diffloss.py) so `checkpoint-last.pth` loads strictly.

The model exposes a small seam for samplers and caches, and knows nothing about sampling methods:
    embed_condition(labels)                       -> (B, D) class embedding (label -1: the unconditional one)
    unconditional_embedding(B)                    -> (B, D) the fake latent
    encode(tokens, known, class_emb)              -> encoder output on buffer + known tokens
    decode(encoded, known)                        -> z, conditioning vectors for every position
    condition(tokens, known, class_emb)           -> decode(encode(...))
    head(x, t, z)                                 -> (eps, variance values) of the diffusion head
and, for caches that run the blocks themselves (baselines/lazymar.py), the pieces of condition():
    buffer_size, encoder_input(tokens, cond), encoder_blocks, encoder_norm, decoder_input(encoded,
    known), decoder_pos(like), decoder_embed, decoder_blocks, output(hidden, cond) -> z
`known` is a (B, n) long tensor of the positions already generated, ascending, the same n for the
whole batch. Positions index the h x w token grid in raster order.
"""
from dataclasses import dataclass, asdict

import math
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy import stats

from gtr.models.diffusion import Diffusion


@dataclass
class MARConfig:
    """Architecture of a MAR model. Defaults are MAR's ImageNet-256 setting (fact: LTH14/mar)."""
    img_size: int = 256          # pixels; an (h, w) pair is allowed for non-square grids
    vae_stride: int = 16         # pixels per latent cell (KL-16)
    patch_size: int = 1          # latent cells per token side
    vae_embed_dim: int = 16      # latent channels
    width: int = 1024            # encoder and decoder width
    depth: int = 16              # encoder depth (= decoder depth)
    num_heads: int = 16
    decoder_width: int = None    # None: same as width
    decoder_depth: int = None
    decoder_num_heads: int = None
    mlp_ratio: float = 4.0
    buffer_size: int = 64
    class_num: int = 1000
    diffloss_d: int = 3
    diffloss_w: int = 1024
    label_drop_prob: float = 0.1
    mask_ratio_min: float = 0.7
    attn_dropout: float = 0.1
    proj_dropout: float = 0.1
    diffusion_batch_mul: int = 4

    @property
    def grid(self):
        """Token grid (h, w)."""
        size = self.img_size if isinstance(self.img_size, (tuple, list)) else (self.img_size, self.img_size)
        cell = self.vae_stride * self.patch_size
        if size[0] % cell or size[1] % cell:
            raise ValueError(f"image size {size} is not a multiple of vae_stride*patch_size={cell}")
        return size[0] // cell, size[1] // cell

    @property
    def token_dim(self):
        return self.vae_embed_dim * self.patch_size ** 2


# Architectures of the released models (fact: LTH14/mar models/mar.py mar_base/large/huge and its
# README: DiffLoss depth x width 6 x 1024, 8 x 1280, 12 x 1536).
MODEL_CONFIGS = {
    "mar_base": dict(width=768, depth=12, num_heads=12, diffloss_d=6, diffloss_w=1024),
    "mar_large": dict(width=1024, depth=16, num_heads=16, diffloss_d=8, diffloss_w=1280),
    "mar_huge": dict(width=1280, depth=20, num_heads=16, diffloss_d=12, diffloss_w=1536),
    # Small models for tests and the tiny world (not official).
    "mar_test": dict(width=32, depth=1, num_heads=2, buffer_size=4, class_num=10, diffloss_d=1, diffloss_w=32,
                     img_size=64, vae_stride=16),
    # The tiny world: Fashion-MNIST padded to 32x32, raw 4x4 pixel patches as 16-dim tokens, 8x8 grid.
    "mar_tiny": dict(img_size=32, vae_stride=1, patch_size=4, vae_embed_dim=1, width=128, depth=3, num_heads=4,
                     buffer_size=16, class_num=10, diffloss_d=3, diffloss_w=192, attn_dropout=0.0,
                     proj_dropout=0.0, diffusion_batch_mul=2),
    # The tiny world on ImageNet-256's sequence: the same images as 2x2 pixel patches (4-dim tokens), a 16x16 grid
    # of 256 tokens, so the paper's AR step counts (64 / 16 / 8) and GtR's 24 + 6 + 2 apply unscaled. Otherwise
    # mar_tiny's layers; the buffer scales with the sequence (ImageNet MAR: 64 for 256 tokens).
    "mar_tiny16": dict(img_size=32, vae_stride=1, patch_size=2, vae_embed_dim=1, width=128, depth=3, num_heads=4,
                       buffer_size=64, class_num=10, diffloss_d=3, diffloss_w=192, attn_dropout=0.0,
                       proj_dropout=0.0, diffusion_batch_mul=2),
    # A draft for the tiny world's speculative rows (CSpD): the same tokens, 1+1 layers of width 64, head 96 x 2.
    "mar_tiny_draft": dict(img_size=32, vae_stride=1, patch_size=4, vae_embed_dim=1, width=64, depth=1, num_heads=4,
                           buffer_size=16, class_num=10, diffloss_d=2, diffloss_w=96, attn_dropout=0.0,
                           proj_dropout=0.0, diffusion_batch_mul=2),
}


def build_mar(name=None, **overrides):
    """Build a MAR by name (`mar_base`, `mar_large`, `mar_huge`, `mar_test`) with field overrides."""
    if name is not None and name not in MODEL_CONFIGS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODEL_CONFIGS)}")
    fields = dict(MODEL_CONFIGS.get(name, {}))
    fields.update(overrides)
    unknown = set(fields) - set(MARConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown MAR config fields {sorted(unknown)}")
    return MAR(MARConfig(**fields))


class Attention(nn.Module):
    def __init__(self, dim, num_heads, attn_drop, proj_drop):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, d)))


class Mlp(nn.Module):
    def __init__(self, dim, hidden, drop):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm ViT block with timm's parameter names (norm1, attn.qkv, attn.proj, norm2, mlp.fc1/fc2)."""

    def __init__(self, dim, num_heads, mlp_ratio, attn_drop, proj_drop):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, attn_drop, proj_drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), proj_drop)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def modulate(x, shift, scale):
    return x * (1 + scale) + shift


class TimestepEmbedder(nn.Module):
    """Sinusoidal embedding of the (training-time) timestep followed by a 2-layer MLP."""

    def __init__(self, hidden, freq_dim=256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t):
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))  # a model cast to bf16/fp16 embeds in its dtype


class ResBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.in_ln = nn.LayerNorm(channels, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(channels, channels), nn.SiLU(), nn.Linear(channels, channels))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 3 * channels))

    def forward(self, x, y):
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(modulate(self.in_ln(x), shift, scale))


class FinalLayer(nn.Module):
    def __init__(self, channels, out_channels):
        super().__init__()
        self.norm_final = nn.LayerNorm(channels, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(channels, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 2 * channels))

    def forward(self, x, y):
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class HeadMLP(nn.Module):
    """The diffusion head network: an MLP of adaLN residual blocks conditioned on z and t.

    Outputs 2 * token_dim channels: eps and the learned-range variance interpolation.
    """

    def __init__(self, in_channels, width, z_channels, depth):
        super().__init__()
        self.in_channels = in_channels
        self.time_embed = TimestepEmbedder(width)
        self.cond_embed = nn.Linear(z_channels, width)
        self.input_proj = nn.Linear(in_channels, width)
        self.res_blocks = nn.ModuleList([ResBlock(width) for _ in range(depth)])
        self.final_layer = FinalLayer(width, 2 * in_channels)

    def forward(self, x, t, c):
        y = self.time_embed(t) + self.cond_embed(c)
        x = self.input_proj(x.to(self.input_proj.weight.dtype))  # the sampler's fp32 tokens into a cast head
        for block in self.res_blocks:
            x = block(x, y)
        return self.final_layer(x, y)


class DiffLoss(nn.Module):
    """Container named as in the official checkpoints (`diffloss.net.*`)."""

    def __init__(self, token_dim, z_channels, width, depth):
        super().__init__()
        self.net = HeadMLP(token_dim, width, z_channels, depth)


class MAR(nn.Module):
    """MAR encoder-decoder + diffusion head. See the module docstring for the sampling seam."""

    def __init__(self, config: MARConfig):
        super().__init__()
        self.config = c = config
        self.seq_h, self.seq_w = c.grid
        self.seq_len = self.seq_h * self.seq_w
        self.token_dim = c.token_dim
        self.buffer_size = c.buffer_size
        dec_w = c.decoder_width or c.width
        dec_d = c.decoder_depth or c.depth
        dec_h = c.decoder_num_heads or c.num_heads

        self.class_emb = nn.Embedding(c.class_num, c.width)
        self.fake_latent = nn.Parameter(torch.zeros(1, c.width))
        self.z_proj = nn.Linear(self.token_dim, c.width)
        self.z_proj_ln = nn.LayerNorm(c.width, eps=1e-6)
        self.encoder_pos_embed_learned = nn.Parameter(torch.zeros(1, self.seq_len + c.buffer_size, c.width))
        self.encoder_blocks = nn.ModuleList(
            [Block(c.width, c.num_heads, c.mlp_ratio, c.attn_dropout, c.proj_dropout) for _ in range(c.depth)])
        self.encoder_norm = nn.LayerNorm(c.width, eps=1e-6)

        self.decoder_embed = nn.Linear(c.width, dec_w)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec_w))
        self.decoder_pos_embed_learned = nn.Parameter(torch.zeros(1, self.seq_len + c.buffer_size, dec_w))
        self.decoder_blocks = nn.ModuleList(
            [Block(dec_w, dec_h, c.mlp_ratio, c.attn_dropout, c.proj_dropout) for _ in range(dec_d)])
        self.decoder_norm = nn.LayerNorm(dec_w, eps=1e-6)
        self.diffusion_pos_embed_learned = nn.Parameter(torch.zeros(1, self.seq_len, dec_w))

        self.diffloss = DiffLoss(self.token_dim, dec_w, c.diffloss_w, c.diffloss_d)
        self.train_diffusion = Diffusion()
        # MAR's masking ratio: a Gaussian at 100% (std 0.25) truncated to [mask_ratio_min, 1].
        self.mask_ratio_generator = stats.truncnorm((c.mask_ratio_min - 1.0) / 0.25, 0, loc=1.0, scale=0.25)
        if not any(p.is_meta for p in self.parameters()):
            self.initialize_weights()

    # ---- initialisation (as the official code initialises, for training from scratch) ----
    def initialize_weights(self, generator=None):
        """Initialise like MAR: normal(0.02) embeddings, xavier linears, zeroed adaLN/output layers."""
        for p in (self.class_emb.weight, self.fake_latent, self.mask_token, self.encoder_pos_embed_learned,
                  self.decoder_pos_embed_learned, self.diffusion_pos_embed_learned):
            nn.init.normal_(p, std=0.02, generator=generator)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight, generator=generator)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        head = self.diffloss.net
        nn.init.normal_(head.time_embed.mlp[0].weight, std=0.02, generator=generator)
        nn.init.normal_(head.time_embed.mlp[2].weight, std=0.02, generator=generator)
        for block in head.res_blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for layer in (head.final_layer.adaLN_modulation[-1], head.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    # ---- tokens <-> latents ----
    def patchify(self, latents):
        """(B, C, H, W) latents -> (B, h*w, C*p*p) tokens, channel-major inside a token (official layout)."""
        b, ch, h, w = latents.shape
        p = self.config.patch_size
        x = latents.reshape(b, ch, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, (h // p) * (w // p), ch * p * p)

    def unpatchify(self, tokens):
        """(B, h*w, C*p*p) tokens -> (B, C, H, W) latents."""
        b = tokens.shape[0]
        p, ch = self.config.patch_size, self.config.vae_embed_dim
        x = tokens.reshape(b, self.seq_h, self.seq_w, ch, p, p).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(b, ch, self.seq_h * p, self.seq_w * p)

    # ---- the sampling seam ----
    def class_embedding(self, labels):
        """Class embeddings (B, D); `labels=None` or label -1 gives the unconditional (fake) latent."""
        if labels is None:
            raise ValueError("labels is None: pass a LongTensor of class ids (use -1 for unconditional)")
        labels = torch.as_tensor(labels, device=self.fake_latent.device).long()
        if labels.numel() and labels.device.type != "meta" and int(labels.max()) >= self.config.class_num:
            raise ValueError(f"class label {int(labels.max())} out of range for {self.config.class_num} classes")
        emb = self.class_emb(labels.clamp(min=0))
        return torch.where((labels < 0)[:, None], self.fake_latent.to(emb.dtype), emb)

    def embed_condition(self, labels):
        """The sampler's name for the condition embedding: class ids (B,) -> (B, D) (see class_embedding)."""
        labels = torch.as_tensor(labels)
        if labels.ndim != 1:
            raise ValueError(f"MAR takes class ids of shape (B,), got shape {tuple(labels.shape)}")
        return self.class_embedding(labels)

    def unconditional_embedding(self, batch_size):
        return self.fake_latent.expand(batch_size, -1)

    def _keep_index(self, known):
        """Sequence positions (buffer + known tokens) kept by the encoder: (B, buffer + n)."""
        b = known.shape[0]
        buffer = torch.arange(self.buffer_size, device=known.device).expand(b, -1)
        return torch.cat([buffer, known + self.buffer_size], dim=1)

    def encoder_input(self, tokens, class_emb):
        """The encoder's input for every sequence row, buffer slots first: (B, buffer + L, D)."""
        b = tokens.shape[0]
        x = self.z_proj(tokens)
        x = torch.cat([class_emb[:, None].to(x.dtype).expand(b, self.buffer_size, -1), x], dim=1)
        return self.z_proj_ln(x + self.encoder_pos_embed_learned)

    def encode(self, tokens, known, class_emb):
        """Encoder on the class buffer and the known tokens only (masked tokens are dropped)."""
        x = self.encoder_input(tokens, class_emb)
        keep = self._keep_index(known)
        x = torch.gather(x, 1, keep[..., None].expand(-1, -1, x.shape[-1]))
        for block in self.encoder_blocks:
            x = block(x)
        return self.encoder_norm(x)

    def decoder_pos(self, like):
        """The decoder's position embedding (1, buffer + L, D)."""
        return self.decoder_pos_embed_learned

    def decoder_input(self, encoded, known):
        """The decoder's input: embedded encoder rows where known (and the buffer), mask token elsewhere."""
        x = self.decoder_embed(encoded)
        b, _, d = x.shape
        full = self.mask_token.to(x.dtype).expand(b, self.seq_len + self.buffer_size, d).clone()
        full = full.scatter(1, self._keep_index(known)[..., None].expand(-1, -1, d), x)
        return full + self.decoder_pos(full)

    def output(self, hidden, class_emb=None):
        """z from the last decoder block's output (B, buffer + L, D): norm, drop the buffer, add the
        diffusion position embedding."""
        return self.decoder_norm(hidden)[:, self.buffer_size:] + self.diffusion_pos_embed_learned

    def decode(self, encoded, known):
        """Decoder on all positions (mask token where unknown) -> z (B, seq_len, D)."""
        x = self.decoder_input(encoded, known)
        for block in self.decoder_blocks:
            x = block(x)
        return self.output(x)

    def condition(self, tokens, known, class_emb):
        """Conditioning vectors z for every position given the known tokens."""
        return self.decode(self.encode(tokens, known, class_emb), known)

    def head(self, x, t, z):
        """Diffusion head: noisy tokens x (N, C), training timesteps t (N,), z (N, D) -> (N, 2C)."""
        return self.diffloss.net(x, t, z)

    # ---- training objective ----
    def forward(self, tokens, labels, generator=None):
        """MAR's training loss: random order, truncated-Gaussian mask ratio, diffusion loss on masked tokens.

        tokens: (B, L, C) clean tokens; labels: (B,) class ids. All randomness from `generator`.
        """
        b, length, _ = tokens.shape
        cpu = dict(generator=generator, device="cpu")
        orders = torch.argsort(torch.rand(b, length, **cpu), dim=1)
        rate = float(self.mask_ratio_generator.ppf(torch.rand(1, **cpu).item()))
        num_masked = int(np.ceil(length * rate))
        # As in MAR: the first `num_masked` entries of each order are masked.
        known = orders[:, num_masked:].sort(dim=1).values.to(tokens.device)
        mask = torch.ones(b, length, device=tokens.device).scatter(1, known, 0.0)
        class_emb = self.class_emb(labels)
        if self.training and self.config.label_drop_prob > 0:
            drop = (torch.rand(b, **cpu) < self.config.label_drop_prob).to(tokens.device)[:, None]
            class_emb = torch.where(drop, self.fake_latent.to(class_emb.dtype), class_emb)
        z = self.condition(tokens, known, class_emb)
        mul = self.config.diffusion_batch_mul
        target = tokens.reshape(b * length, -1).repeat(mul, 1)
        z = z.reshape(b * length, -1).repeat(mul, 1)
        mask = mask.reshape(-1).repeat(mul)
        loss = self.train_diffusion.training_loss(self.diffloss.net, target, z, generator=generator)
        return (loss * mask).sum() / mask.sum()

    def config_dict(self):
        return asdict(self.config)
