"""Finding and loading MAR checkpoints: a local path, or the Hugging Face hub when online.

Official files (fact: LTH14/mar README and util/download.py; hub repo jadechoghari/mar):
    checkpoint-last.pth   torch pickle {"model": state_dict, "model_ema": state_dict, ...}; evaluation
                          uses "model_ema"
    mar-{base,large,huge}.safetensors, kl16.safetensors   flat state dicts on the hub
    kl16.ckpt             torch pickle {"model": state_dict} of the KL-16 VAE
Loading is strict: a checkpoint of another model size or a damaged file is refused with the keys and
shapes that do not fit.
"""
import argparse
import os

import torch

HUB_REPO = "jadechoghari/mar"
HUB_FILES = {"mar_base": "mar-base.safetensors", "mar_large": "mar-large.safetensors",
             "mar_huge": "mar-huge.safetensors", "vae": "kl16.safetensors"}
OFFICIAL_URLS = "https://github.com/LTH14/mar#installation (util/download.py) or https://huggingface.co/jadechoghari/mar"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with the reason in words."""


def hub_offline():
    """Whether the user asked for offline mode (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE).

    Read at call time: huggingface_hub reads HF_HUB_OFFLINE once, at import, so setting it later would
    otherwise be ignored and an unreachable hub costs minutes of retries before failing.
    """
    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    if any(str(f).strip().lower() in ("1", "true", "yes", "on") for f in flags if f):
        return True
    try:
        import huggingface_hub.constants as hc
        return bool(hc.HF_HUB_OFFLINE)
    except ImportError:
        return False


def resolve(path=None, name=None, cache_dir=None):
    """Return a local file for a checkpoint: `path` if given, else the hub file for model `name`.

    The hub is only tried when `path` is None; offline, the error names the file and where to put it.
    """
    if path:
        path = os.path.expanduser(str(path))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint {path} does not exist. Download the official file from "
                                    f"{OFFICIAL_URLS} and pass its path as checkpoint=PATH")
        return path
    if name not in HUB_FILES:
        where = f" (official files: {OFFICIAL_URLS})" if str(name).startswith("mar") else ""
        raise CheckpointError(f"no checkpoint given for model {name!r}: pass checkpoint=PATH{where}")
    filename = HUB_FILES[name]
    try:
        from huggingface_hub import hf_hub_download
        # Offline (read now, not at import): only the local cache, no minutes of network retries.
        return hf_hub_download(HUB_REPO, filename, cache_dir=cache_dir, local_files_only=hub_offline())
    except Exception as e:  # offline, blocked, missing package: say what to do instead
        raise CheckpointError(
            f"could not get {filename} from the hub repo {HUB_REPO} ({type(e).__name__}: {e}). "
            f"Offline, download it (or checkpoint-last.pth from {OFFICIAL_URLS}) on a connected machine, "
            f"put it anywhere here and pass checkpoint=PATH") from None


def read_state_dict(path, weights="model_ema", trusted=False):
    """The state dict stored in `path` (.pth/.ckpt pickle or .safetensors).

    weights: which entry of an official training checkpoint to use, "model_ema" (default, what MAR
    evaluates) or "model". Pickles load with torch's weights-only unpickler (official training
    checkpoints also hold an argparse.Namespace of their arguments, which is allowed); `trusted=True`
    unpickles anything, for files you trust.
    """
    if weights not in ("model_ema", "model"):
        raise CheckpointError(f"weights must be 'model_ema' or 'model', got {weights!r}")
    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            with torch.serialization.safe_globals([argparse.Namespace]):
                state = torch.load(path, map_location="cpu", weights_only=not trusted)
    except Exception as e:
        reason = (str(e).strip().splitlines() or [""])[0]  # torch.load's messages run to many lines: the first, whole
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {reason}. "
                              "The file is damaged, truncated or not a checkpoint.") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict")
    if weights in state and isinstance(state[weights], dict):
        return state[weights]
    if "model" in state and isinstance(state["model"], dict):
        if weights == "model_ema":
            raise CheckpointError(f"{path} has no 'model_ema' entry (keys: {sorted(state)[:8]}); "
                                  "pass weights=model to load its 'model' weights")
        return state["model"]
    return state


def check_state_dict(model, state, source="checkpoint"):
    """Raise CheckpointError naming missing, unexpected and mis-shaped keys, if any."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        def head(items):
            return ", ".join(items[:6]) + (f" (+{len(items) - 6} more)" if len(items) > 6 else "")
        parts = []
        if shapes:
            parts.append(f"shape mismatches: {head(shapes)}")
        if missing:
            parts.append(f"missing keys: {head(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {head(unexpected)}")
        raise CheckpointError(f"{source} does not fit this model ({'; '.join(parts)}). "
                              "Is it for another model size, or damaged?")


def load_mar(model, path, weights="model_ema", trusted=False):
    """Load an official (or gtr-saved) MAR checkpoint into `model`, strictly. Returns the model."""
    state = read_state_dict(path, weights, trusted)
    check_state_dict(model, state, source=str(path))
    if any(p.is_meta for p in model.parameters()):
        model.load_state_dict(state, strict=True, assign=True)
    else:
        model.load_state_dict(state, strict=True)
    return model


def save_official(model, path, ema_model=None):
    """Save in the official layout {"model", "model_ema"} (EMA = the model itself if not given)."""
    state = model.state_dict()
    torch.save({"model": state, "model_ema": (ema_model or model).state_dict()}, path)
