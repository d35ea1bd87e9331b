"""Check gtr's LazyMAR (baselines/lazymar.py) against the official LazyMAR code, which you provide as a
local checkout (feihongyan1/LazyMAR, checked at commit 6c65efa).

    python scripts/verify_lazymar.py --official PATH/TO/LazyMAR

Nothing of the official code is part of gtr-bench: this script imports it from PATH at run time (it
needs `timm`). It builds a small official MAR (models/mar_cache.py: 16x16 tokens and buffer 64, as its
caches hard-code 320 rows; 6 encoder and 6 decoder layers so that pruning after decoder layer 3 has
layers to skip; a head of 6 res blocks so that the skipped blocks 1-4 exist), gives every parameter
random values, loads the same weights into gtr's MAR (strictly), and samples 64 AR steps with
100 diffusion steps and CFG 2.5 linear (the released setting) with both: the official
`sample_tokens(..., args=Namespace(lazy_mar=True))` and gtr's `sample(model, lazymar(64, 100))`
with the official order and noise replayed (as scripts/verify_official.py does for MAR).

The official code can switch its parts on and off only in two groups: the head cache (the model's
`lazy_mar`) and the transformer caches (encoder K/V cache, decoder pruning and CFG cache together:
`args.lazy_mar`). Decoder pruning can also be neutralised by a ratio table of 1.0 (every position
is recomputed). So the stages are:
  1. plain MAR                     official: both off          gtr: every switch off
  2. head cache                    official: model.lazy_mar    gtr: head_cache only
  3. encoder + CFG caches          official: args.lazy_mar,    gtr: encoder_cache, cfg_cache
                                   ratio table all 1.0
  4. encoder + pruning + CFG       official: args.lazy_mar     gtr: head_cache off
  5. full LazyMAR                  official: both on           gtr: lazymar(64, 100) defaults
Stage 0 runs the head alone for one AR step (same z and noise): official DiffLoss / CachedDiffLoss
vs gtr's head / LazyHead. For stages 1-5 it prints
  * the final tokens: max |diff| and max |diff| / (|official| + 1) (--tol);
  * per step, z at the predicted positions, conditional and unconditional rows (--z-tol; the only
    positions the head reads: elsewhere on pruned steps the official code leaves zeros where gtr keeps
    older values, a documented deviation, shown as info), and the new tokens (info);
  * the official full / lazy schedule against gtr's trace;
  * with the head cache: gtr's head of every AR step run on the official z and noise of that step
    (expected bitwise);
  * with pruning: the positions the decoder recomputes after layer 3 on every lazy step. Where they
    differ only by a tie at the cut (scores within --tie-tol of the last one kept: float rounding
    decides), gtr's run is repeated going on with the official choice there, and that run is checked.
Why the tolerances: the transformers agree to float rounding (~3e-6: gtr runs scaled_dot_product_
attention, the official code matmul + softmax, over K/V in another order); with random weights the
head's samples reach 1e4-1e5 and cancel, which amplifies that to ~1e-3 in the final tokens.

Prints one line per check ("ok" / "FAIL" / "info") and exits non-zero if any fails.
"""
import argparse
import functools
import importlib
import os
import sys
import time
from argparse import Namespace

import numpy as np
import torch
import torch.nn.functional as F

from eval.official import Recorder, import_official, info, measures, patched, perturb, report

from baselines.lazymar import LazyHead, lazymar
from gtr.method import PlainHead
from gtr.models.diffusion import sample_head, sampling_diffusion
from gtr.models.mar import build_mar
from gtr.sampler import cfg_scale, sample

# Small model; 16x16 tokens and buffer 64 because the official caches hard-code 64 + 256 = 320 rows.
WIDTH, HEADS, DEPTH, HEAD_DEPTH, HEAD_WIDTH, BUFFER, CLASSES = 64, 4, 6, 6, 64, 64, 10
GRID, CHANNELS = (16, 16), 16

