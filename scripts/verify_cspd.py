"""Check gtr's CSpD (baselines/cspd.py, method=cspd) against the official CSpD code, which you provide as a local
checkout (MarkXCloud/CSpD, checked at commit d91f721).

    python scripts/verify_cspd.py --official PATH/TO/CSpD        # make verify-cspd OFFICIAL=PATH

Nothing of the official code is part of gtr-bench: this script imports spec_decode/spec_decode_runner.py from
PATH at run time (it needs `timm` and `scipy`) and runs it on the CPU (the code names 'cuda' in its tensor
factories; they are sent to the CPU here). It builds two small official MARs (8x8 tokens, buffer 8; a draft
of 1+1 layers and head 2 x 32, a target of 2+2 layers and head 2 x 64), gives every parameter random values,
loads the same weights into gtr's MARs (strictly) and runs the official SpecDecodeRunner and gtr's
sample(target, <method=cspd with that draft>) at batch 1, with the official order and noise replayed and
gtr's image generator started where the official generator stands after its noise draws (so the
acceptance and residual draws are the same numbers). Random heads make the diffusion chain diverge and
every token rejected; both models' heads are wrapped alike (eps = x + s * tanh(eps), var = tanh(var)) so
that the chain stays bounded and both acceptance and rejection happen.

Compared: the tokens after every AR step (after its verification, if any), each verification's acceptance
values p/q*F, and the final tokens. Prints one line per check ("ok" / "FAIL" / "info"); exits non-zero if
any fails.
"""
import argparse
import functools
import os
import sys
import time

import numpy as np
import torch

import baselines.cspd as cspd
from eval.official import Recorder, import_official, info, patched, perturb, report
from gtr.build import build_method
from gtr.config import compose
from gtr.models.mar import build_mar
from gtr.sampler import sample

GRID, CHANNELS, BUFFER, CLASSES = (8, 8), 16, 8, 1000   # the official MAR's class table has 1000 rows
SIZES = {"draft": (1, 32), "target": (2, 64)}          # (encoder = decoder depth, head width)


def cpu_factories():
    """torch's tensor factories with device='cuda' sent to the CPU (the official code names 'cuda')."""
    for name in ("zeros", "ones", "randn", "rand", "tensor", "full", "empty"):
        original = getattr(torch, name)

        def factory(*a, _original=original, **k):
            if k.get("device") == "cuda":
                k["device"] = "cpu"
            return _original(*a, **k)
        setattr(torch, name, factory)


def bounded_head(net, scale):
    """Make a random head's eps close to x (the chain stays bounded): eps = x + scale*tanh(eps), var = tanh(var)."""
    def forward(x, t, c):
        raw = type(net).forward(net, x, t, c)
        return torch.cat([x + scale * torch.tanh(raw[:, :CHANNELS]), torch.tanh(raw[:, CHANNELS:])], dim=1)
    net.forward = forward


def models(official_mar, diff_steps, scale):
    """{role: (gtr MAR, official MAR)} with the same random weights."""
    pairs = {}
    for seed, (role, (depth, width)) in enumerate(SIZES.items(), start=1):
        torch.manual_seed(seed)
        ours = build_mar(None, img_size=128, vae_stride=16, width=64, depth=depth, num_heads=4, buffer_size=BUFFER,
                         diffloss_d=2, diffloss_w=width, class_num=CLASSES).eval()
        perturb(ours, torch.Generator().manual_seed(seed), scale=0.05)
        theirs = official_mar.MAR(img_size=128, vae_stride=16, patch_size=1, encoder_embed_dim=64, encoder_depth=depth,
                                  encoder_num_heads=4, decoder_embed_dim=64, decoder_depth=depth, decoder_num_heads=4,
                                  buffer_size=BUFFER, diffloss_d=2, diffloss_w=width, class_num=CLASSES,
                                  num_sampling_steps=str(diff_steps),
                                  norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6)).eval()
        theirs.load_state_dict(ours.state_dict(), strict=True)
        bounded_head(ours.diffloss.net, scale)
        bounded_head(theirs.diffloss.net, scale)
        pairs[role] = ours, theirs
    return pairs


