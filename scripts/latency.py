"""Seconds per image of any rows on this machine (its CPU, or a GPU), at the rows' real model sizes.

    python scripts/latency.py experiment=table1 model=mar_b                 # make latency-cpu MODELS=mar_b
    python scripts/latency.py model=tiny method=gtr                         # one method
    python scripts/latency.py experiment=table1 model=mar_h device=cuda latency.batch_size=128

It takes the overrides scripts/sample.py takes (the rows are the experiments', so the keys join the
paper's tables). Latency does not depend on the weights (the same operations run on any values), so each
row runs the real sampler (eval/cost.measure_latency: CUDA events on a GPU, wall clock on the CPU) on a
model of the row's size with random weights (latency.random_weights=false loads the checkpoint):
latency.warmup untimed batches of a short run per model, then latency.batches timed batches of
latency.batch_size images per row, sampling only (no decoding). Records: <records>/runs/latency_<cpu|gpu>/
<key>.json; a row that has one is skipped (a stopped run resumes) unless latency.force=true.
The paper's machines are not this one: compare speed-ups (latency ratios), not seconds.
"""
import sys

import torch

from eval.cost import measure_latency
from eval.records import record_path, run_record, write_record
from gtr.config import ConfigError, compose, split_argv
from gtr.load import build_model, model_on_meta
from gtr.method import mar
from gtr.runs import check_run, device_name, pick_device, precision, row_key



def main(argv=None):
    overrides, multirun = split_argv(sys.argv[1:] if argv is None else argv)
    try:
        rows = compose(overrides or ["experiment=table1", "model=mar_b"], multirun)
        for cfg in rows:  # before the methods are built: a method's own model (a draft) follows it
            if cfg.latency.random_weights:  # recorded in the row's config
                cfg.model.random_init = True
        methods = [check_run(cfg, model_on_meta(cfg.model)) for cfg in rows]  # every row checked first
    except ConfigError as e:
        sys.exit(f"error: {e}")
    models = {}
    for cfg, method in zip(rows, methods):
        try:
            device = pick_device(cfg.device)
        except ConfigError as e:
            sys.exit(f"error: {e}")
        if cfg.threads:
            torch.set_num_threads(int(cfg.threads))
        kind = "gpu" if device.type == "cuda" else "cpu"
        folder = f"{cfg.records}/runs/latency_{kind}"
        key = row_key(cfg)
        if record_path(folder, key).exists() and not cfg.latency.force:
            print(f"{key:<36} measured before ({record_path(folder, key)}); latency.force=true to redo", flush=True)
            continue
        cast, amp = precision(cfg)
        spec = repr(sorted(cfg.model.items())) + repr(cast)
        if spec not in models:
            models[spec] = model = build_model(cfg.model, device, checkpoint=cfg.checkpoint, dtype=cast)
            if cfg.latency.warmup:  # kernels, allocator and caches warmed up once per model
                measure_latency(model, mar(2, 2), batch_size=cfg.latency.batch_size, n_warmup=0,
                                n_batches=cfg.latency.warmup, device=device, cfg=cfg.cfg, cfg_schedule=cfg.cfg_schedule,
                                engine=cfg.engine)
        lat = measure_latency(models[spec], method, batch_size=cfg.latency.batch_size, n_warmup=0,
                              n_batches=cfg.latency.batches, device=device, cfg=cfg.cfg,
                              cfg_schedule=cfg.cfg_schedule, temperature=cfg.temperature, dtype=amp or torch.float32,
                              engine=cfg.engine)
        record = run_record(cfg, device_name(device), batch_size=cfg.latency.batch_size,
                            images=cfg.latency.batch_size * cfg.latency.batches,
                            **{f"latency_{kind}_s": lat["seconds_per_image"]}, latency=lat,
                            weights="random (latency does not depend on them)" if cfg.latency.random_weights else
                            "the checkpoint's", includes_vae_decode=False)
        write_record(folder, record)
        print(f"{key:<36} {record['method']:<22} {lat['seconds_per_image']:9.3f} s/image", flush=True)


if __name__ == "__main__":
    main()
