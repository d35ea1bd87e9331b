"""The tiny world, end to end on a CPU: sample the Fashion-MNIST MAR with every method, score, count,
time, and write the paper-shaped tables, a FID-vs-FLOPs plot and sample grids (`make demo`).

    python scripts/demo.py                      # all rows, results/demo/
    python scripts/demo.py --per-class 10 --rows mar16 gtr   # a quick subset

Every row is a method config (configs/method/) plus overrides, built with gtr.build.build_method: a new
method config added to ROWS below appears in every demo table. The grid is 8x8 = 64 tokens, a quarter
of ImageNet-256's 256, so the paper's step counts are scaled by 1/4 to keep its tokens per step: the
full budget is 16 AR steps (paper: 64), and its Step=16 / Step=8 groups become Step=4 / Step=2.
Image i of every row is drawn from image_generator(seed, i) with label i % 10 (class-balanced; scripts/sample.py orders labels class-major instead), so a
rerun gives the same numbers. All rows cap the head's timesteps at 950 (--clip-timesteps; see its help). Each finished row is saved (results/demo/runs/<row>.json) and skipped
on a rerun unless --force: an interrupted demo loses no finished row.
"""
import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gtr.build import build_method, git_commit  # noqa: E402
from gtr.checkpoints import load_mar  # noqa: E402
from gtr.models.mar import build_mar  # noqa: E402
from gtr.sampler import image_generator, sample  # noqa: E402
from gtr.models.vae import to_uint8  # noqa: E402

CHECKPOINT = ROOT / "results" / "tiny_mar" / "tiny_mar_ema.pth"

# (row id, paper tables it belongs to, label in those tables, method config, overrides)
ROWS = [
    ("mar16", (1, 3, 4), "MAR (16)", "mar", ["method.num_iter=16"]),
    ("step4", (1,), "+Step=4", "mar", ["method.num_iter=4", "method.name=step4"]),
    ("halton4", (1,), "+Halton", "halton", ["method.num_iter=4"]),
    ("disa4", (1,), "+DiSA", "disa", ["method.num_iter=4"]),
    ("lazymar4", (1,), "+LazyMAR", "lazymar", ["method.num_iter=4"]),
    ("gtr4", (1,), "+GtR (Ours)", "gtr", ["method.stage_steps=[2,1,1]"]),
    ("step2", (1,), "+Step=2", "mar", ["method.num_iter=2", "method.name=step2"]),
    ("halton2", (1,), "+Halton", "halton", ["method.num_iter=2"]),
    ("disa2", (1,), "+DiSA", "disa", ["method.num_iter=2"]),
    ("lazymar2", (1,), "+LazyMAR", "lazymar", ["method.num_iter=2"]),
    ("gtr2", (1,), "+GtR (Ours)", "gtr", ["method.stages=2", "method.stage_steps=[1,1]"]),
    ("gtr", (1, 3, 4, 5), "GtR + FTS, paper's rates", "gtr", []),
    ("gtr_enc", (3, 5), "GtR* (order + counts only)", "gtr_enc", []),
    ("gtr_diff", (3,), "GtR† (diffusion steps only)", "gtr_diff", ["method.num_iter=16"]),
    ("gtr_nofts", (3,), "GtR* + GtR† (no FTS)", "gtr_nofts", []),
    ("fts_random", (4,), "+Random", "fts_random", []),
    ("fts_low", (4,), "+Low-Freq.", "fts_low", []),
    ("fts_full", (4,), "+Full-Enhanced", "fts_full", []),
    ("raster", (5,), "Raster", "raster", []),
    ("subsample", (5,), "Subsample", "subsample", []),
    ("random", (5,), "Random", "random", []),
]
GROUPS = {"mar16": "Step=16 (full)", "step4": "Step=4", "halton4": "Step=4", "disa4": "Step=4", "lazymar4": "Step=4",
          "gtr4": "Step=4", "step2": "Step=2", "halton2": "Step=2", "disa2": "Step=2", "lazymar2": "Step=2",
          "gtr2": "Step=2", "gtr": "GtR as stated"}


def compose_method(name, overrides):
    """The method config `name` with `overrides`, composed as scripts/sample.py would."""
    from hydra import compose, initialize_config_dir
    with initialize_config_dir(str(ROOT / "configs"), version_base=None):
        cfg = compose("sample", overrides=["model=tiny", f"method={name}", *overrides])
    return cfg


