"""FLOPs of every row of the paper's Tables 1, 2 (LightGen), 3 and 4, counted on CPU without weights (meta device).

    python scripts/flops.py                       # all rows -> results/flops/, results/runs/flops/
    python scripts/flops.py --models mar_b --only step16

Each row runs the real sampler for one image (CFG batch 2) under FlopCounterMode (eval/cost.py) and is
set beside the paper's number: `flops_paper_convention_T` is the comparable one (head counted with
timesteps clipped at 950, VAE excluded: REFERENCE.md sections 2 and 4b), `flops_T` the exact count of
the method as configured. Nothing is fitted: a gap is a finding.

Table 2 has no FLOPs column in the paper (its speed is a GPU latency ratio): its rows (LightGen at 512 px,
cfg 4.0 constant, 50 diffusion steps, T5 and VAE excluded) get their FLOPs ratio to "LightGen, 32" set
beside the paper's speed, in a section of their own.

Keys follow configs/experiment/table1/*.yaml and table2/3/4.yaml, so these records join the sampling
runs: `mar_x/step16/disa` is DiSA at 24 AR steps and `mar_x/step8/disa` at 16 (what the paper's FLOPs
imply), `mar_x/step16/gtr` is GtR at 20 steps (16, 3, 1) with cosine counts and `mar_x/step8/gtr` at
9 steps (6, 2, 1) with the 950 clip (REFERENCE 4b). Rows the paper lacks get keys of their own
("ours only"): the row labels taken literally (`step16/disa-it16`, `step8/disa-it8`), GtR at the
paper's stated 24 + 6 + 2 steps (`step32/gtr`), LazyMAR at 64 steps, Table 3 at the stated steps.
`compare_with` names the paper row each is set beside.
"""
import argparse
import csv
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout, uninstalled

from eval.cost import count_flops  # noqa: E402
from gtr.build import git_commit  # noqa: E402
from gtr.gtr import StageSteps, gtr  # noqa: E402
from gtr.method import ConstantSteps, CosineCounts, Method, RandomOrder, mar  # noqa: E402

MODELS = {"mar_b": ("mar_base", "MAR-B"), "mar_l": ("mar_large", "MAR-L"), "mar_h": ("mar_huge", "MAR-H")}
MAR_CFG = {"mar_base": 2.9, "mar_large": 3.0, "mar_huge": 3.2}  # MAR README (guidance does not change FLOPs)
LIGHTGEN = ("lightgen", "LightGen")  # Table 2: cfg 4.0 constant (configs/model/lightgen.yaml)

# REFERENCE.md's own counts: section 2 (official code, exact, VAE excluded: compare with flops_T), 4b
# (DiSA: clip 950 is its own setting, so exact = paper convention; LazyMAR: exact counts; GtR as stated).
REFERENCE_T = {
    "mar_b/64/mar": (14.653, "2, exact"), "mar_l/64/mar": (33.070, "2, exact"), "mar_h/64/mar": (65.177, "2, exact"),
    "mar_b/step16/mar": (6.369, "2, exact"), "mar_h/step16/mar": (27.733, "2, exact"),
    "mar_b/step8/mar": (4.989, "2, exact"), "mar_h/step8/mar": (21.499, "2, exact"),
    "mar_b/step16/disa": (4.827, "4b"), "mar_l/step16/disa": (11.041, "4b"), "mar_h/step16/disa": (21.605, "4b"),
    "mar_b/step8/disa": (3.465, "4b"), "mar_l/step8/disa": (7.856, "4b"), "mar_h/step8/disa": (15.446, "4b"),
    "mar_b/step32/gtr": (5.98, "4b"), "mar_l/step32/gtr": (13.68, "4b"), "mar_h/step32/gtr": (26.78, "4b"),
    "mar_b/step16/lazymar": (2.78, "4b, exact"), "mar_l/step16/lazymar": (6.39, "4b, exact"),
    "mar_h/step16/lazymar": (13.25, "4b, exact"), "mar_b/step8/lazymar": (2.13, "4b, exact"),
    "mar_l/step8/lazymar": (4.88, "4b, exact"), "mar_h/step8/lazymar": (10.32, "4b, exact"),
}

GTR_T1B = dict(steps=(16, 3, 1), intra_stage="cosine")   # configs/method/gtr_t1b.yaml
GTR_FAST = dict(steps=(6, 2, 1), intra_stage="uniform", clip_timesteps=950)  # configs/method/gtr_fast.yaml


