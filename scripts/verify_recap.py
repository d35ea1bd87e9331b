"""Check gtr's ReCAP (baselines/recap.py, method=recap) against the official ReCAP code, which you provide as a
local checkout (liebenxj/ReCAP, checked at commit 4d1da38).

    python scripts/verify_recap.py --official PATH/TO/ReCAP        # make verify-recap OFFICIAL=PATH

Nothing of the official code is part of gtr-bench: this script imports examples/MAR+ReCAP/models/mar.py
from PATH at run time (it needs `timm`). It builds a small official MAR (8x8 tokens, buffer 8, 2+2 layers,
head 2 x 64), gives every parameter random values, loads the same weights into gtr's MAR (strictly), and
samples with both: the official `sample_tokens(..., pre_full_iters, num_cache_iters=1, cache_buffer=False,
diff_fast_ratio=0.4)` (the scripts' settings) and gtr's `sample(model, <method=recap>)` with the official
order and noise replayed. It compares, for every AR step, the conditioning z of the predicted tokens
(conditional and unconditional rows; on local steps it also says how far a full forward would be), the
guidance scale and the number of diffusion steps, and the final tokens. It reports how many diffusion
steps the official local steps ran: not int(steps * diff_fast_ratio) but int(steps * 0.5), since its
DiffLoss builds its fast sampler at its first call (a full step's, with sample()'s default fast_ratio
0.5) and keeps it, so the ratio, a string in the launcher, never reaches the int() that would reject it;
gtr's method=recap defaults to what the code runs (local_steps: 50 of 100).

Prints one line per check ("ok" / "FAIL" / "info") and exits non-zero if any fails.
"""
import argparse
import functools
import os
import sys
import time

import numpy as np
import torch

from baselines.recap import sort_groups
from eval.official import Recorder, import_official, info, patched, perturb, report
from gtr.build import build_method
from gtr.config import compose
from gtr.models.mar import build_mar
from gtr.sampler import cfg_scale, sample

GRID, CHANNELS, BUFFER = (8, 8), 16, 8


def official_run(official_mar, state, labels, num_iter, pre_full_iters, cfg, diff_steps, ratio):
    """The official sample_tokens with every randn recorded, and per diffusion call its z, cfg and steps."""
    model = official_mar.MAR(img_size=128, vae_stride=16, patch_size=1, encoder_embed_dim=64, encoder_depth=2,
                             encoder_num_heads=4, decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4,
                             buffer_size=BUFFER, diffloss_d=2, diffloss_w=64, class_num=10,
                             num_sampling_steps=str(diff_steps),
                             norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6)).eval()
    model.load_state_dict(state, strict=True)
    rec = dict(orders=[], calls=[])
    original_orders = model.sample_orders
    model.sample_orders = lambda b: rec["orders"].append(original_orders(b)) or rec["orders"][-1]
    original_sample = model.diffloss.sample

    def diffloss_sample(z, temperature=1.0, cfg=1.0, fast=False, fast_ratio=0.5):
        rec["calls"].append(dict(z=z.clone(), cfg=float(cfg), fast=fast))
        return original_sample(z, temperature, cfg, fast=fast, fast_ratio=fast_ratio)
    model.diffloss.sample = diffloss_sample
    np.random.seed(0)
    torch.manual_seed(0)
    with Recorder() as draws, torch.no_grad(), patched(torch.cuda, "synchronize", lambda *a: None):
        tokens, _ = model.sample_tokens(len(labels), num_iter=num_iter, cfg=cfg, cfg_schedule="linear", labels=labels,
                                        temperature=1.0, pre_full_iters=pre_full_iters, num_cache_iters=1,
                                        cache_buffer=False, diff_fast_ratio=ratio)
    rec["tokens"], rec["draws"] = tokens, draws.draws
    # The step count the official local steps ran: its DiffLoss builds the fast sampler once, at its first
    # call, which is a full step's and passes sample()'s default fast_ratio 0.5, so diff_fast_ratio is
    # never applied (and the launcher's string never reaches the int() that would reject it).
    rec["fast_steps"] = int(model.diffloss.num_fast_sampling_steps)
    rec["fast_steps_meant"] = int(diff_steps * ratio)
    return rec


