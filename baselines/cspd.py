"""CSpD ("Continuous Speculative Decoding for Autoregressive Image Generation", arXiv 2411.11925): a small
draft MAR drafts AR steps for a large target MAR, which checks a window of drafted tokens in one pass.

Read from the official code (MarkXCloud/CSpD d91f721: spec_decode/spec_decode_runner.py, models/mar.py
sample_tokens_step / sample_tokens_step_with_mask, diffusion/gaussian_diffusion.py) and written here as a
cache slot (which model runs a step) and the sampler's verify hook (gtr.method.Verify); both models are
untouched.
  * Order, counts, CFG schedule and 100 diffusion steps are MAR's, shared by both models.
  * Step k is the target's when k <= num_iter * ratio ("pre-filling", no rounding: floor(num_iter*ratio)+1
    steps); every later step is the draft's (`DraftCache`).
  * A window of drafted steps is verified after step k when k % num_draft == 0 (absolute step index, so
    the first window is often shorter) or k is the last step (`CSpDVerify`). The target runs once on the
    window: its transformer sees only the tokens known before the window, and its head re-samples every
    window token with that token's own noise ("trajectory alignment"), at the guidance scale of the
    window's last step.
  * A drafted token x (the draft chain's last mean, mu_q) is kept when u < p(x)/q(x) * F, u ~ U[0, 1):
    p, q the target's and the draft's last-step Gaussians with their std widened by the code's inner
    temperature 42, F = exp(sum over channels and earlier steps of log std_p - log std_q). This is the
    code's direction (target over draft, as standard speculative sampling min(1, p/q)). Each token is
    judged alone; nothing is rolled back.
  * Otherwise the token is re-drawn from the residual: proposals from N(mu_p, std_p^2) (no temperature)
    kept with probability max(0, p(y) - q(y)/F) / p(y), up to 100 tries over all window tokens, the last
    kept proposal winning; a token never kept stays 0 (the code's fallback).
Differences from the official code, on purpose: randomness per image (its acceptance draws come from the
image's generator, and the residual's tries stop when that image's tokens are kept; the code draws over
the flattened batch and stops when the whole batch's are), and the noise per image and AR step from the
image's generator (the code draws noise for every (position, diffusion step) up front). At batch 1 with the
noise replayed the two are the same: make verify-cspd checks every step against the official code.
"""
import math
from pathlib import Path

import torch
from omegaconf import OmegaConf

from gtr.method import PlainHead
from gtr.sampler import put, take


def is_target_step(index, num_iter, ratio):
    """Whether AR step `index` runs the target alone (fact: spec_decode_runner.py, `step <= num_iter * ratio`)."""
    return index <= num_iter * ratio


def is_verify_step(index, num_iter, num_draft):
    """Whether the window of drafted steps is verified after step `index` (fact: spec_decode_runner.py)."""
    return (index % num_draft == 0 and index != 0) or index == num_iter - 1


def check_knobs(ratio, num_draft):
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise ValueError(f"CSpD ratio must be a number in [0, 1), got {ratio!r}")
    if isinstance(num_draft, bool) or not isinstance(num_draft, int) or num_draft < 1:
        raise ValueError(f"CSpD num_draft must be an integer >= 1, got {num_draft!r}")


def draft_config(name, checkpoint=None, random_init=False):
    """The model config of the draft: configs/model/<name>.yaml, with its checkpoint and random_init set."""
    path = Path(__file__).resolve().parents[1] / "configs" / "model" / f"{name}.yaml"
    if not path.is_file():
        choices = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ValueError(f"unknown draft model {name!r}; choose one of {', '.join(choices)}")
    cfg = OmegaConf.load(path)
    cfg.checkpoint = checkpoint if checkpoint is not None else cfg.checkpoint
    cfg.random_init = bool(random_init)
    return cfg