def run_row(row, model, args, out):
    """Sample, score, count and time one row; returns its run record."""
    from eval.classifier import class_accuracy
    from eval.classifier import fmnist_reference_stats
    from eval.cost import count_flops
    from eval.fid import evaluate
    from omegaconf import OmegaConf
    row_id, tables, label, name, overrides = row
    cfg = compose_method(name, overrides)
    method = build_method(cfg.method, grid=(model.seq_h, model.seq_w))
    clip = method.steps.clip_timesteps  # the tiny model's config gives every method 950 (configs/model/tiny.yaml)
    n = args.per_class * 10
    labels = torch.arange(n) % 10
    images, start = [], time.perf_counter()
    for lo in range(0, n, args.batch_size):
        idx = range(lo, min(n, lo + args.batch_size))
        tokens = sample(model, method, labels[lo:idx.stop], [image_generator(args.seed, i) for i in idx],
                        cfg=args.cfg)
        images.append(to_uint8(model.unpatchify(tokens)))
    seconds = time.perf_counter() - start
    images = torch.cat(images)
    scores = evaluate(images, ref_stats_path=fmnist_reference_stats(), feature_extractor="fmnist-classifier")
    flops = count_flops(model, method, cfg=args.cfg, include_vae=False)
    grid_path = out / "grids" / f"{row_id}.png"
    save_grid(images[:40], grid_path)
    record = {
        "table": "demo", "key": f"tiny/{row_id}", "model": "mar_tiny", "method": cfg.method.name, "row": row_id,
        "label": label, "tables": list(tables), "group": GROUPS.get(row_id),
        "config": OmegaConf.to_container(cfg.method, resolve=True),
        "flops_T": flops["flops_T"], "flops_paper_convention_T": flops.get("flops_paper_convention_T"),
        "flops_parts_T": {k: flops[k] for k in ("encdec_T", "head_T", "head_paper_convention_T")},
        "latency_cpu_s": seconds / n, "fid": scores["fid"], "is": scores.get("is_mean"),
        "accuracy": class_accuracy(images, labels),
        "command": "python scripts/demo.py " + " ".join(sys.argv[1:]), "git_commit": git_commit(),
        "torch_version": torch.__version__, "device": f"cpu ({platform.processor() or platform.machine()}, "
                                                        f"{torch.get_num_threads()} threads)",
        "dtype": "fp32", "batch_size": args.batch_size, "num_images": n, "cfg": args.cfg, "seed": args.seed,
        "clip_timesteps": clip,
        "checkpoint": str(args.checkpoint.relative_to(ROOT) if args.checkpoint.is_relative_to(ROOT)
                          else args.checkpoint),
    }
    return record


def save_grid(images, path, nrow=10):
    """uint8 (N, 1, H, W) -> one PNG, `nrow` per row (the demo's images are class-major: a column per class)."""
    from PIL import Image
    n, _, h, w = images.shape
    rows = (n + nrow - 1) // nrow
    canvas = torch.full((rows * (h + 2), nrow * (w + 2)), 255, dtype=torch.uint8)
    for i in range(n):
        r, c = divmod(i, nrow)
        canvas[r * (h + 2):r * (h + 2) + h, c * (w + 2):c * (w + 2) + w] = images[i, 0]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas.numpy()).resize((canvas.shape[1] * 3, canvas.shape[0] * 3), Image.NEAREST).save(path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "demo")
    p.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    p.add_argument("--per-class", type=int, default=30, help="images per class and row")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--cfg", type=float, default=4.0, help="guidance scale, the same for every row (chosen on MAR (16), README)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", nargs="*", help="only these row ids (default: all)")
    p.add_argument("--force", action="store_true", help="recompute rows already in <out>/runs")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [r for r in ROWS if not args.rows or r[0] in args.rows]
    unknown = set(args.rows or []) - {r[0] for r in ROWS}
    if unknown:
        sys.exit(f"unknown demo rows {sorted(unknown)}; choose from {[r[0] for r in ROWS]}")
    if not args.checkpoint.is_file():
        sys.exit(f"tiny model checkpoint {args.checkpoint} is missing: train it with `make train-tiny` "
                 "(or pass --checkpoint)")
    model = load_mar(build_mar("mar_tiny"), str(args.checkpoint)).eval()
    (args.out / "runs").mkdir(parents=True, exist_ok=True)
    for row in rows:
        path = args.out / "runs" / f"{row[0]}.json"
        if path.exists() and not args.force:
            print(f"{row[0]:12s} done before ({path}); --force to redo", flush=True)
            continue
        t = time.time()
        record = run_row(row, model, args, args.out)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, path)
        print(f"{row[0]:12s} acc {record['accuracy']:.3f}  FID {record['fid']:.2f}  IS {record['is'] or float('nan'):.2f}  "
              f"{record['flops_T'] * 1e3:.2f} GFLOPs  {record['latency_cpu_s']:.3f} s/img  ({time.time() - t:.0f} s)",
              flush=True)
    write_tables(args.out)


