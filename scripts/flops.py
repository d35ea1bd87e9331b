"""FLOPs per image of any rows, counted on the CPU without weights (the meta device), beside the paper.

    python scripts/flops.py                                        # Tables 1-4 (make flops) -> outputs/flops/
    python scripts/flops.py experiment=table1 model=mar_b          # one experiment's rows
    python scripts/flops.py model=mar_b method=gtr                 # one method
    python scripts/flops.py -m model=tiny method=gtr method.stages=2,3
    python scripts/flops.py records=results                        # the committed results (make results)

It takes the overrides scripts/sample.py takes: the rows are the experiments' (configs/experiment/), so
the keys join the sampling runs. Each row runs the real sampler for one image (CFG batch 2) under
FlopCounterMode (eval/cost.py): `flops_T` is the exact count of the method as configured,
`flops_paper_convention_T` the comparable one (head timesteps clipped at 950, VAE excluded: REFERENCE.md
2, 4b). Records go to <records>/runs/flops/<key>.json; <records>/flops/flops.md and flops.csv list
every record there beside the paper's row (`compare_with`) and the official code's count. Nothing is
fitted: a gap is a finding.
"""
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from eval.cost import count_flops, sd35_vae_decode_T
from eval.records import command_line, read_records, run_record, write_record
from eval.tables import flops_markdown
from gtr.build import build_method
from gtr.config import ConfigError, check_values, compose, split_argv
from gtr.load import model_on_meta

EXPERIMENTS = "experiment=table1,table2,table3,table3_stated,table4,recap,cspd"   # make flops


def count_row(cfg, models):
    """The run record of one row's FLOPs (`models`: meta models by their config, reused across rows)."""
    spec = repr(sorted(cfg.model.items()))
    if spec not in models:
        models[spec] = model_on_meta(cfg.model)
    model = models[spec]
    check_values(cfg)
    method = build_method(cfg.method, grid=(model.seq_h, model.seq_w))  # (no prompts needed: not check_run)
    counted = count_flops(model, method, cfg=cfg.cfg, cfg_schedule=cfg.cfg_schedule,
                          include_vae=cfg.model.get("decoder") == "vae")
    return run_record(cfg, "meta (FLOPs counted on CPU, no weights)", images=1, flops_T=counted["flops_T"],
                      **{k: counted[k] for k in ("flops_paper_convention_T", "encdec_T", "head_T",
                                                 "head_paper_convention_T", "vae_T")})


def main(argv=None):
    overrides, multirun = split_argv(sys.argv[1:] if argv is None else argv)
    if not any(o.lstrip("+~").startswith(("experiment", "model", "method")) for o in overrides):
        overrides = [EXPERIMENTS, *overrides]  # no rows named: the paper's tables
    try:
        rows = compose(overrides, multirun)
    except ConfigError as e:
        sys.exit(f"error: {e}")
    torch.set_num_threads(1)
    records_root = rows[0].records
    runs, done, models, start = f"{records_root}/runs/flops", set(), {}, time.time()
    for cfg in rows:
        if cfg.key in done:  # one baseline row in several experiments
            continue
        t0 = time.time()
        try:
            record = count_row(cfg, models)
        except ConfigError as e:
            sys.exit(f"error: {e}")
        write_record(runs, record)
        done.add(record["key"])
        print(f"{record['key']:<36} {record['model']:<8} {record['method']:<22} exact {record['flops_T']:8.3f} T  "
              f"paper conv. {record['flops_paper_convention_T']:8.3f} T  ({time.time() - t0:.1f} s)", flush=True)
    records = sorted(read_records(runs).values(), key=lambda r: (str(r["table"]), r["key"]))
    out = Path(records_root) / "flops"
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([{k: v for k, v in r.items() if k != "config"} for r in records]).to_csv(out / "flops.csv", index=False)
    vae = sd35_vae_decode_T() if any(r["table"] == 2 for r in records) else None
    (out / "flops.md").write_text(flops_markdown(records, command_line(), vae))
    print(f"{len(done)} rows in {time.time() - start:.0f} s; {len(records)} records in {runs}/ -> {out}/flops.md, "
          f"flops.csv")


if __name__ == "__main__":
    main()
