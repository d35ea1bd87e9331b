"""Check gtr's Halton and DiSA baselines (baselines/halton.py, baselines/disa.py) against the official
code, which you provide as local checkouts:

    python scripts/verify_baselines.py --halton PATH/TO/Halton-MaskGIT --disa PATH/TO/DiSA

(either flag may be left out; checked at valeoai/Halton-MaskGIT f61b0a1314717004dc7487531fd16a8bb71e1888
and Qinyu-Allen-Zhao/DiSA 283fa59be538e2c33043427c45f7b8db40a0dfc6). Nothing of the official code is
part of gtr-bench: it is imported from PATH at run time (scripts/verify_official.py's import_official,
which also makes `.cuda()` a no-op). No module needs stubbing: Sampler/halton_sampler.py imports only
torch, numpy and tqdm; MAR_DiSA's models/mar.py needs timm and scipy.

Halton (Sampler/halton_sampler.py, HaltonSampler):
  H1. order: the official `build_halton_mask(s)` (the code is square-only) vs gtr's HaltonOrder sequence,
      the whole permutation, on 16x16 and 24x24 (its released ImageNet 256 and 384 models: f_factor
      16), 32x32 and every size 1..64. The official code draws a fixed 10,000 Halton points, which
      misses cells from 50x50 on: there the official list must equal the start of ours (info; the
      official sampler cannot run such sizes).
  H2. schedule: the official count rule lives inside `HaltonSampler.__call__`, so __call__ itself is run
      with a stub trainer (zero logits, no network: nothing of the model matters for which cells are
      revealed when) and the cells it reveals at every step (its l_mask) are compared with gtr's
      Halton slots, order[done:done + count] (counts and cells), for every step count 1..256 on
      16x16 and a set on 24x24 and 32x32; the paper's settings (16 and 8 steps on 256 tokens) are printed.
  H3. the paper's settings once more through gtr's own sampler (a tiny random MAR, 1 diffusion step:
      the cells gtr predicts per step), without and with `randomize` (the official per-image roll),
      the official per-image shift draw replaced by the shift gtr draws from each image's generator.
DiSA (MAR_DiSA/models/diffloss.py DiffLoss.sample, MAR_DiSA/diffusion/__init__.py create_diffusion):
  D1. per-AR-step diffusion steps: the official DiffLoss (diff_sampler "DiSA") is asked, through its own
      `sample`, which of its respaced processes (lower..upper steps) it uses at AR step s of S, for
      S in 64, 24, 16, 8, 4, 2, 1 (and 256), every official strategy, (upper, lower) = (50, 5) (README),
      (25, 5) (main_mar.py default) and (100, 5) (Harmon config); vs disa_steps.
  D2. timestep clipping: every official respaced process (clip 950 for "DiSA"; 1001, i.e. none, for
      "default") vs gtr's sampling_diffusion(T, 950 / None): kept timesteps and every array, bitwise.
  D3. end to end: the official MAR_DiSA `sample_tokens` (a MAR fork calling diffloss.sample(step=...,
      ar_num_iter=...)) on a small random MAR (16x16 tokens, width 64, depth 2+2, head 2x64) vs gtr's
      `sample(model, disa(...))` (its steps slot clips at 950) with the official order and noise replayed (as
      verify_official does), cfg 2.5 linear; final tokens compared by max|a-b|/(|b|+1) (random weights
      make samples large). Per step, the official process used and the noise it drew are checked
      against gtr's step count and clipped process. As info: the same run of gtr without the clip.

Prints one line per check ("ok" / "FAIL" / "info") and exits non-zero if any fails.
"""
import argparse
import contextlib
import functools
import importlib
import os
import sys
import time
import types

import numpy as np
import torch

from eval.official import Recorder, import_official, info, measures, patched, perturb, report

from baselines.disa import DISA_CLIP_TIMESTEPS, disa, disa_steps
from baselines.halton import HaltonOrder, halton
from gtr.models.diffusion import sampling_diffusion
from gtr.models.mar import build_mar
from gtr.sampler import image_generator, sample

HALTON = "valeoai/Halton-MaskGIT"
DISA = "Qinyu-Allen-Zhao/DiSA"
PAPER_STEPS = (16, 8)  # the GtR paper's Halton rows: 16 and 8 steps on 256 tokens


def verdict(name, ok, detail, failures):
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)
    if not ok:
        failures.append(name)


