"""Check gtr's LightGen against the official code (XianfengWu01/LightGen), given as a local checkout.

    python scripts/verify_lightgen.py --official PATH/TO/LightGen [--write-keys tests/data/lightgen_keys.txt]

Nothing of the official code is part of gtr-bench: this script imports it from PATH at run time (it
needs timm, diffusers and transformers, which its models/utils.py imports) and runs its CUDA-only
sampler on the CPU by making `.cuda()` a no-op. It checks
  1. the released architecture (fluid_large, DiffLoss 8 x 1536, 512 px): the same parameter names and
     shapes (built on the meta device), optionally written as the listing tests/test_lightgen.py reads;
  2. a small official model with random weights, saved as an official checkpoint ({"model": ...}),
     loads strictly; its refined text, z (encoder -> decoder -> text cross-attention) and head output
     equal gtr's at 512, 256 and 128 px (the 16x16 position embeddings resized) with 0, some and all
     but one tokens known;
  3. the official sample_tokens (cfg 4.0 constant, as LightGen's GenEval script) against gtr's sampler
     with the official order and noise replayed.
Prints one line per check; exits non-zero if any fails.
"""
import argparse
import functools
import os
import sys
import tempfile

import numpy as np
import torch

from eval.official import Recorder, check, import_official, perturb
from gtr.checkpoints import load_mar
from gtr.method import mar
from gtr.models.lightgen import build_lightgen
from gtr.sampler import sample

SMALL = dict(width=32, depth=2, num_heads=2, text_depth=2, caption_channels=24, max_length=6, pos_grid=16,
             diffloss_d=2, diffloss_w=48)


def official_small(official, steps="100"):
    ln = functools.partial(torch.nn.LayerNorm, eps=1e-6)  # fluid_large's norm layer (fact: fluid_arbitrary.py)
    w, d, h = SMALL["width"], SMALL["depth"], SMALL["num_heads"]
    return official.FLUID(encoder_embed_dim=w, encoder_depth=d, encoder_num_heads=h, decoder_embed_dim=w,
                          decoder_depth=d, decoder_num_heads=h, cross_embed_dim=w, cross_depth=d, cross_num_heads=h,
                          text_depth=SMALL["text_depth"], caption_channels=SMALL["caption_channels"],
                          max_length=SMALL["max_length"], norm_layer=ln, vae_stride=8, patch_size=2, vae_embed_dim=16,
                          diffloss_d=SMALL["diffloss_d"], diffloss_w=SMALL["diffloss_w"],
                          num_sampling_steps=steps).eval()


def compare_keys(official, failures, write_keys=None):
    with torch.device("meta"):
        theirs = official.fluid_large(vae_stride=8, patch_size=2, vae_embed_dim=16, diffloss_d=8, diffloss_w=1536,
                                      max_length=128)
        ours = build_lightgen("lightgen")
    a = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    b = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    ok = a == b
    params = sum(np.prod(s) for s in a.values()) / 1e6
    print(f"{'ok  ' if ok else 'FAIL'} released architecture: {len(a)} tensors, {params:.2f}M parameters, names and "
          f"shapes {'equal' if ok else 'differ: ' + str(sorted(set(a) ^ set(b))[:6])}", flush=True)
    if not ok:
        failures.append("keys")
    if write_keys:
        with open(write_keys, "w") as f:
            f.write("# lightgen: parameter names and shapes of the official XianfengWu01/LightGen FLUID (fluid_large, "
                    "vae_stride 8, patch 2, DiffLoss 8 x 1536), listed by scripts/verify_lightgen.py\n")
            f.writelines(f"{k} {s}\n" for k, s in a.items())
        print(f"wrote {write_keys}")


def compare_model(official, tol, failures, tmp):
    g = torch.Generator().manual_seed(0)
    theirs = official_small(official)
    perturb(theirs, g, scale=0.05)
    path = os.path.join(tmp, "checkpoint-last.pth")
    torch.save({"model": theirs.state_dict()}, path)
    for res in (512, 256, 128):
        ours = load_mar(build_lightgen("lightgen_test", img_size=res, **SMALL), path, weights="model").eval()
        theirs.seq_h = theirs.seq_w = res // 16
        theirs.seq_len = length = theirs.seq_h * theirs.seq_w
        bsz = 2
        tokens = torch.randn(bsz, length, 64, generator=g)
        text = torch.randn(bsz, SMALL["max_length"], SMALL["caption_channels"], generator=g)
        with torch.no_grad():
            te = theirs.text_emb(text)
            check(f"{res}px refined text", ours.embed_condition(text), te, tol, failures)
            for n_known in (0, 5, length - 1):
                order = torch.stack([torch.randperm(length, generator=g) for _ in range(bsz)])
                mask = torch.ones(bsz, length).scatter(1, order[:, :n_known], 0.0)  # 1 = masked, as official
                z_theirs = theirs.forward_fluid_text_decoder(
                    theirs.forward_fluid_decoder(theirs.forward_fluid_encoder(tokens, mask), mask), te)
                z_ours = ours.condition(tokens, order[:, :n_known].sort(1).values, te)
                check(f"{res}px z with {n_known} known", z_ours, z_theirs, tol, failures)
            x, t = torch.randn(8, 64, generator=g), torch.randint(0, 1000, (8,), generator=g)
            check(f"{res}px head output", ours.head(x, t, z_theirs[0, :8]), theirs.diffloss.net(x, t, z_theirs[0, :8]),
                  tol, failures)


