"""Reproduce one of the paper's tables on a GPU box: generate, score, count, time, tabulate.

    python scripts/reproduce.py experiment=table1 [model=mar_b] [--check-only]   # make reproduce-table1 ARGS=...
    python scripts/reproduce.py experiment=table2 checkpoint=LIGHTGEN.pth model.text_encoder=T5_DIR \
        model.vae_checkpoint=SD35_DIR eval.prompts=GENEVAL/prompts/evaluation_metadata.jsonl \
        eval.geneval_dir=GENEVAL eval.geneval_python=PY eval.detector=D

It takes the overrides scripts/sample.py takes. Before any work it checks what the rows need and says
what is missing: a CUDA GPU; for MAR, the official checkpoints (model_ema), the KL-16 VAE and ADM's FID
statistics, fetched now into the cache when absent (gtr/weights.py; offline: the URL to fetch and where
to put it); for LightGen (Table 2), its checkpoint, T5-XXL, SD3.5's VAE, GenEval's prompts, a GenEval
checkout with its own python and its detector (eval.* settings; each also reads an environment
variable: GENEVAL_PROMPTS, GENEVAL_DIR, GENEVAL_PYTHON, GENEVAL_DETECTOR). Then, with the same overrides:
  1. python scripts/sample.py -m ...     (Hydra's multirun: every row; resumable: run again to continue)
  2. python scripts/evaluate.py ... evaluate.latency=true   (FID/IS or GenEval, FLOPs, GPU latency)
  3. python scripts/tables.py ...        (the paper beside ours, with deltas: <records>/table<N>.md)
"""
import os
import subprocess
import sys

import torch
from omegaconf import OmegaConf

from gtr import weights
from gtr.config import ConfigError, compose, split_argv
from gtr.load import model_on_meta, weights_file
from gtr.prompts import is_prompt_eval
from gtr.runs import check_run

# LightGen's inputs: config key -> (what it is, where to get it)
TEXT_TO_IMAGE = {
    "checkpoint": ("LightGen checkpoint (.pth)", "https://huggingface.co/Beckham808/LightGen"),
    "model.text_encoder": ("T5-XXL folder", "https://huggingface.co/google/flan-t5-xxl"),
    "model.vae_checkpoint": ("SD3.5 folder (with vae/) or its vae/ folder",
                             "https://huggingface.co/stabilityai/stable-diffusion-3.5-large (gated)"),
    "eval.prompts": ("GenEval prompts (prompts/evaluation_metadata.jsonl)", "https://github.com/djghosh13/geneval"),
    "eval.geneval_dir": ("GenEval checkout", "https://github.com/djghosh13/geneval (set up per its README)"),
    "eval.detector": ("folder of GenEval's Mask2Former checkpoint", "GenEval's evaluation/download_models.sh"),
}


def missing(rows):
    """Sentences naming what the rows lack (empty when all is there). Official MAR files are fetched."""
    from eval.geneval import DETECTOR_NAME
    problems = []
    if not torch.cuda.is_available():
        problems.append("no CUDA GPU: the paper's tables need one (on a CPU: `make flops` for the FLOPs columns, "
                        "`make demo` for the tiny world)")
    seen = set()
    for cfg in rows:
        try:
            check_run(cfg, model_on_meta(cfg.model))
        except ConfigError as e:
            problems.append(str(e))
        if is_prompt_eval(cfg.eval):
            for key, (what, where) in TEXT_TO_IMAGE.items():
                value = OmegaConf.select(cfg, key) or (cfg.model.checkpoint if key == "checkpoint" else None)
                if not value:
                    problems.append(f"{what}: pass {key}=PATH (get it from {where})")
                elif not os.path.exists(value):
                    problems.append(f"{what}: {value} does not exist ({key}; get it from {where})")
            d, det = cfg.eval.get("geneval_dir"), cfg.eval.get("detector")
            if d and os.path.isdir(d) and not os.path.isfile(os.path.join(d, "evaluation", "evaluate_images.py")):
                problems.append(f"{d} is not a GenEval checkout (evaluation/evaluate_images.py missing)")
            if det and os.path.isdir(det) and not os.path.isfile(os.path.join(det, DETECTOR_NAME + ".pth")):
                problems.append(f"detector folder {det} lacks {DETECTOR_NAME}.pth (GenEval's download_models.sh)")
            continue
        source = cfg.model.get("source", "official")
        needs = [("checkpoint", cfg.checkpoint or cfg.model.checkpoint, cfg.model.name),
                 ("VAE checkpoint", cfg.model.get("vae_checkpoint"), "vae")]
        for what, path, name in needs:
            if (path, name, source) in seen:
                continue
            seen.add((path, name, source))
            try:
                weights_file(path, name, source, what)   # an official file is downloaded now
            except Exception as e:
                problems.append(f"model {cfg.model.key}: {e}")
        if not cfg.eval.get("ref_stats") and "fid_stats" not in seen:
            seen.add("fid_stats")
            try:
                weights.fetch("fid_stats")
            except weights.WeightsError as e:
                problems.append(f"FID reference statistics: {e}")
        elif cfg.eval.get("ref_stats") and not os.path.isfile(cfg.eval.ref_stats):
            problems.append(f"FID reference statistics {cfg.eval.ref_stats} not found (eval.ref_stats)")
    return list(dict.fromkeys(problems))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    check_only = "--check-only" in argv
    overrides, multirun = split_argv([a for a in argv if a != "--check-only"])
    if not overrides or not any(o.startswith("experiment=") for o in overrides):
        sys.exit("error: name the table: python scripts/reproduce.py experiment=table1 (table1 ... table5)")
    try:
        rows = compose(overrides, multirun)
    except ConfigError as e:
        sys.exit(f"error: {e}")
    problems = missing(rows)
    if problems:
        print(f"reproduce {' '.join(overrides)}: cannot start, missing:", *[f"  - {s}" for s in problems],
              sep="\n")
        sys.exit(2)
    print(f"{len(rows)} rows: all prerequisites found")
    if check_only:
        return
    py = sys.executable
    subprocess.run([py, "scripts/sample.py", "-m", *overrides], check=True)
    subprocess.run([py, "scripts/evaluate.py", *overrides, "evaluate.latency=true"], check=True)
    subprocess.run([py, "scripts/tables.py", *[o for o in overrides if o.startswith(("records=", "out_root="))]],
                   check=True)


if __name__ == "__main__":
    main()
