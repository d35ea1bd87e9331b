"""Reproduce one of the paper's tables on a GPU box: generate, score, count, time, tabulate.

    python scripts/reproduce.py --table 1 [--check-only] [--models mar_b mar_l mar_h]

Before any work it checks what the table needs and says what is missing: a CUDA GPU, the MAR
checkpoints (configs/model/*.yaml `checkpoint`, or the hub when online), the KL-16 VAE and the FID
reference statistics (--ref-stats, default $GTR_FID_STATS or stats/adm_in256_stats.npz). Then:
  1. python scripts/sample.py experiment=table<N>    (a Hydra multirun; resumable: rerun to continue)
  2. python scripts/evaluate.py <its run folders> --latency   (FID/IS, FLOPs, latency -> results/runs/)
  3. python scripts/tables.py                          (paper beside ours, deltas -> results/table<N>.md)
Table 2 (LightGen + GenEval) is not supported yet: LightGen is not implemented here and GenEval needs
its own environment (see configs/eval/geneval.yaml).
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TABLE_MODELS = {1: ["mar_b", "mar_l", "mar_h"], 3: ["mar_h"], 4: ["mar_h"], 5: ["mar_h"]}


def missing_prerequisites(table, models, ref_stats):
    """Sentences naming what is missing for `table` (empty when all is there)."""
    import torch
    from omegaconf import OmegaConf
    from gtr.checkpoints import resolve
    problems = []
    if table not in TABLE_MODELS:
        return [f"table {table} is not supported: Table 2 needs LightGen and GenEval (not implemented here); "
                f"tables available: {sorted(TABLE_MODELS)}"]
    if not torch.cuda.is_available():
        problems.append("no CUDA GPU: 50k-image tables need one (on a CPU: `make flops` for the FLOPs columns, "
                        "`make demo` for the tiny world)")
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
    p.add_argument("--check-only", action="store_true", help="only check the prerequisites")
    args = p.parse_args(argv)
    models = args.models or TABLE_MODELS.get(args.table, [])
    problems = missing_prerequisites(args.table, models, args.ref_stats)
    if problems:
        print(f"make reproduce-table{args.table}: cannot start, missing:", *[f"  - {s}" for s in problems], sep="\n")
        sys.exit(2)
    if args.check_only:
        print(f"table {args.table}: all prerequisites found")
        return
    py = sys.executable
    sweep = [py, "scripts/sample.py", f"experiment=table{args.table}"]
    if args.models:
        sweep.append("model=" + ",".join(args.models))
    subprocess.run(sweep, cwd=ROOT, check=True)
    folders = [str(f) for f in run_folders(args.table)]
    subprocess.run([py, "scripts/evaluate.py", *folders, "--ref-stats", args.ref_stats, "--latency"], cwd=ROOT,
                   check=True)
    subprocess.run([py, "scripts/tables.py", "--runs", "results/runs", "--out", "results"], cwd=ROOT, check=True)


if __name__ == "__main__":
    main()
