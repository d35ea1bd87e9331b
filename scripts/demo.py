"""The tiny world, end to end on a CPU (`make demo`): every row sampled, scored, counted and timed; the
paper-shaped tables, a FID-vs-FLOPs plot and captioned sample grids in <records>/demo/.

    python scripts/demo.py                                   # every row of experiment=demo -> outputs/demo/
    python scripts/demo.py method=mymethod                   # a row of your own, added to the tables and plot
    python scripts/demo.py -m method=gtr method.stage_steps=[2,1,1],[3,1,1]   # a sweep of rows
    python scripts/demo.py experiment=demo +experiment/demo=gtr4              # one row of the demo
    python scripts/demo.py records=results                   # the committed results (make results)

It takes the overrides scripts/sample.py takes; a command line that names no experiment runs its rows
under experiment=tiny (the tiny model, 300 images, label i % 10, cfg 4.0). Each finished row is a record
in <records>/demo/runs/ and is skipped when run again with the same settings (an interrupted demo loses
no finished row; demo.force=true redoes them); the tables always list every record in the folder.
"""
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from eval.claims import claims_path, load_claims
from eval.cost import count_flops
from eval.intervals import MIN_IMAGES, Reference
from eval.records import command_line, read_records, record_path, run_record, write_record
from eval.tiny_world import features_file, report, save_row_grid, score, short
from gtr.config import ConfigError, compose, split_argv
from gtr.load import build_model, decoder, model_on_meta
from gtr.runs import check_run, device_name, generate, make_labels, num_images, precision, row_key, settings_hash


def rows_of(argv):
    """The demo's row configs for a command line, checked (ConfigError before any work)."""
    overrides, multirun = split_argv(argv)
    if not overrides:
        overrides = ["experiment=demo"]
    elif not any(o.lstrip("+~").startswith("experiment") for o in overrides):
        overrides = ["experiment=tiny", *overrides]
    rows = compose(overrides, multirun)
    for cfg in rows:
        if num_images(cfg) < MIN_IMAGES:
            raise ConfigError(f"the tiny world scores a row on at least {MIN_IMAGES} images (k-NN precision/recall), "
                              f"got n={num_images(cfg)}")
        out = cfg.demo.get("out")
        if not isinstance(out, str) or not out or Path(out).is_absolute() or ".." in Path(out).parts:
            raise ConfigError(f"demo.out must be a folder name under records (e.g. demo), got {out!r}")
    if len({cfg.demo.out for cfg in rows}) > 1:
        raise ConfigError("the rows of one command must share demo.out (one report folder)")
    claims = {cfg.demo.get("claims", "claims") for cfg in rows}
    if len(claims) > 1:
        raise ConfigError("the rows of one command must share demo.claims (one claims.md)")
    try:
        load_claims(claims_path(claims.pop()))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return [(cfg, check_run(cfg, model_on_meta(cfg.model))) for cfg in rows]


def features_path(cfg):
    """Where a row's classifier features go (for the paired claims): <records>/<demo.out>/features/<row>.npz."""
    return features_file(Path(cfg.records) / cfg.demo.out, short(row_key(cfg)))


def run_row(cfg, method, model, reference, bar):
    """Sample, score, count and time one row; its run record."""
    n = num_images(cfg)
    labels = make_labels(n, model.config.class_num, False, cfg.labels)
    start = time.perf_counter()
    images, _ = generate(cfg, model, method, decoder(cfg.model, model), labels, list(range(n)), bar.update)
    seconds = time.perf_counter() - start
    flops = count_flops(model_on_meta(cfg.model), method, cfg=cfg.cfg, cfg_schedule=cfg.cfg_schedule,
                        include_vae=False)
    out = Path(cfg.records) / cfg.demo.out
    key = row_key(cfg)
    save_row_grid(images, labels, out / "grids" / f"{short(key).replace('/', '_')}.png",
                  f"{key}: {cfg.method.label} [{cfg.method.tag}], cfg {cfg.cfg}, seed {cfg.seed}")
    verify = getattr(method, "verify", None)  # a speculative method's counts (e.g. the tokens it kept)
    stats = verify.stats() if hasattr(verify, "stats") else {}
    return run_record(cfg, device_name("cpu"), batch_size=cfg.batch_size, images=n, flops_T=flops["flops_T"], **stats,
                      flops_paper_convention_T=flops["flops_paper_convention_T"], latency_cpu_s=seconds / n,
                      settings_hash=settings_hash(cfg), **score(images, labels, reference, features_path(cfg)))


def main(argv=None):
    try:
        rows = rows_of(sys.argv[1:] if argv is None else argv)
    except ConfigError as e:
        sys.exit(f"error: {e}")
    out = Path(rows[0][0].records) / rows[0][0].demo.out
    runs = out / "runs"
    todo = []
    for cfg, method in rows:
        path = record_path(runs, row_key(cfg))
        if path.exists() and features_path(cfg).is_file() and not cfg.demo.force and read_records(runs).get(
                row_key(cfg), {}).get("settings_hash") == settings_hash(cfg):
            print(f"{row_key(cfg):<28} done before ({path}); demo.force=true to redo", flush=True)
        else:
            todo.append((cfg, method))
    models = {}
    reference = Reference() if todo else None
    with tqdm(total=sum(num_images(cfg) for cfg, _ in todo), unit="img", desc="demo", smoothing=0.05) as bar:
        for cfg, method in todo:
            torch.set_num_threads(int(cfg.threads))
            spec = repr(sorted(cfg.model.items())) + repr(precision(cfg)[0])
            if spec not in models:
                try:
                    models[spec] = build_model(cfg.model, "cpu", checkpoint=cfg.checkpoint, dtype=precision(cfg)[0])
                except ConfigError as e:
                    sys.exit(f"error: {e}")
            bar.set_description(f"demo {short(row_key(cfg))}")
            record = run_row(cfg, method, models[spec], reference, bar)
            write_record(runs, record)
            bar.write(f"{short(record['key']):<16} acc {record['accuracy']:.3f}  FID {record['fid']:6.2f} "
                      f"[{record['fid_lo']:.2f}, {record['fid_hi']:.2f}]  IS {record['is']:.2f}  "
                      f"{record['flops_T'] * 1e3:6.2f} GFLOPs  {record['latency_cpu_s']:.3f} s/img")
    records = list(read_records(runs).values())
    if records:
        report(records, out, command_line(), claims_path(rows[0][0].demo.get("claims", "claims")))
        print(f"wrote {out / 'README.md'}, summary.csv, claims.md, fid_vs_flops.png, fid_vs_latency.png and grids/ "
              f"({len(records)} rows)")


if __name__ == "__main__":
    main()