def row(table, key, compare_with, method_label, config, build, clip=None, group=""):
    return dict(table=table, key=key, compare_with=compare_with, method=method_label, config=config,
                build=build, clip=clip, group=group)


def table1_rows(m):
    """Table 1 rows of model key m (mar_b / mar_l / mar_h). Baselines not written yet are skipped."""
    rows = [
        row(1, f"{m}/64/mar", f"{m}/64/mar", "MAR (64)", dict(method="mar", num_iter=64), lambda: mar(64),
            group="Step=64"),
        row(1, f"{m}/step16/mar", f"{m}/step16/mar", "+Step=16", dict(method="step16", num_iter=16),
            lambda: mar(16), group="Step=16"),
        row(1, f"{m}/step8/mar", f"{m}/step8/mar", "+Step=8", dict(method="step8", num_iter=8),
            lambda: mar(8), group="Step=8"),
    ]
    try:
        from baselines.halton import halton
        for n in (16, 8):
            rows.append(row(1, f"{m}/step{n}/halton", f"{m}/step{n}/halton", "+Halton",
                            dict(method="halton", num_iter=n, schedule="arccos"),
                            lambda n=n: halton(n, "arccos"), group=f"Step={n}"))
    except ImportError as err:
        print(f"note: skipping Halton rows ({err})")
    try:
        from baselines.disa import DISA_CLIP_TIMESTEPS, disa
        # (key, paper row, AR steps): the paper's FLOPs imply 24 / 16 AR steps; also the labels literally.
        for key, paper, n in (("step16/disa", "step16/disa", 24), ("step8/disa", "step8/disa", 16),
                              ("step16/disa-it16", "step16/disa", 16), ("step8/disa-it8", "step8/disa", 8)):
            rows.append(row(1, f"{m}/{key}", f"{m}/{paper}", f"+DiSA ({n} AR steps)",
                            dict(method="disa", num_iter=n, upper=50, lower=5, strategy="linear",
                                 clip_timesteps=DISA_CLIP_TIMESTEPS),
                            lambda n=n: disa(n, 50, 5, "linear"), clip=DISA_CLIP_TIMESTEPS,
                            group=paper.split("/")[0].replace("step", "Step=")))
    except ImportError as err:
        print(f"note: skipping DiSA rows ({err})")
    try:
        from baselines.lazymar import lazymar
        for key, paper, n in (("step16/lazymar", "step16/lazymar", 16), ("step8/lazymar", "step8/lazymar", 8),
                              ("64/lazymar", "", 64)):
            rows.append(row(1, f"{m}/{key}", f"{m}/{paper}", f"+LazyMAR ({n} AR steps)",
                            dict(method="lazymar", num_iter=n), lambda n=n: lazymar(n),
                            group=f"Step={n}"))
    except ImportError as err:
        print(f"note: skipping LazyMAR rows ({err})")
    rows += [
        row(1, f"{m}/step16/gtr", f"{m}/step16/gtr", "+GtR (16,3,1) cosine",
            dict(method="gtr_t1b", stages=3, stage_steps=[16, 3, 1], intra_stage="cosine"),
            lambda: gtr(**GTR_T1B), group="Step=16"),
        row(1, f"{m}/step8/gtr", f"{m}/step8/gtr", "+GtR (6,2,1) uniform, clip 950",
            dict(method="gtr_fast", stages=3, stage_steps=[6, 2, 1], intra_stage="uniform", clip_timesteps=950),
            lambda: gtr(**GTR_FAST), clip=950, group="Step=8"),
        row(1, f"{m}/step32/gtr", f"{m}/step16/gtr", "+GtR as stated (24+6+2)",
            dict(method="gtr", stages=3, rates=[2.67, 10.67, 64.0]), lambda: gtr(), group="Step=32"),
    ]
    return rows


def gtr_diff(num_iter=64, fts="none"):
    """Table 3 GtR-dagger: MAR's order and counts, GtR's stage-aware diffusion steps (method/gtr_diff.yaml)."""
    return Method(RandomOrder(), CosineCounts(num_iter), StageSteps(fts=fts), name="gtr_diff")


def gtr_enc(**counts):
    """Table 3 GtR*: GtR's order and stage counts, MAR's 100 diffusion steps (method/gtr_enc.yaml)."""
    return dataclasses.replace(gtr(**counts), steps=ConstantSteps(100), name="gtr_enc")


