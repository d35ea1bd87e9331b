"""The paper's Tables 1-5 beside our measurements.

Paper side: ``results/paper/table{N}.csv`` hold the paper's numbers as printed (see
``results/paper/README.md``). Missing cells ('-' in the paper) are empty, i.e. NaN.

Our side: one JSON file per run, anywhere under a runs directory. A run record is a dict:

Required fields
    table          1..5, "demo" (tiny-world runs that no paper row compares with), or "ours" (a row of
                   no table, e.g. a method counted on its own)
    key            configuration key, same key space as the paper CSVs' ``key`` column,
                   e.g. "mar_h/64/mar", "mar_h/step16/gtr", "table3/gtr_enc+gtr_diff+fts".
                   A key the paper lacks (e.g. "mar_h/step32/gtr") is listed as "ours only".
    model, method  names to show (e.g. "MAR-H", "+GtR (Ours)")
    config         the resolved model/method config (dict)
    command, git_commit, torch_version, device, dtype   provenance (str)
    batch_size, num_images                              provenance (int)

Measured fields (optional, number or null; at least one must be a number)
    flops_T                   our exact FLOPs per image in TFLOPs (2 x MACs, CFG included,
                              VAE decode excluded like the paper)
    flops_paper_convention_T  the same sampler counted the way the paper's column was
                              (REFERENCE.md section 2: 96 distinct diffusion steps)
    latency_gpu_s, latency_cpu_s   seconds per image
    fid, is                   FID / Inception Score
    single_obj, two_obj, colors, counting, position, color_attr, overall   GenEval

Optional: ``group`` (e.g. "Step=32"), ``family`` (e.g. "GtR", from the method's config),
``baseline`` (the key our speed divides by, set by the experiment, e.g. "mar_h/64/mar"), and any other
field (kept, not used). ``speed`` must not be recorded: it is derived here, as baseline/this of one
metric, like the paper's. Records are written by eval/records.py (validated here first).
"""
from __future__ import annotations

import json
import math
from numbers import Number
from pathlib import Path

import numpy as np
import pandas as pd

from eval.plots import plot_quality_vs_cost

PAPER_DIR = Path(__file__).resolve().parent.parent / "results" / "paper"
TABLES = (1, 2, 3, 4, 5)

TABLE_TITLES = {
    1: "Table 1: ImageNet 256x256 class-conditional generation (MAR-B/L/H)",
    2: "Table 2: GenEval at 512x512 (LightGen)",
    3: "Table 3: ablation of GtR and FTS (MAR-H)",
    4: "Table 4: FTS token-selection strategies (MAR-H)",
    5: "Table 5: sampling orders (MAR-H)",
}

GENEVAL_FIELDS = ["single_obj", "two_obj", "colors", "counting", "position", "color_attr", "overall"]
MEASURED_FIELDS = ["flops_T", "flops_paper_convention_T", "latency_gpu_s", "latency_cpu_s",
                   "fid", "is"] + GENEVAL_FIELDS
REQUIRED_FIELDS = {
    "table": (int, str), "key": str, "model": str, "method": str, "config": dict,
    "command": str, "git_commit": str, "torch_version": str, "device": str, "dtype": str,
    "batch_size": int, "num_images": int,
}

# Paper columns compared per table, in the paper's order ("speed" is derived, see SPEED_BASIS).
METRICS = {
    1: ["latency_gpu_s", "latency_cpu_s", "flops_T", "speed", "fid", "is"],
    2: ["latency_gpu_s", "speed", "flops_T"] + GENEVAL_FIELDS,
    3: ["latency_gpu_s", "latency_cpu_s", "flops_T", "speed", "fid", "is"],
    4: ["flops_T", "speed", "fid", "is"],
    5: ["fid", "is"],
}
# Metrics we report where the paper prints nothing (its side stays empty): Table 2 has no FLOPs column.
OURS_ONLY = {2: ["flops_T"]}
ID_COLUMNS = {
    1: ["key", "model", "group", "method", "family", "params"],
    2: ["key", "model", "group", "method", "params"],
    3: ["key", "model", "method", "gtr_encdec", "gtr_diffusion", "fts"],
    4: ["key", "model", "method"],
    5: ["key", "model", "method"],
}
# The paper's speed is baseline/this of one metric; checked against its own numbers:
# Tables 1, 3, 4 divide FLOPs (64.52/17.34 = 3.72), Table 2 divides GPU latency (1.03/0.31).
SPEED_BASIS = {1: "flops_T", 2: "latency_gpu_s", 3: "flops_T", 4: "flops_T"}