OFF = dict(encoder_cache=False, decoder_pruning=False, cfg_cache=False, head_cache=False)
# (name, official head cache, official transformer caches, official ratio table, gtr switches)
STAGES = [
    ("plain MAR", False, False, None, OFF),
    ("head cache", True, False, None, dict(OFF, head_cache=True)),
    ("encoder + CFG caches (pruning keeps all)", False, True, [1.0] * 64,
     dict(OFF, encoder_cache=True, cfg_cache=True)),
    ("encoder + pruning + CFG caches", False, True, None, dict(head_cache=False)),
    ("full LazyMAR", True, True, None, {}),
]


# ---------------------------------------------------------------- models
def official_model(mar_cache, head_cache, diff_steps, state):
    model = mar_cache.MAR(img_size=256, vae_stride=16, patch_size=1, encoder_embed_dim=WIDTH, encoder_depth=DEPTH,
                          encoder_num_heads=HEADS, decoder_embed_dim=WIDTH, decoder_depth=DEPTH,
                          decoder_num_heads=HEADS, buffer_size=BUFFER, diffloss_d=HEAD_DEPTH,
                          diffloss_w=HEAD_WIDTH, class_num=CLASSES, num_sampling_steps=str(diff_steps),
                          lazy_mar=head_cache,
                          # the released models use LayerNorm eps 1e-6 (fact: models/mar_cache.py mar_base)
                          norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6)).eval()
    if state is not None:
        model.load_state_dict(state, strict=True)
    return model


def random_weights(mar_cache, diff_steps, scale, seed):
    """One set of random official weights (every parameter perturbed), shared by all stages."""
    torch.manual_seed(seed)
    model = official_model(mar_cache, False, diff_steps, None)
    perturb(model, torch.Generator().manual_seed(seed), scale)
    return model.state_dict()


