"""What a run is: the settings that make its images (its identity and folder name), its size, and where
it ran. Checks of a whole run config against the model's shape, before any weights are read.
"""
import hashlib
import json
import os
import platform
import subprocess
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from gtr.config import DTYPES, ConfigError, check_values, plain
from gtr.engine import prepare
from gtr.prompts import is_prompt_eval, prompt_file, read_prompt_texts
from gtr.sampler import image_generator, sample

ROOT = Path(__file__).resolve().parents[1]
AMP = dict(zip(DTYPES, (None, torch.bfloat16, torch.float16)))  # dtype -> autocast dtype (None: fp32, none)


def image_settings(cfg):
    """Every setting of a sample.yaml config that changes the images, as plain data.

    Two runs with equal image_settings make the same images (batch size, device count and shard size do
    not change any image). Used for the run folder's hash and to refuse resuming a folder made with
    other settings.
    """
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
            "cfg_schedule": cfg.cfg_schedule, "temperature": cfg.temperature, "dtype": cfg.dtype, "tf32": cfg.tf32,
            # the reference engine is left out, so run folders made before engines existed keep their names
            **({"engine": cfg.engine} if cfg.get("engine", "reference") != "reference" else {}),
            **({"precision": cfg.precision} if cfg.dtype != "fp32" and cfg.get("precision", "autocast") != "autocast"
               else {})}


def precision(cfg):
    """(cast, autocast) dtypes of a run: with precision=cast the model is cast to cfg.dtype (build_model's
    dtype) and nothing is autocast; with autocast the fp32 model runs under autocast. None: fp32."""
    dtype = AMP[cfg.dtype]
    cast = cfg.get("precision", "autocast") == "cast"
    return (dtype, None) if cast else (None, dtype)


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
    """The checked-out commit of this project, "+dirty" when tracked files outside results/ changed (a run that
    writes the committed results, records=results, changes them itself as it goes); "unknown" outside git.
    Recorded in every run record (scripts/sample.py, flops.py, latency.py, demo.py)."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "--",
                                ".", ":(exclude)results"], capture_output=True, text=True, timeout=10).stdout.strip()
        return (head + ("+dirty" if dirty else "")) or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def row_key(cfg):
    """The key of a row's records: the experiment's `key`, else <model>/<method tag>~<hash of the method's
    settings> (two rows of a sweep never share a key, even when the knob they vary is not in the tag)."""
    if cfg.get("key"):
        return cfg.key
    method = json.dumps(plain(cfg.method), sort_keys=True, default=str)
    return f"{cfg.model.key}/{cfg.method.tag}~{hashlib.sha1(method.encode()).hexdigest()[:6]}"


def settings_hash(cfg, length=8):
    """A short hash of image_settings(cfg)."""
    text = json.dumps(image_settings(cfg), sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:length]


def make_labels(n, num_classes, balanced, labels=None, eval_name="eval"):
    """Class label of every image index (n,).

    `labels` given: cycled over the images. Else, when n is a multiple of the classes, MAR's protocol:
    np.arange(classes).repeat(n // classes) (class-major: images 0..49 are class 0 for FID-50K); else,
    unless the eval set requires balance, labels spread evenly over the classes.
    """
    if n < 1:
        raise ConfigError(f"n must be a positive number of images, got {n}")
    if labels is not None:
        labels = np.asarray(list(labels), dtype=np.int64)
        if labels.size == 0 or labels.min() < 0 or labels.max() >= num_classes:
            raise ConfigError(f"labels must be class ids in [0, {num_classes}), got {labels.tolist()}")
        return labels[np.arange(n) % len(labels)]
    if n % num_classes == 0:
        return np.arange(num_classes, dtype=np.int64).repeat(n // num_classes)
    if balanced:
        raise ConfigError(f"eval={eval_name} needs the same number of images per class: n={n} is not a "
                          f"multiple of the {num_classes} classes (e.g. n={num_classes * max(1, n // num_classes)})")
    return np.linspace(0, num_classes - 1, n).astype(np.int64)


def pick_device(name):
    """The torch device of a `device` setting: auto (this rank's GPU if any, else the CPU), cpu, cuda, cuda:N."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but CUDA is not available here; use device=cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device={name} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def generate(cfg, model, method, decode, labels, indices, progress=None, condition=torch.as_tensor):
    """Images (k, H, W, C) uint8 and, with eval.save_tokens, tokens (k, L, C) of the image `indices` of
    the run `cfg`, in batches of cfg.batch_size (image i from image_generator(cfg.seed, i), label
    labels[i], under cfg.dtype's autocast unless the model was cast, on cfg.engine: gtr.engine.prepare
    readies the model and gives the head loop); progress(number of images) after each batch.
    condition(labels of a batch) is the model's condition input: the class ids (MAR), or the prompts' T5
    states (LightGen)."""
    amp = precision(cfg)[1]
    loop = prepare(model, cfg.get("engine", "reference"))
    images, tokens = [], []
    for b in range(0, len(indices), int(cfg.batch_size)):
        batch = indices[b:b + int(cfg.batch_size)]
        generators = [image_generator(cfg.seed, i) for i in batch]
        with torch.no_grad():
            cond = condition(labels[batch])
        with torch.autocast(model.fake_latent.device.type, dtype=amp) if amp else nullcontext():
            x = sample(model, method, cond, generators, cfg=cfg.cfg,
                       cfg_schedule=cfg.cfg_schedule, temperature=cfg.temperature, head_loop=loop)
            images.append(decode(x).numpy())
        if cfg.eval.get("save_tokens"):
            tokens.append(x.float().cpu().numpy())
        if progress is not None:
            progress(len(batch))
    return np.concatenate(images), np.concatenate(tokens) if tokens else None


def device_name(device):
    """A device in words for run records: the GPU's name, or the CPU's model and the threads torch uses."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu ({name}, {torch.get_num_threads()} threads)"


def check_run(cfg, model):
    """Refuse, in one sentence, a run config that cannot run on `model` (any device; meta is enough):
    bad knob values, a method that does not fit its grid, labels out of range, a prompts eval set on a
    class-conditional model or the reverse, a missing or malformed prompts file. Returns the Method."""
    from gtr.build import build_method
    check_values(cfg)
    text = is_prompt_eval(cfg.eval)
    if text != (cfg.model.get("arch", "mar") == "lightgen"):
        raise ConfigError(f"model {cfg.model.key} is class-conditional; eval={cfg.eval.name} (prompts) needs a "
                          "text-to-image model (model=lightgen)" if text else
                          f"model {cfg.model.key} is text-to-image: choose a prompts eval set (eval=geneval "
                          "eval.prompts=PATH, or eval=prompts eval.prompts=FILE.txt)")
    method = build_method(cfg.method, grid=(model.seq_h, model.seq_w))
    if text:
        texts = read_prompt_texts(prompt_file(cfg.eval))
        n, per_prompt = num_images(cfg, texts), int(cfg.eval.samples_per_prompt)
        if -(-n // per_prompt) > len(texts):
            raise ConfigError(f"{n} images at {per_prompt} per prompt need {-(-n // per_prompt)} prompts; "
                              f"the prompts file has {len(texts)}")
    else:
        make_labels(num_images(cfg), model.config.class_num, cfg.eval.get("balanced", False), cfg.get("labels"),
                    cfg.eval.name)
    return method
