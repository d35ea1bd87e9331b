"""From a model config (configs/model/*.yaml) to modules: the model and a decoder to uint8 images.

    spec = model_on_meta(cfg.model)                     # shapes only: grid, classes (checks before any weights)
    model = build_model(cfg.model, device)              # weights from the checkpoint, or random_init
    decode = decoder(cfg.model, model, device)          # tokens (B, L, C) -> uint8 images (B, H, W, C)
"""
import logging
import os
from pathlib import Path

import torch

from gtr import weights
from gtr.checkpoints import CheckpointError, load_mar, resolve
from gtr.config import ConfigError, plain
from gtr.models.lightgen import build_lightgen
from gtr.models.mar import build_mar
from gtr.models.vae import AutoencoderKL, decode_tokens, load_vae_state, to_uint8

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("gtr")


def find_file(path):
    """A path as given (working directory), else relative to the project root; None if neither exists."""
    if not path:
        return None
    p = Path(os.path.expanduser(str(path)))
    for candidate in (p, ROOT / p) if not p.is_absolute() else (p,):
        if candidate.is_file():
            return candidate
    return None


SOURCES = ("official", "hub")


def weights_file(path, name, source, what="checkpoint"):
    """The local file of a checkpoint: `path` when given (as is, else relative to the project root);
    else, by `source`, the official file (gtr.weights: LTH14/mar's release, downloaded once into the
    cache) or the community hub's safetensors (gtr.checkpoints.resolve; their EMA status is unverified)."""
    if path:
        found = find_file(path)
        if found is None:
            raise CheckpointError(f"{what} {path} does not exist (check the path)")
        return str(found)
    if source == "hub":
        log.warning("%s: the hub's %s (jadechoghari/mar, a community upload): whether it holds MAR's EMA weights "
                    "is unverified; model.source=official loads the official checkpoint's model_ema", name, what)
        return resolve(None, name)
    if source != "official":
        raise ConfigError(f"model.source must be one of {', '.join(SOURCES)}, got {source!r}")
    if name not in weights.FILES:
        raise CheckpointError(f"no official download for {name}: pass checkpoint=PATH")
    try:
        return str(weights.fetch(name))
    except weights.WeightsError as e:
        raise CheckpointError(str(e)) from None


def describe_weights(cfg_model, checkpoint=None):
    """What a run record says about the weights it used: {"model": ..., "vae": ...}, each with the file,
    its URL (official files), the entry read and its sha256 (gtr.weights.describe); {} for random weights."""
    if cfg_model.random_init:
        return {}
    source = cfg_model.get("source", "official")
    out = {"model": dict(weights.describe(weights_file(checkpoint or cfg_model.checkpoint, cfg_model.name, source)),
                         entry=cfg_model.get("weights"))}
    if cfg_model.get("decoder", "vae") == "vae":
        out["vae"] = weights.describe(weights_file(cfg_model.get("vae_checkpoint"), "vae", source, "VAE checkpoint"))
    return out


ARCHITECTURES = {"mar": build_mar, "lightgen": build_lightgen}  # model.arch -> builder(name, **overrides)


def _construct(cfg_model):
    """The model of `cfg_model`, initialised from a fixed seed (random_init runs repeat), on the current
    default device."""
    overrides = plain(cfg_model.get("overrides"))
    arch = cfg_model.get("arch", "mar")
    if arch not in ARCHITECTURES:
        raise ConfigError(f"model.arch must be one of {sorted(ARCHITECTURES)}, got {arch!r}")
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the models initialise from the global RNG: seeded, random_init runs repeat
            return ARCHITECTURES[arch](cfg_model.name, **overrides)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model {cfg_model.get('key', cfg_model.name)!r}: {e}") from None


def model_on_meta(cfg_model):
    """The model of `cfg_model` on the meta device: its shapes (grid, classes, widths) without weights or
    memory, to check a run before anything is loaded, and to count FLOPs."""
    with torch.device("meta"):
        return _construct(cfg_model).eval()