def ranges(values):
    """[1, 2, 3, 5] -> '1-3, 5'."""
    out, values = [], sorted(values)
    for v in values:
        if out and v == out[-1][1] + 1:
            out[-1][1] = v
        else:
            out.append([v, v])
    return ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in out) or "none"


# ================================================================ Halton
class StubTrainer:
    """What HaltonSampler.__call__ reads of its MaskGIT trainer: zero logits, an identity decoder."""

    def __init__(self, size, codebook=2):
        self.input_size = size
        self.args = types.SimpleNamespace(device="cpu", mask_value=codebook, codebook_size=codebook)
        self.autocast = contextlib.nullcontext()
        self.vit = _StubViT(size, codebook)
        self.ae = types.SimpleNamespace(decode_code=lambda code: code.float())


class _StubViT:
    def __init__(self, size, codebook):
        self.size, self.codebook = size, codebook

    def __call__(self, code, labels, drop):
        return torch.zeros(code.shape[0], self.size ** 2, self.codebook)

    def eval(self):
        pass

    def train(self):
        pass


def official_reveals(sampler_cls, size, steps, shifts=None):
    """Run the official HaltonSampler.__call__ (stub trainer) and return, per step, the raster positions
    each image reveals: a list over steps of lists over images of sorted position lists. `shifts`: run
    with randomize=True and these per-image roll shifts in place of its torch.randint draw."""
    batch = 1 if shifts is None else len(shifts)
    sampler = sampler_cls(w=0, step=steps, randomize=shifts is not None)
    trainer = StubTrainer(size)
    labels = torch.zeros(batch, dtype=torch.long)
    if shifts is None:
        _, _, masks = sampler(trainer, nb_sample=batch, labels=labels, verbose=False)
    else:
        def randint(low, high, shape, *a, **k):
            assert (low, high, tuple(shape)) == (0, size ** 2, (batch,)) and not a and not k, (low, high, shape)
            return torch.tensor(shifts)
        with patched(torch, "randint", randint):
            _, _, masks = sampler(trainer, nb_sample=batch, labels=labels, verbose=False)
    return [[m.flatten().nonzero().flatten().tolist() for m in mask] for mask in masks]


def our_reveals(method, size, orders):
    """gtr's Halton slots: per step, per image, the sorted positions order[done:done + count]."""
    out, done = [], 0
    for n in method.counts((size, size)):
        out.append([sorted(o[done:done + n].tolist()) for o in orders])
        done += n
    return out


def counts_of(reveals):
    return [len(step[0]) for step in reveals]


