"""Check gtr against the official MAR code (LTH14/mar), which you provide as a local checkout.

    python scripts/verify_official.py --official PATH/TO/mar [--models mar_base mar_large mar_huge]

Nothing of the official code is part of gtr-bench: this script imports it from PATH at run time
(it needs `timm`, and runs the official CUDA-only code on the CPU by making `.cuda()` a no-op).
For each model size it
  1. builds the official model with random (perturbed) weights and saves it as an official
     `checkpoint-last.pth`;
  2. loads that file into gtr strictly;
  3. compares the conditioning vectors z (encoder -> decoder, with CFG's doubled batch) and the
     diffusion head's output on the same inputs (fp32, max abs difference must be <= --tol);
and, on a small configuration, runs the official `sample_tokens` and gtr's sampler with the
official order and noise replayed, and compares the final tokens.
Prints one line per check and exits non-zero if any fails.
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
from gtr.engine import FastHeadLoop
from gtr.method import mar
from gtr.models.mar import build_mar
from gtr.sampler import sample

SIZES = {"mar_base": "mar_base", "mar_large": "mar_large", "mar_huge": "mar_huge"}
HEAD = {"mar_base": (6, 1024), "mar_large": (8, 1280), "mar_huge": (12, 1536)}


def compare_model(official_mar, size, tol, failures, tmp):
    g = torch.Generator().manual_seed(0)
    depth, width = HEAD[size]
    theirs = getattr(official_mar, size)(buffer_size=64, diffloss_d=depth, diffloss_w=width,
                                         num_sampling_steps="100").eval()
    perturb(theirs, g)
    path = os.path.join(tmp, f"{size}-checkpoint-last.pth")
    torch.save({"model": theirs.state_dict(), "model_ema": theirs.state_dict()}, path)
    with torch.device("meta"):
        ours = build_mar(size)
    load_mar(ours, path)
    ours.eval()
    print(f"{size}: official checkpoint loads strictly ({len(ours.state_dict())} tensors)", flush=True)
    bsz, n_known = 2, 100
    tokens = torch.randn(bsz, 256, 16, generator=g)
    labels = torch.tensor([3, 977])
    orders = torch.stack([torch.randperm(256, generator=g) for _ in range(bsz)])
    mask = torch.ones(bsz, 256).scatter(1, orders[:, :n_known], 0.0)  # 1 = masked, as official
    known = orders[:, :n_known].sort(dim=1).values
    with torch.no_grad():
        cls = theirs.class_emb(labels)
        cls2 = torch.cat([cls, theirs.fake_latent.repeat(bsz, 1)])
        z_theirs = theirs.forward_mae_decoder(
            theirs.forward_mae_encoder(torch.cat([tokens, tokens]), torch.cat([mask, mask]), cls2),
            torch.cat([mask, mask]))
        emb = torch.cat([ours.class_embedding(labels), ours.unconditional_embedding(bsz)])
        z_ours = ours.condition(torch.cat([tokens, tokens]), torch.cat([known, known]), emb)
        check(f"{size} z (encoder->decoder, CFG batch)", z_ours, z_theirs, tol, failures)
        x, t, c = torch.randn(8, 16, generator=g), torch.randint(0, 1000, (8,), generator=g), z_theirs[0, :8]
        head_theirs = theirs.diffloss.net(x, t, c)
        check(f"{size} diffusion head output", ours.head(x, t, c), head_theirs, tol, failures)
        check(f"{size} diffusion head output, fast engine (1e-5 of scale)", FastHeadLoop(ours).head(x, t, c),
              head_theirs, 1e-5, failures)
    del theirs, ours


def compare_sampler(official_mar, tol, failures, num_iter=8, diff_steps=10, cfg=2.5, bsz=3):
    """Official sample_tokens vs gtr's sampler with the official order and noise replayed."""
    g = torch.Generator().manual_seed(1)
    theirs = official_mar.MAR(img_size=128, vae_stride=16, patch_size=1, encoder_embed_dim=64, encoder_depth=2,
                              encoder_num_heads=4, decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4,
                              buffer_size=8, diffloss_d=2, diffloss_w=64, class_num=10,
                              num_sampling_steps=str(diff_steps),
                              # the released models use LayerNorm eps 1e-6 (fact: models/mar.py mar_base)
                              norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6)).eval()
    perturb(theirs, g, scale=0.05)
    ours = build_mar(None, img_size=128, vae_stride=16, width=64, depth=2, num_heads=4, buffer_size=8,
                     diffloss_d=2, diffloss_w=64, class_num=10).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    labels = torch.tensor([1, 4, 7][:bsz])
    np.random.seed(0)
    torch.manual_seed(0)
    recorded_orders = []
    original = theirs.sample_orders
    theirs.sample_orders = lambda b: recorded_orders.append(original(b)) or recorded_orders[-1]
    with Recorder() as rec, torch.no_grad():
        tokens_theirs = theirs.sample_tokens(bsz, num_iter=num_iter, cfg=cfg, labels=labels, temperature=1.0)
    # Official: the last entries of its order are generated first; ours lists generation order.
    orders = recorded_orders[0].flip(1)
    draws = iter(rec.draws)
    counts = mar(num_iter).counts((8, 8))
    per_step = []
    for n in counts:
        first = next(draws)  # (B*n, C): starting noise of this step's tokens
        cols = [first] + [next(draws)[:bsz * n] for _ in range(diff_steps)]  # cond rows of (2N, C)
        per_step.append(torch.stack(cols, 1).view(bsz, n, diff_steps + 1, 16))
    with torch.no_grad():
        tokens_ours = sample(ours, mar(num_iter, diff_steps), labels, [torch.Generator() for _ in range(bsz)],
                             cfg=cfg, orders=orders, noise_fn=lambda k, shape: per_step[k])
    check(f"sampler: official sample_tokens vs gtr (num_iter {num_iter}, cfg {cfg}, linear)",
          ours.unpatchify(tokens_ours), tokens_theirs, tol, failures)
    with torch.no_grad():
        tokens_fast = sample(ours, mar(num_iter, diff_steps), labels, [torch.Generator() for _ in range(bsz)],
                             cfg=cfg, orders=orders, noise_fn=lambda k, shape: per_step[k],
                             head_loop=FastHeadLoop(ours))
    # The fast engine's kernels sum in another order: rounding, amplified through the later AR steps.
    check("sampler, fast engine: official sample_tokens vs gtr (1e-4 of scale)",
          ours.unpatchify(tokens_fast), tokens_theirs, 1e-4, failures)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", required=True, help="path to a LTH14/mar checkout")
    p.add_argument("--models", nargs="*", default=list(SIZES))
    p.add_argument("--tol", type=float, default=1e-5)
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    official_mar = import_official(os.path.abspath(args.official))
    failures = []
    compare_sampler(official_mar, args.tol, failures)
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.models:
            compare_model(official_mar, size, args.tol, failures, tmp)
    print("all checks passed" if not failures else f"{len(failures)} check(s) failed: {failures}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