STATUS_BOTH = "paper + ours"
STATUS_PAPER = "paper only"
STATUS_OURS = "ours only (not in paper)"


def load_paper_table(table_no: int) -> pd.DataFrame:
    """Read the paper's Table ``table_no`` (1..5) from results/paper; '-' cells are NaN."""
    _check_table_no(table_no)
    path = PAPER_DIR / f"table{table_no}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"paper transcription not found: {path}")
    return pd.read_csv(path, dtype={"params": str})


def validate_record(record, source: str) -> dict:
    """Check one run record against the schema above; errors name ``source``."""
    if not isinstance(record, dict):
        raise ValueError(f"{source}: a run record must be a JSON object, got {type(record).__name__}")
    missing = [f for f in REQUIRED_FIELDS if f not in record]
    if missing:
        raise ValueError(f"{source}: missing required field(s): {', '.join(missing)}")
    for field, types in REQUIRED_FIELDS.items():
        value = record[field]
        # bool is an int subclass; a flag where a count belongs is a bug in the writer.
        if isinstance(value, bool) or not isinstance(value, types):
            raise ValueError(f"{source}: field '{field}' has type {type(value).__name__}, "
                             f"expected {_type_names(types)}")
    if record["table"] not in (*TABLES, "demo", "ours"):
        raise ValueError(f"{source}: field 'table' must be 1..5, \"demo\" or \"ours\", got {record['table']!r}")
    if not record["key"].strip():
        raise ValueError(f"{source}: field 'key' is empty")
    if "speed" in record:
        raise ValueError(f"{source}: 'speed' is derived from the measurements, do not record it")
    for field in MEASURED_FIELDS:
        value = record.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, Number)
                                  or math.isnan(value)):
            raise ValueError(f"{source}: measured field '{field}' must be a number or null, got {value!r}")
    if all(record.get(f) is None for f in MEASURED_FIELDS):
        raise ValueError(f"{source}: no measurement; expected at least one of {', '.join(MEASURED_FIELDS)}")
    return record