def verify_halton(path, failures, sweep_max):
    hs = import_official(path, "Sampler.halton_sampler", HALTON)
    Sampler = hs.HaltonSampler
    print(f"# Halton: {HALTON} at {path}", flush=True)

    # H1. the order, the whole permutation
    equal, prefix, wrong = [], {}, []
    for s in range(1, 65):
        official = [tuple(c) for c in Sampler.build_halton_mask(s).tolist()]
        ours = HaltonOrder().sequence((s, s)).tolist()
        theirs = [i * s + j for i, j in official]
        if theirs == ours:
            equal.append(s)
        elif theirs == ours[:len(theirs)] and len(theirs) < s * s:
            prefix[s] = s * s - len(theirs)
        else:
            wrong.append(s)
        if s in (16, 24, 32):
            first = next((k for k, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
            verdict(f"H1 Halton order {s}x{s}", theirs == ours,
                    f"official build_halton_mask vs gtr HaltonOrder: all {s * s} positions equal"
                    if theirs == ours else f"first difference at index {first}", failures)
            if s == 16:
                info(f"H1 16x16 first 10 cells (row, col): {official[:10]}; last 5: {official[-5:]}")
    verdict("H1 Halton order, square sizes 1..64", not wrong,
            f"whole permutation equal on sizes {ranges(equal)}; official incomplete (10,000 points) on "
            f"{ranges(prefix)}, its cells equal our first ones there; different on {ranges(wrong)}", failures)
    if prefix:
        info(f"H1 official build_halton_mask misses cells from {min(prefix)}x{min(prefix)} on "
             f"(missing per size: {prefix}); gtr draws until the grid is full")
        s = min(prefix)
        try:
            official_reveals(Sampler, s, 8)
            info(f"H1 official sampler runs on {s}x{s}")
        except Exception as e:  # noqa: BLE001  (documenting how the official code fails)
            info(f"H1 the official sampler cannot run on {s}x{s}: {type(e).__name__}: {str(e).splitlines()[0][:120]}")

    # H2. the count rule and the cells revealed per step, through the official __call__
    t0 = time.time()
    grids = {16: list(range(1, sweep_max + 1)), 24: [1, 2, 4, 8, 12, 16, 24, 32, 64, 576], 32: [1, 2, 3, 4, 8, 12, 16, 24, 32, 64, 100, 128, 256, 1024]}
    for size, step_list in grids.items():
        bad = []
        for steps in step_list:
            method = halton(steps)
            theirs = official_reveals(Sampler, size, steps)
            ours = our_reveals(method, size, [method.order((size, size), torch.Generator())])
            if theirs != ours:
                bad.append(steps)
                if len(bad) <= 3:
                    info(f"H2 {size}x{size}, {steps} steps: official counts {counts_of(theirs)}, gtr {counts_of(ours)}")
            if size == 16 and steps in PAPER_STEPS:
                info(f"H2 {steps} steps on 256 tokens: official counts {counts_of(theirs)}, "
                     f"gtr {method.counts((16, 16))}")
        verdict(f"H2 Halton schedule + cells per step, {size}x{size}", not bad,
                f"official HaltonSampler.__call__ reveals the same cells at every step as gtr's slots for "
                f"{len(step_list) - len(bad)}/{len(step_list)} step counts ({ranges(step_list)}); "
                f"different for {ranges(bad)}", failures)
    info(f"H2 ran the official sampler {sum(map(len, grids.values()))} times in {time.time() - t0:.1f} s")
    try:
        halton(17).counts((4, 4))
        refused = "accepts it"
    except ValueError:
        refused = "refuses it (ValueError)"
    info(f"H2 more steps than tokens (17 on 4x4): official counts {counts_of(official_reveals(Sampler, 4, 17))} "
         f"(empty last step); gtr {refused}")

    # H3. the paper's settings through gtr's sampler, without and with the official roll
    model = build_mar(None, img_size=256, vae_stride=16, width=16, depth=1, num_heads=2, buffer_size=4,
                      diffloss_d=1, diffloss_w=16, class_num=2).eval()
    for steps in PAPER_STEPS:
        for roll in (False, True):
            method = halton(steps, roll=roll, diffusion_steps=1)
            generators = [image_generator(0, i) for i in range(3)]
            seen = []
            sample(model, method, torch.zeros(3, dtype=torch.long), generators,
                   callback=lambda d: seen.append([p.tolist() for p in d["step"].predict]))
            # The shift each image's generator gives (HaltonOrder's draw: torch.randint(0, L, (1,))) replaces
            # the official per-image draw torch.randint(0, L, (B,)), so a roll the other way would show.
            shifts = [int(torch.randint(0, 256, (1,), generator=image_generator(0, i))) for i in range(3)] \
                if roll else None
            theirs = official_reveals(Sampler, 16, steps, shifts)
            if not roll:
                theirs = [step * 3 for step in theirs]
            detail = f"shifts {shifts} replayed" if roll else "3 images"
            verdict(f"H3 gtr sampler vs official, {steps} steps, 16x16, randomize={roll}", seen == theirs,
                    f"cells predicted at each of {len(seen)} steps equal ({detail})" if seen == theirs else
                    f"first differing step {next(k for k, (a, b) in enumerate(zip(seen, theirs)) if a != b)}",
                    failures)


# ================================================================ DiSA
class Probe:
    """Stands in for one of the official DiffLoss's respaced processes: records that it was chosen,
    then runs the real one (run=True) or returns the starting noise."""

    def __init__(self, index, real, log, run):
        self.index, self.real, self.log, self.run = index, real, log, run

    def p_sample_loop(self, *a, **k):
        self.log.append(self.index)
        return self.real.p_sample_loop(*a, **k) if self.run else a[2]


def probe(diffloss, log, run):
    """Wrap the official DiffLoss's processes in Probes; returns the real ones."""
    real = diffloss.gen_diffusion
    diffloss.gen_diffusion = [Probe(j, d, log, run) for j, d in enumerate(real)]
    return real


ARRAYS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
          "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
          "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2")


def same_process(official, ours):
    """Official SpacedDiffusion vs gtr's Diffusion: kept timesteps and every array, bitwise."""
    if list(official.timestep_map) != list(ours.timesteps) or official.num_timesteps != ours.num_steps:
        return False
    return all(np.array_equal(getattr(official, a), getattr(ours, a)) for a in ARRAYS)


def verify_disa_schedule(diffloss_mod, failures):
    strategies = ("linear", "cosine", "two-stage", "constant")
    ar_steps = (64, 24, 16, 8, 4, 2, 1, 256)
    for upper, lower in ((50, 5), (25, 5), (100, 5)):
        official = diffloss_mod.DiffLoss(target_channels=4, z_channels=8, depth=1, width=8, diff_upper_steps=upper,
                                          diff_lower_steps=lower, diff_sampler="DiSA")
        log = []
        real = probe(official, log, run=False)
        # D1: which process the official DiffLoss.sample picks at AR step s of S
        z = torch.zeros(2, 8)
        lines = []
        for strategy in strategies:
            official.diff_annealing_strategy = strategy
            for S in ar_steps:
                del log[:]
                try:
                    for s in range(S):
                        official.sample(z, cfg=1.0, step=s, ar_num_iter=S)
                except ZeroDivisionError:
                    ours = [disa_steps(s, S, upper, lower, strategy) for s in range(S)]
                    info(f"D1 ({upper},{lower}) {strategy}, S={S}: official DiffLoss.sample raises "
                         f"ZeroDivisionError (divides by S-1); gtr gives {ours}")
                    continue
                theirs = [lower + j for j in log]
                ours = [disa_steps(s, S, upper, lower, strategy) for s in range(S)]
                lines.append((strategy, S, theirs == ours))
                if theirs != ours:
                    k = next(k for k, (a, b) in enumerate(zip(theirs, ours)) if a != b)
                    info(f"D1 ({upper},{lower}) {strategy}, S={S}: first difference at AR step {k}: "
                         f"official {theirs[k]}, gtr {ours[k]}")
                if (upper, lower, strategy) == (50, 5, "linear") and S in (64, 24, 16, 8, 4, 2):
                    info(f"D1 (50,5) linear, S={S}: {theirs if S <= 24 else theirs[:8] + ['...'] + theirs[-4:]} "
                         f"(sum {sum(theirs)})")
        bad = [f"{st} S={S}" for st, S, ok in lines if not ok]
        verdict(f"D1 DiSA steps per AR step, (upper, lower) = ({upper}, {lower})", not bad,
                f"official DiffLoss.sample's choice equals disa_steps on {len(lines) - len(bad)}/{len(lines)} "
                f"(strategy, S) runs, S in {ar_steps}, strategies {strategies}; different: {bad or 'none'}",
                failures)
        # D2: every process the official sampler may use vs gtr's, clipped at 950
        clip_ok = [same_process(d, sampling_diffusion(lower + j, DISA_CLIP_TIMESTEPS)) for j, d in enumerate(real)]
        merged = {lower + j: d.num_timesteps for j, d in enumerate(real) if d.num_timesteps != lower + j}
        verdict(f"D2 DiSA respacing with clip {DISA_CLIP_TIMESTEPS}, T = {lower}..{upper}", all(clip_ok),
                f"{sum(clip_ok)}/{len(clip_ok)} official processes equal gtr's sampling_diffusion(T, "
                f"{DISA_CLIP_TIMESTEPS}) bitwise (timesteps and {len(ARRAYS)} arrays)", failures)
        if upper == 50:
            info(f"D2 clipping merges timesteps: requested T -> distinct steps run {merged}; all other T "
                 f"keep T (official create_diffusion: min(t, 950) over the respaced set, then a set)")
    default = diffloss_mod.DiffLoss(target_channels=4, z_channels=8, depth=1, width=8, diff_upper_steps=100,
                                    diff_sampler="default")
    verdict("D2 'default' sampler (clip 1001) T=100 vs gtr sampling_diffusion(100, None)",
            same_process(default.gen_diffusion, sampling_diffusion(100, None)), "timesteps and arrays bitwise",
            failures)
    info(f"D2 the official DiffLoss's training process is clipped too (create_diffusion's default 950): "
         f"{default.train_diffusion.num_timesteps} timesteps, not 1000 (training only; DiSA samples released MAR "
         f"checkpoints)")
    info("D2 official DDIM sampler clips at 980 and DPM-Solver samplers use t_start 0.95 (no CFG); gtr has "
         "neither (README: 'DiSA' is the released setting)")


# ---------------------------------------------------------------- DiSA end to end
WIDTH, HEADS, DEPTH, HEAD_DEPTH, HEAD_WIDTH, BUFFER, CLASSES, CHANNELS = 64, 4, 2, 2, 64, 16, 10, 16


def official_disa_model(mar_mod, strategy, upper, lower, seed, scale):
    torch.manual_seed(seed)
    model = mar_mod.MAR(img_size=256, vae_stride=16, patch_size=1, encoder_embed_dim=WIDTH, encoder_depth=DEPTH,
                        encoder_num_heads=HEADS, decoder_embed_dim=WIDTH, decoder_depth=DEPTH,
                        decoder_num_heads=HEADS, buffer_size=BUFFER, diffloss_d=HEAD_DEPTH, diffloss_w=HEAD_WIDTH,
                        class_num=CLASSES, diff_upper_steps=upper, diff_lower_steps=lower,
                        diff_annealing_strategy=strategy, diff_sampler="DiSA",
                        # the released models use LayerNorm eps 1e-6 (fact: MAR_DiSA models/mar.py mar_base)
                        norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6)).eval()
    perturb(model, torch.Generator().manual_seed(seed), scale)
    return model


