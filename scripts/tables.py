"""Write the paper's Tables 1-5 beside our runs, and the FID-vs-FLOPs plot.

    python scripts/tables.py --runs results/runs --out results/

Writes <out>/table{1..5}.md and .csv (paper, ours, delta = ours - paper), <out>/demo.md/.csv
when there are "demo" runs, and <out>/fid_vs_flops.png. Run records: see eval/tables.py.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from eval import tables as T  # noqa: E402


def main(argv=None) -> int:
    """Build every table; with no run records, the paper's tables with our columns empty."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="results/runs", help="directory of run records (*.json)")
    parser.add_argument("--out", default="results", help="output directory")
    args = parser.parse_args(argv)

    runs_dir = Path(args.runs)
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
                         f"this table); ours uses our own measurement of the baseline.")
        if runs is None:
            notes.append("No run records were found: our columns are empty.")
        md, _ = T.write_table(df, args.out, f"table{n}", title=T.TABLE_TITLES[n], notes=notes)
        counts = df["status"].value_counts()
        print(f"{md}: {len(df)} rows ({', '.join(f'{v} {k}' for k, v in counts.items())})")

    if runs is not None and (runs["table"].astype(str) == "demo").any():
        md, _ = T.write_table(T.ours_table(runs, "demo"), args.out, "demo",
                              title="Demo runs (ours only; no paper counterpart)")
        print(f"{md}: demo runs")

    png = T.plot_fid_vs_flops(T.join_with_paper(1, runs), Path(args.out) / "fid_vs_flops.png")
    print(f"{png}: FID vs FLOPs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
