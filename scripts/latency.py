"""CPU latency of the paper's Table 1 rows, measured on this machine with the real-size models.

    python scripts/latency.py --models mar_b                       # every Table 1 row of MAR-B
    python scripts/latency.py --models mar_h --only 64/mar,step16/gtr --threads 16

Latency does not depend on the weights (the same operations run on any values), so each row runs the
real sampler (eval/cost.measure_latency: wall clock on CPU) on a MAR of the row's size with random
weights: no checkpoint, no download. The rows and their configurations are scripts/flops.py's (the
same keys as configs/experiment/table1/, so the records join the paper's table). One image per row at
batch size 1, sampling only (VAE decoding not timed); the whole run is preceded by one untimed
warm-up image. Records go to results/runs/latency_cpu/<key>.json with `latency_cpu_s`; a row whose
record exists is skipped (a stopped run resumes), unless --force.

The paper's CPU is not this one: compare speed-ups (latency ratios), not seconds.
"""
import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eval.cost import measure_latency  # noqa: E402
from gtr.method import mar  # noqa: E402
from gtr.models.mar import build_mar  # noqa: E402
from gtr.build import git_commit  # noqa: E402
from scripts.flops import MAR_CFG, MODELS, table1_rows  # noqa: E402


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mar_b", help="comma list of mar_b, mar_l, mar_h")
    parser.add_argument("--only", default="", help="comma list of key parts; keep rows whose key contains one")
    parser.add_argument("--paper-rows", action="store_true", help="only rows the paper has (no 'ours only' rows)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--runs", default=str(ROOT / "results" / "runs" / "latency_cpu"))
    parser.add_argument("--force", action="store_true", help="measure rows that already have a record")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {sorted(MODELS)}")
    parts = [p for p in args.only.split(",") if p]
    out = Path(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    command = "python scripts/latency.py " + " ".join(sys.argv[1:] if argv is None else argv)
    device = f"cpu ({cpu_name()}, {torch.get_num_threads()} threads)"
    commit = git_commit()
    for m in models:
        name, label = MODELS[m]
        rows = [r for r in table1_rows(m) if (not parts or any(p in r["key"] for p in parts))
                and (not args.paper_rows or r["key"] == r["compare_with"])]
        todo = [r for r in rows if args.force or not (out / (r["key"].replace("/", "__") + ".json")).exists()]
        print(f"{label}: {len(rows)} rows, {len(rows) - len(todo)} already measured", flush=True)
        if not todo:
            continue
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = build_mar(name).eval()  # random weights: the cost is the same as the trained model's
        measure_latency(model, mar(4, 10), n_warmup=0, n_batches=1, device="cpu", cfg=MAR_CFG[name])  # warm-up
        for r in todo:
            lat = measure_latency(model, r["build"](), batch_size=1, n_warmup=0, n_batches=1, device="cpu",
                                  cfg=MAR_CFG[name])
            record = dict(table=r["table"], key=r["key"], model=label, method=r["method"],
                          config=dict(model=name, **r["config"]), latency_cpu_s=lat["seconds_per_image"],
                          latency=lat, command=command, git_commit=commit, torch_version=torch.__version__,
                          device=device, dtype="float32", batch_size=1, num_images=1,
                          weights="random (latency does not depend on them)", includes_vae_decode=False,
                          measured=time.strftime("%Y-%m-%dT%H:%M:%S"))
            if r["group"]:
                record["group"] = r["group"]
            (out / (r["key"].replace("/", "__") + ".json")).write_text(json.dumps(record, indent=1) + "\n")
            print(f"{r['key']:<28} {r['method']:<36} {lat['seconds_per_image']:8.2f} s/image", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
