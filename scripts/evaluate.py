"""Score finished generation runs and write their run records (the rows of our tables).

    python scripts/evaluate.py outputs/mar_h/*/ --ref-stats stats/adm_in256_stats.npz [--latency]
    python scripts/evaluate.py outputs/lightgen/*/ --geneval-dir G --geneval-python PY --detector D [--latency]

For each run folder made by scripts/sample.py (run.json + samples.npz) this computes
  * class-conditional runs: FID / IS with eval/fid.py against the reference statistics;
  * prompt runs (eval=geneval): GenEval with eval/geneval.py (the images exported in GenEval's layout
    under RUN/geneval/, its evaluate_images.py run in its own environment, skipped when its results
    are complete, then summarised);
and FLOPs with eval/cost.py (the real sampler on the meta device, exact and under the paper's
convention), optionally the latency (eval/cost.measure_latency on this machine's device at the run's
batch size and dtype), and writes one JSON record per run in the schema of eval/tables.py to --records
(default results/runs/table<N>/). Runs without a table/key (plain samples) are scored but get no
record. Missing files are reported per run; the other runs still go on.
"""
import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def geneval_scores(run_dir, cfg, geneval):
    """GenEval of a prompt run: export, score in GenEval's environment (unless done), summarise."""
    from eval import geneval as ge
    from gtr.build import prompt_file
    # The command line's settings win over the run's eval config (run_evaluation names what is missing).
    geneval_dir = geneval.get("dir") or cfg.eval.get("geneval_dir")
    python = geneval.get("python") or cfg.eval.get("geneval_python") or "python"
    detector = geneval.get("detector") or cfg.eval.get("detector")
    layout, results = run_dir / "geneval", run_dir / "geneval_results.jsonl"
    ge.export_layout(run_dir, ge.read_prompts(prompt_file(cfg.eval)), layout, int(cfg.eval.samples_per_prompt))
    ge.run_evaluation(layout, results, geneval_dir, python=python, detector_path=detector,
                      force=geneval.get("force", False))
    return ge.summarize(results)


def evaluate_run(run_dir, ref_stats=None, latency=False, feature_extractor="inception", geneval=None):
    """Measurements of one run folder as a run record (dict)."""
    import torch
    from omegaconf import OmegaConf
    from eval.cost import count_flops, meta_model
    from gtr.build import build_method, is_prompt_eval
    run = json.loads((run_dir / "run.json").read_text())
    if run.get("status") != "done":
        raise RuntimeError(f"{run_dir} is not finished (status {run.get('status')!r}): run its command again")
    cfg = OmegaConf.create(run["config"])
    model = meta_model(cfg.model.name)
    method = build_method(cfg.method, grid=(model.seq_h, model.seq_w))
    record = {k: run[k] for k in ("table", "key", "model", "method", "command", "git_commit", "torch_version",
                                  "device", "dtype", "batch_size", "num_images")}
    record["config"] = run["config"]
    if is_prompt_eval(cfg.eval):
        summary = geneval_scores(run_dir, cfg, geneval or {})
        record.update({k: summary[k] for k in ("single_obj", "two_obj", "counting", "colors", "position",
                                               "color_attr", "overall")})
        record["geneval"] = summary
    else:
        if not ref_stats or not os.path.isfile(ref_stats):
            raise FileNotFoundError(f"reference statistics {ref_stats} not found. For ImageNet 256 use ADM's stats "
                                    "(LTH14/mar fid_stats/adm_in256_stats.npz) and pass --ref-stats PATH")
        from eval.fid import evaluate
        scores = evaluate(str(run_dir / "samples.npz"), ref_stats_path=ref_stats, feature_extractor=feature_extractor)
        record.update(fid=scores.get("fid"), **{"is": scores.get("is_mean")})
        if scores.get("is_mean") is None and scores.get("is_reason"):
            record["is_unavailable"] = scores["is_reason"]
    flops = count_flops(model, method, cfg=cfg.cfg, cfg_schedule=cfg.cfg_schedule,
                        include_vae=cfg.model.get("decoder") == "vae")
    record.update(flops_T=flops["flops_T"], flops_paper_convention_T=flops.get("flops_paper_convention_T"))
    if latency:
        from eval.cost import measure_latency
        from gtr.build import build_model
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = build_model(cfg.model, device)
        # Sampling only (text encoding and decoding are not timed), at the run's batch size and dtype.
        lat = measure_latency(model, method, batch_size=int(cfg.batch_size), device=device, cfg=cfg.cfg,
                              cfg_schedule=cfg.cfg_schedule,
                              dtype=getattr(torch, DTYPES[cfg.dtype]))
        record["latency_gpu_s" if device == "cuda" else "latency_cpu_s"] = lat["seconds_per_image"]
        record["latency"] = lat
    return record


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run folders (each with run.json and samples.npz)")
    p.add_argument("--ref-stats", help="reference mu/sigma npz for FID runs, e.g. ADM's adm_in256_stats.npz")
    p.add_argument("--geneval-dir", help="a djghosh13/geneval checkout (prompt runs; default: the run's eval.geneval_dir)")
    p.add_argument("--geneval-python", help="the python of GenEval's own environment")
    p.add_argument("--detector", help="folder of GenEval's Mask2Former checkpoint (its download_models.sh)")
    p.add_argument("--force-geneval", action="store_true", help="score again even if GenEval's results are complete")
    p.add_argument("--records", type=Path, default=ROOT / "results" / "runs")
    p.add_argument("--latency", action="store_true", help="also time sampling on this machine's device")
    p.add_argument("--feature-extractor", default="inception")
    args = p.parse_args(argv)
    geneval = dict(dir=args.geneval_dir, python=args.geneval_python, detector=args.detector, force=args.force_geneval)
    failed = 0
    for run_dir in args.runs:
        try:
            record = evaluate_run(run_dir, args.ref_stats, args.latency, args.feature_extractor, geneval)
        except Exception as e:  # report and go on with the other runs
            failed += 1
            print(f"{run_dir}: {type(e).__name__}: {e}", flush=True)
            continue
        scores = (f"GenEval overall {record['overall']}" if "overall" in record else
                  f"FID {record['fid']}, IS {record['is']}")
        print(f"{run_dir}: {scores}, {record['flops_T']:.3f} TFLOPs", flush=True)
        if record.get("table") is None or not record.get("key"):
            continue
        path = args.records / f"table{record['table']}" / (record["key"].replace("/", "__") + ".json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1, default=str))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
