"""Gaussian diffusion for MAR's per-token head: cosine schedule, respacing, sampling and the loss.

MAR models each token with a small diffusion model (the "DiffLoss" head) trained with 1000 cosine
steps, eps prediction and a learned-range variance (improved DDPM). Sampling respaces the 1000 steps
to a few (MAR default "100"). Everything here is computed in float64 numpy and cast to float32 at
use, as the official code does (fact: LTH14/mar diffusion/gaussian_diffusion.py).
"""
import functools
import math

import numpy as np
import torch

TRAIN_STEPS = 1000


def cosine_betas(num_steps=TRAIN_STEPS, max_beta=0.999):
    """Betas of the improved-DDPM cosine schedule, alpha_bar(t) = cos((t + 0.008) / 1.008 * pi / 2)^2."""
    def alpha_bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.array([min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta)
                     for i in range(num_steps)], dtype=np.float64)


def respaced_timesteps(num_steps, clip_timesteps=None, train_steps=TRAIN_STEPS):
    """The training timesteps a `num_steps`-step sampler visits, ascending.

    ADM's rule for one section: round(i * (train_steps - 1) / (num_steps - 1)) for i < num_steps.
    One step is special-cased to the last timestep (ADM's rule would pick t=0, i.e. no denoising,
    and the official code then crashes): a single step predicts x0 from pure noise.
    `clip_timesteps` caps every timestep (DiSA's code clips at 950 by default; duplicates merge, so
    "100" visits 96 distinct timesteps — the convention behind the GtR paper's FLOPs, REFERENCE 2).
    """
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"diffusion steps must be a positive integer, got {num_steps!r}")
    if num_steps > train_steps:
        raise ValueError(f"cannot respace {train_steps} training steps into {num_steps}")
    if num_steps == 1:
        steps = [train_steps - 1]
    else:
        # Accumulate the fractional stride (not i * stride) so rounding ties fall as in ADM.
        stride, position, steps = (train_steps - 1) / (num_steps - 1), 0.0, []
        for _ in range(num_steps):
            steps.append(round(position))
            position += stride
    if clip_timesteps is not None:
        steps = [min(s, clip_timesteps) for s in steps]
    return sorted(set(steps))


class Diffusion:
    """A (possibly respaced) discrete Gaussian diffusion with eps prediction and learned-range variance.

    `timesteps` are the training timesteps kept, ascending; index k of this process uses the model
    at training time `timesteps[k]`.
    """

    def __init__(self, timesteps=None, train_betas=None):
        train_betas = cosine_betas() if train_betas is None else train_betas
        timesteps = list(range(len(train_betas))) if timesteps is None else list(timesteps)
        alphas_cumprod_train = np.cumprod(1.0 - train_betas)
        # Respacing keeps alpha_bar at the kept timesteps and derives the betas between them.
        kept = alphas_cumprod_train[timesteps]
        betas = 1.0 - kept / np.append(1.0, kept[:-1])
        # Recompute alpha_bar from the new betas, as the official code does (bitwise the same maths).
        kept = np.cumprod(1.0 - betas)
        prev = np.append(1.0, kept[:-1])
        self.timesteps = timesteps
        self.num_steps = len(timesteps)
        self.betas = betas
        self.alphas_cumprod = kept
        self.alphas_cumprod_prev = prev
        self.sqrt_alphas_cumprod = np.sqrt(kept)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - kept)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / kept)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / kept - 1.0)
        self.posterior_variance = betas * (1.0 - prev) / (1.0 - kept)
        # The posterior variance is 0 at the first step; its log is clipped to the next value.
        # With a single step there is no next value: use the step's beta (the noise is unused then).
        if self.num_steps > 1:
            self.posterior_log_variance_clipped = np.log(
                np.append(self.posterior_variance[1], self.posterior_variance[1:]))
        else:
            self.posterior_log_variance_clipped = np.log(betas)
        self.posterior_mean_coef1 = betas * np.sqrt(prev) / (1.0 - kept)
        self.posterior_mean_coef2 = (1.0 - prev) * np.sqrt(1.0 - betas) / (1.0 - kept)
        self.log_betas = np.log(betas)

    @staticmethod
    def _at(array, index, like):
        """array[index] as a float32 column broadcastable against `like` (N, C)."""
        values = torch.from_numpy(array).to(device=like.device)[index].float()
        return values.view(-1, *([1] * (like.dim() - 1)))

    def model_timesteps(self, index, like):
        """Training-time timestep tensor the network sees at process index `index` (per row)."""
        return torch.as_tensor(self.timesteps, device=like.device)[index]

    def p_mean_logvar(self, model_out, x, index):
        """Mean and log-variance of p(x_{k-1} | x_k) from the raw network output (eps, var)."""
        channels = x.shape[1]
        eps, var_values = model_out[:, :channels], model_out[:, channels:]
        min_log = self._at(self.posterior_log_variance_clipped, index, x)
        max_log = self._at(self.log_betas, index, x)
        frac = (var_values + 1) / 2
        log_var = frac * max_log + (1 - frac) * min_log
        x0 = self._at(self.sqrt_recip_alphas_cumprod, index, x) * x \
            - self._at(self.sqrt_recipm1_alphas_cumprod, index, x) * eps
        mean = self._at(self.posterior_mean_coef1, index, x) * x0 \
            + self._at(self.posterior_mean_coef2, index, x) * x
        return mean, log_var

    def q_sample(self, x0, index, noise):
        """Noise clean tokens x0 to process index `index`."""
        return self._at(self.sqrt_alphas_cumprod, index, x0) * x0 \
            + self._at(self.sqrt_one_minus_alphas_cumprod, index, x0) * noise

    def training_loss(self, net, x0, cond, generator=None):
        """Per-row improved-DDPM loss: eps MSE + variational bound for the variance (mean frozen).

        Timesteps and noise come from `generator` so training is reproducible.
        """
        n = x0.shape[0]
        index = torch.randint(0, self.num_steps, (n,), generator=generator, device="cpu").to(x0.device)
        noise = torch.randn(x0.shape, generator=generator, device="cpu").to(x0.device, x0.dtype)
        x_t = self.q_sample(x0, index, noise)
        out = net(x_t, self.model_timesteps(index, x0), cond)
        channels = x0.shape[1]
        eps = out[:, :channels]
        mse = ((noise - eps.float()) ** 2).mean(dim=1)
        frozen = torch.cat([eps.detach(), out[:, channels:]], dim=1).float()
        mean, log_var = self.p_mean_logvar(frozen, x_t, index)
        true_mean = self._at(self.posterior_mean_coef1, index, x0) * x0 \
            + self._at(self.posterior_mean_coef2, index, x0) * x_t
        true_log_var = self._at(self.posterior_log_variance_clipped, index, x0)
        kl = 0.5 * (-1.0 + log_var - true_log_var + torch.exp(true_log_var - log_var)
                    + (true_mean - mean) ** 2 * torch.exp(-log_var))
        kl = kl.mean(dim=1) / math.log(2.0)
        nll = -_discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var).mean(dim=1) / math.log(2.0)
        vb = torch.where(index == 0, nll, kl)
        return mse + vb


