"""From Hydra configs (configs/) to objects: a Method, a model, a decoder to uint8 images.

    method = build_method(cfg.method, grid=(16, 16))   # one slot object per configs/method/<slot>/*.yaml
    model = build_model(cfg.model, device)              # weights from the checkpoint, or random_init
    decode = decoder(cfg.model, model, device)          # tokens (B, L, C) -> uint8 images (B, H, W, C)

Every problem a user can cause (an unknown slot class, a parameter a slot does not take, slots that do
not fit together or not on the model's grid, a missing checkpoint) raises ConfigError with a sentence
saying what to change; scripts print it without a traceback.
"""
import hashlib
import json
import logging
import os
import subprocess
from pathlib import Path

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from gtr.checkpoints import CheckpointError, load_mar, resolve
from gtr.method import Method
from gtr.models.lightgen import build_lightgen
from gtr.models.mar import build_mar
from gtr.models.vae import AutoencoderKL, decode_tokens, load_vae_state, to_uint8

ROOT = Path(__file__).resolve().parents[1]
SLOTS = ("order", "counts", "steps", "cache")
log = logging.getLogger("gtr")


class ConfigError(ValueError):
    """A configuration that cannot run, with the reason and the fix in words."""


# ---------------------------------------------------------------- methods
def build_method(cfg_method, grid=None):
    """A gtr.method.Method from a method config (configs/method/*.yaml).

    Each slot node (`order`, `counts`, `steps`, `cache`) is instantiated with hydra from its
    `_target_`. `grid` (h, w), when given, dry-runs the order and the counts on that grid, so a
    method that cannot fill it (too many stages, more steps than tokens) fails here, before any model
    work. A slot with a `check(method)` hook judges the combination: it refuses with ValueError or logs.
    """
    if not isinstance(cfg_method, DictConfig) or any(s not in cfg_method for s in SLOTS):
        raise ConfigError(f"a method config needs the slots {SLOTS} (see configs/method/mar.yaml); "
                          f"got {None if cfg_method is None else list(cfg_method)}")
    name = cfg_method.get("name", "custom")
    slots = {}
    for slot in SLOTS:
        node = cfg_method[slot]
        target = node.get("_target_") if isinstance(node, DictConfig) else None
        if not target:
            raise ConfigError(f"method {name!r}: slot {slot!r} has no _target_ (pick one of configs/method/{slot}/)")
        try:
            slots[slot] = instantiate(node, _convert_="all")
        except InstantiationException as e:
            cause = _cause(e)
            if "unexpected keyword argument" in cause:
                cause += (f" (the method's yaml sets it for another {slot} slot: drop it with ~method.{slot}.<name>, "
                          f"or see configs/method/{slot}/ for what {target.rsplit('.', 1)[-1]} takes)")
            raise ConfigError(f"method {name!r}: cannot build its {slot} slot {target}: {cause}") from None
        except Exception as e:  # an interpolation to a missing knob, a bad value
            raise ConfigError(f"method {name!r}: cannot build its {slot} slot {target}: {type(e).__name__}: {e}") from None
    method = Method(slots["order"], slots["counts"], slots["steps"], slots["cache"], name)
    for slot in SLOTS:  # a slot's own check of the combination (e.g. GtR's stage counts vs its order)
        check = getattr(slots[slot], "check", None)
        if check is not None:
            try:
                check(method)
            except ValueError as e:
                raise ConfigError(f"method {name!r}: {e}") from None
    if grid is not None:
        dry_run(method, grid)
    return method


def _cause(error):
    """The useful part of hydra's InstantiationException (the underlying error, without the wrapper)."""
    cause = error.__cause__ or error
    text = str(cause).strip()
    return f"{type(cause).__name__}: {text}" if cause is not error else text


def dry_run(method, grid):
    """Run the order and counts slots once on `grid`; ConfigError if they cannot fill it."""
    h, w = grid
    try:
        counts = [int(c) for c in method.counts(grid)]
        order = method.order(grid, torch.Generator().manual_seed(0))
    except ValueError as e:
        raise ConfigError(f"method {method.name!r} does not fit the model's {h}x{w} token grid: {e}") from None
    if any(c < 0 for c in counts) or sum(counts) != h * w:
        raise ConfigError(f"method {method.name!r}: its counts {counts} do not sum to the {h * w} tokens of the grid")
    if sorted(torch.as_tensor(order).tolist()) != list(range(h * w)):
        raise ConfigError(f"method {method.name!r}: its order is not a permutation of the {h * w} grid positions")
    return counts


