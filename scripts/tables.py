"""The paper's Tables 1-5 beside our run records, with deltas, and the FID-vs-FLOPs plot.

    python scripts/tables.py                    # <records>/runs/**.json -> <records>/table{1..5}.md/.csv (make tables)
    python scripts/tables.py records=results    # the committed tables (make results)

Reads every run record under <records>/runs/ (flops, latency, evaluate.py's scores; schema: eval/tables.py)
and writes <records>/table{1..5}.md and .csv (paper, ours, delta = ours - paper) and fid_vs_flops.png
(when some Table 1 row has both FLOPs and FID). It takes the overrides scripts/sample.py takes.
"""
import sys
from pathlib import Path

from eval import tables as T
from gtr.config import ConfigError, compose, split_argv


def main(argv=None):
    overrides, multirun = split_argv(sys.argv[1:] if argv is None else argv)
    try:
        cfg = compose(overrides)[0]
    except ConfigError as e:
        sys.exit(f"error: {e}")
    out, runs_dir = Path(cfg.records), Path(cfg.records) / "runs"
    runs = T.load_runs(runs_dir) if runs_dir.is_dir() else None
    if runs is None or runs.empty:
        print(f"no run records under {runs_dir}: writing the paper's tables with our columns empty")
        runs = None
    else:
        print(f"{len(runs)} run record(s) from {runs_dir}")
    for n in T.TABLES:
        df = T.join_with_paper(n, runs)
        notes = ["`*_paper`: transcribed from the paper (results/paper). `*_ours`: measured by us. "
                 "`*_delta` = ours - paper. – = missing (never filled)."]
        if n in T.SPEED_BASIS:
            notes.append(f"speed = baseline / this, of `{T.SPEED_BASIS[n]}` (the paper's own basis for "
                         f"this table); ours divides our own measurements (the baseline each record names).")
        if runs is None:
            notes.append("No run records were found: our columns are empty.")
        md, _ = T.write_table(df, out, f"table{n}", title=T.TABLE_TITLES[n], notes=notes)
        counts = df["status"].value_counts()
        print(f"{md}: {len(df)} rows ({', '.join(f'{v} {k}' for k, v in counts.items())})")
    try:
        print(f"{T.plot_fid_vs_flops(T.join_with_paper(1, runs), out / 'fid_vs_flops.png')}: FID vs FLOPs")
    except ValueError as e:
        print(f"no FID-vs-FLOPs plot: {e}")


if __name__ == "__main__":
    main()