def run_official_disa(model, labels, num_iter, cfg, seed):
    """Official sample_tokens, recording its order, every randn and, per AR step, the process chosen
    and where its draws start."""
    chosen, starts, orders = [], [], []
    real = probe(model.diffloss, chosen, run=True)
    sample_orders, diff_sample = model.sample_orders, model.diffloss.sample

    def record_sample(*a, **k):
        starts.append(len(draws.draws))
        return diff_sample(*a, **k)
    model.sample_orders = lambda b: orders.append(sample_orders(b)) or orders[-1]
    model.diffloss.sample = record_sample
    np.random.seed(seed)
    torch.manual_seed(seed)
    try:
        with Recorder() as draws, torch.no_grad():
            tokens = model.sample_tokens(len(labels), num_iter=num_iter, cfg=cfg, cfg_schedule="linear",
                                         labels=labels, temperature=1.0)
    finally:
        del model.sample_orders, model.diffloss.sample
        model.diffloss.gen_diffusion = real
    return dict(tokens=tokens, orders=orders[0], draws=draws.draws, starts=starts + [len(draws.draws)],
                steps=[model.diffloss.gen_diffusion[j] for j in chosen], chosen=chosen)


def replay_disa_noise(theirs, method, bsz, num_iter, lower):
    """Per AR step: gtr's noise (B, n, 1 + T, C) from the official draws (one (B*n, C) starting draw,
    then one (2*B*n, C) draw per step of the clipped process, of which the conditional rows matter),
    and whether the official process (requested T, distinct steps) equals gtr's."""
    per_step, agree = [], []
    counts = method.counts((16, 16))
    for k, n in enumerate(counts):
        block = theirs["draws"][theirs["starts"][k]:theirs["starts"][k + 1]]
        requested = lower + theirs["chosen"][k]
        ours_t = disa_steps(k, num_iter, method.steps.upper, method.steps.lower, method.steps.strategy)
        ran = len(block) - 1
        agree.append(requested == ours_t and ran == theirs["steps"][k].num_timesteps
                     and ran == sampling_diffusion(ours_t, DISA_CLIP_TIMESTEPS).num_steps)
        cols = [block[0]] + [d[:bsz * n] for d in block[1:]]
        cols += [torch.zeros_like(block[0])] * (1 + ours_t - len(cols))  # merged steps: columns never read
        per_step.append(torch.stack(cols, 1).view(bsz, n, 1 + ours_t, CHANNELS))
    return per_step, agree