# ---------------------------------------------------------------- models
def find_file(path):
    """A path as given (working directory), else relative to the project root; None if neither exists."""
    if not path:
        return None
    p = Path(os.path.expanduser(str(path)))
    for candidate in (p, ROOT / p) if not p.is_absolute() else (p,):
        if candidate.is_file():
            return candidate
    return None


def local_or_hub(path, name, what):
    """A local file for `path` (see find_file), or the hub file of `name` when no path is given."""
    if path:
        found = find_file(path)
        if found is None:
            raise CheckpointError(f"{what} {path} does not exist")
        path = str(found)
    return resolve(path, name)


def _plain_dict(node):
    """A config node of field overrides as a plain dict ({} when unset)."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else {}


ARCHITECTURES = {"mar": build_mar, "lightgen": build_lightgen}  # model.arch -> builder(name, **overrides)


def build_model(cfg_model, device="cpu", checkpoint=None):
    """The model (MAR, or LightGen with model.arch=lightgen) of `cfg_model` on `device` in eval mode.

    Weights: `checkpoint` (the top-level alias) or cfg_model.checkpoint, or the hub when both are
    null (gtr.checkpoints.resolve); `random_init: true` skips loading and gives a seeded random model
    (the same on every run, so smoke runs resume and compare).
    """
    overrides = _plain_dict(cfg_model.get("overrides"))
    arch = cfg_model.get("arch", "mar")
    if arch not in ARCHITECTURES:
        raise ConfigError(f"model.arch must be one of {sorted(ARCHITECTURES)}, got {arch!r}")
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the models initialise from the global RNG: seeded, random_init runs repeat
            model = ARCHITECTURES[arch](cfg_model.name, **overrides)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model {cfg_model.get('key', cfg_model.name)!r}: {e}") from None
    if cfg_model.random_init:
        log.warning("model %s has RANDOM weights (model.random_init=true): the images are noise", cfg_model.name)
    else:
        try:
            load_mar(model, local_or_hub(checkpoint or cfg_model.checkpoint, cfg_model.name, "checkpoint"),
                     cfg_model.weights)
        except (CheckpointError, FileNotFoundError) as e:
            hint = cfg_model.get("checkpoint_hint")
            message = f"model {cfg_model.name}: {e}".rstrip(". ") + ". " + (f"{hint}. " if hint else "")
            if "checkpoint=PATH" not in message:
                message += "Pass checkpoint=PATH. "
            raise ConfigError(message + "For a smoke run with random weights: model.random_init=true.") from None
    return model.to(device).eval()


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
            load_vae_state(vae, local_or_hub(cfg_model.get("vae_checkpoint"), "vae", "VAE checkpoint"))
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
        overrides = _plain_dict(cfg_model.get("vae_overrides"))
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


# ---------------------------------------------------------------- run identity
def image_settings(cfg):
    """Every setting of a sample.yaml config that changes the images, as plain data.

    Two runs with equal image_settings make the same images (batch size, device count and shard size do
    not change any image). Used for the run folder's hash and to refuse resuming a folder made with
    other settings.
    """
    def plain(node):
        return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    model = {k: v for k, v in plain(cfg.model).items() if k not in ("batch_size", "checkpoint_hint", "key")}
    if cfg.get("checkpoint"):
        model["checkpoint"] = cfg.checkpoint
    if model.get("random_init"):
        model.pop("checkpoint", None)
        model.pop("vae_checkpoint", None)
    method = {k: v for k, v in plain(cfg.method).items() if k != "tag"}
    try:
        texts = read_prompt_texts(prompt_file(cfg.eval)) if is_prompt_eval(cfg.eval) else None
        n = num_images(cfg, texts)
        if texts is not None:  # text-to-image: the prompts themselves (not the file's path) make the images
            model["prompts_sha1"] = hashlib.sha1(json.dumps(texts).encode()).hexdigest()
            model["samples_per_prompt"] = int(cfg.eval.samples_per_prompt)
    except ConfigError:  # no prompts file: resolving the run folder's name must not fail; the run refuses
        n = None
    return {"model": model, "method": method, "num_images": n, "labels": plain(cfg.get("labels")),
            "balanced": cfg.eval.get("balanced", False), "seed": cfg.seed, "cfg": cfg.cfg,
            "cfg_schedule": cfg.cfg_schedule, "temperature": cfg.temperature, "dtype": cfg.dtype, "tf32": cfg.tf32}


def num_images(cfg, texts=None):
    """The `n` alias, else the eval set's size (a prompts eval set without num_images: prompts x
    samples_per_prompt; `texts`: its prompts when already read)."""
    if cfg.get("n") is not None:
        return int(cfg.n)
    if cfg.eval.get("num_images") is None and is_prompt_eval(cfg.eval):
        if texts is None:
            texts = read_prompt_texts(prompt_file(cfg.eval))
        return len(texts) * int(cfg.eval.samples_per_prompt)
    return int(cfg.eval.num_images)


def git_commit():
    """The checked-out commit of this project, "+dirty" when tracked files changed; "unknown" outside git.
    Recorded in every run record (scripts/sample.py, flops.py, latency.py, demo.py)."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (head + ("+dirty" if dirty else "")) or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def settings_hash(cfg, length=8):
    """A short hash of image_settings(cfg)."""
    text = json.dumps(image_settings(cfg), sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:length]


