"""Score finished generation runs and write their run records (the rows of our tables).

    python scripts/evaluate.py experiment=table1 model=mar_b           # every row's run folder of an experiment
    python scripts/evaluate.py model=mar_b method=gtr eval=fid50k      # one run
    python scripts/evaluate.py experiment=table2 eval.geneval_dir=G eval.geneval_python=PY eval.detector=D
    python scripts/evaluate.py experiment=table1 evaluate.latency=true   # also time sampling on this machine

It takes the overrides scripts/sample.py took: each row's run folder is the one sample.py made for it
(<out_root>/<run_name>: the folder name carries the hash of every setting that changes an image). For
each finished folder it computes
  * class-conditional runs: FID / IS with eval/fid.py against eval.ref_stats (ADM's ImageNet-256
    statistics for the fid sets; see `make weights`);
  * prompt runs (eval=geneval): GenEval with eval/geneval.py (the images exported in GenEval's layout
    under RUN/geneval/, its evaluate_images.py run in its own environment, skipped when its results are
    complete, then summarised);
and FLOPs with eval/cost.py (exact and under the paper's convention), optionally the latency at the
run's batch size and dtype, and writes one record per run to <records>/runs/table<N>/ (eval/records.py).
A row whose folder is missing or unfinished is reported and the others go on; the exit code is 1 then.
"""
import json
import sys
from pathlib import Path

import torch

from eval.cost import count_flops, measure_latency
from eval.records import run_record, write_record
from gtr import weights
from gtr.config import ConfigError, compose, split_argv
from gtr.load import build_model, model_on_meta
from gtr.prompts import is_prompt_eval, prompt_file
from gtr.runs import check_run, pick_device, precision, settings_hash


def geneval_scores(run_dir, cfg):
    """GenEval of a prompt run: export, score in GenEval's environment (unless done), summarise."""
    from eval import geneval as ge
    layout, results = run_dir / "geneval", run_dir / "geneval_results.jsonl"
    ge.export_layout(run_dir, ge.read_prompts(prompt_file(cfg.eval)), layout, int(cfg.eval.samples_per_prompt))
    ge.run_evaluation(layout, results, cfg.eval.get("geneval_dir"), python=cfg.eval.get("geneval_python") or "python",
                      detector_path=cfg.eval.get("detector"), force=bool(cfg.evaluate.force_geneval))
    return ge.summarize(results)


def evaluate_run(cfg, run_dir):
    """The run record of the finished run of row `cfg` in `run_dir`."""
    run = json.loads((run_dir / "run.json").read_text())
    if run.get("status") != "done":
        raise RuntimeError(f"{run_dir} is not finished (status {run.get('status')!r}): run its command again")
    if run.get("settings_hash") != settings_hash(cfg):
        raise RuntimeError(f"{run_dir} was made with other settings than this row's")
    model = model_on_meta(cfg.model)
    method = check_run(cfg, model)
    measured = {}
    if is_prompt_eval(cfg.eval):
        summary = geneval_scores(run_dir, cfg)
        measured.update({k: summary[k] for k in ("single_obj", "two_obj", "counting", "colors", "position",
                                                 "color_attr", "overall")}, geneval=summary)
    else:
        from eval.fid import evaluate
        ref = cfg.eval.get("ref_stats") or weights.fetch("fid_stats")  # null: the official ADM ImageNet-256 stats
        if not Path(ref).is_file():
            raise FileNotFoundError(f"FID reference statistics {ref} not found (eval.ref_stats); null uses ADM's "
                                    "ImageNet-256 stats (LTH14/mar fid_stats/adm_in256_stats.npz, `make weights`)")
        measured["fid_stats"] = weights.describe(ref)
        scores = evaluate(str(run_dir / "samples.npz"), ref_stats_path=ref,
                          feature_extractor=cfg.eval.get("feature_extractor", "inception"))
        measured.update(fid=scores.get("fid"), **{"is": scores.get("is_mean")})
        if scores.get("is_mean") is None and scores.get("reasons", {}).get("is_mean"):
            measured["is_unavailable"] = scores["reasons"]["is_mean"]
    flops = count_flops(model, method, cfg=cfg.cfg, cfg_schedule=cfg.cfg_schedule,
                        include_vae=cfg.model.get("decoder") == "vae")
    measured.update(flops_T=flops["flops_T"], flops_paper_convention_T=flops["flops_paper_convention_T"])
    if cfg.evaluate.latency:
        device = pick_device(cfg.device)
        # Sampling only (text encoding and decoding are not timed), at the run's batch size and dtype.
        cast, amp = precision(cfg)
        lat = measure_latency(build_model(cfg.model, device, checkpoint=cfg.checkpoint, dtype=cast), method,
                              batch_size=int(cfg.batch_size), device=device, cfg=cfg.cfg,
                              cfg_schedule=cfg.cfg_schedule, dtype=amp or torch.float32, engine=cfg.engine)
        measured["latency_gpu_s" if device.type == "cuda" else "latency_cpu_s"] = lat["seconds_per_image"]
        measured["latency"] = lat
    return run_record(cfg, run["device"], batch_size=run["batch_size"], images=run["num_images"],
                      run_dir=str(run_dir), weights=run.get("weights"), **measured)


def main(argv=None):
    overrides, multirun = split_argv(sys.argv[1:] if argv is None else argv)
    try:
        rows = compose(overrides, multirun)
    except ConfigError as e:
        sys.exit(f"error: {e}")
    failed = 0
    for cfg in rows:
        run_dir = Path(cfg.out_root) / cfg.run_name
        try:
            if not (run_dir / "run.json").is_file():
                raise FileNotFoundError(f"no run folder {run_dir}: sample it first (python scripts/sample.py with "
                                        "the same overrides)")
            record = evaluate_run(cfg, run_dir)
        except (ConfigError, RuntimeError, OSError, ValueError) as e:  # (WeightsError too) report, go on with the rest
            failed += 1
            print(f"{run_dir}: {e}", flush=True)
            continue
        scores = (f"GenEval overall {record['overall']}" if "overall" in record else
                  f"FID {record['fid']}, IS {record['is']}")
        print(f"{run_dir}: {scores}, {record['flops_T']:.3f} TFLOPs", flush=True)
        if cfg.key:
            write_record(f"{cfg.records}/runs/table{cfg.table}", record)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