def table3_rows():
    """Table 3 (MAR-H) at the Table-1 budget (as configs/experiment/table3.yaml), and at the stated steps."""
    rows = []
    for suffix, counts, note in (("", GTR_T1B, "(16,3,1) cosine"), ("/s32", {}, "24+6+2 as stated")):
        rows += [
            row(3, f"table3/gtr_enc{suffix}", "table3/gtr_enc", f"GtR* {note}",
                dict(method="gtr_enc", **counts), lambda c=counts: gtr_enc(**c)),
            row(3, f"table3/gtr_enc+gtr_diff{suffix}", "table3/gtr_enc+gtr_diff", f"GtR* + GtR† {note}",
                dict(method="gtr_nofts", fts="none", **counts), lambda c=counts: gtr(fts="none", **c)),
            row(3, f"table3/gtr_enc+gtr_diff+fts{suffix}", "table3/gtr_enc+gtr_diff+fts",
                f"GtR* + GtR† + FTS {note}", dict(method="gtr", **counts), lambda c=counts: gtr(**c)),
        ]
    rows.insert(1, row(3, "table3/gtr_diff", "table3/gtr_diff", "GtR† (MAR 64 steps, stage diffusion)",
                       dict(method="gtr_diff", num_iter=64, fts="none"), lambda: gtr_diff(64)))
    return rows


def table4_rows():
    """Table 4 (MAR-H): which reconstruction tokens get T_detail, at the Table-1 budget (table4.yaml)."""
    return [row(4, f"table4/{key}", f"table4/{key}", label, dict(method=name, fts=fts, **GTR_T1B),
                lambda fts=fts: gtr(fts=fts, **GTR_T1B))
            for key, label, name, fts in (("random", "+Random", "fts_random", "random"),
                                          ("low_freq", "+Low-Freq.", "fts_low", "low"),
                                          ("full_enhanced", "+Full-Enhanced", "fts_full", "all"),
                                          ("high_freq", "+High-Freq. (FTS)", "gtr", "high"))]


LIGHTGEN_GTR = dict(stages=4, rates=(16, 42.6, 85.3, 256))  # configs/method/gtr_lightgen.yaml (paper 4.1)


def table2_rows():
    """Table 2 (LightGen, 512 px, cfg 4.0 constant, 50 diffusion steps) as configs/experiment/table2/. The
    paper gives no FLOPs for it, only a speed (a GPU latency ratio): the markdown sets our FLOPs ratio
    beside it."""
    from baselines.lazymar import lazymar
    rows = [row(2, "lightgen/32/lightgen", "lightgen/32/lightgen", "LightGen, 32",
                dict(method="mar", num_iter=32, diffusion_steps=50), lambda: mar(32, 50), group="Step=32")]
    for n in (16, 12):
        gtr_cfg = dict(LIGHTGEN_GTR) if n == 16 else dict(stages=4, steps=(6, 2, 2, 2))
        rows += [
            row(2, f"lightgen/step{n}/lightgen", f"lightgen/step{n}/lightgen", f"+Step={n}",
                dict(method="mar", num_iter=n, diffusion_steps=50), lambda n=n: mar(n, 50), group=f"Step={n}"),
            row(2, f"lightgen/step{n}/lazymar", f"lightgen/step{n}/lazymar", f"+LazyMAR ({n} AR steps)",
                dict(method="lazymar", num_iter=n, diffusion_steps=50), lambda n=n: lazymar(n, 50),
                group=f"Step={n}"),
            row(2, f"lightgen/step{n}/gtr", f"lightgen/step{n}/gtr",
                "+GtR K=4 " + ("(8,3,3,2) paper rates" if n == 16 else "(6,2,2,2)"),
                dict(method="gtr_lightgen", **gtr_cfg), lambda c=gtr_cfg: gtr(**c), group=f"Step={n}"),
        ]
    return rows


