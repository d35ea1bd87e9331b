"""Prompts of text-to-image runs (LightGen, Table 2): GenEval's prompt file or a plain text file, and
the T5 states the model is conditioned on.

Image i of a prompts run shows prompt i // eval.samples_per_prompt (GenEval's layout: 4 images a prompt).
"""
import hashlib
import json
import os
from pathlib import Path

import logging

import numpy as np
import torch

from gtr.checkpoints import CheckpointError
from gtr.config import ConfigError
from gtr.load import find_file

PROMPTS_ENV = "GENEVAL_PROMPTS"
log = logging.getLogger("gtr")


def read_prompts(path=None):
    """Read GenEval's prompt metadata (one JSON object a line), in file order.

    `path` defaults to $GENEVAL_PROMPTS. Each entry is the dict of its line and must have "prompt" and
    "tag"; the rest ("include", "exclude") is kept as is, since GenEval's scorer reads it.
    """
    path = path if path is not None else os.environ.get(PROMPTS_ENV)
    if not path or not Path(path).is_file():
        raise ConfigError(
            f"GenEval prompts file not found ({path or 'no path given'}): use prompts/evaluation_metadata.jsonl "
            f"of a djghosh13/geneval checkout, passed as eval.prompts=PATH or in the {PROMPTS_ENV} "
            f"environment variable")
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():  # a trailing newline or blank lines at the end are harmless
        lines.pop()
    prompts = []
    for number, line in enumerate(lines, 1):
        # A blank line in the middle would shift every later prompt index, so it is an error too.
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} line {number} is not valid JSON ({e.msg})") from None
        if not (isinstance(entry, dict) and isinstance(entry.get("prompt"), str) and isinstance(entry.get("tag"), str)):
            raise ConfigError(f"{path} line {number} is not a GenEval prompt: it needs \"prompt\" and \"tag\" strings")
        prompts.append(entry)
    if not prompts:
        raise ConfigError(f"{path} holds no prompts")
    return prompts



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
        return [entry["prompt"] for entry in read_prompts(path)]
    texts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not texts:
        raise ConfigError(f"prompts file {path} holds no prompts")
    return texts


def text_conditions(cfg, model, device, n):
    """(prompt_ids, encode) for a text-to-image run: image i shows prompt i // eval.samples_per_prompt
    (GenEval's layout: 4 images per prompt), and encode(prompt ids) gives the model's condition input,
    the T5 states (B, max_length, 4096) (model.text_encoder: a local T5 folder, or the hub's
    google/flan-t5-xxl). With random_init and no text encoder, each prompt gets random states seeded by
    its text (smoke runs: the images are noise either way)."""
    texts = read_prompt_texts(prompt_file(cfg.eval))
    per_prompt = int(cfg.eval.samples_per_prompt)
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
