"""Reproduce one of the paper's tables on a GPU box: generate, score, count, time, tabulate.

    python scripts/reproduce.py --table 1 [--check-only] [--models mar_b mar_l mar_h]
    python scripts/reproduce.py --table 2 --checkpoint LIGHTGEN.pth --text-encoder T5_DIR --vae SD35_DIR \
        --prompts GENEVAL/prompts/evaluation_metadata.jsonl --geneval-dir GENEVAL --geneval-python PY --detector D

Before any work it checks what the table needs and says what is missing. Tables 1, 3-5: a CUDA GPU,
the MAR checkpoints (configs/model/*.yaml `checkpoint`, or the hub when online), the KL-16 VAE and the
FID reference statistics (--ref-stats, default $GTR_FID_STATS or stats/adm_in256_stats.npz). Table 2:
a CUDA GPU, LightGen's checkpoint, T5-XXL, SD3.5's VAE (local folders), GenEval's prompts, a GenEval
checkout with its own python environment and its detector (each flag also reads an environment
variable: GTR_LIGHTGEN_CHECKPOINT, GTR_T5, GTR_SD35_VAE, GENEVAL_PROMPTS, GENEVAL_DIR, GENEVAL_PYTHON,
GENEVAL_DETECTOR). Then:
  1. python scripts/sample.py experiment=table<N>    (a Hydra multirun; resumable: rerun to continue)
  2. python scripts/evaluate.py <its run folders> --latency   (FID/IS or GenEval, FLOPs, latency -> results/runs/)
  3. python scripts/tables.py                          (paper beside ours, deltas -> results/table<N>.md)
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TABLE_MODELS = {1: ["mar_b", "mar_l", "mar_h"], 2: ["lightgen"], 3: ["mar_h"], 4: ["mar_h"], 5: ["mar_h"]}
# Table 2's inputs: flag -> (environment variable, what it is, where to get it)
TABLE2_INPUTS = {
    "checkpoint": ("GTR_LIGHTGEN_CHECKPOINT", "LightGen checkpoint (.pth)", "https://huggingface.co/Beckham808/LightGen"),
    "text_encoder": ("GTR_T5", "T5-XXL folder", "https://huggingface.co/google/flan-t5-xxl"),
    "vae": ("GTR_SD35_VAE", "SD3.5 folder (with vae/) or its vae/ folder",
            "https://huggingface.co/stabilityai/stable-diffusion-3.5-large (gated)"),
    "prompts": ("GENEVAL_PROMPTS", "GenEval prompts (prompts/evaluation_metadata.jsonl)",
                "https://github.com/djghosh13/geneval"),
    "geneval_dir": ("GENEVAL_DIR", "GenEval checkout", "https://github.com/djghosh13/geneval (set up per its README)"),
    "geneval_python": ("GENEVAL_PYTHON", "python of GenEval's environment", "GenEval's README (conda env)"),
    "detector": ("GENEVAL_DETECTOR", "folder of GenEval's Mask2Former checkpoint",
                 "GenEval's evaluation/download_models.sh"),
}


def table2_missing(inputs):
    """Sentences naming what Table 2 lacks (inputs: flag -> path or None)."""
    from eval.geneval import DETECTOR_NAME
    problems = []
    for flag, (env, what, where) in TABLE2_INPUTS.items():
        path = inputs.get(flag)
        if not path:
            problems.append(f"{what}: pass --{flag.replace('_', '-')} PATH or set {env} (get it from {where})")
        elif not os.path.exists(path):
            problems.append(f"{what}: {path} does not exist (get it from {where})")
    d = inputs.get("geneval_dir")
    if d and os.path.isdir(d) and not os.path.isfile(os.path.join(d, "evaluation", "evaluate_images.py")):
        problems.append(f"{d} is not a GenEval checkout (evaluation/evaluate_images.py missing)")
    det = inputs.get("detector")
    if det and os.path.isdir(det) and not os.path.isfile(os.path.join(det, DETECTOR_NAME + ".pth")):
        problems.append(f"detector folder {det} lacks {DETECTOR_NAME}.pth (GenEval's evaluation/download_models.sh)")
    return problems


def missing_prerequisites(table, models, ref_stats, inputs=None):
    """Sentences naming what is missing for `table` (empty when all is there)."""
    import torch
    from omegaconf import OmegaConf
    from gtr.checkpoints import resolve
    problems = []
    if table not in TABLE_MODELS:
        return [f"table {table} does not exist; tables: {sorted(TABLE_MODELS)}"]
    if not torch.cuda.is_available():
        problems.append("no CUDA GPU: the paper's tables need one (on a CPU: `make flops` for the FLOPs columns, "
                        "`make demo` for the tiny world)")
    if table == 2:
        return problems + table2_missing(inputs or {})
    for key in models:
        cfg = OmegaConf.load(ROOT / "configs" / "model" / f"{key}.yaml")
        try:
            resolve(cfg.get("checkpoint"), cfg.name)
        except Exception as e:
            problems.append(f"model {key}: {e}")
        if cfg.get("vae_checkpoint"):
            if not os.path.isfile(cfg.vae_checkpoint):
                problems.append(f"model {key}: KL-16 VAE {cfg.vae_checkpoint} not found (kl16.ckpt from LTH14/mar "
                                f"util/download.py, or kl16.safetensors from the hub repo jadechoghari/mar)")
    if not ref_stats or not os.path.isfile(ref_stats):
        problems.append(f"FID reference statistics {ref_stats} not found: put ADM's ImageNet-256 stats "
                        "(LTH14/mar fid_stats/adm_in256_stats.npz) there or pass --ref-stats / set GTR_FID_STATS")
    return problems


def run_folders(table):
    """Finished run folders of `table` under outputs/."""
    found = []
    for path in (ROOT / "outputs").rglob("run.json"):
        run = json.loads(path.read_text())
        if str(run.get("table")) == str(table) and run.get("status") == "done":
            found.append(path.parent)
    return sorted(found)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", type=int, required=True)
    p.add_argument("--models", nargs="*", help="subset of the table's models (Table 1: mar_b mar_l mar_h)")
    p.add_argument("--ref-stats", default=os.environ.get("GTR_FID_STATS", str(ROOT / "stats" / "adm_in256_stats.npz")))
    for flag, (env, what, _) in TABLE2_INPUTS.items():
        p.add_argument(f"--{flag.replace('_', '-')}", default=os.environ.get(env), help=f"Table 2: {what} (${env})")
    p.add_argument("--check-only", action="store_true", help="only check the prerequisites")
    args = p.parse_args(argv)
    models = args.models or TABLE_MODELS.get(args.table, [])
    inputs = {flag: getattr(args, flag) for flag in TABLE2_INPUTS}
    problems = missing_prerequisites(args.table, models, args.ref_stats, inputs)
    if problems:
        print(f"make reproduce-table{args.table}: cannot start, missing:", *[f"  - {s}" for s in problems], sep="\n")
        sys.exit(2)
    if args.check_only:
        print(f"table {args.table}: all prerequisites found")
        return
    py = sys.executable
    sweep = [py, "scripts/sample.py", f"experiment=table{args.table}"]
    if args.table == 2:
        sweep += [f"checkpoint={args.checkpoint}", f"model.text_encoder={args.text_encoder}",
                  f"model.vae_checkpoint={args.vae}", f"eval.prompts={args.prompts}"]
    elif args.models:
        sweep.append("model=" + ",".join(args.models))
    subprocess.run(sweep, cwd=ROOT, check=True)
    folders = [str(f) for f in run_folders(args.table)]
    scoring = ["--geneval-dir", args.geneval_dir, "--geneval-python", args.geneval_python, "--detector",
               args.detector] if args.table == 2 else ["--ref-stats", args.ref_stats]
    subprocess.run([py, "scripts/evaluate.py", *folders, *scoring, "--latency"], cwd=ROOT, check=True)
    subprocess.run([py, "scripts/tables.py", "--runs", "results/runs", "--out", "results"], cwd=ROOT, check=True)


if __name__ == "__main__":
    main()