def sd35_vae_decode_T():
    """TFLOPs of decoding one 512 px image (16 x 64 x 64 latents) with SD3.5's VAE, on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode
    from eval.cost import CUSTOM_FLOPS
    from gtr.models.t2i import build_sd_vae
    vae = build_sd_vae("meta")
    with FlopCounterMode(display=False, custom_mapping=CUSTOM_FLOPS) as counter:
        vae.decode(torch.empty(1, 16, 64, 64, device="meta"))
    return counter.get_total_flops() / 1e12


def paper_speeds(table=2):
    """{key: speed} of a paper table (Table 2's is a GPU latency ratio)."""
    with open(ROOT / "results" / "paper" / f"table{table}.csv", newline="") as f:
        return {r["key"]: float(r["speed"]) for r in csv.DictReader(f) if r.get("speed")}


def paper_values():
    """{key: FLOPs} from results/paper/table{1,3,4}.csv (the paper's numbers as printed)."""
    values = {}
    for n in (1, 3, 4):
        with open(ROOT / "results" / "paper" / f"table{n}.csv", newline="") as f:
            for r in csv.DictReader(f):
                if r["flops_T"]:
                    values[r["key"]] = float(r["flops_T"])
    return values


COLUMNS = ["table", "key", "compare_with", "model", "method", "config", "flops_T", "flops_paper_convention_T",
           "paper_flops_T", "gap_T", "gap_pct", "exact_gap_pct", "reference_T", "reference_src",
           "encdec_T", "head_T", "head_paper_convention_T", "vae_T", "seconds"]


def fmt(v, digits=3):
    if v is None or v == "":
        return "–"
    if isinstance(v, float):
        return f"{v:+.2f}" if digits == "pct" else f"{v:.{digits}f}"
    return str(v)


def write_markdown(path, results, command):
    lines = ["# FLOPs per image: ours vs the paper", "",
             f"`{command}` (eval/cost.py: real sampler, one image, CFG batch 2, meta device, FlopCounterMode, "
             "FLOPs = 2 x MACs).", "",
             "- `paper conv.`: enc+dec + head counted with timesteps clipped at 950 (\"100\" steps -> 96 distinct), "
             "VAE excluded: the paper's convention (REFERENCE.md 2, 4b). `gap` = paper conv. - paper.",
             "- `exact`: the method as configured (MAR: 100 distinct steps), VAE excluded; `exact gap %` vs the paper.",
             "- `ref`: REFERENCE.md's own count (section 2 or 4b; \"exact\": compare with `exact T`, else with `paper conv. T`).",
             "- `compare with`: the paper row; keys differ where our configuration is not the row's label "
             "(see scripts/flops.py).", "",
             "| table | key | compare with | model | method | exact T | paper conv. T | paper T | gap T | gap % "
             "| exact gap % | ref T (sec.) | enc+dec T | head T | head conv. T | VAE T |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        ref = "–" if r["reference_T"] is None else f"{r['reference_T']} ({r['reference_src']})"
        lines.append("| " + " | ".join([
            str(r["table"]), r["key"], r["compare_with"], r["model"], r["method"], fmt(r["flops_T"]),
            fmt(r["flops_paper_convention_T"]), fmt(r["paper_flops_T"], 2), fmt(r["gap_T"]),
            fmt(r["gap_pct"], "pct"), fmt(r["exact_gap_pct"], "pct"), ref, fmt(r["encdec_T"]), fmt(r["head_T"]),
            fmt(r["head_paper_convention_T"]), fmt(r["vae_T"])]) + " |")
    table2 = [r for r in results if r["table"] == 2]
    if table2:
        vae_T = sd35_vae_decode_T()
        speeds = paper_speeds(2)
        base = next((r["flops_T"] for r in table2 if r["key"] == "lightgen/32/lightgen"), None)
        lines += ["", "## Table 2 (LightGen 512 px): FLOPs beside the paper's speed", "",
                  "The paper prints no FLOPs for Table 2; its `speed` is a GPU latency ratio against \"LightGen, 32\". "
                  "Ours: exact FLOPs per image (cfg 4.0 constant, 50 diffusion steps, SD3.5 VAE and T5-XXL excluded) "
                  "and their ratio to our LightGen 32 row: a FLOPs ratio, not a latency ratio. Decoding one 512 px "
                  f"image with SD3.5's VAE adds {vae_T:.3f} T (counted on meta); the T5-XXL prompt encoding (once per "
                  "prompt) is not counted (its meta forward calls .item()).", "",
                  "| key | method | exact T | enc+dec+text T | head T | FLOPs ratio (ours) | paper speed (latency) |",
                  "|---|---|---|---|---|---|---|"]
        for r in table2:
            ratio = "–" if base is None else f"{base / r['flops_T']:.2f}"
            paper = speeds.get(r["key"])
            lines.append(f"| {r['key']} | {r['method']} | {fmt(r['flops_T'])} | {fmt(r['encdec_T'])} | "
                         f"{fmt(r['head_T'])} | {ratio} | {'–' if paper is None else f'{paper:.2f}'} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mar_b,mar_l,mar_h", help="comma list of mar_b, mar_l, mar_h")
    parser.add_argument("--tables", default="1,2,3,4", help="comma list of tables (1, 2, 3, 4)")
    parser.add_argument("--only", default="", help="keep rows whose key contains this text")
    parser.add_argument("--out", default=str(ROOT / "results" / "flops"), help="folder for flops.csv / flops.md")
    parser.add_argument("--runs", default=str(ROOT / "results" / "runs" / "flops"), help="folder for run records")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    command = "python scripts/flops.py" + ("" if argv is None and len(sys.argv) == 1 else
                                           " " + " ".join(sys.argv[1:] if argv is None else argv))

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {sorted(MODELS)}")
    tables = {int(t) for t in args.tables.split(",") if t.strip()}
    jobs = []
    if 1 in tables:
        jobs += [(m, r) for m in models for r in table1_rows(m)]
    if 3 in tables and "mar_h" in models:
        jobs += [("mar_h", r) for r in table3_rows()]
    if 4 in tables and "mar_h" in models:
        jobs += [("mar_h", r) for r in table4_rows()]
    if 2 in tables:
        jobs += [("lightgen", r) for r in table2_rows()]
    jobs = [(m, r) for m, r in jobs if args.only in r["key"]]

    paper = paper_values()
    out, runs = Path(args.out), Path(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    runs.mkdir(parents=True, exist_ok=True)
    commit, results, start = git_commit(), [], time.time()
    for m, r in jobs:
        name, label = LIGHTGEN if m == "lightgen" else MODELS[m]
        t0 = time.time()
        if m == "lightgen":  # no VAE count (SD3.5's is not KL-16); 50 diffusion steps, no clip
            counted = count_flops(name, r["build"](), cfg=4.0, cfg_schedule="constant", include_vae=False)
        else:
            counted = count_flops(name, r["build"](), cfg=MAR_CFG[name])
        p = paper.get(r["compare_with"])
        conv, exact = counted["flops_paper_convention_T"], counted["flops_T"]
        ref = REFERENCE_T.get(r["key"], (None, ""))
        res = dict(table=r["table"], key=r["key"], compare_with=r["compare_with"], model=label, method=r["method"],
                   config=dict(model=name, **r["config"]), flops_T=exact, flops_paper_convention_T=conv,
                   paper_flops_T=p, gap_T=None if p is None else conv - p,
                   gap_pct=None if p is None else 100 * (conv - p) / p,
                   exact_gap_pct=None if p is None else 100 * (exact - p) / p,
                   reference_T=ref[0], reference_src=ref[1], encdec_T=counted["encdec_T"], head_T=counted["head_T"],
                   head_paper_convention_T=counted["head_paper_convention_T"], vae_T=counted["vae_T"],
                   seconds=round(time.time() - t0, 1))
        results.append(res)
        paper_txt = "-" if p is None else f"{p:6.2f}"
        gap_txt = "-" if p is None else f"{res['gap_pct']:+6.2f}%"
        print(f"{r['key']:<34} {label} {r['method']:<36} exact {exact:7.3f}  conv {conv:7.3f}  "
              f"paper {paper_txt}  gap {gap_txt}  ({res['seconds']} s)", flush=True)
        record = dict(table=r["table"], key=r["key"], model=label, method=r["method"], config=res["config"],
                      flops_T=exact, flops_paper_convention_T=conv, command=command, git_commit=commit,
                      torch_version=torch.__version__, device="meta (FLOPs counted on CPU, no weights)",
                      dtype="float32", batch_size=1, num_images=1, compare_with=r["compare_with"],
                      encdec_T=res["encdec_T"], head_T=res["head_T"],
                      head_paper_convention_T=res["head_paper_convention_T"], vae_T=res["vae_T"])
        if r["group"]:
            record["group"] = r["group"]
        (runs / (r["key"].replace("/", "__") + ".json")).write_text(json.dumps(record, indent=1) + "\n")

    with open(out / "flops.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for res in results:
            writer.writerow({k: json.dumps(v, sort_keys=True) if k == "config" else v for k, v in res.items()})
    write_markdown(out / "flops.md", results, command)
    print(f"{len(results)} rows in {time.time() - start:.0f} s -> {out / 'flops.csv'}, {out / 'flops.md'}, {runs}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