class DraftCache:
    """Cache slot of a speculative method: the target (the sampler's model) runs the steps `is_target_step`
    picks, the draft model every other step, each with its own condition embedding and head.

    draft: a configs/model name (built on the target's device and dtype at the first batch), or a model.
    """

    def __init__(self, draft, ratio=0.15, checkpoint=None, random_init=False):
        check_knobs(ratio, 1)
        if isinstance(draft, str):
            draft = draft_config(draft, checkpoint, random_init)
        self.draft_source, self.ratio = draft, ratio
        self.models = {}

    def draft_for(self, model):
        """The draft on `model`'s device and dtype (built once per device and dtype)."""
        if isinstance(self.draft_source, torch.nn.Module):
            return self.draft_source
        from gtr.load import build_model, model_on_meta  # here: gtr.load imports the method registry
        device, dtype = model.fake_latent.device, model.fake_latent.dtype
        if (device, dtype) not in self.models:
            draft = model_on_meta(self.draft_source) if device.type == "meta" else build_model(
                self.draft_source, device, dtype=dtype)
            self.models[device, dtype] = draft
        return self.models[device, dtype]

    def check_grid(self, grid):
        """Refuse a draft whose token grid is not the target's, or whose checkpoint file is missing
        (gtr.build.dry_run calls it before any work)."""
        if isinstance(self.draft_source, torch.nn.Module):
            draft = self.draft_source
        else:
            from gtr.load import find_file, model_on_meta
            draft = model_on_meta(self.draft_source)
            path = self.draft_source.get("checkpoint")
            if path and not self.draft_source.get("random_init") and find_file(path) is None:
                raise ValueError(f"its draft's checkpoint {path} does not exist (check the path; "
                                 f"method.draft_checkpoint=PATH, or model.random_init=true for random weights)")
        if (draft.seq_h, draft.seq_w) != tuple(grid):
            raise ValueError(f"its draft's token grid {draft.seq_h}x{draft.seq_w} is not the model's "
                             f"{grid[0]}x{grid[1]}: pick a draft of the same grid (method.draft=...)")

    def start(self, model, batch_size, guided):
        self.draft = self.draft_for(model)
        if (self.draft.seq_len, self.draft.token_dim) != (model.seq_len, model.token_dim):
            raise ValueError(f"the draft's tokens ({self.draft.seq_len} x {self.draft.token_dim}) differ from the "
                             f"target's ({model.seq_len} x {model.token_dim})")
        self.guided, self.cond_emb = guided, None

    def condition(self, model, tokens, known, cond_emb, step):
        if is_target_step(step.index, step.num_steps, self.ratio):
            return model.condition(tokens, known, cond_emb)
        if self.cond_emb is None:  # the draft's own embedding of the batch's conditions
            labels = torch.as_tensor(step.conditions, device=tokens.device)
            self.cond_emb = self.draft.embed_condition(labels)
            if self.guided:
                uncond = self.draft.unconditional_embedding(len(labels)).to(self.cond_emb.dtype)
                self.cond_emb = torch.cat([self.cond_emb, uncond])
        return self.draft.condition(tokens.to(self.draft.fake_latent.dtype), known, self.cond_emb)

    def head(self, model, step):
        return PlainHead(model if is_target_step(step.index, step.num_steps, self.ratio) else self.draft)


def gaussian_density(x, mean, std, widen=1.0):
    """Unnormalised N(x; mean, (widen * std)^2) over the last dim (as the code computes it)."""
    return torch.exp(-0.5 * (((x - mean) / std / widen) ** 2).sum(-1))


def normal_pdf(x, mean, std):
    """The normalised diagonal Gaussian density over the last dim (as the code computes it)."""
    return torch.exp(-0.5 * (((x - mean) / std) ** 2).sum(-1)) / ((2 * math.pi) ** (x.shape[-1] / 2) * std.prod(-1))


def acceptance(x, draft, target, inner_temperature):
    """p(x) / q(x) * F per token (see the module doc); draft and target: {"mean", "std", "log_std"} (n, C)."""
    fixed = torch.exp((target["log_std"] - draft["log_std"]).sum(-1))
    q = gaussian_density(x, draft["mean"], draft["std"], inner_temperature)
    p = gaussian_density(x, target["mean"], target["std"], inner_temperature)
    return p * fixed * draft["std"].prod(-1) / (q * target["std"].prod(-1))