def build_model(cfg_model, device="cpu", checkpoint=None, dtype=None):
    """The model (MAR, or LightGen with model.arch=lightgen) of `cfg_model` on `device` in eval mode.

    Weights: `checkpoint` (the top-level alias) or cfg_model.checkpoint, else the model.source's file
    (weights_file: the official checkpoint by default); `random_init: true` skips loading and gives a
    seeded random model (the same on every run, so smoke runs resume and compare). `dtype`: cast the
    weights (gtr.runs.precision's cast dtype; None: as stored, fp32).
    """
    model = _construct(cfg_model)
    if cfg_model.random_init:
        log.warning("model %s has RANDOM weights (model.random_init=true): the images are noise", cfg_model.name)
    else:
        try:
            load_mar(model, weights_file(checkpoint or cfg_model.checkpoint, cfg_model.name,
                                         cfg_model.get("source", "official")), cfg_model.weights)
        except (CheckpointError, FileNotFoundError) as e:
            message = f"model {cfg_model.name}: {e}".rstrip(". ") + "."
            hint = cfg_model.get("checkpoint_hint")
            if hint and not checkpoint and "does not exist" in str(e):  # the model's own file is missing
                message += f" {hint}."
            raise ConfigError(message + " For a smoke run with random weights: model.random_init=true.") from None
    return model.to(device=device, dtype=dtype).eval()


# ---------------------------------------------------------------- decoding
def to_uint8_nhwc(images):
    """[-1, 1] floats (B, C, H, W) -> uint8 (B, H, W, C), MAR's PNG conversion (gtr.models.vae.to_uint8)."""
    return to_uint8(images).permute(0, 2, 3, 1).contiguous()


def decoder(cfg_model, model, device="cpu"):
    """A function tokens (B, L, C) -> uint8 images (B, H, W, C) on the CPU.

    decoder 'vae': MAR's KL-16 VAE (weights from cfg_model.vae_checkpoint or the hub; random with
    random_init); 'pixels' (tiny world): the tokens are pixel patches, unpatchify is the image;
    'sd_vae' (LightGen): SD3.5's VAE through diffusers (gtr.models.t2i).
    """
    kind = cfg_model.get("decoder", "vae")
    if kind == "pixels":
        def decode_pixels(tokens):
            return to_uint8_nhwc(model.unpatchify(tokens)).cpu()
        return decode_pixels
    if kind == "sd_vae":
        return _sd_vae_decoder(cfg_model, model, device)
    if kind != "vae":
        raise ConfigError(f"model.decoder must be 'vae', 'sd_vae' or 'pixels', got {kind!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the VAE's default init draws from the global RNG: seeded for random_init runs
        vae = AutoencoderKL()
    if not cfg_model.random_init:
        try:
            load_vae_state(vae, weights_file(cfg_model.get("vae_checkpoint"), "vae", cfg_model.get("source", "official"),
                                             "VAE checkpoint"))
        except (CheckpointError, FileNotFoundError, ValueError) as e:
            raise ConfigError(f"VAE: {e}. Pass model.vae_checkpoint=PATH (kl16.ckpt or kl16.safetensors), or "
                              "model.random_init=true for a smoke run with random weights.") from None
    vae = vae.to(device).eval()

    @torch.no_grad()
    def decode_vae(tokens):
        return to_uint8_nhwc(decode_tokens(vae, model.unpatchify(tokens).float())).cpu()
    return decode_vae


def _sd_vae_decoder(cfg_model, model, device):
    """LightGen's decoder: SD3.5's VAE (model.vae_checkpoint: a local SD3.5 folder or its vae/ folder;
    null: the hub repo, which is gated). random_init: the SD3.5 architecture with random weights
    (model.vae_overrides may shrink it for tests)."""
    from gtr.models import t2i
    if cfg_model.random_init:
        from diffusers import AutoencoderKL as DiffusersVAE
        overrides = plain(cfg_model.get("vae_overrides"))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            vae = DiffusersVAE(**{**t2i.SD35_VAE_CONFIG, **overrides})
    else:
        try:
            vae = t2i.load_sd_vae(cfg_model.get("vae_checkpoint") or t2i.SD35_HUB_ID, device="cpu",
                                  latent_channels=model.config.vae_embed_dim)
        except CheckpointError as e:
            raise ConfigError(f"SD3.5 VAE: {e}. Or model.random_init=true for a smoke run with random weights.") from None
    vae = vae.to(device).eval()

    @torch.no_grad()
    def decode_sd(tokens):
        return t2i.decode_latents(vae, model.unpatchify(tokens).float())
    return decode_sd