# ---------------------------------------------------------------- official run, recorded
def run_official(model, basic, labels, num_iter, cfg, transformer_caches, ratios, seed):
    """Official sample_tokens; records its order, every randn, per step z, full / lazy, the positions
    predicted and the new tokens, and per lazy step the decoder positions kept after layer 3 with the
    scores they were ranked by."""
    rec = dict(orders=[], z=[], trace=[], predict=[], new=[], kept={}, scores={}, forced_kept=[])
    bsz = len(labels)
    sample_orders = model.sample_orders
    model.sample_orders = lambda b, device: rec["orders"].append(sample_orders(b, device)) or rec["orders"][-1]
    decoder = model.forward_mae_decoder

    def forward_mae_decoder(x, mask, current, cache_dic):
        z = decoder(x, mask, current, cache_dic)
        rec["z"].append(z.clone())
        rec["trace"].append("lazy" if current["lazy_mar"] and not current["is_force_fresh"] else "full")
        rec["predict"].append(cache_dic["mask_to_pred"][:bsz].nonzero()[:, 1].view(bsz, -1))
        return z
    model.forward_mae_decoder = forward_mae_decoder
    diff_sample = model.diffloss.sample

    def diffloss_sample(*a, **k):
        out = diff_sample(*a, **k)
        rec["new"].append(out[:out.shape[0] // 2].clone().view(bsz, -1, out.shape[-1]))  # cond rows
        return out
    model.diffloss.sample = diffloss_sample
    block = model.decoder_blocks[3]
    prune = block._prune_tokens

    def prune_tokens(current, cache_dic, x):
        # The score _prune_tokens ranks by, as it computes it (layer 3's V now and at the previous step).
        score = F.cosine_similarity(cache_dic["cache"][3]["v"], current["pre_cache_v"], dim=-1).mean(dim=1)
        forced = current["mask_to_pred_full"] | current["prev_mask_to_pred_full"]
        out = prune(current, cache_dic, x)
        kept = current["next_mask"].bool()
        step = current["step"]
        rec["kept"][step] = [row.nonzero().flatten() for row in kept]
        # The official score of the last position kept (forced positions count as 0, as it sets them).
        cut = score.masked_fill(forced, 0).sort(dim=1).values[:, kept.sum(1)[0] - 1]
        rec["scores"][step] = (score, cut)
        rec["forced_kept"].append(bool((kept | ~forced).all()))
        return out
    block._prune_tokens = prune_tokens
    np.random.seed(seed)
    torch.manual_seed(seed)
    table = basic.RETAIN_RATIO_SCHEDULE if ratios is None else list(ratios)
    try:
        with Recorder() as draws, torch.no_grad(), patched(basic, "RETAIN_RATIO_SCHEDULE", table):
            tokens = model.sample_tokens(bsz, num_iter=num_iter, cfg=cfg, cfg_schedule="linear", labels=labels,
                                         temperature=1.0,
                                         args=Namespace(device="cpu", lazy_mar=transformer_caches))
    finally:
        for name in ("sample_orders", "forward_mae_decoder"):
            delattr(model, name)
        del model.diffloss.sample, block._prune_tokens
    rec["tokens"], rec["draws"] = tokens, draws.draws
    return rec


def replay_noise(draws, counts, bsz, diff_steps):
    """Per-step noise (B, n, 1 + T, C) for gtr from the official draws (as verify_official does): per AR
    step one (B*n, C) starting noise, then per diffusion step a (2*B*n, C) draw of which the first
    B*n rows (the conditional ones) matter; the cached head (diffusion_cached) draws the same way."""
    draws = iter(draws)
    per_step = []
    for n in counts:
        first = next(draws)
        cols = [first] + [next(draws)[:bsz * n] for _ in range(diff_steps)]
        per_step.append(torch.stack(cols, 1).view(bsz, n, diff_steps + 1, CHANNELS))
    if next(draws, None) is not None:
        raise RuntimeError("the official code drew more noise than expected: the replay would be wrong")
    return per_step


# ---------------------------------------------------------------- gtr run, replayed
def tie_break(own, theirs, k, tie_tol):
    """gtr's decoder positions kept at pruned step k (rows, n) vs the official's: None if equal, else
    (is_tie, notes). A tie: same count, and every position in only one of the sets has an official
    score within tie_tol of the official score of the last position kept (rounding decides)."""
    official = theirs["kept"][k]
    if all(torch.equal(a, b) for a, b in zip(own, official)) and len(own) == len(official):
        return None
    score, cut = theirs["scores"][k]
    tie, notes = True, []
    for b, (a, t) in enumerate(zip(own, official)):
        swapped = sorted(set(a.tolist()) ^ set(t.tolist()))
        if swapped:
            gap = (score[b, swapped] - cut[b]).abs().max().item()
            tie = tie and len(a) == len(t) and gap <= tie_tol
            notes.append(f"step {k} image {b}: positions {swapped} differ, official scores "
                         f"{[round(v, 9) for v in score[b, swapped].tolist()]}, official last kept {cut[b].item():.9f}")
    return tie, notes


def run_gtr(model, method, labels, cfg, orders, per_step, theirs, tie_tol, adopt_ties):
    """gtr's sampler with the official order and noise; records z, the new tokens and, per pruned
    step, whether gtr's decoder positions kept after layer 3 equal the official ones, differ by a tie,
    or differ (`ties`, `mismatch`). adopt_ties: where they differ by a tie, go on with the official
    choice (so that a rounding-decided tie does not hide what follows)."""
    rec = dict(z=[], predict=[], new=[], kept={}, ties=[], mismatch=[], notes=[])
    cache = method.cache
    select = cache._select

    def record_select(model_, v, step, rows):
        chosen = select(model_, v, step, rows)
        k = step.index
        rec["kept"][k] = chosen
        if k not in theirs["kept"]:
            rec["mismatch"].append(k)
            return chosen
        verdict = tie_break(list(chosen), theirs, k, tie_tol)
        if verdict is None:
            return chosen
        rec["ties" if verdict[0] else "mismatch"].append(k)
        rec["notes"] += verdict[1]
        return torch.stack(theirs["kept"][k]) if verdict[0] and adopt_ties else chosen
    cache._select = record_select

    def callback(d):
        step = d["step"]
        rec["z"].append(d["z"].clone())
        rec["predict"].append(step.predict)
        idx = step.predict[..., None].expand(-1, -1, d["tokens"].shape[-1])
        rec["new"].append(torch.gather(d["tokens"], 1, idx))
    try:
        with torch.no_grad():
            tokens = sample(model, method, labels, [torch.Generator() for _ in labels], cfg=cfg,
                            cfg_schedule="linear", orders=orders, noise_fn=lambda k, shape: per_step[k],
                            callback=callback)
    finally:
        del cache._select
    rec["tokens"], rec["trace"] = model.unpatchify(tokens), list(cache.trace)
    return rec


def at(z, predict):
    """z (R, L, D) at the predicted positions (B, n) of its conditional and unconditional rows."""
    rows = z.shape[0] // predict.shape[0]
    idx = torch.cat([predict] * rows)[..., None].expand(-1, -1, z.shape[-1])
    return torch.gather(z, 1, idx)


def compare_steps(name, ours, theirs, z_tol, failures):
    """Per step: z at the predicted positions (the only ones the head reads) and the new tokens; prints
    the worst step of each and checks z (the transformer's output, before the head amplifies rounding)
    against z_tol. z at all positions is printed too: on pruned steps the official code leaves zeros
    where gtr keeps older values (a documented deviation; never read)."""
    worst = {}
    for k, (z_o, z_t, p, new_o, new_t) in enumerate(zip(ours["z"], theirs["z"], ours["predict"], ours["new"],
                                                       theirs["new"])):
        for key, a, b in (("z", at(z_o, p), at(z_t, p)), ("new", new_o, new_t), ("all", z_o, z_t)):
            diff, rel = measures(a, b)
            if key not in worst or rel > worst[key][1]:
                worst[key] = (diff, rel, k)
    labels = dict(z="z at predicted positions (cond + uncond rows)", new="new tokens",
                  all="z at all positions (not read where the official code leaves zeros)")
    for key, label in labels.items():
        diff, rel, k = worst[key]
        ok = key != "z" or rel <= z_tol
        tag = "info" if key != "z" else ("ok  " if ok else "FAIL")
        print(f"{tag} {name}: per step, {label}: worst at step {k} ({theirs['trace'][k]}): max|diff| {diff:.3e}, "
              f"max|diff|/(|official|+1) {rel:.3e}", flush=True)
        if not ok:
            failures.append(f"{name}: per-step z")
    full = [k for k, mode in enumerate(theirs["trace"]) if mode == "full"]
    if ours["trace"] == theirs["trace"]:
        shown = full if len(full) < len(ours["trace"]) else "all"
        print(f"ok   {name}: full / lazy schedule equal (full steps {shown})")
    else:
        print(f"FAIL {name}: full / lazy schedule differs: gtr {ours['trace']} official {theirs['trace']}")
        failures.append(f"{name}: schedule")


def compare_selection(name, mine, theirs, tie_tol, failures):
    """Decoder positions recomputed after layer 3 on every pruned step: equal to the official ones, or
    different only by ties at the cut (then the run went on with the official choice)."""
    steps = sorted(theirs["kept"])
    for note in mine["notes"]:
        info(f"{name}: {note}")
    sizes = sorted({len(v[0]) for v in theirs["kept"].values()})
    forced = f"official keeps every predicted token on {sum(theirs['forced_kept'])}/{len(theirs['forced_kept'])} steps"
    same = len(steps) - len(mine["ties"]) - len(mine["mismatch"])
    ok = not mine["mismatch"] and sorted(mine["kept"]) == steps
    print(f"{'ok  ' if ok else 'FAIL'} {name}: positions recomputed after decoder layer 3 equal on {same}/{len(steps)} "
          f"pruned steps, ties at the cut (within {tie_tol:g}, official choice taken) on {mine['ties']}, "
          f"different on {mine['mismatch']} (sizes {sizes}); {forced}", flush=True)
    if not ok:
        failures.append(f"{name}: pruning selection")
    if sum(theirs["forced_kept"]) != len(theirs["forced_kept"]):
        failures.append(f"{name}: official drops a predicted token (documented deviation matters)")


def teacher_forced_head(name, model, method, theirs, per_step, cfg, failures):
    """Every AR step's head as gtr runs it (method.cache.head: a fresh LazyHead per AR step) on the
    official z and noise of that step, vs the official new tokens (expected: bitwise)."""
    worst, done, batch = (0.0, 0.0, -1), 0, theirs["new"][0].shape[0]
    for k, (z, new, noise) in enumerate(zip(theirs["z"], theirs["new"], per_step)):
        n = new.shape[1]
        predict = theirs["predict"][k]
        zc, zu = at(z, predict).split(batch)
        head = method.cache.head(model, None)
        steps = noise.shape[2] - 1
        with torch.no_grad():
            x = sample_head(head, zc.reshape(batch * n, -1), method.steps.process(steps),
                            noise.reshape(batch * n, steps + 1, -1),
                            uncond=zu.reshape(batch * n, -1),
                            cfg=cfg_scale(cfg, "linear", model.seq_len, model.seq_len - done - n))
        diff, rel = measures(x.view_as(new), new)
        if rel > worst[1] or worst[2] < 0:
            worst = (diff, rel, k)
        done += n
    ok = worst[0] == 0.0
    where = f"bitwise equal on all {len(per_step)} steps" if ok else f"worst at step {worst[2]}"
    print(f"{'ok  ' if ok else 'FAIL'} {name}: gtr's head per AR step on the official z and noise: {where}: "
          f"max|diff| {worst[0]:.3e}, max|diff|/(|official|+1) {worst[1]:.3e}", flush=True)
    if not ok:
        failures.append(f"{name}: head per AR step")


def compare_head(mar_cache, ours, state, diff_steps, cfg, failures):
    """One AR step of the head alone, same z and noise: official DiffLoss / CachedDiffLoss .sample vs
    gtr's sample_head with the model's head / LazyHead (expected: bitwise)."""
    g = torch.Generator().manual_seed(1)
    n = 20
    z = torch.randn(2 * n, WIDTH, generator=g) * 3
    samples = {}
    for cached in (False, True):
        theirs = official_model(mar_cache, cached, diff_steps, state)
        torch.manual_seed(1)
        with Recorder() as draws, torch.no_grad():
            if cached:
                out = theirs.diffloss.sample(z, temperature=1.0, cfg=cfg, diffloss_d=HEAD_DEPTH, cache_type="default",
                                             step=0, cache_threshold=7, device=torch.device("cpu"))
            else:
                out = theirs.diffloss.sample(z, 1.0, cfg, device=torch.device("cpu"))
        noise = torch.stack([draws.draws[0]] + [d[:n] for d in draws.draws[1:]], 1)
        head = LazyHead(ours.diffloss.net, True) if cached else PlainHead(ours)
        with torch.no_grad():
            mine = sample_head(head, z[:n], sampling_diffusion(diff_steps), noise, uncond=z[n:], cfg=cfg)
        samples[cached] = out[:n]
        report(f"0. head {'cache (LazyHead)' if cached else '(plain)'}, one AR step of {n} tokens, same z and noise",
               mine, out[:n], 0.0, failures)
    diff, rel = measures(samples[True], samples[False])
    info(f"0. the official head cache changes that sample by max|diff| {diff:.3e}, max|diff|/(|plain|+1) {rel:.3e}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", required=True, help="path to a feihongyan1/LazyMAR checkout")
    p.add_argument("--num-iter", type=int, default=64, help="AR steps (official setting: 64)")
    p.add_argument("--diffusion-steps", type=int, default=100, help="head steps (official setting: 100)")
    p.add_argument("--cfg", type=float, default=2.5)
    p.add_argument("--scale", type=float, default=0.02, help="std of the random perturbation of every parameter")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tol", type=float, default=5e-3,
                   help="final tokens: max |diff| / (|official| + 1) (the head amplifies float rounding: "
                        "values reach 1e4-1e5 and cancel)")
    p.add_argument("--z-tol", type=float, default=1e-5, help="per-step z: max |diff| / (|official| + 1)")
    p.add_argument("--tie-tol", type=float, default=1e-6, help="pruning scores this close to the cut are ties")
    p.add_argument("--stages", nargs="*", type=int, default=list(range(len(STAGES) + 1)),
                   help="stages to run (0: the head alone, 1-5: see above)")
    args = p.parse_args()
    torch.set_num_threads(1)
    start = time.time()
    path = os.path.abspath(args.official)
    mar_cache = import_official(path, "models.mar_cache", "feihongyan1/LazyMAR")
    basic = importlib.import_module("models.basic")
    state = random_weights(mar_cache, args.diffusion_steps, args.scale, args.seed)
    ours = build_mar(None, img_size=256, vae_stride=16, width=WIDTH, depth=DEPTH, num_heads=HEADS,
                     buffer_size=BUFFER, diffloss_d=HEAD_DEPTH, diffloss_w=HEAD_WIDTH, class_num=CLASSES).eval()
    ours.load_state_dict(state, strict=True)
    info(f"official weights load strictly into gtr's MAR ({len(state)} tensors); width {WIDTH}, heads {HEADS}, "
         f"depth {DEPTH}+{DEPTH}, head {HEAD_DEPTH}x{HEAD_WIDTH}, 16x16 tokens, buffer {BUFFER}; "
         f"{args.num_iter} AR steps, {args.diffusion_steps} diffusion steps, cfg {args.cfg} linear")
    labels = torch.tensor([3, 7])
    failures, plain = [], None
    if 0 in args.stages:
        compare_head(mar_cache, ours, state, args.diffusion_steps, args.cfg, failures)
    for number in [s for s in args.stages if s > 0]:
        name, head_cache, transformer_caches, ratios, switches = STAGES[number - 1]
        name = f"{number}. {name}"
        t0 = time.time()
        theirs = run_official(official_model(mar_cache, head_cache, args.diffusion_steps, state), basic, labels,
                              args.num_iter, args.cfg, transformer_caches, ratios, args.seed)
        method = lazymar(args.num_iter, args.diffusion_steps, **switches)
        per_step = replay_noise(theirs["draws"], method.counts(GRID), len(labels), args.diffusion_steps)
        # Official: the last entries of its order are generated first; gtr lists generation order.
        orders = theirs["orders"][0].flip(1)
        mine = run_gtr(ours, method, labels, args.cfg, orders, per_step, theirs, args.tie_tol, adopt_ties=False)
        if mine["ties"]:
            diff, rel = measures(mine["tokens"], theirs["tokens"])
            info(f"{name}: with gtr's own choice at the ties (steps {mine['ties']}): final tokens "
                 f"max|diff| {diff:.3e}, max|diff|/(|official|+1) {rel:.3e}; below, gtr goes on with the "
                 "official choice at ties")
            method = lazymar(args.num_iter, args.diffusion_steps, **switches)
            mine = run_gtr(ours, method, labels, args.cfg, orders, per_step, theirs, args.tie_tol, adopt_ties=True)
        if method.cache.decoder_pruning:
            compare_selection(name, mine, theirs, args.tie_tol, failures)
        elif theirs["kept"]:
            sizes = sorted({len(v[0]) for v in theirs["kept"].values()})
            info(f"{name}: the official decoder keeps {sizes} of 320 rows on its {len(theirs['kept'])} pruned steps")
        report(f"{name}: final tokens", mine["tokens"], theirs["tokens"], args.tol, failures,
               note=f" [{time.time() - t0:.0f} s]")
        compare_steps(name, mine, theirs, args.z_tol, failures)
        if method.cache.head_cache:
            teacher_forced_head(name, ours, method, theirs, per_step, args.cfg, failures)
        if number == 1:
            plain = theirs["tokens"]
        elif plain is not None:
            diff, rel = measures(theirs["tokens"], plain)
            info(f"{name}: (scale) the official caches change the official plain-MAR tokens by max|diff| {diff:.3e}, "
                 f"max|diff|/(|plain|+1) {rel:.3e}")
    info(f"total {time.time() - start:.0f} s")
    print("all checks passed" if not failures else f"{len(failures)} check(s) failed: {failures}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