def official_run(runner_module, pairs, label, args):
    """The official run at batch 1: its noise, order, the tokens after every step, each verification's values."""
    rec = dict(orders=[], states=[], probs=[])
    draft, target = pairs["draft"][1], pairs["target"][1]
    original_orders = draft.sample_orders
    draft.sample_orders = lambda b: rec["orders"].append(original_orders(b)) or rec["orders"][-1]
    for model in (draft, target):  # a step's incoming tokens are the state after the step before
        step_fn = model.sample_tokens_step

        def recorded(tokens, *a, _step_fn=step_fn, **k):
            rec["states"].append(tokens.clone())
            return _step_fn(tokens, *a, **k)
        model.sample_tokens_step = recorded
    judge = runner_module.DistributionProcessor.judge_accept

    def judge_recorded(self, x):
        rec["probs"].append(judge(self, x).clone())
        return rec["probs"][-1]
    runner = runner_module.SpecDecodeRunner(draft, target, inner_temperature=42.0, ratio=args.ratio)
    np.random.seed(0)
    torch.manual_seed(0)
    with Recorder() as draws, torch.no_grad(), patched(runner_module.DistributionProcessor, "judge_accept", judge_recorded):
        tokens = runner.run(1, num_iter=args.num_iter, num_draft=args.num_draft, cfg_schedule=args.cfg_schedule,
                            labels=torch.tensor([label]), temperature=1.0, cfg=args.cfg)
    rec["states"] = rec["states"][1:]  # the first step's input is the empty canvas
    rec["tokens"], rec["noise"], rec["inter_noise"] = tokens, draws.draws[0], draws.draws[1]
    return rec


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", required=True, help="path to a MarkXCloud/CSpD checkout")
    p.add_argument("--num-iter", type=int, default=16)
    p.add_argument("--num-draft", type=int, default=4)
    p.add_argument("--ratio", type=float, default=0.15)
    p.add_argument("--diffusion-steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=3.0)
    p.add_argument("--cfg-schedule", default="linear", choices=["linear", "constant"])
    p.add_argument("--head-scale", type=float, default=3e-4, help="s in the bounded heads' eps = x + s*tanh(eps)")
    p.add_argument("--tol", type=float, default=1e-5, help="tokens: max |diff| / (|official| + 1)")
    args = p.parse_args()
    torch.set_num_threads(1)
    start = time.time()
    path = os.path.abspath(args.official)
    runner_module = import_official(path, "spec_decode.spec_decode_runner", "MarkXCloud/CSpD")
    official_mar = import_official(path, "models.mar", "MarkXCloud/CSpD")
    cpu_factories()
    pairs = models(official_mar, args.diffusion_steps, args.head_scale)
    label, seq_len, steps = 3, GRID[0] * GRID[1], args.diffusion_steps
    theirs = official_run(runner_module, pairs, label, args)

    cfg = compose(["model=mar_b", "method=cspd", f"method.num_iter={args.num_iter}", f"method.num_draft={args.num_draft}",
                   f"method.ratio={args.ratio}", f"method.diffusion_steps={steps}", f"cfg={args.cfg}",
                   f"cfg_schedule={args.cfg_schedule}"])[0]
    method = build_method(cfg.method, grid=GRID)
    method.cache.draft_source = pairs["draft"][0]
    counts = method.counts(GRID)
    # Official: the last entries of its order are generated first; gtr lists generation order.
    orders = theirs["orders"][0].flip(1)
    per_step, done = [], 0
    for n in counts:  # a token's start noise, then the noise of reverse step i = S-1, ..., 0
        positions = orders[0, done:done + n].sort().values
        columns = [theirs["noise"][0, positions]] + [theirs["inter_noise"][0, positions, i] for i in reversed(range(steps))]
        per_step.append(torch.stack(columns, 1)[None])
        done += n
    # The official generator drew the noise, then judges; gtr's image generator draws only the judging here.
    generator = torch.Generator().manual_seed(0)
    same = [torch.equal(torch.randn(t.shape, generator=generator), t) for t in (theirs["noise"], theirs["inter_noise"])]
    if not all(same):
        print("FAIL the official noise is not the first draws of torch's generator seeded 0: the replay would be wrong")
        sys.exit(1)
    mine, probs = [], []
    acceptance = cspd.acceptance

    def acceptance_recorded(*a, **k):
        probs.append(acceptance(*a, **k).clone())
        return probs[-1]
    target = pairs["target"][0]
    with torch.no_grad(), patched(cspd, "acceptance", acceptance_recorded):
        tokens = sample(target, method, torch.tensor([label]), [generator], cfg=args.cfg,
                        cfg_schedule=args.cfg_schedule, orders=orders, noise_fn=lambda k, shape: per_step[k],
                        callback=lambda d: mine.append(d["tokens"].clone()))
    verifications = [k for k in range(args.num_iter) if not cspd.is_target_step(k, args.num_iter, args.ratio)
                     and cspd.is_verify_step(k, args.num_iter, args.num_draft)]
    info(f"8x8 tokens, {args.num_iter} AR steps ({sum(cspd.is_target_step(k, args.num_iter, args.ratio) for k in range(args.num_iter))} "
         f"by the target), verifications after steps {verifications}, {steps} diffusion steps, cfg {args.cfg} "
         f"{args.cfg_schedule}; gtr kept {method.verify.accepted} of {method.verify.drafted} drafted tokens")
    failures = []
    if len(probs) != len(theirs["probs"]):
        print(f"FAIL gtr verified {len(probs)} windows, the official code {len(theirs['probs'])}")
        sys.exit(1)
    for k, (ours_p, theirs_p) in enumerate(zip(probs, theirs["probs"])):
        agree = torch.equal(ours_p > 1, theirs_p > 1)
        report(f"verification {k}: acceptance values p/q*F ({len(theirs_p)} tokens, "
               f"{int((theirs_p >= 1).sum())} >= 1)", ours_p.clamp(max=1), theirs_p.clamp(max=1), args.tol, failures)
        if not agree:
            failures.append(f"verification {k} sides")
    for k, state in enumerate(theirs["states"]):
        report(f"step {k:2d}: tokens after the step", mine[k], state, args.tol, failures)
    report("final tokens", target.unpatchify(tokens), theirs["tokens"], args.tol, failures,
           note=f" [{time.time() - start:.0f} s]")
    print("all checks passed" if not failures else f"{len(failures)} check(s) failed: {failures}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