def replay_noise(theirs, counts, bsz):
    """Per AR step (B, n, 1 + T, C) from the official draws: a (B*n, C) start, then one (2B*n, C) draw per
    diffusion step of which the conditional rows matter."""
    draws, per_step = iter(theirs["draws"]), []
    for n, call in zip(counts, theirs["calls"]):
        steps = theirs["fast_steps"] if call["fast"] else theirs["diff_steps"]
        cols = [next(draws)] + [next(draws)[:bsz * n] for _ in range(steps)]
        per_step.append(torch.stack(cols, 1).view(bsz, n, steps + 1, CHANNELS))
    if next(draws, None) is not None:
        raise RuntimeError("the official code drew more noise than expected: the replay would be wrong")
    return per_step


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", required=True, help="path to a liebenxj/ReCAP checkout")
    p.add_argument("--num-iter", type=int, default=16)
    p.add_argument("--diffusion-steps", type=int, default=20, help="full steps' (the scripts: 100)")
    p.add_argument("--ratio", type=float, default=0.4, help="local steps get int(diffusion steps * ratio)")
    p.add_argument("--cfg", type=float, default=3.0)
    p.add_argument("--tol", type=float, default=5e-3,
                   help="final tokens: max |diff| / (|official| + 1) (random weights amplify rounding)")
    p.add_argument("--z-tol", type=float, default=1e-5, help="per-step z: max |diff| / (|official| + 1)")
    args = p.parse_args()
    torch.set_num_threads(1)
    start = time.time()
    path = os.path.join(os.path.abspath(args.official), "examples", "MAR+ReCAP")
    official_mar = import_official(path, "models.mar", "liebenxj/ReCAP")
    pre_full_iters = args.num_iter // 2
    torch.manual_seed(0)
    ours = build_mar(None, img_size=128, vae_stride=16, width=64, depth=2, num_heads=4, buffer_size=BUFFER,
                     diffloss_d=2, diffloss_w=64, class_num=10).eval()
    perturb(ours, torch.Generator().manual_seed(1), scale=0.05)
    state = ours.state_dict()
    labels = torch.tensor([1, 7])
    theirs = official_run(official_mar, state, labels, args.num_iter, pre_full_iters, args.cfg,
                          args.diffusion_steps, args.ratio)
    theirs["diff_steps"] = args.diffusion_steps
    info(f"the official local steps ran {theirs['fast_steps']} diffusion steps; diff_fast_ratio {args.ratio} "
         f"would give {theirs['fast_steps_meant']}")
    cfg = compose(["model=mar_b", "method=recap", f"method.num_iter={args.num_iter}",
                   f"method.diffusion_steps={args.diffusion_steps}", f"method.local_steps={theirs['fast_steps']}",
                   f"cfg={args.cfg}"])[0]
    method = build_method(cfg.method, grid=GRID)
    counts = method.counts(GRID)
    info(f"8x8 tokens, {args.num_iter} AR steps ({pre_full_iters} plain, then full/local), diffusion steps "
         f"{args.diffusion_steps} full / {theirs['fast_steps']} local, cfg {args.cfg} {cfg.cfg_schedule}")
    failures = []
    if len(theirs["calls"]) != len(counts):
        print(f"FAIL the official code made {len(theirs['calls'])} diffusion calls, gtr's counts {len(counts)} steps")
        sys.exit(1)
    per_step = replay_noise(theirs, counts, len(labels))
    # Official: the last entries of its order are generated first; gtr lists generation order, each
    # group's tokens by position as the official code splits them.
    orders = sort_groups(theirs["orders"][0].flip(1), counts, pre_full_iters, 1)
    mine = []
    with torch.no_grad():
        tokens = sample(ours, method, labels, [torch.Generator() for _ in labels], cfg=args.cfg,
                        cfg_schedule=cfg.cfg_schedule, orders=orders, noise_fn=lambda k, shape: per_step[k],
                        callback=lambda d: mine.append(d))
    b, seq_len, guided = len(labels), GRID[0] * GRID[1], args.cfg != 1.0

    def at_predicted(z, predict):
        """z's rows at the predicted positions as the official code lays them out: (cond then uncond) x image x position."""
        halves = [z[:b], z[b:]] if guided else [z]
        return torch.cat([torch.gather(h, 1, predict[..., None].expand(-1, -1, z.shape[-1])) for h in halves]).flatten(0, 1)
    done = 0
    for k, (n, call, step) in enumerate(zip(counts, theirs["calls"], mine)):
        predict = step["step"].predict
        z = step["z"]
        rows = at_predicted(z, predict)
        kind = method.cache.trace[k]
        if kind == "local":  # the check has teeth: a full forward would give other z here
            before = mine[k - 1]["tokens"]
            known = step["step"].known
            cond = ours.embed_condition(labels)
            if guided:
                before, known, cond = (torch.cat([before, before]), torch.cat([known, known]),
                                       torch.cat([cond, ours.unconditional_embedding(b)]))
            full = at_predicted(ours.condition(before, known, cond), step["step"].predict)
            info(f"step {k:2d}: a full forward's z would differ from the official local z by "
                 f"{(full - call['z']).abs().max().item():.3e}")
        report(f"step {k:2d} ({kind:5s}, {n} tokens): z of the predicted tokens", rows, call["z"], args.z_tol, failures)
        steps = method.steps(step["step"], None)[0][1]
        official_steps = theirs["fast_steps"] if call["fast"] else args.diffusion_steps
        scale = cfg_scale(args.cfg, cfg.cfg_schedule, seq_len, seq_len - done - n)
        if steps != official_steps or abs(scale - call["cfg"]) > 1e-12 or (kind == "local") != call["fast"]:
            print(f"FAIL step {k}: gtr {kind}, {steps} diffusion steps, cfg {scale}; official fast={call['fast']}, "
                  f"{official_steps} steps, cfg {call['cfg']}")
            failures.append(f"step {k} schedule")
        done += n
    report("final tokens", ours.unpatchify(tokens), theirs["tokens"], args.tol, failures,
           note=f" [{time.time() - start:.0f} s]")
    print("all checks passed" if not failures else f"{len(failures)} check(s) failed: {failures}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