def official_cross_attention(self, x, context):
    """The official Cross_Attention arithmetic (explicit softmax(q k^T * scale) v) instead of SDPA."""
    b, n, d = x.shape
    h = self.num_heads
    q = self.query_linear(x).view(b, n, h, d // h).transpose(1, 2)
    k, v = self.kv(context).view(b, context.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
    attn = ((q @ k.transpose(-2, -1)) * (d // h) ** -0.5).softmax(dim=-1)
    return self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))


def compare_sampler(official, tol, failures, num_iter=6, diff_steps=8, cfg=4.0, bsz=2, res=128):
    """Official sample_tokens vs gtr's sampler with the official order and noise replayed.

    gtr's cross-attention uses SDPA, which rounds differently from the official explicit softmax
    (z differs by ~1e-6, checked above); a random head under cfg 4 amplifies that over the AR steps.
    So the sampler logic is checked with the official attention arithmetic swapped in (must be
    bitwise equal), and the difference with SDPA is reported for information."""
    from gtr.models.lightgen import CrossAttention
    sdpa = CrossAttention.forward
    for swapped in (True, False):
        CrossAttention.forward = official_cross_attention if swapped else sdpa
        try:
            rel = _replay(official, num_iter, diff_steps, cfg, bsz, res)
        finally:
            CrossAttention.forward = sdpa
        what = f"sampler: official sample_tokens vs gtr ({res}px, num_iter {num_iter}, cfg {cfg} constant"
        if swapped:
            ok = rel == 0.0
            print(f"{'ok  ' if ok else 'FAIL'} {what}, official attention arithmetic): max |diff| / (|value| + 1) = "
                  f"{rel:.3e}", flush=True)
            if not ok:
                failures.append("sampler")
        else:
            print(f"info {what}, gtr's SDPA): max |diff| / (|value| + 1) = {rel:.3e} (rounding amplified by random "
                  f"weights)", flush=True)


def _replay(official, num_iter, diff_steps, cfg, bsz, res):
    g = torch.Generator().manual_seed(1)
    theirs = official_small(official, steps=str(diff_steps))
    perturb(theirs, g, scale=0.05)
    ours = build_lightgen("lightgen_test", img_size=res, **SMALL).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    text = torch.randn(bsz, SMALL["max_length"], SMALL["caption_channels"], generator=g)
    np.random.seed(0)
    torch.manual_seed(0)
    recorded = []
    original = theirs.sample_orders
    theirs.sample_orders = lambda b: recorded.append(original(b)) or recorded[-1]
    with Recorder() as rec, torch.no_grad():
        tokens_theirs = theirs.sample_tokens(bsz, num_iter=num_iter, cfg=cfg, cfg_schedule="constant", texts=text,
                                             height=res, width=res)
    orders = recorded[0].flip(1)  # official: the last entries of its order are generated first
    draws = iter(rec.draws)
    grid = (res // 16, res // 16)
    per_step = []
    for n in mar(num_iter).counts(grid):
        first = next(draws)
        cols = [first] + [next(draws)[:bsz * n] for _ in range(diff_steps)]
        per_step.append(torch.stack(cols, 1).view(bsz, n, diff_steps + 1, 64))
    with torch.no_grad():
        tokens_ours = sample(ours, mar(num_iter, diff_steps), text, [torch.Generator() for _ in range(bsz)], cfg=cfg,
                             cfg_schedule="constant", orders=orders, noise_fn=lambda k, shape: per_step[k])
    # Random heads under cfg 4 give samples far from [-1, 1] (up to ~1e4): compare elementwise
    # relative to each value, so a large value cannot hide an error in a small one.
    a, b = ours.unpatchify(tokens_ours).double(), tokens_theirs.double()
    return ((a - b).abs() / (b.abs() + 1)).max().item()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", required=True, help="path to a XianfengWu01/LightGen checkout")
    p.add_argument("--tol", type=float, default=1e-5)
    p.add_argument("--write-keys", help="write the released model's name/shape listing here")
    args = p.parse_args()
    official = import_official(os.path.abspath(args.official), "models.fluid_arbitrary", "XianfengWu01/LightGen")
    failures = []
    compare_keys(official, failures, args.write_keys)
    with tempfile.TemporaryDirectory() as tmp:
        compare_model(official, args.tol, failures, tmp)
    compare_sampler(official, args.tol, failures)
    print("all checks passed" if not failures else f"{len(failures)} check(s) failed: {failures}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
