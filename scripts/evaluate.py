"""Score finished generation runs and write their run records (the rows of our tables).

    python scripts/evaluate.py outputs/mar_h/*/ --ref-stats stats/adm_in256_stats.npz [--latency]

For each run folder made by scripts/sample.py (run.json + samples.npz) this computes FID / IS with
eval/fid.py against the reference statistics, FLOPs with eval/cost.py (the real sampler on the meta
device, exact and under the paper's convention), optionally the latency (eval/cost.measure_latency on
the run's device, batch size and dtype), and writes one JSON record per run in the schema of
eval/tables.py to --records (default results/runs/table<N>/). Runs without a table/key (plain samples)
are scored but get no record. Missing files are reported per run; the other runs still go on.
"""
import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def evaluate_run(run_dir, ref_stats, latency=False, feature_extractor="inception"):
    """Measurements of one run folder as a run record (dict)."""
    import torch
    from omegaconf import OmegaConf
    from eval.cost import count_flops
    from eval.fid import evaluate
    from gtr.build import build_method
    from gtr.models.mar import build_mar
    run = json.loads((run_dir / "run.json").read_text())
    if run.get("status") != "done":
        raise RuntimeError(f"{run_dir} is not finished (status {run.get('status')!r}): run its command again")
    cfg = OmegaConf.create(run["config"])
    with torch.device("meta"):
        grid = build_mar(cfg.model.name).config.grid
    method = build_method(cfg.method, grid=grid)
    clip = cfg.method.get("clip_timesteps")
    scores = evaluate(str(run_dir / "samples.npz"), ref_stats_path=ref_stats, feature_extractor=feature_extractor)
    flops = count_flops(cfg.model.name, method, cfg=cfg.cfg, cfg_schedule=cfg.cfg_schedule, clip_timesteps=clip,
                        include_vae=cfg.model.get("decoder") == "vae")
    record = {k: run[k] for k in ("table", "key", "model", "method", "command", "git_commit", "torch_version",
                                  "device", "dtype", "batch_size", "num_images")}
    record.update(config=run["config"], flops_T=flops["flops_T"],
                  flops_paper_convention_T=flops.get("flops_paper_convention_T"),
                  fid=scores.get("fid"), **{"is": scores.get("is_mean")})
    if scores.get("is_mean") is None and scores.get("is_reason"):
        record["is_unavailable"] = scores["is_reason"]
    if latency:
        from eval.cost import measure_latency
        from gtr.build import build_model, decoder  # noqa: F401  (decoder: latency includes decoding)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = build_model(cfg.model, device)
        lat = measure_latency(model, method, batch_size=int(cfg.batch_size), device=device, cfg=cfg.cfg,
                              cfg_schedule=cfg.cfg_schedule, clip_timesteps=clip)
        record["latency_gpu_s" if device == "cuda" else "latency_cpu_s"] = lat["seconds_per_image"]
        record["latency"] = lat
    return record


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run folders (each with run.json and samples.npz)")
    p.add_argument("--ref-stats", required=True, help="reference mu/sigma npz, e.g. ADM's adm_in256_stats.npz")
    p.add_argument("--records", type=Path, default=ROOT / "results" / "runs")
    p.add_argument("--latency", action="store_true", help="also time sampling on this machine's device")
    p.add_argument("--feature-extractor", default="inception")
    args = p.parse_args(argv)
    if not os.path.isfile(args.ref_stats):
        sys.exit(f"reference statistics {args.ref_stats} not found. For ImageNet 256 use ADM's stats "
                 "(LTH14/mar fid_stats/adm_in256_stats.npz) and pass its path")
    failed = 0
    for run_dir in args.runs:
        try:
            record = evaluate_run(run_dir, args.ref_stats, args.latency, args.feature_extractor)
        except Exception as e:  # report and go on with the other runs
            failed += 1
            print(f"{run_dir}: {type(e).__name__}: {e}", flush=True)
            continue
        print(f"{run_dir}: FID {record['fid']}, IS {record['is']}, {record['flops_T']:.3f} TFLOPs", flush=True)
        if record.get("table") is None or not record.get("key"):
            continue
        path = args.records / f"table{record['table']}" / (record["key"].replace("/", "__") + ".json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1, default=str))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