def load_runs(runs_dir) -> pd.DataFrame:
    """Read and validate every ``*.json`` run record under ``runs_dir`` (recursively).

    Returns one row per record, with all schema columns (absent measurements NaN) and
    ``source`` (the file). An existing directory without records gives an empty frame.
    """
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"runs directory not found: {runs_dir}")
    records = []
    for path in sorted(runs_dir.rglob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not valid JSON: {err}") from err
        record = dict(validate_record(record, str(path)))
        record["source"] = str(path)
        records.append(record)
    columns = list(REQUIRED_FIELDS) + MEASURED_FIELDS + ["group", "source"]
    df = pd.DataFrame(records)
    for col in columns:
        if col not in df.columns:
            df[col] = None
    extra = [c for c in df.columns if c not in columns]
    df = df[columns + extra]
    df[MEASURED_FIELDS] = df[MEASURED_FIELDS].astype(float)
    return df


def _ours_by_key(runs: pd.DataFrame | None) -> pd.DataFrame:
    """One row of measurements per key, merging records of the same key field by field.

    Two records of one key may measure different things (a GPU latency run, an FID run);
    two different values of the same field are refused rather than silently picked.
    """
    columns = MEASURED_FIELDS + ["baseline", "sources"]
    if runs is None or len(runs) == 0:
        return pd.DataFrame(columns=columns, dtype=object).rename_axis("key")
    rows = {}
    for key, group in runs.groupby("key", sort=False):
        row = {}
        for field in MEASURED_FIELDS:
            values = group[field].dropna()
            if values.nunique() > 1:
                files = ", ".join(group.loc[values.index, "source"].astype(str))
                raise ValueError(f"key '{key}': conflicting values of '{field}' "
                                 f"{sorted(values.unique())} in {files}; keep one record")
            row[field] = values.iloc[0] if len(values) else math.nan
        baselines = group["baseline"].dropna() if "baseline" in group else []
        row["baseline"] = baselines.iloc[0] if len(baselines) else None
        row["sources"] = "; ".join(group["source"].astype(str))
        rows[key] = row
    return pd.DataFrame.from_dict(rows, orient="index", columns=columns).rename_axis("key")


def join_with_paper(table_no: int, runs_df: pd.DataFrame | None) -> pd.DataFrame:
    """Paper row by row beside ours: ``<metric>_paper``, ``<metric>_ours``, ``<metric>_delta``.

    Paper rows are matched to runs by ``key`` (from any table but "demo"). Runs whose ``table`` is
    ``table_no`` and whose key the paper lacks are appended with status "ours only".
    ``speed_ours`` is baseline/this of our own ``speed_basis`` metric. Where the table has
    FLOPs, ``flops_paper_convention_T_ours``/``_delta`` compare our paper-convention count
    with the paper's column too. Nothing missing is filled: no value gives NaN.
    """
    paper = load_paper_table(table_no)
    if runs_df is not None:
        # Demo runs are tiny-world models: never set beside the paper, whatever their key.
        runs_df = runs_df[runs_df["table"].astype(str) != "demo"]
    ours = _ours_by_key(runs_df)
    paper_keys = set(paper["key"])
    ids = ID_COLUMNS[table_no]
    rows = paper[ids].copy()
    if runs_df is not None and len(runs_df):
        mine = runs_df[runs_df["table"].astype(str) == str(table_no)]
        extra = mine[~mine["key"].isin(paper_keys)].drop_duplicates("key")
        if len(extra):
            rows = pd.concat([rows, extra.reindex(columns=ids)], ignore_index=True)
    in_ours = rows["key"].isin(ours.index)
    rows["status"] = [STATUS_BOTH if o else STATUS_PAPER for o in in_ours]
    rows.loc[len(paper):, "status"] = STATUS_OURS
    paper_vals = paper.set_index("key").reindex(rows["key"])
    ours_vals = ours.reindex(rows["key"])
    basis = SPEED_BASIS.get(table_no)

    out = rows.copy()
    for metric in METRICS[table_no]:
        if metric in OURS_ONLY.get(table_no, ()):
            p = np.full(len(paper_vals), np.nan)
        else:
            p = paper_vals[metric].astype(float).to_numpy()
        if metric == "speed":
            o = _our_speed(table_no, rows["key"], ours).to_numpy()
        else:
            o = ours_vals[metric].astype(float).to_numpy()
        out[f"{metric}_paper"] = p
        out[f"{metric}_ours"] = o
        out[f"{metric}_delta"] = (o - p).round(6)  # drop float noise like 0.04999999
        if metric == "flops_T" and metric not in OURS_ONLY.get(table_no, ()):  # the paper's convention
            conv = ours_vals["flops_paper_convention_T"].astype(float).to_numpy()
            out["flops_paper_convention_T_ours"] = conv
            out["flops_paper_convention_T_delta"] = (conv - p).round(6)
        if metric == "speed":
            out["speed_basis"] = basis
    out["sources"] = ours_vals["sources"].to_numpy()
    return out.reset_index(drop=True)


def _our_speed(table_no: int, keys: pd.Series, ours: pd.DataFrame) -> pd.Series:
    """baseline/this of our own SPEED_BASIS metric (the baseline: the key the row's record names, set by
    its experiment); NaN where either is unmeasured."""
    basis = SPEED_BASIS[table_no]
    speeds = []
    for key in keys:
        base = ours["baseline"].get(key) if key in ours.index else None
        this = ours[basis].get(key, math.nan) if key in ours.index else math.nan
        ref = ours[basis].get(base, math.nan) if base in ours.index else math.nan
        speeds.append(ref / this if this and not math.isnan(this) else math.nan)
    return pd.Series(speeds, dtype=float)


def ours_table(runs_df: pd.DataFrame, table="demo") -> pd.DataFrame:
    """Our runs of one ``table`` value (e.g. "demo") alone: ids, measured fields, provenance."""
    mine = runs_df[runs_df["table"].astype(str) == str(table)]
    measured = [f for f in MEASURED_FIELDS if mine[f].notna().any()]
    cols = ["key", "model", "method"] + measured + ["device", "dtype", "num_images", "source"]
    return mine[cols].reset_index(drop=True)


def _format_cell(value, signed: bool = False) -> str:
    """Markdown text of one cell: NaN -> '–', bools -> ✓/✗, floats to <= 3 decimals."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return "✓" if value else "✗"
    if value is None or (isinstance(value, Number) and math.isnan(value)) or value is pd.NA:
        return "–"
    if isinstance(value, Number) and not isinstance(value, int):
        value = round(float(value), 3) + 0.0  # + 0.0 turns -0.0 into 0.0
        text = f"{value:.3f}".rstrip("0").rstrip(".")
        return f"+{text}" if signed and value > 0 else text
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub markdown table of ``df`` (no tabulate); ``*_delta`` columns get a sign."""
    header = "| " + " | ".join(str(c) for c in df.columns) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    lines = [header, rule]
    for row in df.itertuples(index=False):
        cells = [_format_cell(v, signed=str(c).endswith("_delta")) for c, v in zip(df.columns, row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


MD_OMIT = ("sources", "speed_basis")  # long or constant: kept in the CSV, said in the notes


def write_table(df: pd.DataFrame, out_dir, name: str, title: str = "", notes=()) -> tuple[Path, Path]:
    """Write ``name.md`` (title, notes, table less MD_OMIT) and ``name.csv`` (all columns,
    missing = empty cell)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, csv = out_dir / f"{name}.md", out_dir / f"{name}.csv"
    head = (f"# {title}\n\n" if title else "") + "".join(f"{n}\n\n" for n in notes)
    md.write_text(head + to_markdown(df.drop(columns=[c for c in MD_OMIT if c in df.columns])),
                  encoding="utf-8")
    df.to_csv(csv, index=False, na_rep="")
    return md, csv


def plot_fid_vs_flops(df: pd.DataFrame, path) -> Path:
    """FID vs FLOPs of Table 1 (``join_with_paper(1, ...)``), one panel per model; the paper's points
    hollow, ours filled, each labelled with its group; a family's rows of the paper's table are one
    sweep (joined), rows only we have stand alone. Colours: eval.plots (one per family, everywhere)."""
    needed = ["key", "model", "family", "group", "flops_T_paper", "fid_paper", "flops_T_ours", "fid_ours", "status"]
    absent = [c for c in needed if c not in df.columns]
    if absent:
        raise ValueError(f"plot_fid_vs_flops needs join_with_paper(1, ...) columns; missing {absent}")
    rows = df[df["family"].notna() & (df["family"] != "reference")]
    points = []
    for side in ("paper", "ours"):
        for _, r in rows.iterrows():
            in_paper = r["status"] != STATUS_OURS
            points.append({"panel": r["model"], "family": r["family"], "side": side,
                           "sweep": r["family"] if in_paper else "",
                           "label": r["group"] if isinstance(r["group"], str) else r["key"].split("/", 1)[-1],
                           "flops": r[f"flops_T_{side}"], "fid": r[f"fid_{side}"]})
    points = pd.DataFrame(points)
    if points.dropna(subset=["flops", "fid"]).empty:
        raise ValueError("no Table 1 point with both FLOPs and FID to plot")
    return plot_quality_vs_cost(points, path, x="flops", y="fid", xlabel="FLOPs per image (T)", ylabel="FID (log)",
                                log_y=True, title="paper: hollow, dashed; ours: filled, solid (scripts/tables.py)")


def _check_table_no(table_no) -> None:
    if isinstance(table_no, bool) or table_no not in TABLES:
        raise ValueError(f"table must be one of {TABLES}, got {table_no!r}")


def _type_names(types) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join(t.__name__ for t in types)


# ---------------------------------------------------------------- FLOPs beside the paper
def paper_flops() -> dict:
    """{key: FLOPs (T)} of the paper's Tables 1, 3, 4 as printed."""
    values = {}
    for n in (1, 3, 4):
        table = load_paper_table(n)
        values.update({k: float(v) for k, v in zip(table["key"], table["flops_T"]) if not pd.isna(v)})
    return values


def reference_flops() -> dict:
    """{key: (T, which count it is, source)}: FLOPs counted with the official code (results/paper/
    reference_flops.csv, from REFERENCE.md sections 2 and 4b)."""
    table = pd.read_csv(PAPER_DIR / "reference_flops.csv")
    return {r.key: (r.flops_T, r.compare, r.source) for r in table.itertuples()}


def method_tag(record):
    """The method's tag in a record's config ("" in records of older versions, which name the method only)."""
    method = record["config"].get("method")
    return method.get("tag", "") if isinstance(method, dict) else ""


def flops_markdown(records, command, sd35_vae_T=None) -> str:
    """The FLOPs report: every record (eval/records.py, written by scripts/flops.py) beside the paper's
    number for its `compare_with` row and the official-code count, then Table 2's FLOPs ratios beside the
    paper's speed (a GPU latency ratio)."""
    paper, reference = paper_flops(), reference_flops()

    def fmt(v, digits=3, signed=False):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "–"
        return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"
    lines = ["# FLOPs per image: ours vs the paper", "",
             f"`{command}` (eval/cost.py: the real sampler, one image, CFG batch 2, meta device, FlopCounterMode, "
             "FLOPs = 2 x MACs). Rows: the experiments' rows (configs/experiment/).", "",
             "- `paper conv.`: enc+dec + head counted with timesteps clipped at 950 (\"100\" steps -> 96 distinct), "
             "VAE excluded: the paper's convention (REFERENCE.md 2, 4b). `gap` = paper conv. - paper.",
             "- `exact`: the method as configured (MAR: 100 distinct steps), VAE excluded; `exact gap %` vs the paper.",
             "- `ref`: the count of the official code (results/paper/reference_flops.csv; compare with `exact T` or "
             "`paper conv. T` as it says).",
             "- `compare with`: the paper row; keys differ where our configuration is not the row's label.", "",
             "| table | key | compare with | model | method | exact T | paper conv. T | paper T | gap T | gap % "
             "| exact gap % | ref T | enc+dec T | head T | head conv. T | VAE T |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        p = paper.get(r["compare_with"])
        conv, exact = r["flops_paper_convention_T"], r["flops_T"]
        ref = reference.get(r["key"])
        tag = method_tag(r)
        lines.append("| " + " | ".join([
            str(r["table"]), r["key"], r["compare_with"] or "–", r["model"], f"{r['method']} ({tag})", fmt(exact),
            fmt(conv), fmt(p, 2), fmt(None if p is None else conv - p, signed=True),
            fmt(None if p is None else 100 * (conv - p) / p, 2, True),
            fmt(None if p is None else 100 * (exact - p) / p, 2, True),
            "–" if ref is None else f"{ref[0]} ({ref[1]})", fmt(r["encdec_T"]), fmt(r["head_T"]),
            fmt(r["head_paper_convention_T"]), fmt(r.get("vae_T"))]) + " |")
    table2 = [r for r in records if r["table"] == 2]
    if table2:
        speeds = load_paper_table(2).set_index("key")["speed"].dropna().to_dict()
        base = next((r["flops_T"] for r in table2 if r["key"] == r.get("baseline")), None)
        lines += ["", "## Table 2 (LightGen 512 px): FLOPs beside the paper's speed", "",
                  "The paper prints no FLOPs for Table 2; its `speed` is a GPU latency ratio against \"LightGen, 32\". "
                  "Ours: exact FLOPs per image (cfg 4.0 constant, 50 diffusion steps, SD3.5 VAE and T5-XXL excluded) "
                  "and their ratio to our LightGen 32 row: a FLOPs ratio, not a latency ratio."
                  + ("" if sd35_vae_T is None else f" Decoding one 512 px image with SD3.5's VAE adds {sd35_vae_T:.3f} T "
                     "(counted on meta); the T5-XXL prompt encoding (once per prompt) is not counted."), "",
                  "| key | method | exact T | enc+dec+text T | head T | FLOPs ratio (ours) | paper speed (latency) |",
                  "|---|---|---|---|---|---|---|"]
        for r in table2:
            ratio = None if base is None else base / r["flops_T"]
            lines.append(f"| {r['key']} | {r['method']} ({method_tag(r)}) | {fmt(r['flops_T'])} | "
                         f"{fmt(r['encdec_T'])} | {fmt(r['head_T'])} | {fmt(ratio, 2)} | {fmt(speeds.get(r['key']), 2)} |")
    return "\n".join(lines) + "\n"