def _approx_standard_normal_cdf(x):
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def _discretized_gaussian_log_likelihood(x, mean, log_scale):
    """Log-likelihood of x under a Gaussian discretised to 256 bins on [-1, 1] (ADM's decoder term)."""
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = _approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


@functools.lru_cache(maxsize=None)
def sampling_diffusion(num_steps, clip_timesteps=None):
    """The respaced process for `num_steps` sampling steps (cached: built once per setting)."""
    return Diffusion(respaced_timesteps(num_steps, clip_timesteps))


def float32_unless_autocast(out):
    """A cast (bf16/fp16) head's output as float32, so guidance and the diffusion arithmetic run in fp32;
    under autocast (the official fp16 protocol) the output is left as the official code leaves it."""
    if out.dtype == torch.float32 or torch.is_autocast_enabled(out.device.type):
        return out
    return out.float()


def sample_head(head, cond, process, noise, uncond=None, cfg=1.0, temperature=1.0, trace=None):
    """Ancestral sampling of N tokens with `head(x, t, c, i, n) -> (eps, var)` (gtr.method.Head).

    process: the respaced Diffusion to run (a steps slot's process(T)); cond: (N, D) conditioning
    vectors; uncond: (N, D) or None (no guidance).
    noise: (N, >= 1 + process.num_steps, C): column 0 is the starting noise, column k the noise of step k.
    cfg: guidance scale, a float or an (N,) tensor; applied to eps only, the variance is the
    conditional branch's (fact: LTH14/mar models/diffloss.py forward_with_cfg).
    temperature scales only the noise added at each step (fact: LTH14/mar gaussian_diffusion p_sample).
    trace: None, or a dict that receives the chain's last Gaussian, what speculative verification compares
    (CSpD): "mean" and "std" (N, C) of the last step (std times temperature; the token is that mean) and
    "log_std" (N, C), the sum of log std over the earlier steps (without temperature).
    """
    n, channels, steps = noise.shape[0], noise.shape[2], process.num_steps
    if n == 0:
        return noise[:, 0]
    if noise.shape[1] < 1 + steps:
        raise ValueError(f"noise has {noise.shape[1]} columns, {1 + steps} needed")
    x = noise[:, 0]
    guided = uncond is not None
    c = torch.cat([cond, uncond]) if guided else cond
    if guided and torch.is_tensor(cfg):
        cfg = cfg.view(-1, 1).to(x)
    for k, i in enumerate(reversed(range(steps))):
        index = torch.full((n,), i, device=x.device, dtype=torch.long)
        t = process.model_timesteps(index, x)
        if guided:
            out = float32_unless_autocast(head(torch.cat([x, x]), torch.cat([t, t]), c, i, steps))
            eps_c, eps_u = out[:n, :channels], out[n:, :channels]
            out = torch.cat([eps_u + cfg * (eps_c - eps_u), out[:n, channels:]], dim=1)
        else:
            out = head(x, t, c, i, steps)
        mean, log_var = process.p_mean_logvar(out.float(), x, index)
        if i > 0:
            x = mean + torch.exp(0.5 * log_var) * noise[:, k + 1] * temperature
            if trace is not None:  # summed from the first step down, as CSpD's code sums (float32)
                log_std = 0.5 * log_var if k == 0 else log_std + 0.5 * log_var
        else:
            x = mean
    if trace is not None:
        trace.update(mean=x, std=torch.exp(0.5 * log_var) * temperature,
                     log_std=log_std if steps > 1 else torch.zeros_like(x))
    return x