def residual_sample(draft, target, generator, tries=100):
    """Tokens (n, C) from the residual of the target over the draft (see the module doc) and which of them
    a proposal was kept for (n,) (the others are 0); the draws come from `generator` (a normal (n, C) then a
    uniform (n,) per try)."""
    mean, std = target["mean"], target["std"]
    fixed = torch.exp((target["log_std"] - draft["log_std"]).sum(-1))
    sample = torch.zeros_like(mean)
    kept = torch.zeros(mean.shape[0], dtype=torch.bool, device=mean.device)
    for _ in range(tries):
        proposal = torch.randn(mean.shape, generator=generator).to(mean.device) * std + mean
        p = normal_pdf(proposal, mean, std)
        alpha = (p - normal_pdf(proposal, draft["mean"], draft["std"]) / fixed).clamp(min=0) / p
        take_it = torch.rand(alpha.shape, generator=generator).to(mean.device) < alpha
        sample[take_it] = proposal[take_it]
        kept |= take_it
        if kept.all():
            break
    return sample, kept


class CSpDVerify:
    """CSpD's verify hook (gtr.method.Verify): collects the drafted steps and verifies each window.

    `accepted` / `drafted` count the drafted tokens kept and judged since the hook was built, `zeros` the
    rejected ones for which the residual kept no proposal in `tries` (the code then leaves a zero token).
    """

    def __init__(self, ratio=0.15, num_draft=8, inner_temperature=42.0, tries=100):
        check_knobs(ratio, num_draft)
        self.ratio, self.num_draft, self.inner_temperature, self.tries = ratio, num_draft, inner_temperature, tries
        self.accepted = self.drafted = self.zeros = 0

    def stats(self):
        """What the windows did so far: the fraction of drafted tokens kept, how many were judged, and how many
        rejected ones the residual left at zero."""
        return {"accepted_fraction": self.accepted / max(self.drafted, 1), "drafted_tokens": self.drafted,
                "zero_tokens": self.zeros}

    def check(self, method):
        if not isinstance(method.cache, DraftCache) or method.cache.ratio != self.ratio:
            raise ValueError("CSpD's verify hook needs its draft cache (cache: draft) with the same ratio")

    def start(self, model, batch_size, guided):
        self.window, self.context = [], None

    def __call__(self, model, tokens, record):
        step = record["step"]
        if is_target_step(step.index, step.num_steps, self.ratio) or step.predict.shape[1] == 0:
            return tokens
        if not self.window:
            self.context = step.known  # the target sees only what was known before the window
        self.window.append((step.predict, record["noise"], record["trace"]))
        if not is_verify_step(step.index, step.num_steps, self.num_draft):
            return tokens
        window, self.window = self.window, []
        positions, order = torch.cat([w[0] for w in window], dim=1).sort(dim=1)  # ascending, as the code's mask
        rows = torch.arange(len(tokens), device=positions.device)[:, None]
        noise = torch.cat([w[1] for w in window], dim=1)[rows, order]
        draft = {name: torch.cat([w[2][name] for w in window], dim=1)[rows, order] for name in window[0][2]}
        batch, guided = len(tokens), step.guided
        x_in = (torch.cat([tokens, tokens]) if guided else tokens).to(model.fake_latent.dtype)
        known = torch.cat([self.context, self.context]) if guided else self.context
        z = model.condition(x_in, known, record["cond_emb"])
        z_uncond = take(z[batch:], positions) if guided else None
        _, target = record["sample"](take(z[:batch], positions), z_uncond, noise, record["scale"], noise.shape[2] - 1)
        if tokens.device.type == "meta":  # counting FLOPs: the judging costs none
            return tokens
        drafted = take(tokens, positions).float()
        kept = []
        for b, generator in enumerate(step.generators):
            d = {name: value[b] for name, value in draft.items()}
            t = {name: value[b] for name, value in target.items()}
            accept = acceptance(drafted[b], d, t, self.inner_temperature) > torch.rand(
                drafted.shape[1], generator=generator).to(tokens.device)
            if not accept.all():
                redrawn, found = residual_sample(d, t, generator, self.tries)
                drafted[b] = torch.where(accept[:, None], drafted[b], redrawn)
                self.zeros += int((~accept & ~found).sum())
            kept.append(accept)
        self.accepted += int(torch.stack(kept).sum())
        self.drafted += drafted.shape[0] * drafted.shape[1]
        return put(tokens, positions, drafted)
