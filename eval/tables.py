"""The paper's Tables 1-5 beside our measurements.

Paper side: ``results/paper/table{N}.csv`` hold the paper's numbers as printed (see
``results/paper/README.md``). Missing cells ('-' in the paper) are empty, i.e. NaN.

Our side: one JSON file per run, anywhere under a runs directory. A run record is a dict:

Required fields
    table          1..5, or "demo" (tiny-world runs that no paper row compares with)
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

Optional: ``group`` (e.g. "Step=32") and any other field (kept, not used). ``speed`` must not
be recorded: it is derived here, as baseline/this of one metric, like the paper's.
"""
from __future__ import annotations

import json
import math
import re
from numbers import Number
from pathlib import Path

import numpy as np
import pandas as pd

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
    1: ["key", "model", "group", "method", "params"],
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
    if record["table"] not in (*TABLES, "demo"):
        raise ValueError(f"{source}: field 'table' must be 1..5 or \"demo\", got {record['table']!r}")
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
    columns = MEASURED_FIELDS + ["sources"]
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
        row["sources"] = "; ".join(group["source"].astype(str))
        rows[key] = row
    return pd.DataFrame.from_dict(rows, orient="index", columns=columns).rename_axis("key")


def baseline_key(table_no: int, key: str) -> str | None:
    """Key of the row that ``key``'s speed divides by, or None where speed is undefined."""
    if table_no not in SPEED_BASIS:
        return None
    match = re.match(r"(mar_[blh])/", key)
    if match:
        return f"{match.group(1)}/64/mar"
    if key.startswith("lightgen/"):
        return "lightgen/32/lightgen"
    if key.startswith("ref/"):
        return key  # the paper gives each reference model speed 1.00 (its own baseline)
    if table_no in (3, 4):
        return "mar_h/64/mar"  # both ablations are deltas against MAR-H at 64 steps
    return None


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
    """baseline/this of our own SPEED_BASIS metric; NaN where either is unmeasured."""
    basis = SPEED_BASIS[table_no]
    speeds = []
    for key in keys:
        base = baseline_key(table_no, key)
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


FAMILIES = {"mar": "Step reduction", "halton": "Halton", "disa": "DiSA",
            "lazymar": "LazyMAR", "gtr": "GtR"}
FAMILY_COLORS = {"MAR (64 steps)": "black", "Step reduction": "tab:gray", "Halton": "tab:purple",
                 "DiSA": "tab:blue", "LazyMAR": "tab:orange", "GtR": "tab:red"}
MODEL_NAMES = {"mar_b": "MAR-B", "mar_l": "MAR-L", "mar_h": "MAR-H"}


def _family(key: str):
    """(model slug, family name) of a MAR key like 'mar_h/step16/gtr', else None."""
    match = re.fullmatch(r"(mar_[blh])/(?:step)?(\d+)/(\w+)", str(key))
    if not match:
        return None
    model, steps, method = match.groups()
    if method == "mar" and steps == "64":
        return model, "MAR (64 steps)"
    return model, FAMILIES.get(method, method)


def plot_fid_vs_flops(df: pd.DataFrame, path) -> Path:
    """FID vs FLOPs per MAR model from ``join_with_paper(1, ...)``; paper hollow, ours filled.

    One panel per model, one colour per method family; a family's points are joined by a
    dashed (paper) or solid (ours) line in FLOPs order. Writes a PNG (Agg, no display).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

    needed = ["key", "flops_T_paper", "fid_paper", "flops_T_ours", "fid_ours"]
    absent = [c for c in needed if c not in df.columns]
    if absent:
        raise ValueError(f"plot_fid_vs_flops needs join_with_paper(1, ...) columns; missing {absent}")
    fam = df["key"].map(_family)
    data = df[fam.notna()].copy()
    data["model_slug"] = [f[0] for f in fam.dropna()]
    data["family"] = [f[1] for f in fam.dropna()]
    models = [m for m in MODEL_NAMES if m in set(data["model_slug"])]
    if not models:
        raise ValueError("no MAR rows (keys like 'mar_h/step16/gtr') to plot")

    fig = Figure(figsize=(4.5 * len(models), 4.2))
    FigureCanvasAgg(fig)
    for i, model in enumerate(models):
        ax = fig.add_subplot(1, len(models), i + 1)
        for family, rows in data[data["model_slug"] == model].groupby("family", sort=False):
            color = FAMILY_COLORS.get(family, "tab:green")
            for side, face, style in (("paper", "none", "--"), ("ours", color, "-")):
                pts = rows[[f"flops_T_{side}", f"fid_{side}"]].dropna().sort_values(f"flops_T_{side}")
                if pts.empty:
                    continue
                marker = "*" if family == "MAR (64 steps)" else "o"
                ax.plot(pts.iloc[:, 0], pts.iloc[:, 1], linestyle=style, color=color, marker=marker,
                        markerfacecolor=face, markeredgecolor=color, markersize=9 if marker == "*" else 6)
        ax.set_title(MODEL_NAMES[model])
        ax.set_xlabel("FLOPs per image (T)")
        ax.set_yscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")  # 2, 3, 10 rather than 2x10^0
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.grid(alpha=0.3, which="both")
    fig.axes[0].set_ylabel("FID (log scale)")
    handles = [Line2D([], [], color=c, marker="o", linestyle="-", label=f)
               for f, c in FAMILY_COLORS.items() if f in set(data["family"])]
    handles += [Line2D([], [], color="k", marker="o", markerfacecolor="none", linestyle="--", label="paper"),
                Line2D([], [], color="k", marker="o", linestyle="-", label="ours")]
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def _check_table_no(table_no) -> None:
    if isinstance(table_no, bool) or table_no not in TABLES:
        raise ValueError(f"table must be one of {TABLES}, got {table_no!r}")


def _type_names(types) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join(t.__name__ for t in types)