def write_tables(out):
    """Paper-shaped tables (1, 3, 4, 5) of the demo runs in <out>/, and the FID-vs-FLOPs plot."""
    import pandas as pd
    from eval.tables import to_markdown
    records = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    if not records:
        return
    by_row = {r["row"]: r for r in records}
    order = [r[0] for r in ROWS]
    base = by_row.get("mar16")
    lines = ["# The tiny world (Fashion-MNIST MAR, 8x8 tokens, CPU)", "",
             "Generated by `make demo` (scripts/demo.py). FID and IS are in the feature space of a Fashion-MNIST",
             "classifier trained here (eval/classifier.py), against the 10k test set; accuracy is that classifier's",
             "agreement with the class label. FLOPs: one image, CFG batch 2, counted on the meta device (no VAE:",
             "tokens are pixels). Speed = FLOPs of MAR (16) / FLOPs of the row, as the paper's Tables 1, 3, 4.", ""]
    for table, title in [(1, "Table 1 — methods at the full budget and two reduced budgets"),
                         (3, "Table 3 — GtR on the encoder-decoder (*) and on the diffusion (†), FTS"),
                         (4, "Table 4 — which reconstruction tokens get the extra diffusion steps"),
                         (5, "Table 5 — sampling order (GtR's counts and diffusion steps, order changed)")]:
        rows = [by_row[r] for r in order if r in by_row and table in by_row[r]["tables"]]
        if not rows:
            continue
        df = pd.DataFrame([{
            "group": r.get("group") or "", "method": r["label"], "config": r["row"],
            "latency_cpu_s": r["latency_cpu_s"], "flops_G": r["flops_T"] * 1e3,
            "speed": base["flops_T"] / r["flops_T"] if base else float("nan"),
            "accuracy": r["accuracy"], "fid": r["fid"], "is": r["is"],
            "fid_delta": r["fid"] - base["fid"] if base else float("nan")} for r in rows])
        lines += [f"## {title}", "", to_markdown(df), ""]
        df.to_csv(out / f"table{table}.csv", index=False)
    meta = records[0]
    lines += [f"{meta['num_images']} images per row ({meta['num_images'] // 10} per class), cfg {meta['cfg']}, "
              f"seed {meta['seed']}, batch {meta['batch_size']}, {meta['device']}, torch {meta['torch_version']}, "
              f"checkpoint {meta['checkpoint']}.", ""]
    (out / "README.md").write_text("\n".join(lines))
    plot(records, out / "fid_vs_flops.png")
    print(f"wrote {out / 'README.md'} and {out / 'fid_vs_flops.png'}")


def plot(records, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    families = {"mar": "step reduction", "step4": "step reduction", "step2": "step reduction",
                "halton": "Halton", "disa": "DiSA", "lazymar": "LazyMAR", "gtr": "GtR"}
    fig, ax = plt.subplots(figsize=(6, 4))
    groups = {}
    for r in records:
        if 1 not in r["tables"]:
            continue
        fam = next((v for k, v in families.items() if r["row"].startswith(k)), r["row"])
        if r["row"] == "mar16":
            ax.scatter([r["flops_T"] * 1e3], [r["fid"]], marker="*", s=150, color="k", label="MAR (16)", zorder=3)
            continue
        groups.setdefault(fam, []).append((r["flops_T"] * 1e3, r["fid"]))
    for fam, pts in sorted(groups.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=fam)
    ax.set_xlabel("GFLOPs per image")
    ax.set_ylabel("FID (classifier features)")
    ax.set_title("Tiny world: FID vs FLOPs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