def verify_disa_sampler(mar_mod, failures, runs, cfg, tol, scale, seed):
    labels = torch.tensor([3, 7])
    ours_model, loaded = None, False
    for strategy, num_iter in runs:
        t0 = time.time()
        theirs_model = official_disa_model(mar_mod, strategy, 50, 5, seed, scale)
        if ours_model is None:
            ours_model = build_mar(None, img_size=256, vae_stride=16, width=WIDTH, depth=DEPTH, num_heads=HEADS,
                                   buffer_size=BUFFER, diffloss_d=HEAD_DEPTH, diffloss_w=HEAD_WIDTH,
                                   class_num=CLASSES).eval()
        ours_model.load_state_dict(theirs_model.state_dict(), strict=True)
        if not loaded:
            info(f"D3 official MAR_DiSA weights load strictly into gtr's MAR ({len(ours_model.state_dict())} "
                 f"tensors); width {WIDTH}, depth {DEPTH}+{DEPTH}, head {HEAD_DEPTH}x{HEAD_WIDTH}, 16x16 tokens, "
                 f"buffer {BUFFER}, random weights (scale {scale}), cfg {cfg} linear, upper 50, lower 5")
            loaded = True
        theirs = run_official_disa(theirs_model, labels, num_iter, cfg, seed)
        method = disa(num_iter, 50, 5, strategy)
        per_step, agree = replay_disa_noise(theirs, method, len(labels), num_iter, 5)
        orders = torch.as_tensor(theirs["orders"]).flip(1)  # official: last entries generated first
        name = f"D3 DiSA {strategy}, {num_iter} AR steps"
        ran = theirs["starts"][-1] - len(theirs["starts"]) + 1  # draws minus one starting draw per AR step
        verdict(f"{name}: official process per AR step", all(agree),
                f"requested steps and distinct (clipped) steps run equal gtr's on {sum(agree)}/{len(agree)} AR "
                f"steps; official ran {ran} head steps in all", failures)
        results = {}
        for clip in (DISA_CLIP_TIMESTEPS, None):
            with torch.no_grad():
                tokens = sample(ours_model, disa(num_iter, 50, 5, strategy, clip_timesteps=clip), labels,
                                [torch.Generator() for _ in labels], cfg=cfg, cfg_schedule="linear", orders=orders,
                                noise_fn=lambda k, shape: per_step[k])
            results[clip] = ours_model.unpatchify(tokens)
        report(f"{name}: final tokens, gtr (clip_timesteps={DISA_CLIP_TIMESTEPS}) vs official sample_tokens",
               results[DISA_CLIP_TIMESTEPS], theirs["tokens"], tol, failures, note=f" [{time.time() - t0:.1f} s]")
        diff, rel = measures(results[None], theirs["tokens"])
        info(f"{name}: gtr WITHOUT the clip differs from the official by max|diff| {diff:.3e}, "
             f"max|diff|/(|official|+1) {rel:.3e} (the clip is exercised)")