def _hash_resolver(*, _root_):
    return settings_hash(_root_)


# `${gtr_hash:}` in configs/sample.yaml's run_name; registered on import (scripts import this module).
if not OmegaConf.has_resolver("gtr_hash"):
    OmegaConf.register_new_resolver("gtr_hash", _hash_resolver)


# ---------------------------------------------------------------- text conditions (LightGen)
def is_prompt_eval(cfg_eval):
    """Whether an eval set is made of prompts (it sets samples_per_prompt: eval/geneval, eval/prompts)."""
    return cfg_eval.get("samples_per_prompt") is not None


def prompt_file(cfg_eval):
    """The prompts file of a text-to-image eval set (eval.prompts), checked to exist."""
    path = cfg_eval.get("prompts")
    if not path:
        raise ConfigError(f"eval={cfg_eval.name} needs a prompts file: pass eval.prompts=PATH (GenEval: "
                          "prompts/evaluation_metadata.jsonl of a djghosh13/geneval checkout, or set GENEVAL_PROMPTS; "
                          "or a .txt file with one prompt per line)")
    found = find_file(path)
    if found is None:
        raise ConfigError(f"prompts file {path} does not exist (eval.prompts)")
    return found


def read_prompt_texts(path):
    """Prompt strings of a .jsonl file (GenEval metadata: the "prompt" field) or a text file (one per line)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        from eval.geneval import GenEvalError, read_prompts
        try:
            return [entry["prompt"] for entry in read_prompts(path)]
        except GenEvalError as e:
            raise ConfigError(str(e)) from None
    texts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not texts:
        raise ConfigError(f"prompts file {path} holds no prompts")
    return texts


def text_conditions(cfg, model, device):
    """(prompt_ids, encode) for a text-to-image run: image i shows prompt i // eval.samples_per_prompt
    (GenEval's layout: 4 images per prompt), and encode(prompt ids) gives the model's condition input,
    the T5 states (B, max_length, 4096) (model.text_encoder: a local T5 folder, or the hub's
    google/flan-t5-xxl). With random_init and no text encoder, each prompt gets random states seeded by
    its text (smoke runs: the images are noise either way)."""
    texts = read_prompt_texts(prompt_file(cfg.eval))
    per_prompt = int(cfg.eval.samples_per_prompt)
    n = num_images(cfg, texts)
    prompt_ids = np.arange(n, dtype=np.int64) // per_prompt
    if prompt_ids.max() >= len(texts):
        raise ConfigError(f"{n} images at {per_prompt} per prompt need {prompt_ids.max() + 1} prompts; "
                          f"the prompts file has {len(texts)}")
    c = model.config
    source = cfg.model.get("text_encoder")
    if cfg.model.random_init and not source:
        log.warning("no text encoder and random weights: prompts get RANDOM T5 states (smoke run)")

        def encode_random(ids):
            states = []
            for i in ids:
                seed = int(hashlib.sha1(texts[int(i)].encode()).hexdigest()[:15], 16)
                g = torch.Generator().manual_seed(seed)
                states.append(torch.randn(c.max_length, c.caption_channels, generator=g))
            return torch.stack(states).to(device)
        return prompt_ids, encode_random
    from gtr.models import t2i
    try:
        encoder = t2i.load_text_encoder(source or t2i.T5_HUB_ID, max_length=c.max_length, device=device)
    except CheckpointError as e:
        raise ConfigError(f"text encoder: {e}") from None
    if encoder.dim != c.caption_channels:
        raise ConfigError(f"the text encoder gives {encoder.dim}-dim states; model {cfg.model.name} expects "
                          f"{c.caption_channels} (T5-XXL)")

    def encode(ids):
        return encoder.encode([texts[int(i)] for i in ids])
    return prompt_ids, encode
