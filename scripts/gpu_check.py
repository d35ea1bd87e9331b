"""make gpu-check: everything that needs a GPU, as one prepared run of at most 9 minutes (eval/gpu_check.py).

    python scripts/gpu_check.py                        # -> outputs/gpu_check/ (summary.md, logs, records, table1.md)
    python scripts/gpu_check.py --out DIR --budget-s 540
    python scripts/gpu_check.py --smoke                # the same orchestration on the CPU with the tiny model
    python scripts/gpu_check.py --pack-inception .whl/inception-fp16.pth   # FID weights small enough to carry

Without a CUDA GPU (and without --smoke) it says so in one line and exits 2, before any work.
summary.md and steps.json are rewritten after every step, so a cut run keeps what it measured.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

from eval.gpu_check import gpu_plan, pack_inception_fp16, run_step, smoke_plan, summarize


def main(argv=None):
    p = argparse.ArgumentParser(prog="python scripts/gpu_check.py", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="outputs/gpu_check", help="folder for every log, record and the summary")
    p.add_argument("--budget-s", type=float, default=540, help="wall-clock budget of all steps together")
    p.add_argument("--smoke", action="store_true", help="run the plan on the CPU with the tiny model")
    p.add_argument("--pack-inception", metavar="PATH", help="only write the FID Inception weights in fp16 to PATH "
                   "(small enough to carry to a GPU image; make gpu-wheels) and exit")
    a = p.parse_args(argv)
    if a.pack_inception:
        print(f"wrote {pack_inception_fp16(a.pack_inception)}")
        return
    if not a.smoke and not torch.cuda.is_available():
        print("make gpu-check: no CUDA GPU here (torch.cuda.is_available() is False); run it on a GPU machine",
              file=sys.stderr)
        sys.exit(2)
    if a.budget_s <= 0:
        p.error(f"--budget-s must be > 0, got {a.budget_s}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = (smoke_plan if a.smoke else gpu_plan)(out, sys.executable)
    t0 = time.monotonic()
    deadline, results = t0 + a.budget_s, []
    for step in steps:
        if time.monotonic() > deadline - 1:
            print(f"{step.name:<20} skipped: the budget of {a.budget_s:.0f} s is spent", flush=True)
            continue
        r = run_step(step, out, deadline)
        results.append(r)
        print(f"{r['name']:<20} exit {r['rc']:<4} {r['seconds']:7.1f} s  (log: {out / (r['name'] + '.log')})", flush=True)
        (out / "steps.json").write_text(json.dumps(results, indent=1) + "\n")
        (out / "summary.md").write_text(summarize(out, results, (time.monotonic() - t0) / 60,
                                                          "cpu" if a.smoke else "gpu"))
    print((out / "summary.md").read_text())
    sys.exit(0 if results and all(r["rc"] == 0 for r in results) and len(results) == len(steps) else 1)


if __name__ == "__main__":
    main()