def verify_disa(path, failures, runs, cfg, tol, scale, seed):
    if os.path.isdir(os.path.join(path, "MAR_DiSA")):
        path = os.path.join(path, "MAR_DiSA")
    mar_mod = import_official(path, "models.mar", DISA + " (MAR_DiSA)")
    diffloss_mod = importlib.import_module("models.diffloss")
    print(f"# DiSA: {DISA} at {path}", flush=True)
    verify_disa_schedule(diffloss_mod, failures)
    verify_disa_sampler(mar_mod, failures, runs, cfg, tol, scale, seed)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--halton", help="path to a valeoai/Halton-MaskGIT checkout")
    p.add_argument("--disa", help="path to a Qinyu-Allen-Zhao/DiSA checkout (or its MAR_DiSA folder)")
    p.add_argument("--halton-sweep", type=int, default=256,
                   help="H2: compare every step count 1..N on 16x16 (default: all 256)")
    p.add_argument("--disa-runs", nargs="*", default=["linear:64", "linear:24", "linear:16", "cosine:16",
                                                      "two-stage:8", "constant:4"],
                   help="D3: strategy:AR-steps runs (release: linear:64)")
    p.add_argument("--cfg", type=float, default=2.5)
    p.add_argument("--scale", type=float, default=0.02, help="std of the random perturbation of every parameter")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tol", type=float, default=1e-5, help="D3 final tokens: max |diff| / (|official| + 1)")
    args = p.parse_args()
    if not args.halton and not args.disa:
        p.error("give --halton and/or --disa")
    torch.set_num_threads(1)
    start, failures = time.time(), []
    if args.halton:
        verify_halton(os.path.abspath(args.halton), failures, args.halton_sweep)
    if args.disa:
        runs = [(r.split(":")[0], int(r.split(":")[1])) for r in args.disa_runs]
        verify_disa(os.path.abspath(args.disa), failures, runs, args.cfg, args.tol, args.scale, args.seed)
    info(f"total {time.time() - start:.0f} s")
    print("all checks passed" if not failures else f"{len(failures)} check(s) failed: {failures}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
